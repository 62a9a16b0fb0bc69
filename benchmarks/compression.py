"""Hand-written tfmot flows against edgepress's best recipe, on one trained seed CNN and real MNIST.

    .venv/bin/python benchmarks/compression.py            # about 4-8 minutes on 2 cores

1. Trains the seed CNN once on real MNIST (../shared/data/mnist: the first 8,000 images train, the
   last 2,000 test; fixed seeds) and saves it, so every variant starts from the same model.
2. Makes the tfmot tutorial variants the way a user writes them, with tfmot and the TFLite converter
   directly: float32; full int8 post-training quantization; 50% -> 80% polynomial-decay magnitude
   pruning, stripped, dynamic-range quantized; quantization-aware training. Every contender gets the same
   training budget after the saved model, the recipe's fine-tuning epochs (E = 12): float32 and the int8 PTQ
   are of the model trained E more epochs, pruning and QAT train E epochs, so an accuracy difference comes
   from the method, not from more training.
3. Runs edgepress's recipe recipes/mnist_cnn_fast.yaml on the same saved model (`--model`).
4. Measures every .tflite file the same way, with LiteRT at batch 1 with 1 and 2 threads (edgepress's
   on-device runner in a subprocess), interleaved over several rounds so that load from other
   processes falls on every variant alike; it reports the median over rounds of each round's p50 / p90.
5. Writes the "## compression" section of benchmarks/RESULTS.md (other sections are kept).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import math
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

import edgepress  # noqa: E402  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from edgepress import files  # noqa: E402

SEED = 0
TRAIN_EPOCHS = 5  # the seed CNN, as recipes/mnist_cnn.yaml trains it
BATCH = 128
CALIBRATION = 200  # training images that calibrate full-int8 quantization (as the recipe's data section)
TARGETS = {"gzip_smaller": 30.0, "p50_faster": 3.0, "max_drop_pt": 0.5}
RECIPE = REPO / "recipes" / "mnist_cnn_fast.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mnist"), help="MNIST idx directory")
    parser.add_argument("--work", default=str(REPO / "runs" / "bench-compression"), help="where files are written")
    parser.add_argument("--runs", type=int, default=300, help="timed runs per measurement")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args()
    started = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    data, trained = mnist_and_seed_cnn(args.data)
    model_file = work / "seed_cnn.keras"
    with files.atomic_path(model_file) as tmp:
        trained.save(tmp)

    recipe = edgepress.Recipe.from_yaml(RECIPE).with_overrides(model=str(model_file), data=args.data)
    epochs = sum(getattr(s, "fine_tune_epochs", 0) for s in recipe.steps)  # everyone's training budget
    variants = tfmot_tutorial_flows(model_file, data, work, epochs)
    variants += edgepress_recipe(recipe, work)

    say(f"measuring {len(variants)} files, {args.rounds} rounds x {args.runs} runs x 1 and 2 threads")
    measured = measure_all(variants, data, args.runs, args.warmup, args.rounds)
    section = render(measured, started)
    write_section(Path(args.results), "compression", section)
    print(section)


def mnist_and_seed_cnn(data_dir: str):
    """Every benchmark's start: real MNIST (first 8,000 images train, last 2,000 test) and the seed CNN trained
    on it with fixed seeds, as recipes/mnist_cnn.yaml trains it."""
    from edgepress.models import zoo
    from edgepress.models.datasets import load_dataset

    data = load_dataset("mnist", data_dir, train_size=8000, test_size=2000).fit_to((28, 28, 1))
    say(f"training the seed CNN on {len(data.x_train)} MNIST images ({TRAIN_EPOCHS} epochs)")
    return data, zoo.train("seed_cnn", data, epochs=TRAIN_EPOCHS, seed=SEED)


# -- (a) the tfmot tutorial flows, as a user writes them -------------------------------------------

def tfmot_tutorial_flows(model_file: Path, data, work: Path, epochs: int) -> list[dict]:
    """The tfmot guides' flows, as a user writes them with TensorFlow 2.16+ (tfmot needs Keras 2, i.e. tf_keras),
    each trained `epochs` after the saved model (float32 and PTQ: of the model trained that much longer)."""
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    x_train, y_train = data.x_train, data.y_train

    def load():
        return keras.models.load_model(model_file)

    def compile_for_training(model):
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])

    def representative_dataset():
        for image in x_train[:CALIBRATION]:
            yield [image[None].astype(np.float32)]

    variants = []

    say(f"float32: the saved model trained {epochs} more epochs")
    keras.utils.set_random_seed(SEED)
    longer = load()
    compile_for_training(longer)
    longer.fit(x_train, y_train, batch_size=BATCH, epochs=epochs, verbose=0)
    converter = tf.lite.TFLiteConverter.from_keras_model(longer)
    variants.append(save(work / "tfmot_fp32.tflite", converter.convert(), "float32 (baseline)",
                         f"the saved model trained {epochs} more epochs, TFLiteConverter, no optimization",
                         str(epochs)))

    say("tfmot flow: full int8 post-training quantization")
    converter = tf.lite.TFLiteConverter.from_keras_model(longer)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    variants.append(save(work / "tfmot_int8_ptq.tflite", converter.convert(), "full int8 PTQ",
                         f"the same {epochs}-epoch float model, representative dataset of {CALIBRATION} training "
                         "images, int8 in/out", str(epochs)))

    say("tfmot flow: magnitude pruning 50% -> 80%, strip, dynamic range")
    keras.utils.set_random_seed(SEED)
    end_step = math.ceil(len(x_train) / BATCH) * epochs
    schedule = tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.50, final_sparsity=0.80,
                                                     begin_step=0, end_step=end_step)
    pruning = tfmot.sparsity.keras.prune_low_magnitude(load(), pruning_schedule=schedule)
    compile_for_training(pruning)
    pruning.fit(x_train, y_train, batch_size=BATCH, epochs=epochs, verbose=0,
                callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    stripped = tfmot.sparsity.keras.strip_pruning(pruning)
    converter = tf.lite.TFLiteConverter.from_keras_model(stripped)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    variants.append(save(work / "tfmot_pruned80_dynamic.tflite", converter.convert(),
                         "80% magnitude pruning + dynamic range",
                         f"prune_low_magnitude PolynomialDecay 0.5 -> 0.8 over {epochs} epochs, strip_pruning, "
                         "Optimize.DEFAULT", str(epochs)))

    say("tfmot flow: quantization-aware training")
    keras.utils.set_random_seed(SEED)
    aware = tfmot.quantization.keras.quantize_model(load())
    compile_for_training(aware)
    aware.fit(x_train, y_train, batch_size=BATCH, epochs=epochs, verbose=0)
    converter = tf.lite.TFLiteConverter.from_keras_model(aware)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    variants.append(save(work / "tfmot_qat.tflite", converter.convert(), "QAT (int8)",
                         f"quantize_model, {epochs} epochs, Optimize.DEFAULT (float in/out)", str(epochs)))
    return variants


def save(path: Path, data: bytes, name: str, how: str, epochs: str) -> dict:
    files.write_bytes(path, data)
    return {"name": name, "how": how, "path": path, "epochs": epochs, "by": "tfmot"}


# -- (b) edgepress's recipe ------------------------------------------------------------------------

def edgepress_recipe(recipe, work: Path) -> list[dict]:
    say(f"edgepress: {RECIPE.relative_to(REPO)} on the same trained model")
    report = edgepress.run(recipe, work / "mnist_cnn_fast", _log())
    steps = ", ".join(_describe_step(s) for s in recipe.steps)
    epochs = str(sum(getattr(s, "fine_tune_epochs", 0) for s in recipe.steps))
    stages = " -> ".join(f"{m['stage']} {m['params']:,} params / {m['macs']:,} MACs"
                         for m in report.results["models"] if "macs" in m)
    variants, seen = [], set()
    for a in report.artifacts:
        if a["path"] in seen:  # one row per artifact, whatever the number of devices it was measured on
            continue
        seen.add(a["path"])
        variants.append({"name": f"edgepress {a['format']} {a['precision']}", "path": Path(a["path"]),
                         "how": f"{steps}; export {a['precision']}", "epochs": epochs, "by": "edgepress",
                         "stages": stages})
    return variants


def _describe_step(step) -> str:
    shown = step.model_dump(exclude={"type", "batch_size", "learning_rate"}, exclude_none=True)
    if shown.get("schedule") == "oneshot":
        shown.pop("rounds", None)  # used by the gradual schedule only
    return f"{step.type}(" + ", ".join(f"{k}={v}" for k, v in shown.items()) + ")"


def _log():
    from edgepress.api import Progress

    class Log(Progress):
        def done(self, message: str) -> None:
            say(f"  {message}")

    return Log()


# -- measurement -----------------------------------------------------------------------------------

def measure_all(variants: list[dict], data, runs: int, warmup: int, rounds: int) -> list[dict]:
    from edgepress.deploy import measure

    samples: dict[tuple[int, int], list[dict]] = {}
    accuracy: dict[int, float] = {}
    for _ in range(rounds):
        for i, v in enumerate(variants):
            for threads in (1, 2):
                result = measure(v["path"], (data.x_test, data.y_test), runs=runs, warmup=warmup, threads=threads)
                samples.setdefault((i, threads), []).append(result["latency_ms"])
                accuracy[i] = result["accuracy"]
    rows = []
    for i, v in enumerate(variants):
        blob = v["path"].read_bytes()
        row = dict(v, accuracy=accuracy[i], bytes=len(blob),
                   gzip_bytes=len(gzip.compress(blob, compresslevel=9, mtime=0)))
        for threads in (1, 2):
            for stat in ("p50", "p90"):
                row[f"{stat}_{threads}t_ms"] = statistics.median(s[stat] for s in samples[(i, threads)])
        rows.append(row)
    return rows


# -- RESULTS.md ------------------------------------------------------------------------------------

def render(rows: list[dict], started: float) -> str:
    from edgepress.api import environment

    base = rows[0]  # the float32 TFLite model of the trained seed CNN
    env = environment()
    lines = [
        "## compression",
        "",
        f"Made by `benchmarks/compression.py` on {dt.date.today().isoformat()} "
        f"({(time.perf_counter() - started) / 60:.1f} min). Seed CNN trained once ({TRAIN_EPOCHS} epochs, seed "
        f"{SEED}) on the first 8,000 images of MNIST's test file, tested on the last 2,000; every variant starts "
        "from that saved model and gets the same training budget after it (last column). Latency: LiteRT, "
        "batch 1, median over interleaved rounds of each round's p50 / p90. "
        "Ratios are to the float32 TFLite model (first row).",
        "",
        "| variant | accuracy | vs fp32 | .tflite bytes | gzip bytes | gzip x smaller | p50 1 thread | p90 1 thread "
        "| p50 2 threads | p90 2 threads | p50 speed-up 1 / 2 threads | training epochs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['accuracy']:.2%} | {(r['accuracy'] - base['accuracy']) * 100:+.2f} pt "
            f"| {r['bytes']:,} | {r['gzip_bytes']:,} | {base['gzip_bytes'] / r['gzip_bytes']:.1f}x "
            f"| {_us(r['p50_1t_ms'])} | {_us(r['p90_1t_ms'])} | {_us(r['p50_2t_ms'])} | {_us(r['p90_2t_ms'])} "
            f"| {base['p50_1t_ms'] / r['p50_1t_ms']:.2f}x / {base['p50_2t_ms'] / r['p50_2t_ms']:.2f}x "
            f"| {r['epochs']} |"
        )
    lines += ["", "How each variant was made:", ""]
    lines += [f"- {r['name']}: {r['how']}." for r in rows]
    stages = next((r["stages"] for r in rows if r.get("stages")), None)
    if stages:
        lines += [f"- edgepress models: {stages}."]
    lines += ["", "Targets for edgepress's recipe (at least 30x smaller after gzip, at least 3x lower p50, at most "
              "0.5 pt accuracy loss, all against the float32 TFLite model):", ""]
    ours = [r for r in rows if r["by"] == "edgepress"]
    lines += ["- " + _verdict(r, base, ours) for r in ours]
    note = (f"Training after the saved model ({TRAIN_EPOCHS} epochs): every variant {base['epochs']} epochs, "
            "edgepress's as fine-tuning of the pruned model, the float32 model and the tfmot flows as more training, "
            "pruning or QAT of the same model: the same budget, so a difference in accuracy is the method's.")
    lines += ["", note]
    lines += ["", "Measured on " + ", ".join(f"{k} {v}" for k, v in env.items() if v) + ".", ""]
    return "\n".join(lines)


def _verdict(row: dict, base: dict, ours: list[dict]) -> str:
    """Each target met or not; for a miss, what stands in the way, from the other measurements."""
    smaller = base["gzip_bytes"] / row["gzip_bytes"]
    faster = {t: base[f"p50_{t}t_ms"] / row[f"p50_{t}t_ms"] for t in (1, 2)}
    drop = (base["accuracy"] - row["accuracy"]) * 100
    small_ok, drop_ok = smaller >= TARGETS["gzip_smaller"], drop <= TARGETS["max_drop_pt"]
    fast_ok = {t: faster[t] >= TARGETS["p50_faster"] for t in (1, 2)}
    checks = [
        f"{smaller:.1f}x smaller ({'met' if small_ok else 'NOT met'})",
        f"p50 {faster[1]:.2f}x faster at 1 thread ({'met' if fast_ok[1] else 'NOT met'}), "
        f"{faster[2]:.2f}x at 2 threads ({'met' if fast_ok[2] else 'NOT met'})",
        f"accuracy {-drop + 0.0:+.2f} pt ({'met' if drop_ok else 'NOT met'})",
    ]
    why = []
    if not small_ok and row["name"].endswith("fp32"):
        why.append("its weights stay 4-byte floats; the quantized exports of the same model are the small ones")
    for t in (1, 2):
        fastest = min(ours, key=lambda r: r[f"p50_{t}t_ms"])
        if not fast_ok[t] and fastest is not row:
            threads = f"{t} thread{'s' if t > 1 else ''}"
            why.append(f"at {threads} the same pruned model runs in {_us(fastest[f'p50_{t}t_ms'])} as "
                       f"{fastest['name']} against {_us(row[f'p50_{t}t_ms'])} here: LiteRT's kernels for this "
                       "precision, not the MACs, set this latency")
    return f"{row['name']}: " + "; ".join(checks) + "." + (f" Why: {'; '.join(why)}." if why else "")


def _us(ms: float) -> str:
    return f"{ms * 1000:.0f} us"


def write_section(path: Path, name: str, body: str) -> None:
    """Replace section `## name` of the markdown file `path` (or add it), keeping every other section."""
    text = path.read_text() if path.exists() else "# Benchmark results\n\nWritten by the scripts in benchmarks/.\n"
    parts = re.split(r"(?m)^(?=## )", text)
    head = parts[0]
    sections = [section.rstrip("\n") + "\n\n" for section in parts[1:]]  # the last one, too, before an append
    replaced = False
    for i, section in enumerate(sections):
        if section.splitlines()[0].strip() == f"## {name}":
            sections[i] = body.rstrip("\n") + "\n\n"
            replaced = True
    if not replaced:
        sections.append(body.rstrip("\n") + "\n\n")
    files.write_text(path, (head.rstrip("\n") + "\n\n" + "".join(sections)).rstrip("\n") + "\n")


def say(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", flush=True)


if __name__ == "__main__":
    main()
