"""Every model family's full recipe, run and measured on this machine: the README's "Model families" table.

    .venv/bin/python benchmarks/families.py        # about 15-25 minutes on 2 cores

Runs each recipe below as `edgepress run recipes/<name>.yaml` would (real MNIST from
../shared/data/mnist, Python's own standard library for the language model), then writes:
- the "## model families" section of benchmarks/RESULTS.md (other sections are kept), and
- the same table into README.md, between its `<!-- families -->` and `<!-- /families -->` lines.
Every number comes from the runs; nothing is typed in.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

import edgepress  # noqa: E402, I001  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from compression import write_section  # noqa: E402, I001  (benchmarks/compression.py, beside this script)

FAMILIES = {  # recipe -> what the table calls it
    "mnist_mlp": "MLP 784-64-64-10 (distilled, pruned)",
    "mnist_mlp_qat": "MLP 784-64-64-10 (pruned, QAT)",
    "mnist_lstm": "LSTM, MNIST row by row",
    "python_char_gru": "GRU character LM, Python stdlib",
    "mnist_raw_module": "raw tf.Module (SavedModel)",
    "mnist_torch_cnn": "PyTorch CNN 3x32x32 (torch.export: litert-torch, torch.onnx)",
}
README_MARKERS = ("<!-- families -->", "<!-- /families -->")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(REPO / "runs" / "bench-families"), help="where the runs are written")
    parser.add_argument("--only", nargs="*", default=list(FAMILIES), help="recipes to run (default: all)")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--readme", default=str(REPO / "README.md"), help="README to put the table in ('' for none)")
    args = parser.parse_args()
    started = time.perf_counter()

    rows = []
    for name in args.only:
        say(f"running recipes/{name}.yaml")
        recipe = edgepress.Recipe.from_yaml(REPO / "recipes" / f"{name}.yaml")
        report = edgepress.run(recipe, Path(args.work) / name, progress=_log(name))
        rows.append(row(name, report))
    table = render(rows)
    minutes = (time.perf_counter() - started) / 60
    section = (
        "## model families\n\n"
        f"`benchmarks/families.py`, {dt.date.today().isoformat()}, {minutes:.0f} minutes. Each family's full recipe "
        "(`recipes/<name>.yaml`) on this machine: LiteRT / onnxruntime, batch 1, one thread.\n\n" + table
    )
    write_section(Path(args.results), "model families", section)
    if args.readme:
        put_in_readme(Path(args.readme), table)
    print(section)


def row(name: str, report) -> dict:
    """One table row from a run's results: the smallest artifact within the gates, and the fastest."""
    results = report.results
    source = results["source"]
    within = [a for a in report.artifacts if a["passed"]] or report.artifacts
    smallest = min(within, key=lambda a: a["bytes"])
    fastest = min(within, key=lambda a: a["latency"]["p50"])
    return {
        "family": f"{FAMILIES.get(name, name)} (`{name}`)",
        "steps": ", ".join(m["stage"] for m in results["models"][1:]) or "none",
        "artifacts": ", ".join(f"{a['format']} {a['precision']}" for a in report.artifacts),
        "float": _scores(source["metrics"]),
        "smallest": f"{smallest['format']} {smallest['precision']}: {_scores(smallest['metrics'])}",
        # The float source's weights (4 bytes each) against the file that delivers them.
        "ratio": f"{4 * source['params'] / smallest['bytes']:.1f}x",
        "p50": f"{smallest['latency']['p50']:.3f} ms",
        "fastest": f"{fastest['format']} {fastest['precision']}: {fastest['latency']['p50']:.3f} ms",
        "passed": "yes" if results["passed"] else "no",
    }


def render(rows: list[dict]) -> str:
    header = ["model (recipe)", "steps", "artifacts", "float accuracy", "best compressed (smallest within gates)",
              "size ratio vs float weights", "its p50", "fastest within gates", "gates"]
    keys = ["family", "steps", "artifacts", "float", "smallest", "ratio", "p50", "fastest", "passed"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r[k] for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def put_in_readme(path: Path, table: str) -> None:
    """Replace what stands between README's family markers with `table`."""
    from edgepress import files

    start, end = README_MARKERS
    text = path.read_text()
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path} has no '{start}' ... '{end}' lines to put the table between")
    files.write_text(path, pattern.sub(lambda _: f"{start}\n{table}{end}", text))


def _scores(metrics: dict) -> str:
    text = f"{metrics['accuracy']:.2%}"
    return text + (f", perplexity {metrics['perplexity']:.2f}" if metrics.get("perplexity") else "")


def _log(name: str):
    from edgepress.api import Progress

    class Log(Progress):
        def done(self, message: str) -> None:
            say(f"{name}: {message}")

    return Log()


def say(message: str) -> None:
    print(message, flush=True)


if __name__ == "__main__":
    main()
