"""`Report`: the measured artifacts of a run, their gates, and the files that show them.

`results.json` holds everything (shape below, `schema_version` 1); `report.md` and `report.html`
show one row per artifact; `check()` raises `GateFailed` naming each failing gate.

results.json, schema_version 1:
    schema_version, edgepress_version, created, recipe (resolved), environment (versions, CPU),
    data {dataset, train_samples, test_samples, calibration_samples},
    source {model, params, metrics {accuracy}},
    models [{stage, accuracy, params, sparsity}]        the source, then the model after each step
    artifacts [{name, format, precision, path, bytes, gzip_bytes, sha256, steps, check,
                metrics {accuracy, accuracy_drop, agreement},
                latency {unit: "ms", p50, p90, p99, mean, std, min, max, runs, warmup, threads, batch},
                load_ms, memory {baseline_rss_bytes, peak_rss_bytes, model_rss_bytes}, runtime,
                gates {gate: {limit, value, passed}}, passed}]
    gates {max_accuracy_drop, max_p50_ms, max_bytes, require}, best (artifact name or null), passed
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


def apply_gates(artifact: dict, gates: dict) -> None:
    """Record in `artifact` each gate's limit, measured value and verdict, and whether all passed."""
    values = {
        "max_accuracy_drop": artifact["metrics"]["accuracy_drop"],
        "max_p50_ms": artifact["latency"]["p50"],
        "max_bytes": artifact["bytes"],
    }
    artifact["gates"] = {
        name: {"limit": gates[name], "value": values[name], "passed": values[name] <= gates[name]}
        for name in GATE_NAMES
        if gates.get(name) is not None
    }
    artifact["passed"] = all(g["passed"] for g in artifact["gates"].values())


def choose_best(artifacts: list[dict]) -> str | None:
    """The fastest artifact (p50) among those that meet every gate; ties go to the smaller file."""
    passing = [a for a in artifacts if a["passed"]]
    if not passing:
        return None
    return min(passing, key=lambda a: (a["latency"]["p50"], a["bytes"]))["name"]


@dataclass
class Report:
    """A run's results (the content of results.json) and the directory they were written to."""

    results: dict
    run_dir: Path | None = None

    @property
    def artifacts(self) -> list[dict]:
        return self.results["artifacts"]

    @property
    def best(self) -> dict | None:
        return next((a for a in self.artifacts if a["name"] == self.results.get("best")), None)

    @property
    def passed(self) -> bool:
        return self.results["passed"]

    def check(self) -> None:
        """Raise GateFailed, naming each gate that failed and the artifacts that failed it."""
        if self.passed:
            return
        failing: dict[str, list[str]] = {}
        for a in self.artifacts:
            for name, gate in a["gates"].items():
                if not gate["passed"]:
                    failing.setdefault(name, []).append(f"{a['name']} ({_gate_value(name, gate['value'])})")
        require = self.results["gates"]["require"]
        lines = [
            f"gate {name} <= {_gate_value(name, self.results['gates'][name])} failed for: {', '.join(who)}"
            for name, who in failing.items()
        ]
        what = "no artifact meets every gate" if require == "any" else "not every artifact meets every gate"
        raise GateFailed(f"{what}:\n  " + "\n  ".join(lines))

    # -- the table every view shows -------------------------------------------------------------

    COLUMNS = (
        "artifact", "format", "precision", "bytes", "gzip bytes", "size vs fp32", "accuracy", "drop",
        "agreement", "p50 ms", "p90 ms", "speed-up vs fp32", "gates",
    )

    def table(self) -> list[dict[str, str]]:
        """One row per artifact, formatted; size and speed are relative to the fp32 of the same format."""
        fp32 = {a["format"]: a for a in self.artifacts if a["precision"] == "fp32"}
        rows = []
        for a in self.artifacts:
            base = fp32.get(a["format"])
            best = a["name"] == self.results.get("best")
            rows.append(
                {
                    "artifact": a["name"] + (" ★ best" if best else ""),
                    "format": a["format"],
                    "precision": a["precision"],
                    "bytes": f"{a['bytes']:,}",
                    "gzip bytes": f"{a['gzip_bytes']:,}",
                    "size vs fp32": f"{a['bytes'] / base['bytes']:.2f}x" if base else "-",
                    "accuracy": f"{a['metrics']['accuracy']:.2%}",
                    "drop": f"{a['metrics']['accuracy_drop'] * 100:+.2f} pt",
                    "agreement": f"{a['metrics']['agreement']:.2%}",
                    "p50 ms": f"{a['latency']['p50']:.3f}",
                    "p90 ms": f"{a['latency']['p90']:.3f}",
                    "speed-up vs fp32": f"{base['latency']['p50'] / a['latency']['p50']:.2f}x" if base else "-",
                    "gates": ("pass" if a["passed"] else "FAIL") if a["gates"] else "-",
                }
            )
        return rows

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
            "Stages: " + ", ".join(f"{m['stage']} {m['accuracy']:.2%}" for m in self.results["models"]) + ".",
            "",
            "| " + " | ".join(self.COLUMNS) + " |",
            "|" + "---|" * len(self.COLUMNS),
        ]
        lines += ["| " + " | ".join(r[c] for c in self.COLUMNS) + " |" for r in rows]
        lines += ["", self.verdict(), ""]
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
            "<img src='plots/size_latency.png' alt='size vs latency'></body></html>\n"
        )

    def verdict(self) -> str:
        gates = {k: v for k, v in self.results["gates"].items() if k in GATE_NAMES and v is not None}
        if not gates:
            return "No gates set."
        limits = ", ".join(f"{k} <= {_gate_value(k, v)}" for k, v in gates.items())
        best = self.results.get("best")
        verdict = "PASSED" if self.passed else "FAILED"
        return f"Gates ({limits}, require {self.results['gates']['require']}): {verdict}." + (
            f" Best artifact within the gates: {best}." if best else ""
        )

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
            ax.scatter(a["bytes"] / 1024, a["latency"]["p50"], marker="o" if a["format"] == "tflite" else "s")
            ax.annotate(f"{a['format']} {a['precision']}", (a["bytes"] / 1024, a["latency"]["p50"]), fontsize=8)
        ax.set_xlabel("file size (KiB)")
        ax.set_ylabel("p50 latency at batch 1 (ms)")
        ax.set_title(f"{self.results['recipe']['name']}: size vs latency")
        ax.grid(alpha=0.3)
        with files.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        plt.close(fig)


def _gate_value(name: str, value: float) -> str:
    if name == "max_accuracy_drop":
        return f"{value * 100:.2f} pt"
    if name == "max_p50_ms":
        return f"{value:.3f} ms"
    return f"{value:,} bytes"
