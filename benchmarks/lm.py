"""char_gru against char_gpt on the same Python-source windows: perplexity, time to first token, decode tokens/s,
memory and bytes of every artifact, TFLite and ONNX side by side: the "## language models" section of RESULTS.md.

    .venv/bin/python benchmarks/lm.py --jobs 2                 # the defaults below: the recipes' full budget
    .venv/bin/python benchmarks/lm.py --gpt char_gpt           # the recipe's larger char_gpt (0.4M parameters)
    .venv/bin/python benchmarks/lm.py --train-size 6000 --epochs 4   # the shorter budget of the first runs

The char_gpt is the zoo's char_gpt_small, sized so its int4 files fit under char_gru's smallest file (SIZE_NOTE
below says how). Both models get the same training budget (the same windows, epochs, batch size and learning rate)
through their recipes (recipes/python_char_gru.yaml and python_char_gpt.yaml, with the sizes given here) and are
measured on the same test windows. char_gpt's files are measured as an LM is used, through the runner's KV-cache
mode: perplexity teacher-forced through each file's prefill and decode, TTFT for the recipe's prompt, decode
tokens/s (1000 / the decode step's p50, its 95% interval), peak RSS after filling the cache. char_gru has no cache:
each next character is one invoke of the GRU on a 64-character window, so its decode tokens/s is 1000 / that
invoke's p50. Each model's files are timed together, interleaved; with --jobs the models run side by side in their
own processes (each one's timing then overlaps the others' training: load like any other on a shared machine).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import multiprocessing
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
               {"format": "onnx", "precision": "int4_weight", "block_size": 32},
               {"format": "onnx", "precision": "int4_weight", "block_size": 16}]
GRU_EXPORTS = [{"format": "tflite", "precision": "fp32", "batch_size": 1},
               {"format": "tflite", "precision": "dynamic", "batch_size": 1},
               {"format": "onnx", "precision": "fp32"}, {"format": "onnx", "precision": "int8_dynamic"}]


# Why char_gpt_small (written under the table; the byte counts are of the files' layout, not of training).
SIZE_NOTE = """\
Where a decoder's int4 bytes go, and the size: int4 is about 0.5 (TFLite, per channel) and 0.625 (ONNX, blocks of
32 with a float scale each, more where a row's length is not a multiple of 32) bytes a parameter, plus a fixed part
that grows with the blocks (TFLite pays its graph, names and scales once per signature, prefill and decode). The
zoo's char_gpt (2 blocks of width 128, 386k parameters) makes int4 files of about 300 KB and 275 KB. char_gpt_small
is sized to char_gru's smallest file (133,056 bytes) by measured bytes and chosen on a validation split of the
training windows (the last 10% of them held out; never the test windows): 1 block of width 96, a gated MLP of 288,
the output head tied to the token table, positions up to the cache's 128 (141,696 parameters). Its untrained int4
files were 125,368 bytes (TFLite) and 112,429 bytes (ONNX, block 32, before the short names below); trained ones
are larger (an untrained model's norm weights are all ones, which the TFLite converter stores once). A gated MLP of
320 measured 131,512 untrained but 133,880 trained as TFLite int4, over the line. TFLite blockwise int4 is larger
(a scale per block of 32 in each signature) and is left out (on this model LiteRT's quantizer also stops: "can only
concatenate str (not bytes) to str", not looked into). ONNX int4 in blocks of 16 (twice the scales of 32) was chosen
on windows that are neither training nor test windows (the 100 after the 20,000 training ones), where
char_gpt_small's perplexity went from 5.17 (float) to 5.48 in int4 blocks of 16, 5.64 in blocks of 32 and 6.06 as
TFLite int4 per channel; it fits because the ONNX exporter now gives inner values short names (torch.onnx writes
each value's module path where it is made and where it is used: 6.6 KB of 134 KB). Both models get the same
windows, epochs, batch size and learning rate; their trainers differ as the frameworks' do: char_gpt's (PyTorch) is
AdamW with a 5% warm-up, a cosine decay to 10% of the rate and gradient clipping at 1.0; char_gru's (Keras fit) is
Adam at a constant rate.
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


def run_one(spec: edgepress.Recipe, out: Path) -> Path:
    """One model's run (training, exports, measurement) into `out`; a function of its own for --jobs' processes."""
    edgepress.run(spec, out)
    return out


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
    """The issue's goal, read off the two runs both ways the issue's words can be read: an int4 char_gpt file with a
    lower perplexity than char_gru's best artifact (its lowest perplexity; of equal ones, the smallest file) and
    decoding at least 1,000 tokens/s, in a file no larger than that artifact (the plain reading) or no larger than
    char_gru's smallest file (the strict one)."""
    best = min(gru.artifacts, key=lambda a: (a["metrics"]["perplexity"], a["bytes"]))
    smallest = min(a["bytes"] for a in gru.artifacts)
    lines = []
    for a in gpt.artifacts:
        if a["precision"] != "int4_weight":
            continue
        speed, block = a["lm"]["decode_tokens_per_s"]["p50"], (a.get("quantization") or {}).get("block_size")
        better = a["metrics"]["perplexity"] < best["metrics"]["perplexity"] and speed >= 1000
        plain, strict = better and a["bytes"] <= best["bytes"], better and a["bytes"] <= smallest
        lines.append(f"- {name} {a['format']} int4_weight{f' block {block}' if block else ''}: perplexity "
                     f"{a['metrics']['perplexity']:.3f}, {a['bytes']:,} bytes, {speed:,.0f} tokens/s: plain reading "
                     + ("**met**" if plain else "not met") + ", strict reading " + ("**met**" if strict else "not met"))
    return (f"The goal: an int4 {name} with a lower perplexity than char_gru's best artifact ({best['format']} "
            f"{best['precision']}, {best['metrics']['perplexity']:.3f}, {best['bytes']:,} bytes), decoding at least "
            f"1,000 tokens/s at 1 thread, in a file no larger than that artifact (plain reading) or no larger than "
            f"char_gru's smallest file ({smallest:,} bytes; strict reading):\n\n" + "\n".join(lines) + "\n")


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
    parser.add_argument("--train-size", type=int, default=20000, help="training windows of 64 characters")
    parser.add_argument("--test-size", type=int, default=200, help="test windows every model and file is scored on")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--distill", action="store_true", help="also the recipe's distilled student (width 64)")
    parser.add_argument("--gpt", default="char_gpt_small", help="the zoo's char_gpts to compare, "
                        "comma-separated (char_gpt: the recipe's, 0.4M parameters)")
    parser.add_argument("--jobs", type=int, default=1, help="models run side by side in this many processes (each "
                        "trains, exports and measures its own files; their timings then overlap the others' training)")
    args = parser.parse_args()
    started, load_before = time.perf_counter(), os.getloadavg()

    gpts = args.gpt.split(",")
    runs = [("char_gru", recipe("python_char_gru", args, GRU_EXPORTS))]
    runs += [(gpt, recipe("python_char_gpt", args, GPT_EXPORTS, steps=[], zoo=gpt)) for gpt in gpts]
    if args.distill:
        runs += [(f"{gpt} → student", recipe("python_char_gpt", args, zoo=gpt)) for gpt in gpts]
    table, sources, reports = [], [], {}
    outs = [Path(args.work) / label.split()[0] / ("student" if "student" in label else "") for label, _ in runs]
    for label, _ in runs:
        say(f"{label}: training {args.epochs} epochs on {args.train_size} windows, exporting, measuring")
    if args.jobs > 1:
        context = multiprocessing.get_context("spawn")  # fresh interpreters: TensorFlow and torch do not fork well
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            done = list(pool.map(run_one, [spec for _, spec in runs], outs))
    else:
        done = [run_one(spec, out) for (_, spec), out in zip(runs, outs, strict=True)]
    for (label, _), out in zip(runs, done, strict=True):
        report = edgepress.Report.load(out)
        say(f"{label}: done")
        table += rows(label, report)
        reports[label] = report
        model = report.results["models"][-1]
        sources.append(f"{label}: {model['params']:,} parameters, perplexity {model['perplexity']:.3f} (the model "
                       "itself)")
    minutes = (time.perf_counter() - started) / 60
    load = (f"{cpu_name()}, {os.cpu_count()} cores shared with other work: load average {load_before[0]:.1f} at the "
            f"start, {os.getloadavg()[0]:.1f} at the end.")
    verdict = "\n".join(goal(reports["char_gru"], reports[gpt], gpt) for gpt in gpts)
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
