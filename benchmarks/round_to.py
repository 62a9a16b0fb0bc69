"""Channel rounding: does structured pruning with `round_to: 8` keep every runtime faster when MACs drop?

    .venv/bin/python benchmarks/round_to.py                 # about 15-30 minutes on 2 cores
    .venv/bin/python benchmarks/round_to.py --tiny          # a minute: proves the script runs, numbers mean nothing

1. Trains the zoo's MobileNetV2 (keras.applications, alpha 0.35, weights=None, 32x32x3) on real MNIST
   (../shared/data/mnist: the first 8,000 images of the test file train, the last 2,000 test; each
   gray image resized to 32x32 and repeated to RGB), fixed seeds, and saves it.
2. Runs three edgepress recipes on the saved model, each exporting TFLite fp32 and ONNX fp32 and
   measuring them on x86-host: the float model; `structured_prune` ratio 0.3; the same with
   `round_to: 8` (x86-host's channel_multiple). The pruned variants get the same fine-tuning.
3. Measures the six artifacts again, taking turns over a few rounds (batch 1, 1 thread) so load from
   other processes falls on each alike, and keeps the median p50.
4. Prints a table: MACs, parameters, how many pruned layers have a channel count that is not a multiple
   of 8, accuracy, and p50 of TFLite and ONNX with the ratio to the float model. With --write-results it
   also writes the "## channel rounding" section of benchmarks/RESULTS.md (other sections are kept).

The issue's observation to check: without rounding, ratio 0.3 cut TFLite p50 but made onnxruntime fp32
about 2x slower (channel counts like 22, 67, 101); with rounding no runtime should get slower.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

import edgepress  # noqa: E402, I001  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

RATIO = 0.3
MULTIPLE = 8
SEED = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mnist"), help="MNIST idx directory")
    parser.add_argument("--work", default=str(REPO / "runs" / "bench-round-to"), help="where files are written")
    parser.add_argument("--train-size", type=int, default=8000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=20, help="training epochs of the float model")
    parser.add_argument("--fine-tune-epochs", type=int, default=3, help="fine-tuning epochs after pruning")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per artifact and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved latency rounds")
    parser.add_argument("--tiny", action="store_true", help="a quick check that it runs (1 epoch, few samples)")
    parser.add_argument("--write-results", action="store_true", help="write the section of --results")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args()
    if args.tiny:
        args.train_size, args.test_size, args.epochs, args.fine_tune_epochs = 256, 64, 1, 1
        args.runs, args.rounds = 5, 1
    started = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    from edgepress.compress.structured_prune import StructuredPruneConfig, plan
    from edgepress.models import zoo
    from edgepress.models.datasets import load_dataset

    data = load_dataset("mnist", args.data, train_size=args.train_size, test_size=args.test_size)
    fitted = data.fit_to(zoo.ZOO["mobilenet_v2"].input_shape)
    say(f"training MobileNetV2 (alpha 0.35, 32x32x3) on {len(fitted.x_train)} MNIST images ({args.epochs} epochs)")
    model = zoo.train("mobilenet_v2", data, epochs=args.epochs, seed=SEED)
    model_path = work / "mobilenet_v2.keras"
    model.save(model_path)

    prune = {"type": "structured_prune", "ratio": RATIO, "fine_tune_epochs": args.fine_tune_epochs}
    variants = [
        ("float", []),
        (f"structured_prune {RATIO}", [prune]),
        (f"structured_prune {RATIO}, round_to {MULTIPLE}", [{**prune, "round_to": MULTIPLE}]),
    ]
    rows = []
    for label, steps in variants:
        widths = plan(model, StructuredPruneConfig(**steps[0])).widths if steps else {}
        pruned = {n: after for n, (before, after) in widths.items() if after != before}
        recipe = edgepress.Recipe.from_dict({
            "name": "mnv2" if not steps else ("mnv2_pruned" if "round_to" not in steps[0] else "mnv2_rounded"),
            "model": {"path": str(model_path)},
            "data": {"dataset": "mnist", "path": args.data, "train_size": args.train_size,
                     "test_size": args.test_size, "check_samples": min(200, args.test_size)},
            "steps": steps,
            "exports": [{"format": "tflite", "precision": "fp32"}, {"format": "onnx", "precision": "fp32"}],
            "targets": ["x86-host"],
            "measure": {"runs": args.runs, "warmup": 10, "threads": 1},
        })
        say(f"{label}: running the recipe")
        report = edgepress.run(recipe, work / recipe.name)
        stage = report.results["models"][-1]
        rows.append({
            "label": label, "macs": stage["macs"], "params": stage["params"], "accuracy": stage["accuracy"],
            "odd": sum(1 for w in pruned.values() if w % MULTIPLE), "pruned": len(pruned),
            "examples": sorted(set(pruned.values()))[:6],
            "artifacts": {a["format"]: Path(a["path"]) for a in report.artifacts},
            "artifact_accuracy": {a["format"]: a["metrics"]["accuracy"] for a in report.artifacts},
        })

    say(f"measuring the {2 * len(rows)} artifacts again, interleaved over {args.rounds} round(s)")
    p50 = _interleaved(rows, fitted, args.runs, args.rounds)
    table = render(rows, p50, time.perf_counter() - started, args)
    print(table)
    if args.write_results:
        from compression import write_section  # noqa: I001  (benchmarks/compression.py, beside this script)

        write_section(Path(args.results), "channel rounding", table)
        say(f"wrote the 'channel rounding' section of {args.results}")


def _interleaved(rows: list[dict], data, runs: int, rounds: int) -> dict[tuple[int, str], float]:
    from edgepress.deploy import measure

    samples: dict[tuple[int, str], list[float]] = {}
    x = data.x_test[:1]
    for _ in range(rounds):
        for i, row in enumerate(rows):
            for fmt, path in row["artifacts"].items():
                result = measure(path, (x, data.y_test[:1]), runs=runs, warmup=10, threads=1)
                samples.setdefault((i, fmt), []).append(result["latency_ms"]["p50"])
    return {key: statistics.median(values) for key, values in samples.items()}


def render(rows: list[dict], p50: dict, seconds: float, args) -> str:
    base_macs = rows[0]["macs"]
    lines = [
        "## channel rounding",
        "",
        f"MobileNetV2 (alpha 0.35, 32x32x3) on MNIST (trained {args.epochs} epochs on {args.train_size:,} images, "
        f"tested on {args.test_size:,}), structured_prune {RATIO} with and without round_to {MULTIPLE} "
        f"({args.fine_tune_epochs} fine-tune epochs each); "
        "fp32 exports on x86-host, batch 1, 1 thread, median p50 over interleaved rounds. "
        f"Written by `benchmarks/round_to.py` on {dt.date.today()} in {seconds / 60:.1f} min"
        + (" (--tiny: the numbers mean nothing)." if args.tiny else "."),
        "",
        "| variant | MACs | params | pruned layers not a multiple of 8 | accuracy | TFLite p50 | ONNX p50 |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(rows):
        cells = []
        for fmt in ("tflite", "onnx"):
            ms, base = p50[(i, fmt)], p50[(0, fmt)]
            cells.append(f"{ms:.3f} ms ({base / ms:.2f}x)")
        odd = f"{row['odd']} of {row['pruned']} (e.g. {', '.join(map(str, row['examples']))})" if row["pruned"] else "-"
        lines.append(f"| {row['label']} | {row['macs'] / 1e6:.2f}M ({row['macs'] / base_macs:.2f}x) | "
                     f"{row['params']:,} | {odd} | {row['accuracy']:.2%} | {cells[0]} | {cells[1]} |")
    lines += ["", "Speed-ups in brackets are float p50 / variant p50 (above 1: faster than the float model)."]
    return "\n".join(lines) + "\n"


def say(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", flush=True)


if __name__ == "__main__":
    main()
