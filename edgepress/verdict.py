"""The verdict of a run, in one place: each artifact's gates, the recommendation per device, and `passed`.

    results.update(judge(results))   # every row's gates and passed, then {"best", "passed"}
    failure_message(results)         # what GateFailed says when the run did not pass

The gates (`apply_gates`): the recipe's limits (accuracy drop from the source, p50, bytes, perplexity), the
device's memory budget, an accuracy-aware export's budget and int8 floor, and the baseline's regressions
(`add_baseline_gates`, from `edgepress.compare`'s comparison in results["baseline"]). A gate passes only on a
measured number. `judge` is recomputed whenever results are read back (`Report.check`), so results whose gates
changed are judged by the new gates, never by a stored `passed`.

A tune's budgets are the same gates; `over_budget`, `misses` and `closest` measure how far a point is from them.
Imports nothing above `edgepress.stats`.
"""

from __future__ import annotations

import math

from edgepress.stats import rank_best

GATE_NAMES = ("max_accuracy_drop", "max_p50_ms", "max_bytes", "max_perplexity", "min_decode_tokens_per_s",
              "max_ttft_ms")
# Gates whose limit is a minimum (the measured value must reach it).
MINIMUM_GATES = ("min_decode_tokens_per_s",)
# An accuracy-aware export's budget, a gate on its final artifact: the drop from the exported float model.
BUDGET_GATE = "quantize_max_accuracy_drop"
# ... and the share of its MACs that must run in integer kernels (quantize.min_int8_macs), on its final artifact.
INT8_GATE = "quantize_min_int8_macs"
# An accuracy-aware export's own gates: each fails the run whatever else is exported, the floor first.
AWARE_GATES = (INT8_GATE, BUDGET_GATE)
# The gates a baseline comparison adds to each row (edgepress/compare.py makes the comparison).
BASELINE_GATES = ("baseline_p50", "baseline_accuracy", "baseline_bytes")


def apply_gates(artifact: dict, gates: dict, memory_budget_mb: float | None = None,
                float_accuracy: float | None = None) -> None:
    """Record in `artifact` each gate's limit, measured value and verdict, and whether all passed.

    A value the device could not measure (adb's benchmark_model scores no accuracy) fails its gate:
    a gate only passes on a measured number. A device's memory budget is a gate on that device. An
    accuracy-aware export's artifact also has its budget as a gate (BUDGET_GATE): the drop from the
    exported float model (`float_accuracy`), as measured on this device.
    """
    peak = artifact["memory"].get("peak_rss_bytes")
    lm = artifact.get("lm") or {}
    values = {
        "max_accuracy_drop": artifact["metrics"]["accuracy_drop"],
        "max_p50_ms": artifact["latency"]["p50"],
        "max_bytes": artifact["bytes"],
        "max_perplexity": artifact["metrics"].get("perplexity"),
        "max_memory_mb": None if peak is None else peak / 2**20,
        "min_decode_tokens_per_s": (lm.get("decode_tokens_per_s") or {}).get("p50"),
        "max_ttft_ms": (lm.get("ttft_ms") or {}).get("p50"),
    }
    # The recipe's memory gate and the device's budget: the tighter one holds.
    memory = [m for m in (gates.get("max_memory_mb"), memory_budget_mb) if m is not None]
    limits = dict(gates, max_memory_mb=min(memory) if memory else None)
    if artifact["latency"].get("emulated"):
        # An emulated CPU's latency is no board's: it is recorded, not judged.
        limits.update(max_p50_ms=None, max_ttft_ms=None, min_decode_tokens_per_s=None)
    artifact["gates"] = {}
    for name in (*GATE_NAMES, "max_memory_mb"):
        if limits.get(name) is None:
            continue
        value, minimum = values[name], name in MINIMUM_GATES
        passed = value is not None and (value >= limits[name] if minimum else value <= limits[name])
        artifact["gates"][name] = {"limit": limits[name], "value": value, "passed": passed,
                                   **({"minimum": True} if minimum else {})}
    aware = artifact.get("accuracy_aware")
    if aware:
        accuracy, limit = artifact["metrics"]["accuracy"], aware["max_accuracy_drop"]
        value = None if accuracy is None or float_accuracy is None else float_accuracy - accuracy
        # Accuracies are fractions of the same samples: allow float rounding at the limit.
        artifact["gates"][BUDGET_GATE] = {"limit": limit, "value": value,
                                          "passed": value is not None and value <= limit + 1e-9}
        if aware.get("role") == "final" and aware.get("min_int8_macs"):
            # An "int8" file whose MACs run mostly in float kernels is not an int8 result (a minimum, not a maximum).
            share = (artifact.get("quantization") or {}).get("int8_macs")
            artifact["gates"][INT8_GATE] = {"limit": aware["min_int8_macs"], "value": share, "minimum": True,
                                            "passed": share is not None and share >= aware["min_int8_macs"] - 1e-9}
    # A file the device could not run (row["error"]) meets nothing there, gates or not.
    artifact["passed"] = not artifact.get("error") and all(g["passed"] for g in artifact["gates"].values())


def delivered(artifacts: list[dict]) -> list[dict]:
    """The rows of the artifacts the exports deliver: an accuracy-aware export delivers its final artifact;
    the others it tried are reported (with their gates) but neither recommended nor judged."""
    return [a for a in artifacts if a.get("accuracy_aware", {}).get("role", "final") == "final"]


def judge(results: dict) -> dict:
    """The verdict, computed from the rows in one place: each row's gates and `passed` (set in the rows), and
    {"best": the recommended artifact per device, "passed": the run's verdict}.

    The run passes when, over the delivered artifacts, `gates.require` holds (any: every measured device has
    an artifact meeting every gate; all: every row does), every device was measured, and every delivered
    accuracy-aware artifact meets its own gates (its budget and its int8 floor): another export that passes,
    an fp32 file under `require: any`, does not make up for an int8 export that is not int8.
    """
    float_accuracy = results["models"][-1]["accuracy"] if results.get("models") else None
    devices = results.get("devices", {})
    for row in results["artifacts"]:
        budget = devices.get(row["device"], {}).get("memory_budget_mb")
        apply_gates(row, results["gates"], budget, float_accuracy)
        add_baseline_gates(row, results.get("baseline"))  # edgepress/compare.py: gates.baseline's comparison
    rows = delivered(results["artifacts"])
    failures = {name: d["error"] for name, d in devices.items() if d.get("error")}
    aware = all(a["gates"][g]["passed"] for a in rows for g in AWARE_GATES if g in a["gates"])
    return {"best": choose_best(rows), "passed": run_passed(rows, failures, results["gates"]["require"]) and aware}


def choose_best(artifacts: list[dict]) -> dict[str, str | None]:
    """Per device, the fastest artifact (p50) among those that meet every gate; a tie (overlapping p50 intervals)
    goes to the smaller file, then the more accurate (edgepress/stats.py, rank_best). None on an emulated device:
    its latency is not a board's."""
    best: dict[str, str | None] = {}
    for device in dict.fromkeys(a["device"] for a in artifacts):
        passing = [a for a in artifacts if a["device"] == device and a["passed"] and not a["latency"].get("emulated")]
        speed = [a for a in passing if a["latency"]["p50"] is not None]
        best[device] = rank_best(speed)["name"] if speed else None
    return best


def run_passed(artifacts: list[dict], failures: dict[str, str], require: str) -> bool:
    """any: every measured device has an artifact meeting every gate; all: every row does. A failed device fails."""
    if failures or not artifacts:
        return False
    if require == "all":
        return all(a["passed"] for a in artifacts)
    return all(any(a["passed"] for a in artifacts if a["device"] == d) for d in {a["device"] for a in artifacts})


def add_baseline_gates(row: dict, baseline: dict | None) -> None:
    """Add to an artifact row the gates of its comparison in `baseline` (results["baseline"]), and update `passed`.

    baseline_p50 (value: the relative change; left out when the latency was not comparable),
    baseline_accuracy (value: the drop, a fraction), baseline_bytes (value: the relative growth); each with
    its limit, verdict and the baseline's value. A row without a baseline row gets none.
    """
    if not baseline or "rows" not in baseline:
        return
    c = next((c for c in baseline["rows"] if (c["device"], c["artifact"]) == (row["device"], row["name"])
              and c["status"] == "compared"), None)
    if c is None:
        return
    limits, failed = baseline["limits"], c["regressions"]
    if c["latency_compared"] and c["p50_change"] is not None:
        row["gates"]["baseline_p50"] = {"limit": limits["max_p50_regression"], "value": c["p50_change"],
                                        "passed": "p50" not in failed, "significant": c["p50_significant"],
                                        "baseline": c["old"]["p50"]}
    if c["old"]["accuracy"] is not None:
        drop = None if c["accuracy_change"] is None else -c["accuracy_change"]
        row["gates"]["baseline_accuracy"] = {"limit": limits["max_accuracy_regression"], "value": drop,
                                             "passed": "accuracy" not in failed, "baseline": c["old"]["accuracy"]}
    if c["bytes_change"] is not None:
        row["gates"]["baseline_bytes"] = {"limit": limits["max_bytes_regression"], "value": c["bytes_change"],
                                          "passed": "bytes" not in failed, "baseline": c["old"]["bytes"]}
    row["passed"] = all(g["passed"] for g in row["gates"].values())


def gate_value(name: str, value: float) -> str:
    """A gate's limit or measured value in its unit: "0.50 pt", "0.123 ms", "1,000 bytes", "+12.0%" (a baseline's)."""
    if name.startswith("baseline_"):  # edgepress/compare.py: relative changes, accuracy in points
        return f"{value * 100:.2f} pt" if name == "baseline_accuracy" else f"{value:+.1%}"
    if name in ("max_accuracy_drop", BUDGET_GATE):
        return f"{value * 100:.2f} pt"
    if name == INT8_GATE:
        return f"{value:.0%} of MACs in integer kernels"
    if name == "max_p50_ms":
        return f"{value:.3f} ms"
    if name == "max_perplexity":
        return f"{value:.3f}"
    if name == "max_memory_mb":
        return f"{value:.1f} MiB"
    if name == "min_decode_tokens_per_s":
        return f"{value:,.1f} tokens/s"
    if name == "max_ttft_ms":
        return f"{value:.3f} ms"
    return f"{value:,} bytes"


def failure_message(results: dict) -> str:
    """What a run that did not pass says: each gate the delivered artifacts failed (an accuracy-aware export's
    int8 floor first, then its budget, then the recipe's gates), each failed device, each accuracy-aware export
    whose budget was not met, and last, in their own section, the gates of the artifacts an accuracy-aware search
    tried and did not deliver (reported, never judged)."""
    artifacts = results["artifacts"]
    given = delivered(artifacts)
    tried = [a for a in artifacts if not any(a is d for d in given)]
    lines = _failed_gates(given)
    lines += [f"device {name} failed: {d['error']}" for name, d in results["devices"].items() if d["error"]]
    lines += [q["summary"] for q in results.get("quantize", []) if not q["budget_met"]]
    others = _failed_gates(tried)
    if others:
        lines += ["artifacts tried by the accuracy-aware search (not delivered, not judged):"]
        lines += ["  " + line for line in others]
    what = {"any": "not every device has an artifact that meets every gate",
            "all": "not every artifact meets every gate"}[results["gates"]["require"]]
    if any(not a["gates"][g]["passed"] for a in given for g in AWARE_GATES if g in a["gates"]):
        what = "a delivered accuracy-aware artifact fails its own gates"
    return f"{what}:\n  " + "\n  ".join(lines)


def _failed_gates(artifacts: list[dict]) -> list[str]:
    """One line per gate that some of `artifacts` failed, naming them: the accuracy-aware gates first."""
    failing: dict[str, list[str]] = {}
    limits: dict[str, float] = {}
    for a in artifacts:
        for name, gate in a["gates"].items():
            limits.setdefault(name, gate["limit"])
            if not gate["passed"]:
                value = "not measured" if gate["value"] is None else gate_value(name, gate["value"])
                failing.setdefault(name, []).append(f"{a['name']} on {a['device']} ({value})")
    order = sorted(failing, key=lambda name: AWARE_GATES.index(name) if name in AWARE_GATES else len(AWARE_GATES))
    minimums = (INT8_GATE, *MINIMUM_GATES)
    return [f"gate {name} {'>=' if name in minimums else '<='} {gate_value(name, limits[name])} failed for: "
            f"{', '.join(failing[name])}" for name in order]


# -- a tune's budgets ----------------------------------------------------------------------------------------


def over_budget(gate: str, value: float, limit: float) -> float:
    """How far `value` is over the budget `limit`, relative to it (<= 0 within): one scale for every budget, so a
    sampler weighs a 3 pt accuracy miss against a 10% size miss as the budgets do. An accuracy drop is relative
    to its budget but at least 1 pt (a budget of 0 would make every miss infinite)."""
    scale = max(limit, 0.01) if gate == "max_accuracy_drop" else (limit or 1e-9)
    if gate.startswith("min_"):  # a floor (min_decode_tokens_per_s): under it is over budget
        return (limit - value) / scale
    return (value - limit) / scale


def misses(point: dict, budgets: dict) -> dict[str, float]:
    """How far `point` is over each budget, relative to the budget (0 within it; `over_budget`)."""
    values = {"max_accuracy_drop": point["accuracy_drop"], "max_p50_ms": point["p50_ms"], "max_bytes": point["bytes"],
              "max_perplexity": point.get("perplexity"), "min_decode_tokens_per_s": point.get("decode_tokens_per_s")}
    out = {}
    for gate, limit in budgets.items():
        if limit is None:
            continue
        value = values[gate]
        out[gate] = math.inf if value is None else max(0.0, over_budget(gate, value, limit))
    return out


def closest(points: list[dict], budgets: dict) -> dict:
    """The point least over the budgets (the sum of its `misses`), then the fastest: what a tune names when nothing
    is within them."""
    return min(points, key=lambda p: (sum(misses(p, budgets).values()), p["p50_ms"] or math.inf))
