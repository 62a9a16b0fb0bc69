"""`Report`: the measured artifacts of a run, their gates, and the files that show them.

`results.json` holds everything (its shape: edgepress/results.py); `report.md` and `report.html`
(edgepress/report_html.py) show one row per artifact; `check()` raises `GateFailed` naming each failing gate.
The verdict (each row's gates and passed, best, passed) is `edgepress.verdict.judge`; `check()` runs it again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgepress import files
from edgepress.across import across_text
from edgepress.errors import GateFailed
from edgepress.stats import busy_warnings, ratio_interval, speed_verdict, tie_notes
from edgepress.text import drop_text, float_layers_text, interval_text, or_dash, profile_text, stage_text
from edgepress.verdict import GATE_NAMES, MINIMUM_GATES, failure_message, gate_value, judge


@dataclass
class Report:
    """A run's results (the content of results.json) and the directory they were written to."""

    results: dict
    run_dir: Path | None = None

    @property
    def artifacts(self) -> list[dict]:
        return self.results["artifacts"]

    @property
    def best(self) -> dict[str, dict | None]:
        """Per device, the recommended artifact's row: the fastest within the gates."""
        rows = {(a["device"], a["name"]): a for a in self.artifacts}
        return {device: rows.get((device, name)) for device, name in self.results["best"].items()}

    @property
    def passed(self) -> bool:
        return self.results["passed"]

    def check(self) -> None:
        """Raise GateFailed, naming each gate that failed (with the artifacts that failed it) and each failed device.

        The verdict is computed again from the rows and the gates (`verdict.judge`), so results whose gates were
        changed are judged by the new gates, never by a stored `passed`.
        """
        self.results.update(judge(self.results))
        if not self.passed:
            raise GateFailed(failure_message(self.results))

    # -- the table every view shows -------------------------------------------------------------

    COLUMNS = (
        "device", "artifact", "format", "precision", "layout", "int8 MACs", "int16 MACs", "float layers", "runtime",
        "bytes", "gzip bytes", "size vs fp32", "accuracy", "drop", "agreement", "perplexity", "p50 ms", "p90 ms",
        "speed-up vs fp32", "TTFT ms", "decode tokens/s", "peak MiB", "gates",
    )
    LM_COLUMNS = ("TTFT ms", "decode tokens/s", "peak MiB")  # a decoder LM's (the runner's `lm` numbers)

    def columns(self) -> list[str]:
        """COLUMNS, without perplexity unless the model is a sequence model (a language model) that has one,
        without float layers unless an accuracy-aware export tried artifacts with layers kept in float, and
        without layout unless the artifacts take images in different layouts (a PyTorch model's NCHW and NHWC),
        without int16 MACs unless an artifact runs some MACs with 16-bit activations."""
        perplexity = any(a["metrics"].get("perplexity") is not None for a in self.artifacts)
        aware = any(a.get("accuracy_aware") for a in self.artifacts)
        layouts = len({a.get("layout") for a in self.artifacts} - {None}) > 1
        int16 = any((a.get("quantization") or {}).get("int16_macs") for a in self.artifacts)
        lm = any(a.get("lm") for a in self.artifacts)
        return [c for c in self.COLUMNS if (c != "perplexity" or perplexity) and (c != "float layers" or aware)
                and (c != "layout" or layouts) and (c != "int16 MACs" or int16) and (c not in self.LM_COLUMNS or lm)]

    def table(self) -> list[dict[str, str]]:
        """One row per artifact and device, formatted; size and speed are relative to the fp32 of the same
        format on the same device. Besides the columns, each row has `name` (the artifact's file name), `best`
        ("yes" for the recommended artifact of its device) and `role` (an accuracy-aware try: full, tried or final)."""
        return [row for _, row in self.rows()]

    def rows(self) -> list[tuple[dict, dict[str, str]]]:
        """(artifact, its formatted row) for each artifact and device, grouped by device: see table()."""
        fp32 = {(a["device"], a["format"]): a for a in self.artifacts if a["precision"] == "fp32" and not _sparse(a)}
        best = {(device, name) for device, name in self.results["best"].items()}
        order = {device: i for i, device in enumerate(self.results["devices"])}
        rows = []
        for a in sorted(self.artifacts, key=lambda a: order.get(a["device"], len(order))):  # grouped by device
            base = fp32.get((a["device"], a["format"]))
            p50, base_p50 = a["latency"]["p50"], base and base["latency"]["p50"]
            runtime = a["runtime"]
            is_best = (a["device"], a["name"]) in best
            rows.append((a, {
                "device": a["device"],
                "artifact": a["name"] + (" ★ best" if is_best else ""),
                "format": a["format"],
                "precision": a["precision"] + (" sparse" if _sparse(a) else ""),
                "float layers": float_layers_text(a),
                "runtime": " ".join([runtime["name"], *runtime["providers"][:1]]),
                "bytes": f"{a['bytes']:,}",
                "gzip bytes": f"{a['gzip_bytes']:,}",
                "size vs fp32": f"{a['bytes'] / base['bytes']:.2f}x" if base else "-",
                "accuracy": or_dash(a["metrics"]["accuracy"], "{:.2%}"),
                "drop": drop_text(a["metrics"]["accuracy_drop"]),
                "agreement": or_dash(a["metrics"]["agreement"], "{:.2%}"),
                "perplexity": or_dash(a["metrics"].get("perplexity"), "{:.3f}"),
                "p50 ms": or_dash(p50, "{:.3f}") + (" emulated" if a["latency"].get("emulated") else
                                                     interval_text(a["latency"])),
                "p90 ms": or_dash(a["latency"]["p90"], "{:.3f}"),
                "speed-up vs fp32": _speed_up(base, a) if base_p50 and p50 else "-",
                "int8 MACs": or_dash((a.get("quantization") or {}).get("int8_macs"), "{:.0%}"),
                "int16 MACs": or_dash((a.get("quantization") or {}).get("int16_macs"), "{:.0%}"),
                "layout": a.get("layout") or "-",
                **lm_cells(a),
                "gates": ("pass" if a["passed"] else "FAIL") if a["gates"] else "-",
                "name": a["name"],
                "best": "yes" if is_best else "",
                "role": (a.get("accuracy_aware") or {}).get("role", ""),
            }))
        return rows

    def warnings(self) -> list[str]:
        """What a reader must know to trust the numbers: runtime fallbacks, failed devices."""
        notes = [f"{a['name']} on {a['device']}: {w}" for a in self.artifacts for w in a["runtime"]["warnings"]]
        notes += [f"{a['name']} on {a['device']} was not measured: {a['error']}" for a in self.artifacts
                  if a.get("error")]
        notes += [f"latency on {name} is emulated (qemu): recorded, never compared with a real board nor recommended "
                  "on; its accuracy and agreement are ARM's own kernels'" for name, d in self.results["devices"].items()
                  if d.get("emulated")]
        notes += [f"device {name} failed: {d['error']}" for name, d in self.results["devices"].items() if d["error"]]
        return notes + busy_warnings(self.results)

    def summary(self) -> str:
        src = self.results["source"]
        metrics = src["metrics"]
        scores = [f"accuracy {or_dash(metrics.get('accuracy'), '{:.2%}')}"]
        if metrics.get("perplexity") is not None:
            scores.append(f"perplexity {metrics['perplexity']:.3f}")
        return (
            f"source model {src['model']}: {src['params']:,} parameters, {', '.join(scores)} on "
            f"{self.results['data']['test_samples']} test samples ({self.results['data']['dataset']})"
        )

    def notes(self) -> list[str]:
        """What the run left out, and why (e.g. steps or exports that do not apply to the model)."""
        return list(self.results.get("notes", [])) + tie_notes(self.results)

    def sparse_notes(self) -> list[str]:
        """One sentence per sparse TFLite artifact: its size and p50 against the same export stored dense."""
        notes = []
        for a in (a for a in self.artifacts if _sparse(a)):
            same = (a["device"], a["format"], a["precision"])
            dense = next((d for d in self.artifacts if not _sparse(d) and (d["device"], d["format"], d["precision"])
                          == same), None)
            tensors = a["quantization"].get("sparse_tensors", 0)
            stored = f"{a['name']} on {a['device']} ({tensors} weight tensors stored sparse)"
            p50 = a["latency"]["p50"]
            if dense is None or not p50 or not dense["latency"]["p50"]:
                notes.append(f"{stored}: export the same precision without sparse to compare.")
                continue
            # Beyond the run-to-run spread only: faster when nine sparse runs in ten beat the dense median,
            # slower when the sparse median loses to nine dense runs in ten.
            dense_p50 = dense["latency"]["p50"]
            if a["latency"]["p90"] is not None and a["latency"]["p90"] < dense_p50:
                verdict = "faster"
            elif dense["latency"]["p90"] is not None and p50 > dense["latency"]["p90"]:
                verdict = "slower"
            else:
                verdict = "neither faster nor slower (within the run-to-run spread)"
            notes.append(
                f"{stored}: {a['bytes'] / dense['bytes']:.2f}x the bytes and "
                f"{a['gzip_bytes'] / dense['gzip_bytes']:.2f}x the gzip bytes of {dense['name']}, p50 {p50:.3f} ms "
                f"vs {dense['latency']['p50']:.3f} ms: sparse storage is {verdict} here."
            )
        return notes

    def profile_notes(self) -> list[str]:
        """One line per artifact and device with a per-op profile: its slowest ops and the share of each op type,
        and for a file slower than its format's fp32 file beyond the noise, the ops that make it so."""
        notes = []
        for a in self.artifacts:
            if not a.get("profile"):
                continue
            note = f"{a['name']} on {a['device']}: {profile_text(a['profile'])}"
            why = self.slower_than_fp32(a)
            notes.append(note + (f". {why}" if why else ""))
        return notes

    def slower_than_fp32(self, row: dict) -> str | None:
        """For an artifact slower than its format's fp32 file on the same device beyond the noise (p50 intervals
        apart), which ops make it slower, from both files' per-op profiles; else None."""
        from edgepress.deploy.profile import why_slower
        from edgepress.stats import faster

        if row["precision"] == "fp32" or not row.get("profile") or row["profile"].get("error"):
            return None
        base = next((a for a in self.artifacts if a["device"] == row["device"] and a["format"] == row["format"]
                     and a["precision"] == "fp32" and not (a.get("quantization") or {}).get("sparse")
                     and a.get("profile") and not a["profile"].get("error")), None)
        if base is None or not faster(base, row):
            return None
        ops = why_slower(row["profile"], base["profile"])
        ratio = row["latency"]["p50"] / base["latency"]["p50"]
        return f"{ratio:.1f}x slower than {base['name']} here" + (f": {ops}" if ops else "")

    def quantize_notes(self) -> list[str]:
        """One plain sentence per accuracy-aware export: budget met or not, by which artifact, which layers float."""
        return [q["summary"] for q in self.results.get("quantize", [])]

    def to_markdown(self) -> str:
        rows = self.table()
        lines = [
            f"# edgepress report: {self.results['recipe']['name']}",
            "",
            self.summary() + ".",
            "",
            "Stages: " + ", ".join(stage_text(m) for m in self.results["models"]) + ".",
            "",
            "| " + " | ".join(self.columns()) + " |",
            "|" + "---|" * len(self.columns()),
        ]
        lines += ["| " + " | ".join(r[c] for c in self.columns()) + " |" for r in rows]
        lines += ["", self.verdict(), ""]
        if self.notes():
            lines += ["Notes:", ""] + [f"- {n}" for n in self.notes()] + [""]
        if self.quantize_notes():
            lines += ["Accuracy-aware quantization (layer-wise errors and every artifact tried: sensitivity.md):", ""]
            lines += [f"- {note}" for note in self.quantize_notes()] + [""]
        if self.sparse_notes():
            lines += [f"Sparse tensors: {note}" for note in self.sparse_notes()] + [""]
        if self.results.get("across_devices"):
            lines += ["The same artifact across devices (outputs, accuracy and top-1 predictions on the same samples):",
                      ""]
            lines += [f"- {across_text(entry)}" for entry in self.results["across_devices"]] + [""]
        if self.profile_notes():
            lines += ["Where the time goes (slowest ops of each artifact; per-op times in results.json):", ""]
            lines += [f"- {note}" for note in self.profile_notes()] + [""]
        if self.warnings():
            lines += ["Warnings:", ""] + [f"- {w}" for w in self.warnings()] + [""]
        env = self.results["environment"]
        lines.append("Measured on " + ", ".join(f"{k} {v}" for k, v in env.items()) + ".")
        return "\n".join(lines) + "\n"

    def verdict(self) -> str:
        gates = {k: v for k, v in self.results["gates"].items()
                 if k in (*GATE_NAMES, "max_memory_mb") and v is not None}
        limits = ", ".join(f"{k} {'>=' if k in MINIMUM_GATES else '<='} {gate_value(k, v)}"
                           for k, v in gates.items()) or "no gates set"
        verdict = "PASSED" if self.passed else "FAILED"
        emulated = {name for name, d in self.results["devices"].items() if d.get("emulated")}
        best = "; ".join(f"on {device}: {name or ('none (emulated latency)' if device in emulated else 'none')}"
                         for device, name in self.results["best"].items())
        return (f"Gates ({limits}, require {self.results['gates']['require']}): {verdict}. "
                f"Recommended (fastest within the gates) {best}.")

    # -- files ---------------------------------------------------------------------------------

    def save(self, run_dir: str | Path, render_html: Callable[[Report], str]) -> None:
        """Write results.json, report.md and report.html (`render_html(self)`, edgepress/report_html.py: one
        self-contained page, its plots inline) into `run_dir`."""
        run_dir = Path(run_dir)
        self.run_dir = run_dir
        files.write_text(run_dir / "results.json", json.dumps(self.results, indent=2) + "\n")
        files.write_text(run_dir / "report.md", self.to_markdown())
        files.write_text(run_dir / "report.html", render_html(self))

    @classmethod
    def load(cls, run_dir: str | Path) -> Report:
        run_dir = Path(run_dir)
        return cls(json.loads((run_dir / "results.json").read_text()), run_dir)


def _speed_up(base: dict, row: dict) -> str:
    """base p50 / row p50 with its interval (conservative, from both intervals), and "tie" when the two p50
    intervals overlap (edgepress/stats.py)."""
    if base is row:
        return "1.00x"
    point, low, high = ratio_interval(base, row)
    interval = f" [{low:.2f}, {high:.2f}]" if (low, high) != (point, point) else ""
    return f"{point:.2f}x{interval}" + (" tie" if speed_verdict(row, base) == "tie" else "")


def _sparse(artifact: dict) -> bool:
    """A TFLite artifact whose mostly-zero weights are stored as sparse tensors (export option `sparse`)."""
    return bool((artifact.get("quantization") or {}).get("sparse"))


def lm_cells(artifact: dict) -> dict[str, str]:
    """A decoder LM's columns: TTFT p50, decode tokens/s (p50 and its interval), peak memory with the cache full."""
    lm = artifact.get("lm")
    if not lm:
        return dict.fromkeys(Report.LM_COLUMNS, "-")
    speed, peak = lm["decode_tokens_per_s"], artifact["memory"].get("peak_rss_bytes")
    low, high = speed["p50_ci"]
    return {"TTFT ms": f"{lm['ttft_ms']['p50']:.3f}",
            "decode tokens/s": f"{speed['p50']:,.0f} [{low:,.0f}, {high:,.0f}]",
            "peak MiB": or_dash(None if peak is None else peak / 2**20, "{:.1f}")}
