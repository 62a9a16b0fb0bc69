"""`Report`: the measured artifacts of a run, their gates, and the files that show them.

`results.json` holds everything (shape below, `schema_version` 1); `report.md` and `report.html`
show one row per artifact; `check()` raises `GateFailed` naming each failing gate.

results.json, schema_version 1:
    schema_version, edgepress_version, created, duration_s, recipe (resolved), environment (versions, CPU),
    data {dataset, train_samples, test_samples, calibration_samples},
    source {model, kind, params, metrics {accuracy[, cross_entropy, perplexity]}}
                                                        kind: keras, saved_model, onnx or torch; a sequence model
                                                        (labels per time step) also has cross_entropy and
                                                        perplexity, here and in each artifact's metrics
    models [{stage, accuracy, params, macs, sparsity, file}]  the source, then the model after each step
                                                        (macs: multiply-accumulates for one sample); a distill
                                                        step adds distill {student, teacher, temperature, alpha, epochs,
                                                        teacher_accuracy, student_accuracy, scratch_accuracy}
    devices {name: {reach, error, memory_budget_mb}}    error is null when the device was measured
    artifacts [{name, device, format, precision, path, bytes, gzip_bytes, sha256, steps, quantization, check,
                metrics {accuracy, accuracy_drop, agreement[, cross_entropy, perplexity]},
                latency {unit: "ms", p50, p90, p99, mean, std, min, max, runs, warmup, threads, batch,
                         p50_ci, p90_ci [low, high] (bootstrap, `confidence` 0.95), stopped (why the adaptive
                         runs stopped), times_ms (the per-run times, at most 2,000)},
                load_ms, memory {baseline_rss_bytes, peak_rss_bytes, model_rss_bytes}, runtime {name, version,
                providers, warnings}, host {cpu, machine, cores, python, numpy, load_before, load_after},
                layout (NHWC, NCHW or null), gates {gate: {limit, value, passed[, minimum]}}, passed}]
                                                        one entry per artifact and device; a value a device
                                                        could not measure (adb: accuracy) is null; a sparse
                                                        TFLite export has quantization {sparse, sparse_tensors};
                                                        every quantization has int8_macs, hybrid_macs, macs
    gates {max_accuracy_drop, max_p50_ms, max_bytes, max_perplexity, require},
    notes [...]                                         what the run left out and why (e.g. no TFLite from ONNX)
    best {device: artifact name or null}, passed,
    baseline {path, limits, flags, regressed, rows} or {path, error}   with gates.baseline (edgepress/compare.py);
                                                        rows then also have gates baseline_p50/_accuracy/_bytes
    quantize [...]                                      one entry per accuracy-aware export (see sensitivity.json);
                                                        its artifacts' rows also carry float_layers and
                                                        accuracy_aware {role, max_accuracy_drop, budget_met, ...},
                                                        (with remedy and min_int8_macs); each has the gate
                                                        quantize_max_accuracy_drop, and the final one also
                                                        quantize_min_int8_macs (a minimum)
The verdict (each row's gates and passed, best, passed) is `judge(results)`, in one place; `check()` runs it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgepress import files
from edgepress.compare import add_baseline_gates
from edgepress.errors import GateFailed
from edgepress.stats import busy_warnings, rank_best, ratio_interval, speed_verdict, tie_notes

SCHEMA_VERSION = 1
GATE_NAMES = ("max_accuracy_drop", "max_p50_ms", "max_bytes", "max_perplexity")
# An accuracy-aware export's budget, a gate on its final artifact: the drop from the exported float model.
BUDGET_GATE = "quantize_max_accuracy_drop"
# ... and the share of its MACs that must run in integer kernels (quantize.min_int8_macs), on its final artifact.
INT8_GATE = "quantize_min_int8_macs"


def apply_gates(artifact: dict, gates: dict, memory_budget_mb: float | None = None,
                float_accuracy: float | None = None) -> None:
    """Record in `artifact` each gate's limit, measured value and verdict, and whether all passed.

    A value the device could not measure (adb's benchmark_model scores no accuracy) fails its gate:
    a gate only passes on a measured number. A device's memory budget is a gate on that device. An
    accuracy-aware export's artifact also has its budget as a gate (BUDGET_GATE): the drop from the
    exported float model (`float_accuracy`), as measured on this device.
    """
    peak = artifact["memory"].get("peak_rss_bytes")
    values = {
        "max_accuracy_drop": artifact["metrics"]["accuracy_drop"],
        "max_p50_ms": artifact["latency"]["p50"],
        "max_bytes": artifact["bytes"],
        "max_perplexity": artifact["metrics"].get("perplexity"),
        "max_memory_mb": None if peak is None else peak / 2**20,
    }
    limits = dict(gates, max_memory_mb=memory_budget_mb)
    artifact["gates"] = {
        name: {"limit": limits[name], "value": values[name],
               "passed": values[name] is not None and values[name] <= limits[name]}
        for name in (*GATE_NAMES, "max_memory_mb")
        if limits.get(name) is not None
    }
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
    artifact["passed"] = all(g["passed"] for g in artifact["gates"].values())


def delivered(artifacts: list[dict]) -> list[dict]:
    """The rows of the artifacts the exports deliver: an accuracy-aware export delivers its final artifact;
    the others it tried are reported (with their gates) but neither recommended nor judged."""
    return [a for a in artifacts if a.get("accuracy_aware", {}).get("role", "final") == "final"]


def judge(results: dict) -> dict:
    """The verdict, computed from the rows in one place: each row's gates and `passed` (set in the rows), and
    {"best": the recommended artifact per device, "passed": the run's verdict}.

    The run passes when, over the delivered artifacts, `gates.require` holds (any: every measured device has
    an artifact meeting every gate; all: every row does), every device was measured, and every accuracy-aware
    budget was met.
    """
    float_accuracy = results["models"][-1]["accuracy"] if results.get("models") else None
    devices = results.get("devices", {})
    for row in results["artifacts"]:
        budget = devices.get(row["device"], {}).get("memory_budget_mb")
        apply_gates(row, results["gates"], budget, float_accuracy)
        add_baseline_gates(row, results.get("baseline"))  # edgepress/compare.py: gates.baseline's comparison
    rows = delivered(results["artifacts"])
    failures = {name: d["error"] for name, d in devices.items() if d.get("error")}
    budgets = all(a["gates"][BUDGET_GATE]["passed"] for a in rows if BUDGET_GATE in a["gates"])
    return {"best": choose_best(rows), "passed": run_passed(rows, failures, results["gates"]["require"]) and budgets}


def choose_best(artifacts: list[dict]) -> dict[str, str | None]:
    """Per device, the fastest artifact (p50) among those that meet every gate; a tie (overlapping p50 intervals)
    goes to the smaller file, then the more accurate (edgepress/stats.py, rank_best)."""
    best: dict[str, str | None] = {}
    for device in dict.fromkeys(a["device"] for a in artifacts):
        passing = [a for a in artifacts if a["device"] == device and a["passed"]]
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

        The verdict is computed again from the rows and the gates (`judge`), so results whose gates were
        changed are judged by the new gates, never by a stored `passed`.
        """
        self.results.update(judge(self.results))
        if self.passed:
            return
        failing: dict[str, list[str]] = {}
        for a in self.artifacts:
            for name, gate in a["gates"].items():
                if not gate["passed"]:
                    value = "not measured" if gate["value"] is None else _gate_value(name, gate["value"])
                    failing.setdefault(name, []).append(f"{a['name']} on {a['device']} ({value})")
        lines = [
            f"gate {name} {'>=' if name == INT8_GATE else '<='} {_gate_value(name, self._limit(name))} failed for: "
            f"{', '.join(who)}"
            for name, who in failing.items()
        ]
        lines += [f"device {name} failed: {d['error']}" for name, d in self.results["devices"].items() if d["error"]]
        lines += [q["summary"] for q in self.results.get("quantize", []) if not q["budget_met"]]
        what = {"any": "not every device has an artifact that meets every gate",
                "all": "not every artifact meets every gate"}[self.results["gates"]["require"]]
        raise GateFailed(f"{what}:\n  " + "\n  ".join(lines))

    def _limit(self, gate: str) -> float:
        return next(a["gates"][gate]["limit"] for a in self.artifacts if gate in a["gates"])

    # -- the table every view shows -------------------------------------------------------------

    COLUMNS = (
        "device", "artifact", "format", "precision", "layout", "int8 MACs", "float layers", "runtime", "bytes",
        "gzip bytes", "size vs fp32", "accuracy", "drop", "agreement", "perplexity", "p50 ms", "p90 ms",
        "speed-up vs fp32", "gates",
    )

    def columns(self) -> list[str]:
        """COLUMNS, without perplexity unless the model is a sequence model (a language model) that has one,
        without float layers unless an accuracy-aware export tried artifacts with layers kept in float, and
        without layout unless the artifacts take images in different layouts (a PyTorch model's NCHW and NHWC)."""
        perplexity = any(a["metrics"].get("perplexity") is not None for a in self.artifacts)
        aware = any(a.get("accuracy_aware") for a in self.artifacts)
        layouts = len({a.get("layout") for a in self.artifacts} - {None}) > 1
        return [c for c in self.COLUMNS if (c != "perplexity" or perplexity) and (c != "float layers" or aware)
                and (c != "layout" or layouts)]

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
                "accuracy": _or_dash(a["metrics"]["accuracy"], "{:.2%}"),
                "drop": drop_text(a["metrics"]["accuracy_drop"]),
                "agreement": _or_dash(a["metrics"]["agreement"], "{:.2%}"),
                "perplexity": _or_dash(a["metrics"].get("perplexity"), "{:.3f}"),
                "p50 ms": _or_dash(p50, "{:.3f}") + interval_text(a["latency"]),
                "p90 ms": _or_dash(a["latency"]["p90"], "{:.3f}"),
                "speed-up vs fp32": _speed_up(base, a) if base_p50 and p50 else "-",
                "int8 MACs": _or_dash((a.get("quantization") or {}).get("int8_macs"), "{:.0%}"),
                "layout": a.get("layout") or "-",
                "gates": ("pass" if a["passed"] else "FAIL") if a["gates"] else "-",
                "name": a["name"],
                "best": "yes" if is_best else "",
                "role": (a.get("accuracy_aware") or {}).get("role", ""),
            }))
        return rows

    def warnings(self) -> list[str]:
        """What a reader must know to trust the numbers: runtime fallbacks, failed devices."""
        notes = [f"{a['name']} on {a['device']}: {w}" for a in self.artifacts for w in a["runtime"]["warnings"]]
        notes += [f"device {name} failed: {d['error']}" for name, d in self.results["devices"].items() if d["error"]]
        return notes + busy_warnings(self.results)

    def summary(self) -> str:
        src = self.results["source"]
        metrics = src["metrics"]
        scores = [f"accuracy {_or_dash(metrics.get('accuracy'), '{:.2%}')}"]
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
            "Stages: " + ", ".join(_stage(m) for m in self.results["models"]) + ".",
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
        if self.warnings():
            lines += ["Warnings:", ""] + [f"- {w}" for w in self.warnings()] + [""]
        env = self.results["environment"]
        lines.append("Measured on " + ", ".join(f"{k} {v}" for k, v in env.items()) + ".")
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        """One self-contained page (plots inline as SVG, no external file or network): see report_html.py."""
        from edgepress.report_html import render

        return render(self)

    def verdict(self) -> str:
        gates = {k: v for k, v in self.results["gates"].items() if k in GATE_NAMES and v is not None}
        limits = ", ".join(f"{k} <= {_gate_value(k, v)}" for k, v in gates.items()) or "no gates set"
        verdict = "PASSED" if self.passed else "FAILED"
        best = "; ".join(f"on {device}: {name or 'none'}" for device, name in self.results["best"].items())
        return (f"Gates ({limits}, require {self.results['gates']['require']}): {verdict}. "
                f"Recommended (fastest within the gates) {best}.")

    # -- files ---------------------------------------------------------------------------------

    def save(self, run_dir: str | Path) -> None:
        """Write results.json, report.md and report.html (its plots inline) into `run_dir`."""
        run_dir = Path(run_dir)
        self.run_dir = run_dir
        files.write_text(run_dir / "results.json", json.dumps(self.results, indent=2) + "\n")
        files.write_text(run_dir / "report.md", self.to_markdown())
        files.write_text(run_dir / "report.html", self.to_html())

    @classmethod
    def load(cls, run_dir: str | Path) -> Report:
        run_dir = Path(run_dir)
        return cls(json.loads((run_dir / "results.json").read_text()), run_dir)


def _or_dash(value: float | None, template: str) -> str:
    return "-" if value is None else template.format(value)


def drop_text(drop: float | None) -> str:
    """An accuracy drop (a fraction) in percentage points; a gain reads as a gain: "0.50 pt", "+0.28 pt gain"."""
    if drop is None:
        return "-"
    points = round(drop * 100, 2) + 0.0  # + 0.0: -0.0 reads 0.00
    return f"+{-points:.2f} pt gain" if points < 0 else f"{points:.2f} pt"


def float_layers_text(artifact: dict) -> str:
    """The layers an accuracy-aware try kept in float ("none": fully int8); "-" for any other artifact."""
    if not artifact.get("accuracy_aware"):
        return "-"
    return ", ".join(row["layer"] for row in artifact.get("float_layers", [])) or "none"


def interval_text(latency: dict) -> str:
    """ ' [low, high]': a row's p50 95% confidence interval (ms), as every view shows it after the p50."""
    ci = latency.get("p50_ci")
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def _speed_up(base: dict, row: dict) -> str:
    """base p50 / row p50 with its interval (conservative, from both intervals), and "tie" when the two p50
    intervals overlap (edgepress/stats.py)."""
    if base is row:
        return "1.00x"
    point, low, high = ratio_interval(base, row)
    interval = f" [{low:.2f}, {high:.2f}]" if (low, high) != (point, point) else ""
    return f"{point:.2f}x{interval}" + (" tie" if speed_verdict(row, base) == "tie" else "")


def _gate_value(name: str, value: float) -> str:
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
    return f"{value:,} bytes"


def _stage(model: dict) -> str:
    """One model of the run: accuracy, size, work and sparsity (what was not measured is left out)."""
    sizes = [f"{model['params']:,} params"]
    if model.get("macs") is not None:
        sizes.append(f"{model['macs']:,} MACs")
    if model.get("sparsity") is not None:
        sizes.append(f"{model['sparsity']:.0%} sparse")
    perplexity = f", perplexity {model['perplexity']:.3f}" if model.get("perplexity") is not None else ""
    notes = "".join(f"; {note}" for note in stage_notes(model))
    return f"{model['stage']} {_or_dash(model['accuracy'], '{:.2%}')}{perplexity} ({', '.join(sizes)}{notes})"


def stage_notes(model: dict) -> list[str]:
    """What a step measured besides its model (a distill step: the teacher and the student trained alone)."""
    distill = model.get("distill")
    if not distill:
        return []
    teacher = "the source model" if distill.get("teacher") == "source" else "teacher"
    notes = [f"student {distill['student']}, {teacher} {_or_dash(distill['teacher_accuracy'], '{:.2%}')}"]
    if distill.get("scratch_accuracy") is not None:
        notes.append(f"same student without the teacher {distill['scratch_accuracy']:.2%}")
    return notes


def _sparse(artifact: dict) -> bool:
    """A TFLite artifact whose mostly-zero weights are stored as sparse tensors (export option `sparse`)."""
    return bool((artifact.get("quantization") or {}).get("sparse"))
