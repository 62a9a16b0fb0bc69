"""char_gru against char_gpt on the same Python-source windows: perplexity, time to first token, decode tokens/s,
memory and bytes of every artifact, TFLite and ONNX side by side: the "## language models" section of RESULTS.md.

    .venv/bin/python benchmarks/lm.py                          # the defaults below (its section says how long)
    .venv/bin/python benchmarks/lm.py --gpt char_gpt           # the recipe's larger char_gpt (0.4M parameters)
    .venv/bin/python benchmarks/lm.py --train-size 20000 --epochs 10 --distill   # the recipes' full budget

The char_gpt is the zoo's char_gpt_small, sized so its int4 files fit under char_gru's smallest file (SIZE_NOTE
below says how). Both models get the same training budget (the same windows, epochs, batch size and learning rate)
through their recipes (recipes/python_char_gru.yaml and python_char_gpt.yaml, with the sizes given here) and are
measured on the same test windows. char_gpt's files are measured as an LM is used, through the runner's KV-cache
mode: perplexity teacher-forced through each file's prefill and decode, TTFT for the recipe's prompt, decode
tokens/s (1000 / the decode step's p50, its 95% interval), peak RSS after filling the cache. char_gru has no cache:
each next character is one invoke of the GRU on a 64-character window, so its decode tokens/s is 1000 / that
invoke's p50. Each model's files are timed together, interleaved; the two models' runs follow each other on the same
machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

import edgepress  # noqa: E402, I001  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from compression import say, write_section  # noqa: E402, I001  (benchmarks/compression.py, beside this script)

GPT_EXPORTS = [{"format": "tflite", "precision": "fp32"}, {"format": "tflite", "precision": "dynamic"},
               {"format": "tflite", "precision": "int4_weight"},
               {"format": "onnx", "precision": "fp32"},
               {"format": "onnx", "precision": "int4_weight", "block_size": 32}]
GRU_EXPORTS = [{"format": "tflite", "precision": "fp32", "batch_size": 1},
               {"format": "tflite", "precision": "dynamic", "batch_size": 1},
               {"format": "onnx", "precision": "fp32"}, {"format": "onnx", "precision": "int8_dynamic"}]


# Why char_gpt_small (written under the table; the byte counts are of the files' layout, not of training).
SIZE_NOTE = """\
Where a decoder's int4 bytes went, and the size: the zoo's char_gpt (width 128, 2 blocks, 386k parameters) made int4
files of 341 KB (TFLite) and 426 KB (ONNX). In the TFLite file every weight, the token and position tables included,
was already int4 (196 KB of buffers); the rest was the file's own structure, paid once per signature (prefill and
decode): 43 KB of tensor names (litert-torch writes each tensor's Python module path), 66 KB of per-channel scales
and int64 zero points, 36 KB of graph. The ONNX file kept its token and position tables float (181 KB: MatMulNBits
takes MatMul weights only). Now the TFLite exporter gives inner tensors their short module names (37 KB fewer) and
ONNX int4 writes a decoder's tables as int4 too (GatherBlockQuantized): char_gpt's int4 files become about 300 KB
and 275 KB, still above char_gru's smallest. So the model was sized to the bytes: int4 is about 0.5 (TFLite) and
0.64 (ONNX, with block scales) bytes a parameter plus a fixed 25-80 KB, which leaves about 100k parameters under 133
KB; width 64 with 2 blocks (MLP 128, positions up to the cache's 128: 102,848 parameters) makes untrained int4 files
of 126,528 bytes (TFLite, per channel) and 91,638 bytes (ONNX, block 32); TFLite blockwise int4 is larger (161,240
bytes: a scale per block of 32 in each signature) and is left out. char_gru and char_gpt_small get the same training
budget (the windows, epochs, batch size and learning rate above); nothing was tuned on the test windows.
"""


def recipe(name: str, args, exports: list | None = None, steps: list | None = None,
           zoo: str | None = None) -> edgepress.Recipe:
    """recipes/<name>.yaml with this benchmark's data, training budget and timing (and another zoo model)."""
    spec = edgepress.Recipe.from_yaml(REPO / "recipes" / f"{name}.yaml").model_dump(exclude_none=True)
    spec["model"].update(train_epochs=args.epochs, batch_size=64, learning_rate=0.003, **({"zoo": zoo} if zoo else {}))
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
        block = (a.get("quantization") or {}).get("block_size")
        artifact = f"{a['format']} {a['precision']}" + (f" block {block}" if block else "")
        out.append({"model": label, "artifact": artifact,
                    "perplexity": f"{a['metrics']['perplexity']:.3f}", "TTFT ms": ttft, "decode tokens/s": decode,
                    "peak MiB": f"{a['memory']['peak_rss_bytes'] / 2**20:.1f}", "bytes": f"{a['bytes']:,}"})
    return out


def goal(gru, gpt, name: str) -> str:
    """The issue's goal, read off the two runs: an int4 char_gpt file with a lower perplexity than char_gru's best
    artifact, no larger than char_gru's smallest file, decoding at least 1,000 tokens/s."""
    best = min(gru.artifacts, key=lambda a: a["metrics"]["perplexity"])
    smallest = min(a["bytes"] for a in gru.artifacts)
    lines = []
    for a in gpt.artifacts:
        if a["precision"] != "int4_weight":
            continue
        speed, block = a["lm"]["decode_tokens_per_s"]["p50"], (a.get("quantization") or {}).get("block_size")
        met = a["metrics"]["perplexity"] < best["metrics"]["perplexity"] and a["bytes"] <= smallest and speed >= 1000
        lines.append(f"- {name} {a['format']} int4_weight{f' block {block}' if block else ''}: perplexity "
                     f"{a['metrics']['perplexity']:.3f}, {a['bytes']:,} bytes, {speed:,.0f} tokens/s: "
                     + ("**meets it**" if met else "does not meet it"))
    return (f"The goal: an int4 char_gpt with a lower perplexity than char_gru's best artifact ({best['format']} "
            f"{best['precision']}, {best['metrics']['perplexity']:.3f}) in a file no larger than char_gru's smallest "
            f"({smallest:,} bytes), decoding at least 1,000 tokens/s at 1 thread:\n\n" + "\n".join(lines) + "\n")


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "CPU unknown"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "CPU unknown")


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
    parser.add_argument("--gpt", default="char_gpt_small", help="the zoo's char_gpt to compare (char_gpt: the "
                        "recipe's, 0.4M parameters)")
    args = parser.parse_args()
    started, load_before = time.perf_counter(), os.getloadavg()

    runs = [("char_gru", recipe("python_char_gru", args, GRU_EXPORTS)),
            (args.gpt, recipe("python_char_gpt", args, GPT_EXPORTS, steps=[], zoo=args.gpt))]
    if args.distill:
        runs.append((f"{args.gpt} → student", recipe("python_char_gpt", args, zoo=args.gpt)))
    table, sources, reports = [], [], {}
    for label, spec in runs:
        say(f"{label}: training {args.epochs} epochs on {args.train_size} windows, exporting, measuring")
        report = edgepress.run(spec, Path(args.work) / label.split()[0] / ("student" if "student" in label else ""))
        table += rows(label, report)
        reports[label] = report
        model = report.results["models"][-1]
        sources.append(f"{label}: {model['params']:,} parameters, perplexity {model['perplexity']:.3f} (the model "
                       "itself)")
    minutes = (time.perf_counter() - started) / 60
    load = (f"{cpu_name()}, {os.cpu_count()} cores shared with other work: load average {load_before[0]:.1f} at the "
            f"start, {os.getloadavg()[0]:.1f} at the end.")
    verdict = goal(reports["char_gru"], reports[args.gpt], args.gpt)
    section = (
        "## language models\n\n"
        f"`benchmarks/lm.py`, {dt.date.today().isoformat()}, {minutes:.0f} minutes, {args.train_size:,} training "
        f"windows x {args.epochs} epochs for each model, {args.test_size} test windows of 64 characters (Python's "
        "standard library). LiteRT / onnxruntime, one thread. TTFT: a 16-token prompt through the file's prefill "
        "(char_gru: one window invoke). Decode tokens/s: 1000 / the decode step's p50 [95% interval]; char_gru has "
        "no KV cache, so each character is one invoke on a 64-character window. Peak MiB: the runner's RSS (a "
        f"decoder's cache full). {load}\n\n"
        + "\n".join(f"- {s}" for s in sources) + "\n\n" + render(table) + "\n" + verdict + "\n" + SIZE_NOTE
    )
    write_section(Path(args.results), "language models", section)
    print(section)


if __name__ == "__main__":
    main()
