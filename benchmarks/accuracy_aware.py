"""Accuracy-aware int8 quantization on real MNIST: a seed CNN whose 64-unit Dense layer has activation outliers.

    .venv/bin/python benchmarks/accuracy_aware.py          # about 3-5 minutes on 2 cores

1. Trains the seed CNN on real MNIST (../shared/data/mnist: the first 8,000 images of the test file
   train, the last 2,000 test; fixed seeds), then gives its 64-unit Dense layer two huge activation
   channels without changing what the model computes: those units are scaled by 500 and the logits
   weights that read them divided by 500 (ReLU is positively homogeneous). Such outliers are what
   breaks per-tensor int8 activation quantization in real models.
2. Runs one edgepress recipe on the saved model: fp32 and accuracy-aware int8 exports
   (`quantize: {precision: int8, max_accuracy_drop: 0.5%}`) for TFLite and ONNX, each artifact measured
   by edgepress's runner on this machine (LiteRT / onnxruntime, batch 1, 1 thread).
3. Measures the fp32, fully quantized and final artifacts again, taking turns over a few rounds so that
   load from other processes falls on each alike, and keeps the median p50.
4. Writes the "## accuracy-aware quantization" section of benchmarks/RESULTS.md (other sections are
   kept): accuracy, size and p50 latency of the fp32, fully quantized and final artifacts, and the
   layers left in float. Every number comes from the run.
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
from compression import mnist_and_seed_cnn, write_section  # noqa: E402, I001  (benchmarks/compression.py, beside this script)

OUTLIER_UNITS = (0, 1)
OUTLIER_SCALE = 500.0
BUDGET = "0.5%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mnist"), help="MNIST idx directory")
    parser.add_argument("--work", default=str(REPO / "runs" / "bench-accuracy-aware"), help="where files are written")
    parser.add_argument("--runs", type=int, default=300, help="timed runs per artifact")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved latency rounds of the reported artifacts")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args()
    started = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    from edgepress.models import training

    data, model = mnist_and_seed_cnn(args.data)
    before = training.accuracy(training.predict(model, data.x_test), data.y_test)
    penultimate, logits = model.layers[-2], model.layers[-1]
    add_outliers(penultimate, logits)
    after = training.accuracy(training.predict(model, data.x_test), data.y_test)
    say(f"float accuracy {before:.2%}, after adding outliers to '{penultimate.name}' {after:.2%} (same function)")
    model_path = work / "seed_cnn_outliers.keras"
    model.save(model_path)

    quantize = {"precision": "int8", "max_accuracy_drop": BUDGET}
    recipe = edgepress.Recipe.from_dict({
        "name": "outliers",
        "model": {"path": str(model_path)},
        "data": {"dataset": "mnist", "path": args.data, "train_size": 8000, "test_size": 2000,
                 "calibration_samples": 200},
        "exports": [
            {"format": "tflite", "precision": "fp32"},
            {"format": "tflite", "quantize": quantize},
            {"format": "onnx", "precision": "fp32"},
            {"format": "onnx", "quantize": quantize},
        ],
        "measure": {"runs": args.runs, "warmup": 30, "threads": 1},
    })
    from edgepress.api import Progress, run

    class Log(Progress):
        def done(self, message: str) -> None:
            say(message)

    report = run(recipe, work / "run", Log())
    p50 = interleaved_p50(report, args.runs, args.rounds)
    body = section(report, penultimate.name, before, p50, args.rounds, time.perf_counter() - started)
    write_section(Path(args.results), "accuracy-aware quantization", body)
    print(body)
    say(f"wrote {args.results}; run directory {work / 'run'} (sensitivity.md has every layer and artifact)")


def add_outliers(layer, reader) -> None:
    """Scale a few units of `layer` by OUTLIER_SCALE and divide the weights of `reader` that read them by it."""
    kernel, bias = layer.get_weights()
    next_kernel, next_bias = reader.get_weights()
    for unit in OUTLIER_UNITS:
        kernel[:, unit] *= OUTLIER_SCALE
        bias[unit] *= OUTLIER_SCALE
        next_kernel[unit, :] /= OUTLIER_SCALE
    layer.set_weights([kernel, bias])
    reader.set_weights([next_kernel, next_bias])


def reported(report) -> list[tuple[dict, str, dict]]:
    """(quantize outcome, label, report row) of the fp32, fully quantized and final artifact of each format."""
    rows = {a["name"]: a for a in report.artifacts}
    picked = []
    for q in report.results["quantize"]:
        fp32 = next(a for a in report.artifacts if a["format"] == q["format"] and a["precision"] == "fp32")
        picked += [(q, "fp32", fp32), (q, "full int8", rows[q["full"]]), (q, "final", rows[q["chosen"]])]
    return picked


def interleaved_p50(report, runs: int, rounds: int) -> dict[str, float]:
    """Median over `rounds` of each reported artifact's p50 (batch 1, 1 thread), the artifacts taking turns
    in every round so that load from other processes on this shared machine falls on each alike."""
    import statistics

    from edgepress.deploy import measure

    p50s: dict[str, list[float]] = {}
    for i in range(rounds):
        say(f"latency round {i + 1}/{rounds}")
        for _, _, row in reported(report):
            result = measure(row["path"], None, runs=runs, warmup=30, threads=1)
            p50s.setdefault(row["name"], []).append(result["latency_ms"]["p50"])
    return {name: statistics.median(values) for name, values in p50s.items()}


def section(report, outlier_layer: str, trained_accuracy: float, p50: dict[str, float], rounds: int,
            seconds: float) -> str:
    """The RESULTS.md section: per format, the fp32, fully quantized and final artifacts, measured."""
    env, runs = report.results["environment"], report.results["recipe"]["measure"]["runs"]
    lines = [
        "## accuracy-aware quantization",
        "",
        f"Written by `benchmarks/accuracy_aware.py` on {dt.date.today():%Y-%m-%d} ({seconds / 60:.1f} min). "
        f"The seed CNN trained on real MNIST (8,000 images; test: the last 2,000) reaches {trained_accuracy:.2%}; "
        f"its 64-unit Dense layer `{outlier_layer}` then gets {len(OUTLIER_UNITS)} activation channels scaled by "
        f"{OUTLIER_SCALE:g} (the weights reading them divided by it, so the float model is unchanged). Recipe: "
        f"fp32 and `quantize: {{precision: int8, max_accuracy_drop: {BUDGET}}}` exports for TFLite and ONNX, "
        f"calibrated on 200 images. p50: median over {rounds} interleaved rounds of {runs} timed runs at batch 1, "
        "1 thread, on this shared 2-core machine.",
        "",
        "| format | artifact | layers in float | accuracy | drop vs float | bytes | gzip bytes | p50 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for q, label, row in reported(report):
        floats, accuracy = row.get("float_layers", []), row["metrics"]["accuracy"]
        kept = "all" if label == "fp32" else f"{len(floats)}" + (f": {', '.join(r['layer'] for r in floats)}"
                                                                 if floats else "")
        lines.append(
            f"| {q['format']} | {label}: {row['name']} | {kept} | "
            f"{accuracy:.2%} | {(q['float_accuracy'] - accuracy) * 100:+.2f} pt | "
            f"{row['bytes']:,} | {row['gzip_bytes']:,} | {p50[row['name']]:.3f} |"
        )
        if label != "final":
            continue
        ranked = ", ".join(f"{s['layer']} {s['error']:.3g}" for s in q["sensitivity"][:3])
        needed = "; ".join(f"{r['layer']} back in int8: {r['accuracy_if_int8']:.2%}"
                           for r in floats if r["accuracy_if_int8"] is not None)
        notes.append(f"- {q['summary']} {len(q['trials'])} artifacts tried ({q['search']} search); most sensitive "
                     f"layers (error in units of a typical activation): {ranked}."
                     + (f" Each float layer is needed ({needed})." if needed else ""))
    lines += ["", *notes, ""]
    lines.append(
        "Measured with " + ", ".join(f"{k} {env[k]}" for k in ("tensorflow", "ai-edge-litert", "onnxruntime",
                                                                "tf2onnx", "cpu")) + "."
    )
    return "\n".join(lines) + "\n"


def say(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", flush=True)


if __name__ == "__main__":
    main()
