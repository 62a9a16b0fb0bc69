"""`Report`: the measured artifacts of a run, their gates, and the files that show them.

`results.json` holds everything (shape below, `schema_version` 1); `report.md` and `report.html`
show one row per artifact; `check()` raises `GateFailed` naming each failing gate.

results.json, schema_version 1:
    schema_version, edgepress_version, created, duration_s, recipe (resolved), environment (versions, CPU),
    data {dataset, train_samples, test_samples, calibration_samples},
    source {model, params, metrics {accuracy}},
    models [{stage, accuracy, params, macs, sparsity}]  the source, then the model after each step
                                                        (macs: multiply-accumulates for one sample)
    devices {name: {reach, error}}                      error is null when the device was measured
    artifacts [{name, device, format, precision, path, bytes, gzip_bytes, sha256, steps, quantization, check,
                metrics {accuracy, accuracy_drop, agreement},
                latency {unit: "ms", p50, p90, p99, mean, std, min, max, runs, warmup, threads, batch},
                load_ms, memory {baseline_rss_bytes, peak_rss_bytes, model_rss_bytes}, runtime {name, version,
                providers, warnings}, gates {gate: {limit, value, passed}}, passed}]
                                                        one entry per artifact and device; a value a device
                                                        could not measure (adb: accuracy) is null
    gates {max_accuracy_drop, max_p50_ms, max_bytes, require},
    best {device: artifact name or null}, passed
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

from edgepress import files
from edgepress.errors import GateFailed

SCHEMA_VERSION = 1
GATE_NAMES = ("max_accuracy_drop", "max_p50_ms", "max_bytes")


def apply_gates(artifact: dict, gates: dict, memory_budget_mb: float | None = None) -> None:
    """Record in `artifact` each gate's limit, measured value and verdict, and whether all passed.

    A value the device could not measure (adb's benchmark_model scores no accuracy) fails its gate:
    a gate only passes on a measured number. A device's memory budget is a gate on that device.
    """
    peak = artifact["memory"].get("peak_rss_bytes")
    values = {
        "max_accuracy_drop": artifact["metrics"]["accuracy_drop"],
        "max_p50_ms": artifact["latency"]["p50"],
        "max_bytes": artifact["bytes"],
        "max_memory_mb": None if peak is None else peak / 2**20,
    }
    limits = dict(gates, max_memory_mb=memory_budget_mb)
    artifact["gates"] = {
        name: {"limit": limits[name], "value": values[name],
               "passed": values[name] is not None and values[name] <= limits[name]}
        for name in (*GATE_NAMES, "max_memory_mb")
        if limits.get(name) is not None
    }
    artifact["passed"] = all(g["passed"] for g in artifact["gates"].values())


def choose_best(artifacts: list[dict]) -> dict[str, str | None]:
    """Per device, the fastest artifact (p50) among those that meet every gate; ties go to the smaller file."""
    best: dict[str, str | None] = {}
    for device in dict.fromkeys(a["device"] for a in artifacts):
        passing = [a for a in artifacts if a["device"] == device and a["passed"]]
        speed = [a for a in passing if a["latency"]["p50"] is not None]
        best[device] = min(speed, key=lambda a: (a["latency"]["p50"], a["bytes"]))["name"] if speed else None
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
        """Raise GateFailed, naming each gate that failed (with the artifacts that failed it) and each failed device."""
        if self.passed:
            return
        failing: dict[str, list[str]] = {}
        for a in self.artifacts:
            for name, gate in a["gates"].items():
                if not gate["passed"]:
                    value = "not measured" if gate["value"] is None else _gate_value(name, gate["value"])
                    failing.setdefault(name, []).append(f"{a['name']} on {a['device']} ({value})")
        lines = [
            f"gate {name} <= {_gate_value(name, self._limit(name))} failed for: {', '.join(who)}"
            for name, who in failing.items()
        ]
        lines += [f"device {name} failed: {d['error']}" for name, d in self.results["devices"].items() if d["error"]]
        what = {"any": "not every device has an artifact that meets every gate",
                "all": "not every artifact meets every gate"}[self.results["gates"]["require"]]
        raise GateFailed(f"{what}:\n  " + "\n  ".join(lines))

    def _limit(self, gate: str) -> float:
        return next(a["gates"][gate]["limit"] for a in self.artifacts if gate in a["gates"])

    # -- the table every view shows -------------------------------------------------------------

    COLUMNS = (
        "device", "artifact", "format", "precision", "runtime", "bytes", "gzip bytes", "size vs fp32", "accuracy",
        "drop", "agreement", "p50 ms", "p90 ms", "speed-up vs fp32", "gates",
    )

    def table(self) -> list[dict[str, str]]:
        """One row per artifact and device, formatted; size and speed are relative to the fp32 of the same
        format on the same device."""
        fp32 = {(a["device"], a["format"]): a for a in self.artifacts if a["precision"] == "fp32"}
        best = {(device, name) for device, name in self.results["best"].items()}
        order = {device: i for i, device in enumerate(self.results["devices"])}
        rows = []
        for a in sorted(self.artifacts, key=lambda a: order.get(a["device"], len(order))):  # grouped by device
            base = fp32.get((a["device"], a["format"]))
            drop = a["metrics"]["accuracy_drop"]
            p50, base_p50 = a["latency"]["p50"], base and base["latency"]["p50"]
            runtime = a["runtime"]
            rows.append(
                {
                    "device": a["device"],
                    "artifact": a["name"] + (" ★ best" if (a["device"], a["name"]) in best else ""),
                    "format": a["format"],
                    "precision": a["precision"],
                    "runtime": " ".join([runtime["name"], *runtime["providers"][:1]]),
                    "bytes": f"{a['bytes']:,}",
                    "gzip bytes": f"{a['gzip_bytes']:,}",
                    "size vs fp32": f"{a['bytes'] / base['bytes']:.2f}x" if base else "-",
                    "accuracy": _or_dash(a["metrics"]["accuracy"], "{:.2%}"),
                    "drop": _or_dash(None if drop is None else drop * 100, "{:+.2f} pt"),
                    "agreement": _or_dash(a["metrics"]["agreement"], "{:.2%}"),
                    "p50 ms": _or_dash(p50, "{:.3f}"),
                    "p90 ms": _or_dash(a["latency"]["p90"], "{:.3f}"),
                    "speed-up vs fp32": f"{base_p50 / p50:.2f}x" if base_p50 and p50 else "-",
                    "gates": ("pass" if a["passed"] else "FAIL") if a["gates"] else "-",
                }
            )
        return rows

    def warnings(self) -> list[str]:
        """What a reader must know to trust the numbers: runtime fallbacks, failed devices."""
        notes = [f"{a['name']} on {a['device']}: {w}" for a in self.artifacts for w in a["runtime"]["warnings"]]
        notes += [f"device {name} failed: {d['error']}" for name, d in self.results["devices"].items() if d["error"]]
        return notes

    def summary(self) -> str:
        src = self.results["source"]
        return (
            f"source model {src['model']}: {src['params']:,} parameters, accuracy "
            f"{src['metrics']['accuracy']:.2%} on {self.results['data']['test_samples']} test samples "
            f"({self.results['data']['dataset']})"
        )

    def to_markdown(self) -> str:
        rows = self.table()
        lines = [
            f"# edgepress report: {self.results['recipe']['name']}",
            "",
            self.summary() + ".",
            "",
            "Stages: " + ", ".join(_stage(m) for m in self.results["models"]) + ".",
            "",
            "| " + " | ".join(self.COLUMNS) + " |",
            "|" + "---|" * len(self.COLUMNS),
        ]
        lines += ["| " + " | ".join(r[c] for c in self.COLUMNS) + " |" for r in rows]
        lines += ["", self.verdict(), ""]
        if self.warnings():
            lines += ["Warnings:", ""] + [f"- {w}" for w in self.warnings()] + [""]
        env = self.results["environment"]
        lines.append("Measured on " + ", ".join(f"{k} {v}" for k, v in env.items()) + ".")
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.COLUMNS)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(r[c])}</td>" for c in self.COLUMNS) + "</tr>" for r in self.table()
        )
        title = html.escape(self.results["recipe"]["name"])
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>edgepress: {title}</title>"
            "<style>body{font-family:sans-serif}td,th{padding:4px 8px;border-bottom:1px solid #ddd;"
            "text-align:right}</style></head><body>"
            f"<h1>edgepress report: {title}</h1><p>{html.escape(self.summary())}</p>"
            f"<table><tr>{head}</tr>{body}</table><p>{html.escape(self.verdict())}</p>"
            + "".join(f"<p>warning: {html.escape(w)}</p>" for w in self.warnings())
            + "<img src='plots/size_latency.png' alt='size vs latency'></body></html>\n"
        )

    def verdict(self) -> str:
        gates = {k: v for k, v in self.results["gates"].items() if k in GATE_NAMES and v is not None}
        limits = ", ".join(f"{k} <= {_gate_value(k, v)}" for k, v in gates.items()) or "no gates set"
        verdict = "PASSED" if self.passed else "FAILED"
        best = "; ".join(f"on {device}: {name or 'none'}" for device, name in self.results["best"].items())
        return (f"Gates ({limits}, require {self.results['gates']['require']}): {verdict}. "
                f"Recommended (fastest within the gates) {best}.")

    # -- files ---------------------------------------------------------------------------------

    def save(self, run_dir: str | Path) -> None:
        """Write results.json, report.md, report.html and plots/size_latency.png into `run_dir`."""
        run_dir = Path(run_dir)
        self.run_dir = run_dir
        files.write_text(run_dir / "results.json", json.dumps(self.results, indent=2) + "\n")
        files.write_text(run_dir / "report.md", self.to_markdown())
        files.write_text(run_dir / "report.html", self.to_html())
        self._plot(run_dir / "plots" / "size_latency.png")

    @classmethod
    def load(cls, run_dir: str | Path) -> Report:
        run_dir = Path(run_dir)
        return cls(json.loads((run_dir / "results.json").read_text()), run_dir)

    def _plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for a in self.artifacts:
            if a["latency"]["p50"] is None:
                continue
            ax.scatter(a["bytes"] / 1024, a["latency"]["p50"], marker="o" if a["format"] == "tflite" else "s")
            label = f"{a['format']} {a['precision']}" + (f" @{a['device']}" if len(self.results["devices"]) > 1 else "")
            ax.annotate(label, (a["bytes"] / 1024, a["latency"]["p50"]), fontsize=8)
        ax.set_xlabel("file size (KiB)")
        ax.set_ylabel("p50 latency at batch 1 (ms)")
        ax.set_title(f"{self.results['recipe']['name']}: size vs latency")
        ax.grid(alpha=0.3)
        with files.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        plt.close(fig)


def _or_dash(value: float | None, template: str) -> str:
    return "-" if value is None else template.format(value)


def _gate_value(name: str, value: float) -> str:
    if name == "max_accuracy_drop":
        return f"{value * 100:.2f} pt"
    if name == "max_p50_ms":
        return f"{value:.3f} ms"
    if name == "max_memory_mb":
        return f"{value:.1f} MiB"
    return f"{value:,} bytes"


def _stage(model: dict) -> str:
    """One model of the run: accuracy, size, work and sparsity (results from before MACs show without them)."""
    sizes = [f"{model['params']:,} params"]
    if model.get("macs") is not None:
        sizes.append(f"{model['macs']:,} MACs")
    sizes.append(f"{model['sparsity']:.0%} sparse")
    return f"{model['stage']} {model['accuracy']:.2%} ({', '.join(sizes)})"
