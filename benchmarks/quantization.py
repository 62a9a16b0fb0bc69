"""Quantization peers side by side: edgepress's accuracy-aware int8 against NNCF and Google's LiteRT quantizer.

    .venv/bin/python benchmarks/quantization.py            # about 2-5 minutes on 2 cores (first run: installs NNCF)
    .venv/bin/python benchmarks/quantization.py --tiny     # under a minute: proves it runs, the numbers mean nothing

1. Trains the seed CNN on real MNIST (benchmarks/compression.py's `mnist_and_seed_cnn`: the first 8,000 images
   of ../shared/data/mnist train, the last 2,000 test) and makes its outlier variant as
   benchmarks/accuracy_aware.py does (two units of the 64-unit Dense layer scaled by 500, the logits weights
   reading them divided by 500: the same function). Trains `residual_cnn` (the MobileNetV2 pattern, small:
   Conv-BN-ReLU6, a depthwise-separable block, an inverted residual block added to its linear stream) on the same
   images and makes its outlier variant (`add_stream_outliers`: two channels of the residual stream, both tensors
   the Add sums, scaled by 300, the layers reading the stream dividing their weights by 300: the same function).
   Every model is exported fp32 to TFLite and ONNX.
2. On each model, with the same calibration data (the first 200 training images) and the same validation data
   (the 2,000 test images), budget 0.5 pt of accuracy:
   - edgepress: `quantize_to_budget` for TFLite and ONNX (full int8, cross-layer equalization, then the fewest
     layers in float);
   - NNCF's `quantize_with_accuracy_control` on the fp32 ONNX file edgepress exported. NNCF is not a project
     dependency: the script installs it (nncf onnx onnxruntime numpy) into its own venv, runs/peers/nncf-venv,
     and runs it there as a subprocess of this file (`--nncf-worker`), the data passed as .npz;
   - Google's LiteRT quantizer (ai-edge-quantizer, in the dev extra) static int8 (`static_wi8_ai8`) on the fp32
     TFLite file, in a subprocess of the project's venv (`--litert-worker`).
   A peer that cannot be installed or run is recorded as "could not run: <reason>".
3. Measures every file with the same runner (edgepress.deploy.measure_many on x86-host, batch 1, 1 thread): accuracy
   on the test images, then all files timed together, interleaved, with a bootstrap 95% interval of each p50.
   `int8_macs` (edgepress.deploy.coverage) is the share of MACs the runtime runs in integer kernels.
4. Writes the "## quantization peers" section of benchmarks/RESULTS.md (other sections are kept) and prints it.

The peer workers import only numpy and their own quantizer, so they run in venvs without edgepress.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BUDGET = 0.005  # accuracy drop, as a fraction (0.5 pt)
CALIBRATION = 200  # training images that calibrate every quantizer (as benchmarks/accuracy_aware.py)
NNCF_PACKAGES = ("nncf", "onnx", "onnxruntime", "numpy")
INSTALL_TIMEOUT = 1200  # seconds for the NNCF venv and its pip install
PEER_TIMEOUT = 1800  # seconds for one peer's quantization
RESIDUAL_EPOCHS = 8  # the residual CNN's training on the 8,000 images (the seed CNN's TRAIN_EPOCHS: compression.py)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mnist"), help="MNIST idx directory")
    parser.add_argument("--work", default=str(REPO / "runs" / "bench-quantization"), help="where files are written")
    parser.add_argument("--nncf-venv", default=str(REPO / "runs" / "peers" / "nncf-venv"),
                        help="NNCF's own virtual environment (made and installed here when missing)")
    parser.add_argument("--runs", type=int, default=300, help="timed runs per file, interleaved")
    parser.add_argument("--max-seconds", type=float, default=240, help="cap on the interleaved timing of all files")
    parser.add_argument("--tiny", action="store_true",
                        help="a quick check that it runs: few samples, 1 epoch, few timed runs; installs nothing "
                             "(a peer not yet installed is recorded as could not run)")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args()
    if args.tiny:
        args.runs, args.max_seconds = 20, 30

    sys.path.insert(0, str(REPO))  # run from a checkout without installing
    import edgepress  # noqa: F401, I001  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
    from accuracy_aware import add_outliers  # benchmarks/accuracy_aware.py, beside this script
    from compression import mnist_and_seed_cnn, say, write_section  # benchmarks/compression.py

    started, load_before = time.perf_counter(), os.getloadavg()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from edgepress.models import training

    if args.tiny:
        data, seed_cnn = tiny_mnist_and_seed_cnn(args.data)
    else:
        data, seed_cnn = mnist_and_seed_cnn(args.data)
    outliers = training.copy_model(seed_cnn)
    add_outliers(outliers.layers[-2], outliers.layers[-1])
    residual = train_residual_cnn(data, epochs=1 if args.tiny else RESIDUAL_EPOCHS)
    residual_outliers = training.copy_model(residual)
    add_stream_outliers(residual_outliers)
    x_calibration = data.x_train[:CALIBRATION]
    x_eval, y_eval = data.x_test, data.y_test.astype(np.int64)
    arrays = work / "data.npz"
    np.savez(arrays, x_calibration=x_calibration.astype(np.float32), x_eval=x_eval.astype(np.float32), y_eval=y_eval)

    nncf_python, nncf_problem = nncf_interpreter(Path(args.nncf_venv), install=not args.tiny, say=say)
    rows: list[dict] = []
    for label, model in (("seed CNN", seed_cnn), ("seed CNN with outliers", outliers), ("residual CNN", residual),
                         ("residual CNN with stream outliers", residual_outliers)):
        model_dir = work / label.replace(" ", "_")
        say(f"{label}: float accuracy {training.accuracy(training.predict(model, x_eval), y_eval):.2%}")
        rows += quantize_all(label, model, model_dir, x_calibration, x_eval, y_eval, arrays, nncf_python,
                             nncf_problem, say)

    measured = [r for r in rows if r.get("path")]
    say(f"measuring {len(measured)} files on x86-host (batch 1, 1 thread), timed interleaved")
    measure_rows(measured, x_eval, y_eval, args.runs, args.max_seconds)
    body = render(rows, len(data.x_train), len(x_eval), args, time.perf_counter() - started, load_before,
                  nncf_python)
    write_section(Path(args.results), "quantization peers", body)
    print(body)


def residual_cnn(k, input_shape=(28, 28, 1), width: int = 16, num_classes: int = 10, name: str = "residual_cnn"):
    """The MobileNetV2 pattern, small: Conv-BN-ReLU6 stem (stride 2), a depthwise-separable block (depthwise-BN-ReLU6,
    1x1 `ds_project`-BN with no activation: the residual stream), an inverted residual block on that stream
    (1x1 `b2_expand`-BN-ReLU6, depthwise-BN-ReLU6, 1x1 `b2_project`-BN with no activation) added to it (`add`),
    then a 1x1 `head` Conv-BN-ReLU6, global average pooling and the `logits` Dense. `k` is the Keras module."""
    layers = k.layers

    def bn(x, label):  # momentum 0.9: the moving statistics settle within the few hundred steps of a small run
        return layers.BatchNormalization(momentum=0.9, name=f"{label}_bn")(x)

    inputs = layers.Input(input_shape)
    x = layers.ReLU(6.0, name="stem_relu6")(bn(layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False,
                                                             name="stem")(inputs), "stem"))
    x = layers.ReLU(6.0, name="ds_dw_relu6")(bn(layers.DepthwiseConv2D(3, padding="same", use_bias=False,
                                                                       name="ds_dw")(x), "ds_dw"))
    stream = bn(layers.Conv2D(width, 1, use_bias=False, name="ds_project")(x), "ds_project")
    y = layers.ReLU(6.0, name="b2_expand_relu6")(bn(layers.Conv2D(width * 3, 1, use_bias=False,
                                                                  name="b2_expand")(stream), "b2_expand"))
    y = layers.ReLU(6.0, name="b2_dw_relu6")(bn(layers.DepthwiseConv2D(3, padding="same", use_bias=False,
                                                                       name="b2_dw")(y), "b2_dw"))
    y = bn(layers.Conv2D(width, 1, use_bias=False, name="b2_project")(y), "b2_project")
    x = layers.Add(name="add")([stream, y])
    x = layers.ReLU(6.0, name="head_relu6")(bn(layers.Conv2D(width * 2, 1, use_bias=False, name="head")(x), "head"))
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return k.Model(inputs, layers.Dense(num_classes, name="logits")(x), name=name)


def train_residual_cnn(data, epochs: int):
    """residual_cnn trained on `data` (tf_keras, as the seed CNN) from a fixed seed."""
    from edgepress.compat import keras
    from edgepress.models import training

    k = keras()
    k.utils.set_random_seed(0)
    model = residual_cnn(k, tuple(data.x_train.shape[1:]))
    training.fit(model, data.x_train, data.y_train, epochs=epochs, learning_rate=3e-3)
    return model


STREAM_OUTLIERS = (1, 5)  # channels of residual_cnn's stream made outliers
STREAM_SCALE = 300.0


def add_stream_outliers(model, channels=STREAM_OUTLIERS, scale: float = STREAM_SCALE) -> None:
    """Make `channels` of residual_cnn's residual stream `scale` times larger, in place, computing the same function:
    both tensors the `add` sums (ds_project_bn's and b2_project_bn's gamma and beta) are scaled, and every layer
    reading the stream (b2_expand before the add, head after it) divides the weights reading those channels."""
    for bn in ("ds_project_bn", "b2_project_bn"):
        layer = model.get_layer(bn)
        gamma, beta, mean, variance = layer.get_weights()
        for c in channels:
            gamma[c] *= scale
            beta[c] *= scale
        layer.set_weights([gamma, beta, mean, variance])
    for reader in ("b2_expand", "head"):
        layer = model.get_layer(reader)
        kernel, *rest = layer.get_weights()
        for c in channels:
            kernel[..., c, :] /= scale
        layer.set_weights([kernel, *rest])


def tiny_mnist_and_seed_cnn(data_dir: str):
    """--tiny's start: the same data and model as mnist_and_seed_cnn, but 256 / 200 images and 1 epoch."""
    from edgepress.models import zoo
    from edgepress.models.datasets import load_dataset

    data = load_dataset("mnist", data_dir, train_size=256, test_size=200).fit_to((28, 28, 1))
    return data, zoo.train("seed_cnn", data, epochs=1, seed=0)


# -- the quantizers --------------------------------------------------------------------------------

def quantize_all(label, model, model_dir: Path, x_calibration, x_eval, y_eval, arrays: Path, nncf_python,
                 nncf_problem: str, say) -> list[dict]:
    """The rows of one model: fp32 TFLite and ONNX, edgepress int8 for both, NNCF (ONNX), LiteRT (TFLite)."""
    from edgepress.deploy import export_onnx, export_tflite
    from edgepress.quantize import quantize_to_budget

    fp32 = {"tflite": export_tflite(model, model_dir / "fp32.tflite", "fp32").path,
            "onnx": export_onnx(model, model_dir / "fp32.onnx", "fp32").path}
    rows = [{"model": label, "format": f, "by": "fp32 (float)", "path": Path(p), "seconds": None}
            for f, p in fp32.items()]
    for format in ("tflite", "onnx"):
        say(f"{label}: edgepress accuracy-aware int8, {format}")
        began = time.perf_counter()
        result = quantize_to_budget(model, format, model_dir / f"edgepress_{format}", x_calibration, x_eval, y_eval,
                                    max_accuracy_drop=BUDGET, name="model",
                                    on_trial=lambda message: say(f"  {message}"))
        chosen = result.chosen
        rows.append({"model": label, "format": format, "by": "edgepress accuracy-aware int8",
                     "path": Path(chosen.artifact.path), "seconds": time.perf_counter() - began,
                     "note": f"{result.summary()} {len(result.trials)} artifact(s) tried."})

    say(f"{label}: NNCF quantize_with_accuracy_control, onnx")
    out = model_dir / "nncf_int8.onnx"
    rows.append(peer_row(label, "onnx", "NNCF quantize_with_accuracy_control", nncf_problem or run_worker(
        nncf_python, "--nncf-worker", {"model": str(fp32["onnx"]), "data": str(arrays), "out": str(out),
                                       "max_drop": BUDGET}, model_dir / "nncf.json"), out))
    say(f"{label}: LiteRT quantizer static int8, tflite")
    out = model_dir / "litert_static_int8.tflite"
    rows.append(peer_row(label, "tflite", "LiteRT quantizer static_wi8_ai8", run_worker(
        sys.executable, "--litert-worker", {"model": str(fp32["tflite"]), "data": str(arrays), "out": str(out)},
        model_dir / "litert.json"), out))
    return rows


def peer_row(label: str, format: str, by: str, outcome: dict | str, out: Path) -> dict:
    """A peer's row: its file and search time, or the reason it could not run."""
    row = {"model": label, "format": format, "by": by, "seconds": None, "path": None}
    if isinstance(outcome, str):
        row["problem"] = outcome
    else:
        row.update(path=out, seconds=outcome["seconds"], version=outcome["version"])
    return row


def nncf_interpreter(venv: Path, install: bool, say) -> tuple[str | None, str]:
    """(the python of NNCF's venv, "") when it imports nncf, onnx and onnxruntime, making it first when `install`;
    else (None, why not)."""
    python = venv / "bin" / "python"
    if python.exists() and _imports(python):
        return str(python), ""
    if not install:
        return None, f"NNCF is not installed in {venv} (--tiny installs nothing; a full run makes it)"
    say(f"installing {' '.join(NNCF_PACKAGES)} into {venv} (not a project dependency)")
    steps = [[sys.executable, "-m", "venv", "--clear", str(venv)],
             [str(python), "-m", "pip", "install", "--quiet", *NNCF_PACKAGES]]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as e:
            return None, f"`{' '.join(step[:4])}` failed: {_first_line(str(e))}"
        if done.returncode != 0:
            return None, f"`{' '.join(step[:4])}` failed: {_last_line(done.stderr or done.stdout)}"
    if not _imports(python):
        return None, f"nncf does not import in {venv} after installing it"
    return str(python), ""


def _imports(python: Path) -> bool:
    try:
        return subprocess.run([str(python), "-c", "import nncf, onnx, onnxruntime"], capture_output=True,
                              timeout=300).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def run_worker(python: str | None, flag: str, spec: dict, spec_path: Path) -> dict | str:
    """Run this file as `flag` worker under `python`; its JSON result, or why it could not run."""
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec))
    result_path = spec_path.with_suffix(".result.json")
    result_path.unlink(missing_ok=True)
    Path(spec["out"]).unlink(missing_ok=True)
    # One thread each, like the measurements: the machine is shared.
    env = dict(os.environ, OMP_NUM_THREADS="1", TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")
    try:
        done = subprocess.run([python, __file__, flag, str(spec_path)], capture_output=True, text=True,
                              timeout=PEER_TIMEOUT, env=env)
    except subprocess.TimeoutExpired:
        return f"timed out after {PEER_TIMEOUT} s"
    except OSError as e:
        return _first_line(str(e))
    spec_path.with_suffix(".log").write_text(done.stdout + done.stderr)
    if done.returncode != 0 or not result_path.exists() or not Path(spec["out"]).exists():
        return _last_line(done.stderr or done.stdout) or f"exit code {done.returncode}"
    return json.loads(result_path.read_text())


def _share(fraction: float) -> str:
    """A percentage rounded down to 0.1, so a model with some float MACs never shows 100.0%."""
    return f"{math.floor(fraction * 1000) / 10:.1f}%"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "no output")[:300]


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or ["no message"])[0][:300]


# -- the peer workers (run in their own interpreters; numpy and the peer's packages only) --------------------

def nncf_worker(spec: dict) -> dict:
    """NNCF's accuracy-controlled quantization of an ONNX file, as NNCF's documentation has a user write it."""
    import nncf
    import onnx
    import onnxruntime as ort

    arrays = np.load(spec["data"])
    model = onnx.load(spec["model"])
    initializers = {i.name for i in model.graph.initializer}
    input_name = next(i.name for i in model.graph.input if i.name not in initializers)
    calibration = nncf.Dataset(list(arrays["x_calibration"]), lambda x: {input_name: x[None]})
    validation = nncf.Dataset(list(zip(arrays["x_eval"], arrays["y_eval"], strict=True)),
                              lambda item: {input_name: item[0][None]})

    def validate(candidate, items) -> float:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(candidate.SerializeToString(), options, providers=["CPUExecutionProvider"])
        hits = [int(np.argmax(session.run(None, {input_name: x[None]})[0]) == y) for x, y in items]
        return float(np.mean(hits)) if hits else 0.0

    began = time.perf_counter()
    quantized = nncf.quantize_with_accuracy_control(
        model, calibration_dataset=calibration, validation_dataset=validation, validation_fn=validate,
        max_drop=spec["max_drop"], drop_type=nncf.DropType.ABSOLUTE, subset_size=len(arrays["x_calibration"]))
    seconds = time.perf_counter() - began
    onnx.save(quantized, spec["out"])
    return {"seconds": seconds, "version": f"nncf {nncf.__version__}"}


def litert_worker(spec: dict) -> dict:
    """Google's LiteRT quantizer, static int8 weights and activations, calibrated on the calibration images."""
    from importlib import metadata

    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    arrays = np.load(spec["data"])
    signatures = Interpreter(model_path=spec["model"]).get_signature_list()
    key, signature = next(iter(signatures.items()))
    (input_name,) = signature["inputs"]
    began = time.perf_counter()
    q = quantizer.Quantizer(spec["model"], recipe.static_wi8_ai8())
    calibrated = q.calibrate({key: [{input_name: x[None]} for x in arrays["x_calibration"]]}, num_threads=1)
    result = q.quantize(calibrated)
    seconds = time.perf_counter() - began
    Path(spec["out"]).write_bytes(bytes(result.quantized_model))
    return {"seconds": seconds, "version": f"ai-edge-quantizer {metadata.version('ai-edge-quantizer')}"}


WORKERS = {"--nncf-worker": nncf_worker, "--litert-worker": litert_worker}


# -- measurement and RESULTS.md --------------------------------------------------------------------

def measure_rows(rows: list[dict], x_eval, y_eval, runs: int, max_seconds: float) -> None:
    """Accuracy, bytes, int8_macs and the interleaved p50 of every row's file, into the row."""
    from edgepress.deploy.coverage import int8_macs
    from edgepress.deploy.measure import measure_many

    results = measure_many([r["path"] for r in rows], (x_eval, y_eval), "x86-host", runs=runs, warmup=30, threads=1,
                           max_seconds=max_seconds)
    for row, result in zip(rows, results, strict=True):
        row.update(accuracy=result["accuracy"], p50=result["latency_ms"]["p50"],
                   p50_ci=result["latency_ms"]["p50_ci"], timed_runs=result["latency_ms"].get("runs"),
                   bytes=row["path"].stat().st_size)
        coverage = int8_macs(row["path"])
        row.update(int8_macs=coverage["int8_macs"], float_ops=coverage["float_ops"])


def render(rows: list[dict], train: int, test: int, args, seconds: float, load_before, nncf_python) -> str:
    from edgepress.api import environment

    float_accuracy = {(r["model"], r["format"]): r["accuracy"] for r in rows if r["by"] == "fp32 (float)"}
    lines = [
        "## quantization peers",
        "",
        f"Written by `benchmarks/quantization.py{' --tiny' if args.tiny else ''}` on {dt.date.today():%Y-%m-%d} "
        f"({seconds / 60:.1f} min, one run). The seed CNN trained on real MNIST ({train:,} images; test: the last "
        f"{test:,}) and its outlier variant (benchmarks/accuracy_aware.py: two units of the 64-unit Dense layer "
        "scaled by 500, the weights reading them divided by 500, same function); a residual CNN (`residual_cnn`: "
        "Conv-BN-ReLU6, a depthwise-separable block and an inverted residual block added to its linear stream, the "
        f"MobileNetV2 pattern; {RESIDUAL_EPOCHS} epochs on the same images) and its outlier variant "
        f"(`add_stream_outliers`: channels {', '.join(map(str, STREAM_OUTLIERS))} of the residual stream, both "
        f"tensors the Add sums, scaled by {STREAM_SCALE:g}, the layers reading the stream dividing their weights by "
        f"{STREAM_SCALE:g}, same function). Every quantizer gets the same "
        f"calibration data (the first {CALIBRATION} training images), and the accuracy-controlled ones the same "
        f"validation data (the {test:,} test images) and budget ({BUDGET:.1%} absolute accuracy drop). NNCF runs on "
        "the fp32 ONNX file edgepress exported, LiteRT's quantizer on the fp32 TFLite file. Every file measured by "
        "the same runner (edgepress.deploy.measure_many on x86-host: accuracy on the test images, then p50 at batch "
        "1, 1 thread, all files timed interleaved, 95% bootstrap interval in brackets). Drop: from the fp32 file "
        "of the same model and format. `int8_macs`: the share of MACs the runtime runs in integer kernels "
        "(edgepress.deploy.coverage). Search time: the quantizer's own call (for the peers, inside their "
        "subprocess, without interpreter start and imports).",
        "",
        "| model | format | quantizer | accuracy | drop | int8_macs | bytes | p50 ms [95% interval] | search s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = f"| {r['model']} | {r['format']} | {r['by']} |"
        if r.get("problem"):
            lines.append(f"{head} could not run: {r['problem']} | - | - | - | - | - |")
            continue
        drop = (float_accuracy[(r["model"], r["format"])] - r["accuracy"]) * 100
        over = " (over the budget)" if drop > BUDGET * 100 + 1e-9 else ""
        low, high = r["p50_ci"]
        lines.append(
            f"{head} {r['accuracy']:.2%} | {drop:+.2f} pt{over} | {_share(r['int8_macs'])} | {r['bytes']:,} | "
            f"{r['p50']:.3f} [{low:.3f}, {high:.3f}] | {_seconds(r['seconds'])} |"
        )
    notes = [f"- {r['model']}, {r['note']}" for r in rows if r.get("note")]
    notes += [f"- {r['model']}, {r['by']} ({r['format']}): MAC ops the runtime runs in float: "
              f"{', '.join(f'`{op}`' for op in r['float_ops'])}." for r in rows
              if r["by"] != "fp32 (float)" and r.get("float_ops")]
    lines += ["", *notes, ""]
    env = environment()
    versions = sorted({r["version"] for r in rows if r.get("version")})
    load_after = os.getloadavg()
    lines += [
        f"Latency was measured on a shared {os.cpu_count()}-core machine while other work ran (load average "
        f"{load_before[0]:.1f} at the start, {load_after[0]:.1f} at the end): p50 differences inside the intervals "
        "are ties, and only large ratios mean anything. The files were timed together in this one run; compare "
        "rows of this table with each other, not with the latencies of other sections or runs, which the load moves."
        + (" --tiny: few images, 1 epoch, few timed runs; these numbers mean nothing." if args.tiny else ""),
        "",
        "Measured with " + ", ".join(f"{k} {v}" for k, v in env.items() if v)
        + (", " + ", ".join(versions) if versions else "")
        + (f" (NNCF in its own venv, {Path(nncf_python).parents[1]})" if nncf_python else "") + ".",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in WORKERS:
        spec_file = Path(sys.argv[2])
        outcome = WORKERS[sys.argv[1]](json.loads(spec_file.read_text()))
        spec_file.with_suffix(".result.json").write_text(json.dumps(outcome))
    else:
        main()
