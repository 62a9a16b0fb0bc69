"""char_gru against char_gpt on the same Python-source windows: perplexity, time to first token, decode tokens/s,
memory and bytes of every artifact, TFLite and ONNX side by side: the "## language models" section of RESULTS.md.

    .venv/bin/python benchmarks/lm.py                          # the defaults below: about 30-40 minutes on 2 cores
    .venv/bin/python benchmarks/lm.py --train-size 20000 --epochs 10 --distill   # the recipes' full budget

Both models get the same training budget (the same windows, epochs, batch size and learning rate) through their
recipes (recipes/python_char_gru.yaml and python_char_gpt.yaml, with the sizes given here) and are measured on the
same test windows. char_gpt's files are measured as an LM is used, through the runner's KV-cache mode: perplexity
teacher-forced through each file's prefill and decode, TTFT for the recipe's prompt, decode tokens/s (1000 / the
decode step's p50, its 95% interval), peak RSS after filling the cache. char_gru has no cache: each next character
is one invoke of the GRU on a 64-character window, so its decode tokens/s is 1000 / that invoke's p50. Each model's
files are timed together, interleaved; the two models' runs follow each other on the same machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

import edgepress  # noqa: E402, I001  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from compression import say, write_section  # noqa: E402, I001  (benchmarks/compression.py, beside this script)

GRU_EXPORTS = [{"format": "tflite", "precision": "fp32", "batch_size": 1},
               {"format": "tflite", "precision": "dynamic", "batch_size": 1},
               {"format": "onnx", "precision": "fp32"}, {"format": "onnx", "precision": "int8_dynamic"}]


def recipe(name: str, args, exports: list | None = None, steps: list | None = None) -> edgepress.Recipe:
    """recipes/<name>.yaml with this benchmark's data, training budget and timing."""
    spec = edgepress.Recipe.from_yaml(REPO / "recipes" / f"{name}.yaml").model_dump(exclude_none=True)
    spec["model"].update(train_epochs=args.epochs, batch_size=64, learning_rate=0.003)
    spec["data"].update(train_size=args.train_size, test_size=args.test_size)
    spec["measure"] = {"runs": args.runs, "warmup": 10, "threads": 1, "max_seconds": 20, "profile": False}
    spec["gates"] = {}
    if exports is not None:
        spec["exports"] = exports
    if steps is not None:
        spec["steps"] = steps
    if "lm" in spec:
        spec["lm"]["eval_windows"] = args.test_size
    return edgepress.Recipe.model_validate(spec)


def rows(label: str, report) -> list[dict]:
    out = []
    for a in report.artifacts:
        lm = a.get("lm")
        if lm:
            speed = lm["decode_tokens_per_s"]
            decode = f"{speed['p50']:,.0f} [{speed['p50_ci'][0]:,.0f}, {speed['p50_ci'][1]:,.0f}]"
            ttft = f"{lm['ttft_ms']['p50']:.3f}"
        else:  # no cache: one invoke on a whole window per generated character
            low, high = a["latency"]["p50_ci"]
            decode = f"{1000 / a['latency']['p50']:,.0f} [{1000 / high:,.0f}, {1000 / low:,.0f}] (window invoke)"
            ttft = f"{a['latency']['p50']:.3f}"
        out.append({"model": label, "artifact": f"{a['format']} {a['precision']}",
                    "perplexity": f"{a['metrics']['perplexity']:.3f}", "TTFT ms": ttft, "decode tokens/s": decode,
                    "peak MiB": f"{a['memory']['peak_rss_bytes'] / 2**20:.1f}", "bytes": f"{a['bytes']:,}"})
    return out


def render(table: list[dict]) -> str:
    columns = list(table[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in table]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(REPO / "runs" / "bench-lm"), help="where the runs are written")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--train-size", type=int, default=6000, help="training windows of 64 characters")
    parser.add_argument("--test-size", type=int, default=200, help="test windows every model and file is scored on")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--distill", action="store_true", help="also the recipe's distilled student (width 64)")
    args = parser.parse_args()
    started = time.perf_counter()

    runs = [("char_gru", recipe("python_char_gru", args, GRU_EXPORTS)),
            ("char_gpt", recipe("python_char_gpt", args, steps=[]))]
    if args.distill:
        runs.append(("char_gpt → student", recipe("python_char_gpt", args)))
    table, sources = [], []
    for label, spec in runs:
        say(f"{label}: training {args.epochs} epochs on {args.train_size} windows, exporting, measuring")
        report = edgepress.run(spec, Path(args.work) / label.split()[0] / ("student" if "student" in label else ""))
        table += rows(label, report)
        model = report.results["models"][-1]
        sources.append(f"{label}: {model['params']:,} parameters, perplexity {model['perplexity']:.3f} (the model "
                       "itself)")
    minutes = (time.perf_counter() - started) / 60
    section = (
        "## language models\n\n"
        f"`benchmarks/lm.py`, {dt.date.today().isoformat()}, {minutes:.0f} minutes, {args.train_size:,} training "
        f"windows x {args.epochs} epochs for each model, {args.test_size} test windows of 64 characters (Python's "
        "standard library). LiteRT / onnxruntime, one thread. TTFT: a 16-token prompt through the file's prefill "
        "(char_gru: one window invoke). Decode tokens/s: 1000 / the decode step's p50 [95% interval]; char_gru has "
        "no KV cache, so each character is one invoke on a 64-character window. Peak MiB: the runner's RSS (a "
        "decoder's cache full).\n\n"
        + "\n".join(f"- {s}" for s in sources) + "\n\n" + render(table)
    )
    write_section(Path(args.results), "language models", section)
    print(section)


if __name__ == "__main__":
    main()
