"""A run's gates as JUnit XML, the test-report format GitHub Actions, GitLab and Jenkins display natively.

One <testsuite> per device, one <testcase> per gate per artifact (classname `edgepress.<device>.<artifact>`,
name the gate), with a <failure> when the gate failed; a device that could not be measured is one
testcase with an <error>. Attributes follow what the Ant/Jenkins JUnit schemas require (see
tests/fixtures/junit.xsd, which the tests validate against).
"""

from __future__ import annotations

import datetime as dt
import platform
import xml.etree.ElementTree as ET
from pathlib import Path

from edgepress import files


def write_junit(results: dict, path: str | Path) -> Path:
    """Write the gates of `results` (a results.json's content) to `path` as JUnit XML; return the path."""
    from edgepress.verdict import gate_value  # the one place that formats a gate's value

    created = _timestamp(results.get("created"))
    name = f"edgepress {results['recipe']['name']}"
    suites = ET.Element("testsuites", name=name)
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for i, (device, info) in enumerate(results["devices"].items()):
        suite = ET.SubElement(suites, "testsuite", name=f"edgepress.{device}", id=str(i), package="edgepress",
                              timestamp=created, hostname=platform.node() or "localhost", time="0")
        counts = {"tests": 0, "failures": 0, "errors": 0}
        ET.SubElement(suite, "properties")
        if info.get("error"):
            case = ET.SubElement(suite, "testcase", name="measure", classname=f"edgepress.{device}", time="0")
            ET.SubElement(case, "error", message=info["error"], type="DeviceError").text = info["error"]
            counts["tests"] += 1
            counts["errors"] += 1
        for row in (r for r in results["artifacts"] if r["device"] == device):
            seconds = _seconds(row)
            for gate, verdict in row["gates"].items():
                case = ET.SubElement(suite, "testcase", name=gate, classname=f"edgepress.{device}.{row['name']}",
                                     time=f"{seconds:.3f}")
                counts["tests"] += 1
                if not verdict["passed"]:
                    value = "not measured" if verdict["value"] is None else gate_value(gate, verdict["value"])
                    message = f"{gate}: {value}, limit {gate_value(gate, verdict['limit'])}"
                    ET.SubElement(case, "failure", message=message, type="GateFailed").text = (
                        f"{row['name']} on {device} fails {message}")
                    counts["failures"] += 1
        suite.attrib.update({k: str(v) for k, v in counts.items()}, skipped="0")
        ET.SubElement(suite, "system-out").text = ""
        ET.SubElement(suite, "system-err").text = ""
        for k in totals:
            totals[k] += counts[k]
    suites.attrib.update({k: str(v) for k, v in totals.items()}, time=str(results.get("duration_s", 0)))
    ET.indent(suites)
    return files.write_bytes(path, ET.tostring(suites, encoding="utf-8", xml_declaration=True) + b"\n")


def _timestamp(created: str | None) -> str:
    """ISO 8601 without a time zone, as the Ant schema's timestamp pattern wants (the run's UTC time)."""
    when = dt.datetime.fromisoformat(created) if created else dt.datetime.now(dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")


def _seconds(row: dict) -> float:
    """The time spent timing the artifact: its runs times their mean, in seconds."""
    latency = row.get("latency") or {}
    if latency.get("mean") is None or latency.get("runs") is None:
        return 0.0
    return latency["mean"] * latency["runs"] / 1000
