"""A small ViT on real MNIST in Keras 3 and PyTorch: which int8 keeps its accuracy, and which file is fastest?

    .venv/bin/python benchmarks/transformers.py           # about 40 minutes on 2 busy cores (a 20-minute tune)
    .venv/bin/python benchmarks/transformers.py --tiny    # proves it runs; the numbers mean nothing

The model: each image's 28 rows as 28 tokens of 28 pixels, a Dense embedding to 64, 2 pre-LayerNorm blocks of
MultiHeadAttention (4 heads of 16) and a GELU MLP (128 units) with residual Adds, a Flatten + Dense head (which
also tells the rows apart: no position embedding). Data: real MNIST (../shared/data/mnist: the first 8,000 images of
the test file train, the last 2,000 test; the last 1,000 training images are the accuracy-aware search's
validation set). Every contender gets the same training budget: a base model trained --base epochs, then --extra
epochs more, spent by each contender its own way:
- float: the base trained --extra epochs more (as long as every other), TFLite fp32 and ONNX fp32;
- plain PTQ int8: that float model through the TFLite converter's full-integer int8 (calibrated, 200 images), and
  through onnxruntime's static QDQ int8;
- LiteRT's quantizer: that float model's fp32 file through ai-edge-quantizer's static_wi8_ai8 recipe (same images);
- NNCF: the float ONNX file through nncf.quantize (transformer preset, same images), in NNCF's own venv
  (benchmarks/.venv-nncf, made with pip on first use);
- edgepress qat: the base fine-tuned --extra epochs quantization-aware (edgepress.compress.qat_native), tflite int8;
- edgepress accuracy-aware int8: the float model, quantize_to_budget within 1 pt on the validation set;
- edgepress structured_prune + distill + int8: the base with half its heads and MLP units removed (taylor
  importance, half the extra epochs fine-tuning), distilled from the base (the other half), tflite int8;
- `edgepress tune` (--tune-minutes, 20 as the issue asks): structured_prune ratios of heads and MLP units, each trial
  half the extra epochs fine-tuning and half distilling, every TFLite precision (int8 also with LayerNorm and
  attention float, at a dynamic batch and at batch 1); trials are scored on the validation set (tune.validation_size:
  the last 1,000 training images, which no contender trains on); its pick is the fastest file within 1 pt of the
  base there, and is measured on the test images like every other file.
- the same ViT in PyTorch (nn.TransformerEncoder), trained the same way, saved as a .pt2 with a dynamic batch, through
  `edgepress run`: float TFLite / ONNX, int8 (litert-torch, onnxruntime), structured_prune + distill at the tune's
  pick (--no-torch leaves it out).
Every file's accuracy on the 2,000 test images and its latency, measured by edgepress's runner on x86-host, batch 1,
1 thread, all files timed interleaved. Writes the `## transformers` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "benchmarks"))

import edgepress  # noqa: E402, F401, I001  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

from compression import say, write_section  # noqa: E402
from int8_speed import int8_units  # noqa: E402

WIDTH, HEADS, MLP, BLOCKS = 64, 4, 128, 2
SEED = 0


def vit(keras):
    """The small ViT over MNIST rows (see the module doc)."""
    inputs = keras.Input((28, 28))
    x = keras.layers.Dense(WIDTH, name="embed")(inputs)
    for b in range(BLOCKS):
        h = keras.layers.LayerNormalization(name=f"ln{b}a")(x)
        h = keras.layers.MultiHeadAttention(HEADS, WIDTH // HEADS, name=f"mha{b}")(h, h)
        x = keras.layers.Add(name=f"res{b}a")([x, h])
        h = keras.layers.LayerNormalization(name=f"ln{b}b")(x)
        h = keras.layers.Dense(MLP, activation="gelu", name=f"mlp{b}_up")(h)
        h = keras.layers.Dense(WIDTH, name=f"mlp{b}_down")(h)
        x = keras.layers.Add(name=f"res{b}b")([x, h])
    x = keras.layers.LayerNormalization(name="ln_out")(x)
    outputs = keras.layers.Dense(10, name="head")(keras.layers.Flatten(name="flatten")(x))
    return keras.Model(inputs, outputs, name="vit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mnist"), help="MNIST idx directory")
    parser.add_argument("--work", default=str(REPO / "runs" / "bench-transformers"), help="where files are written")
    parser.add_argument("--base", type=int, default=20, help="epochs of the base model")
    parser.add_argument("--extra", type=int, default=6, help="epochs every contender spends after the base")
    parser.add_argument("--runs", type=int, default=300, help="timed runs per file at least (interleaved)")
    parser.add_argument("--max-seconds", type=float, default=180, help="cap on the interleaved timing")
    parser.add_argument("--tune-minutes", type=float, default=20, help="`edgepress tune`'s time budget (the issue: 20)")
    parser.add_argument("--tune-trials", type=int, default=None, help="at most this many tune trials (default: as "
                        "many as fit in the time budget)")
    parser.add_argument("--no-torch", action="store_true", help="leave out the PyTorch ViT")
    parser.add_argument("--torch-tune-minutes", type=float, default=0, help="run `edgepress tune` on the PyTorch ViT "
                        "too, with this budget (default 0: the PyTorch ViT is pruned at the Keras tune's pick)")
    parser.add_argument("--tiny", action="store_true", help="few samples, 1 epoch, few runs: proves it runs")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args()
    if args.tiny:
        args.base, args.extra, args.runs, args.max_seconds, args.tune_trials = 1, 2, 20, 5, 2
    started = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows, facts = contenders(work, args)
    body = render(rows, facts, time.perf_counter() - started, args)
    print(body)
    if not args.tiny:
        write_section(Path(args.results), "transformers", body)
        say(f"wrote the 'transformers' section of {args.results}")


def contenders(work: Path, args) -> tuple[list[dict], dict]:
    import keras
    import numpy as np

    from edgepress.compress.distill import DistillConfig, distill
    from edgepress.compress.qat import QatConfig
    from edgepress.compress.qat_native import qat_native
    from edgepress.compress.structured_prune import StructuredPruneConfig, structured_prune
    from edgepress.deploy import export_onnx, export_tflite
    from edgepress.deploy.measure import measure_many
    from edgepress.devices import load_device
    from edgepress.models import training
    from edgepress.models.datasets import load_dataset
    from edgepress.quantize import quantize_to_budget

    sizes = (1000, 300) if args.tiny else (8000, 2000)
    data = load_dataset("mnist", args.data, train_size=sizes[0], test_size=sizes[1]).fit_to((28, 28))
    x, y = data.x_train.astype(np.float32), data.y_train
    x_test, y_test = data.x_test.astype(np.float32), data.y_test
    fit_x, fit_y, val_x, val_y = x[:-len(x) // 8], y[:-len(y) // 8], x[-len(x) // 8:], y[-len(y) // 8:]
    calibration = fit_x[:200]
    batch, rate, tune_rate = 128, 2e-3, 5e-4  # tune_rate: every contender's extra epochs

    def accuracy(model) -> float:
        return training.accuracy(training.predict(model, x_test), y_test)

    keras.utils.set_random_seed(SEED)
    base = vit(keras)
    say(f"training the ViT ({base.count_params():,} parameters) on {len(fit_x)} MNIST images, {args.base} epochs")
    training.fit(base, fit_x, fit_y, args.base, batch, rate, seed=SEED)
    base.save(work / "base.keras")
    facts = {"base_accuracy": accuracy(base), "params": base.count_params(), "train": len(fit_x),
             "test": len(x_test), "base_epochs": args.base, "extra_epochs": args.extra}

    say(f"float: {args.extra} epochs more")
    float_model = training.copy_model(base)
    training.fit(float_model, fit_x, fit_y, args.extra, batch, tune_rate, seed=SEED + 1)
    facts["float_keras_accuracy"] = accuracy(float_model)

    say(f"edgepress qat: {args.extra} epochs quantization-aware from the base")
    qat_model, _ = qat_native(base, fit_x, fit_y, QatConfig(fine_tune_epochs=args.extra, batch_size=batch,
                                                            learning_rate=tune_rate))
    facts["qat_keras_accuracy"] = accuracy(qat_model)

    prune_epochs = max(1, args.extra // 2)
    say(f"edgepress structured_prune (heads + MLP, {prune_epochs} epochs) + distill ({args.extra - prune_epochs})")
    pruned = structured_prune(base, fit_x, fit_y, StructuredPruneConfig(
        ratio=0.5, criterion="taylor", fine_tune_epochs=prune_epochs, batch_size=batch, learning_rate=tune_rate))
    distilled = distill(pruned, fit_x, fit_y, DistillConfig(teacher="source", epochs=args.extra - prune_epochs,
                                                            batch_size=batch, learning_rate=tune_rate), source=base)
    facts["pruned_params"], facts["pruned_keras_accuracy"] = distilled.count_params(), accuracy(distilled)

    # The benchmark's own split, for the runs: the training images (the validation set last: a run with train_size
    # len(fit_x) trains on the same images as every contender, the tune holds the validation set out), then the test.
    npz = work / "vit_data.npz"
    np.savez(npz, x=np.concatenate([x, x_test]), y=np.concatenate([y, y_test]))
    say(f"edgepress tune: {args.tune_minutes:g} min budget")
    tuned, facts["tune"] = tune_contender(work, args, work / "base.keras", npz, len(x), len(x_test), len(val_x))

    files: list[tuple[str, object]] = []

    def export(label: str, model, name: str, precision: str) -> None:
        say(f"exporting {label}")
        files.append((label, export_tflite(model, work / name, precision, calibration=calibration)))

    export("float (TFLite fp32)", float_model, "float_fp32.tflite", "fp32")
    export("plain PTQ int8 (TFLite converter)", float_model, "ptq_int8.tflite", "int8")
    files.append(("LiteRT's quantizer (static_wi8_ai8)", litert_quantizer(files[0][1].path, work, calibration)))
    export("edgepress qat -> tflite int8", qat_model, "qat_int8.tflite", "int8")
    say("edgepress accuracy-aware int8 (budget 1 pt on the validation set)")
    aware = quantize_to_budget(float_model, "tflite", work / "aware", calibration, val_x, val_y,
                               max_accuracy_drop=0.01, name="aware")
    facts["aware"] = aware.summary()
    files.append(("edgepress accuracy-aware int8", aware.chosen.artifact))
    export("edgepress structured_prune + distill -> int8", distilled, "pruned_int8.tflite", "int8")
    export("(structured_prune + distill, fp32)", distilled, "pruned_fp32.tflite", "fp32")
    if tuned is not None:
        files.append((f"edgepress tune's pick ({facts['tune']['pick']['artifact']})", tuned))
    say("exporting float ONNX, onnxruntime's static int8 of the float model and NNCF's (in its own venv)")
    files.append(("float (ONNX fp32)", export_onnx(float_model, work / "float_fp32.onnx", "fp32",
                                                   check_data=x_test[:200])))
    files.append(("plain PTQ int8 (onnxruntime, static QDQ)", export_onnx(
        float_model, work / "ptq_int8_static.onnx", "int8_static", calibration=calibration, check_data=x_test[:200])))
    nncf_file, facts["nncf"] = nncf_int8(files[-2][1].path, work, calibration)
    files.append((f"NNCF {facts['nncf']} int8 of the float ONNX file", nncf_file))

    torch_files: list = []
    if not args.no_torch:
        torch_files, facts["torch"] = torch_contenders(work, args, npz, (fit_x, fit_y), (x_test, y_test),
                                                       facts["tune"]["pick"], len(val_x))
    everything = [(label, artifact, "keras") for label, artifact in files] + [
        (label, artifact, "torch") for label, artifact in torch_files]
    say(f"measuring {len(everything)} files interleaved")
    timed = measure_many([a for _, a, _ in everything], (x_test, y_test), "x86-host", args.runs, 30, 1,
                         max_runs=args.runs * 10, target_ci_width=0.03, max_seconds=args.max_seconds)
    rows = [{"label": label, "artifact": artifact, "group": group, "accuracy": result["accuracy"],
             "p50": result["latency_ms"]["p50"], "ci": result["latency_ms"]["p50_ci"],
             "int8_macs": int8_share(artifact), "macs": artifact.quantization.get("macs")}
            for (label, artifact, group), result in zip(everything, timed, strict=True)]
    # Where int8 loses: the same two files on LiteRT's builtin kernels (no XNNPACK), timed together after.
    builtin = load_device("x86-host").with_overrides({"name": "x86-host, builtin kernels", "delegate": "none"})
    pair = [files[0], files[1]]
    say("measuring float and plain int8 on the builtin kernels")
    timed = measure_many([a for _, a in pair], (x_test, y_test), builtin, args.runs, 30, 1, max_runs=args.runs * 10,
                         target_ci_width=0.03, max_seconds=args.max_seconds / 3)
    rows += [{"label": f"{label}, builtin kernels (no XNNPACK)", "artifact": artifact, "group": "keras",
              "accuracy": result["accuracy"],
              "p50": result["latency_ms"]["p50"], "ci": result["latency_ms"]["p50_ci"], "alone": True,
              "int8_macs": int8_share(artifact), "macs": artifact.quantization.get("macs")}
             for (label, artifact), result in zip(pair, timed, strict=True)]
    return rows, facts


def tune_contender(work: Path, args, base_file: Path, npz: Path, train: int, test: int, validation: int,
                   minutes: float | None = None, name: str = "tune") -> tuple[object | None, dict]:
    """`edgepress tune` on the base model: structured_prune of heads and MLP units at a ratio it chooses (and a channel
    multiple) on `npz`'s first `train` images (the validation set their last) and last `test`, each trial's --extra
    epochs spent half fine-tuning and half distilling from the base, every TFLite
    precision exported (int8 also with its LayerNorm and attention float); the fastest artifact within 1 pt of the
    base on the validation set (the last `validation` training images, held out of every trial) is its pick.
    `minutes`: its time budget (default --tune-minutes); `name`: its folder under `work`. A PyTorch program gets no
    float_ops choices (the tune finds them by Keras layers). Returns the pick's Artifact (None when nothing met the
    budget) and what the tune did."""
    import json
    import shutil

    from compression import _log

    from edgepress.artifact import Artifact

    half = max(1, args.extra // 2)
    minutes = args.tune_minutes if minutes is None else minutes
    keras = base_file.suffix == ".keras"
    tune_dir = work / name
    shutil.rmtree(tune_dir, ignore_errors=True)  # a new study each run (a kept one would resume the last run's)
    recipe = edgepress.Recipe.from_dict({
        "name": "vit",
        "model": {"path": str(base_file)},
        "data": {"dataset": "npz", "path": str(npz), "train_size": train, "test_size": test,
                 "calibration_samples": 200},
        "targets": ["x86-host"],
        "measure": {"runs": max(20, args.runs // 3), "warmup": 20, "threads": 1},
        "gates": {"max_accuracy_drop": 0.01},
        "tune": {"time_budget": minutes * 60, "seed": SEED, "validation_size": validation,
                 **({"trials": args.tune_trials} if args.tune_trials else {}),
                 "space": {"ratio": list(RATIOS), "ratio_step": 0.05, "fine_tune_epochs": [half],
                           "distill": [True], "layer_guidance": [0.0],
                           "precisions": ["tflite:fp32", "tflite:fp16", "tflite:dynamic", "tflite:int8",
                                          *(["tflite:int8-float-ops", "tflite:int8-float-ops-b1"] if keras else [])],
                           "accuracy_aware": False}},
    })
    started = time.perf_counter()
    result = edgepress.tune(recipe, tune_dir, _log())
    tuned = json.loads((tune_dir / "tune.json").read_text())
    trials = [{"number": t["number"], "status": t["status"], "reason": t.get("reason"), "params": t.get("params") or {},
               "chosen": (t.get("chosen") or {}).get("x86-host"), "model_accuracy": t.get("model_accuracy"),
               "params_count": t.get("params_count"), "duration_s": t.get("duration_s")} for t in tuned["trials"]]
    facts = {"minutes": (time.perf_counter() - started) / 60, "budget_minutes": minutes,
             "epochs": 2 * half, "trials": trials, "stopped": tuned.get("stopped_exports") or {},
             "source_accuracy": tuned["source"]["accuracy"], "validation": tuned.get("validation"), "pick": None}
    best = result.best["x86-host"]
    if best is None:
        return None, facts
    trial = next((t for t in tuned["trials"] if t["number"] == best["trial"]), None)
    folder = Path(trial["run_dir"]) if trial else tune_dir / "source"
    path = folder / "artifacts" / best["artifact"]
    facts["pick"] = {"artifact": best["artifact"], "trial": best["trial"], "params": (trial or {}).get("params") or {},
                     "precision": best["precision"], "accuracy": best["accuracy"], "p50_ms": best["p50_ms"],
                     "test_accuracy": best.get("test_accuracy"), "float_ops": "_float-" in best["artifact"]}
    return Artifact.load(path), facts


# The tune's structured_prune ratios: below 0.5 a file cannot be 2x faster here (0.5, two heads of four and 64 of 128
# MLP units, measured 1.66x), so the search starts there; 0.9 keeps one head and 13 MLP units per block.
RATIOS = (0.5, 0.9)
NNCF_VENV = REPO / "benchmarks" / ".venv-nncf"
NNCF_PACKAGES = ("nncf", "onnx", "onnxruntime")
# Run by the NNCF venv's Python: nncf.quantize of an ONNX file (its transformer preset, as NNCF's docs advise for
# attention models) with the given calibration images, fed one at a time at batch 1.
NNCF_SCRIPT = """
import sys
import nncf, numpy as np, onnx
source, images, out = sys.argv[1:4]
model = onnx.load(source)
name = model.graph.input[0].name
x = np.load(images)["x"].astype(np.float32)
data = nncf.Dataset(list(x), lambda image: {name: image[None]})
quantized = nncf.quantize(model, data, subset_size=len(x), model_type=nncf.ModelType.TRANSFORMER)
onnx.save(quantized, out)
print(nncf.__version__)
"""


def nncf_python() -> Path:
    """The Python of NNCF's own venv (benchmarks/.venv-nncf, made and filled with pip on first use): NNCF pins
    versions edgepress's environment does not have, so it runs beside it, not inside it."""
    import subprocess

    python = NNCF_VENV / "bin" / "python"
    ready = NNCF_VENV / ".installed"
    if not ready.exists():
        say(f"making NNCF's venv {NNCF_VENV} (pip install {' '.join(NNCF_PACKAGES)}; once)")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(NNCF_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *NNCF_PACKAGES], check=True)
        ready.write_text(" ".join(NNCF_PACKAGES) + "\n")
    return python


def nncf_int8(onnx_fp32: Path, work: Path, calibration) -> tuple[object, str]:
    """NNCF's post-training int8 of the float ONNX file, with the calibration images every other int8 gets; and
    NNCF's version."""
    import subprocess

    import numpy as np

    from edgepress.artifact import Artifact
    from edgepress.deploy.coverage import manifest_fields

    images, out = work / "nncf_calibration.npz", work / "nncf_int8.onnx"
    np.savez(images, x=np.asarray(calibration, np.float32))
    done = subprocess.run([str(nncf_python()), "-c", NNCF_SCRIPT, str(onnx_fp32), str(images), str(out)],
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"NNCF failed:\n{done.stderr[-3000:]}")
    version = done.stdout.strip().splitlines()[-1]
    return Artifact.record(out, "onnx", "int8_static", quantization=manifest_fields(out)), version


def torch_vit():
    """The same ViT in PyTorch: a Linear embedding of each row, nn.TransformerEncoder (pre-LayerNorm, GELU, 4 heads,
    MLP 128, no dropout), a final LayerNorm, Flatten and a Linear head."""
    import torch
    from torch import nn

    class ViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(28, WIDTH)
            layer = nn.TransformerEncoderLayer(WIDTH, HEADS, MLP, dropout=0.0, activation="gelu", batch_first=True,
                                               norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, BLOCKS, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(WIDTH)
            self.head = nn.Linear(28 * WIDTH, 10)

        def forward(self, x):
            return self.head(torch.flatten(self.norm(self.encoder(self.embed(x))), 1))

    torch.manual_seed(SEED)
    return ViT()


def torch_fit(module, x, y, epochs: int, rate: float, seed: int, batch: int = 128) -> None:
    """Adam on cross-entropy, shuffled batches: what training.fit does for the Keras model."""
    import numpy as np
    import torch
    from torch import nn

    torch.manual_seed(seed)
    order = np.random.default_rng(seed)
    xt, yt = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(np.asarray(y, np.int64))
    optimizer = torch.optim.Adam(module.parameters(), rate)
    module.train()
    for _ in range(epochs):
        for idx in np.array_split(order.permutation(len(xt)), max(1, len(xt) // batch)):
            optimizer.zero_grad()
            nn.functional.cross_entropy(module(xt[idx]), yt[idx]).backward()
            optimizer.step()
    module.eval()


def torch_contenders(work: Path, args, npz: Path, train, test, pick: dict | None,
                     validation: int) -> tuple[list, dict]:
    """The PyTorch ViT, trained like the Keras one, saved as .pt2 with a dynamic batch, and taken through
    `edgepress run`: float (trained --extra epochs more) to TFLite fp32 / int8 (litert-torch) and ONNX fp32 /
    int8_static; the base through structured_prune + distill at the Keras tune's pick (ratio, channel multiple,
    epochs), or with --torch-tune-minutes at the pick of its own tune, to that pick's precision and fp32.
    Returns [(label, Artifact)] and facts."""
    import copy
    import shutil

    import numpy as np
    import torch
    from compression import _log

    from edgepress.artifact import Artifact
    from edgepress.models.torch_program import save_torch_program

    # One thread: with two on two busy cores, torch's threads wait on each other (a training step 10x slower here).
    torch.set_num_threads(1)
    (x, y), (x_test, y_test) = train, test
    base = torch_vit()
    say(f"PyTorch ViT ({sum(p.numel() for p in base.parameters()):,} parameters): {args.base} epochs")
    torch_fit(base, x, y, args.base, 2e-3, SEED)
    float_module = copy.deepcopy(base)
    say(f"PyTorch float: {args.extra} epochs more")
    torch_fit(float_module, x, y, args.extra, 5e-4, SEED + 1)

    def accuracy(module) -> float:
        with torch.no_grad():
            return float((module(torch.from_numpy(x_test)).argmax(-1).numpy() == y_test).mean())

    facts = {"params": sum(p.numel() for p in base.parameters()), "base_accuracy": accuracy(base),
             "float_accuracy": accuracy(float_module)}
    sample = torch.from_numpy(np.ascontiguousarray(x[:2]))
    save_torch_program(base, sample, work / "torch_base.pt2")
    save_torch_program(float_module, sample, work / "torch_float.pt2")
    if args.torch_tune_minutes:
        say(f"edgepress tune of the PyTorch ViT: {args.torch_tune_minutes:g} min budget")
        _, facts["tune"] = tune_contender(work, args, work / "torch_base.pt2", npz, len(x) + validation,
                                          len(x_test), validation, args.torch_tune_minutes, "torch_tune")
        pick = facts["tune"]["pick"] or pick
    params = (pick or {}).get("params") or {}
    ratio, half = params.get("ratio") or 0.5, max(1, args.extra // 2)
    prune = {"type": "structured_prune", "ratio": ratio, "fine_tune_epochs": half}
    if params.get("round_to", 1) != 1:
        prune["round_to"] = params["round_to"]
    # A float-ops pick keeps Keras LayerNorm and attention layers float; a PyTorch program's tflite int8 can keep only
    # its attention float (`float_ops: [attention]`), which this script does not ask for, so such a pick's precision
    # stands in as fp32 here.
    precision = "fp32" if (pick or {}).get("float_ops") else (pick or {}).get("precision") or "fp32"
    facts.update(prune=prune, pick_precision=precision, pick_float_ops=bool((pick or {}).get("float_ops")))
    data = {"dataset": "npz", "path": str(npz), "train_size": len(x), "test_size": len(x_test),
            "calibration_samples": 200}
    measure = {"runs": 3, "warmup": 1, "target_ci_width": None}  # timed below, with every other file
    runs = {
        "float": ([], [("tflite", "fp32"), ("tflite", "int8"), ("onnx", "fp32"), ("onnx", "int8_static")],
                  work / "torch_float.pt2"),
        "pruned": ([prune, {"type": "distill", "teacher": "source", "epochs": half}],
                   list(dict.fromkeys([("tflite", precision), ("tflite", "fp32")])), work / "torch_base.pt2"),
    }
    made: dict = {}
    for name, (steps, exports, model) in runs.items():
        say(f"PyTorch {name}: edgepress run ({', '.join(s['type'] for s in steps) or 'no step'} -> "
            + ", ".join(f"{f} {p}" for f, p in exports) + ")")
        folder = work / f"torch_{name}_run"
        shutil.rmtree(folder, ignore_errors=True)
        report = edgepress.run(edgepress.Recipe.from_dict({
            "name": f"torch-{name}", "model": {"path": str(model)}, "data": data, "measure": measure,
            "steps": steps, "exports": [{"format": f, "precision": p} for f, p in exports]}), folder, _log())
        made[name] = {(a["format"], a["precision"]): Artifact.load(a["path"]) for a in report.artifacts}
        if name == "pruned":
            facts["pruned_params"] = report.results["models"][-1]["params"]
            facts["pruned_accuracy"] = report.results["models"][-1]["accuracy"]
    step = f"structured_prune {ratio:g} + distill"
    labels = [("float (TFLite fp32, litert-torch)", made["float"][("tflite", "fp32")]),
              ("plain PTQ int8 (litert-torch)", made["float"][("tflite", "int8")]),
              (f"edgepress {step} -> tflite {precision}", made["pruned"][("tflite", precision)])]
    if precision != "fp32":
        labels.append((f"({step}, fp32)", made["pruned"][("tflite", "fp32")]))
    labels += [("float (ONNX fp32, torch.onnx)", made["float"][("onnx", "fp32")]),
               ("plain PTQ int8 (onnxruntime, static QDQ)", made["float"][("onnx", "int8_static")])]
    return labels, facts


def litert_quantizer(fp32: Path, work: Path, calibration):
    """The float file through LiteRT's quantizer, full int8 (static_wi8_ai8), calibrated like the others."""
    import contextlib

    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    from edgepress.artifact import Artifact
    from edgepress.compat import quiet
    from edgepress.deploy.coverage import manifest_fields

    runner = Interpreter(model_path=str(fp32))
    (key, signature), = runner.get_signature_list().items()
    (name,) = signature["inputs"]
    with quiet(), contextlib.redirect_stdout(sys.stderr):  # it prints its progress
        q = quantizer.Quantizer(str(fp32), recipe.static_wi8_ai8())
        result = q.quantize(q.calibrate({key: [{name: np.asarray(x[None], np.float32)} for x in calibration]}))
    out = work / "litert_quantizer_int8.tflite"
    out.write_bytes(bytes(result.quantized_model))
    return Artifact.record(out, "tflite", "int8", quantization=manifest_fields(out))


def int8_share(artifact) -> float | None:
    return artifact.quantization.get("int8_macs")


def table(rows: list[dict]) -> list[str]:
    """The markdown table of measured rows; each row's speed-up is against its format's float row (the first
    row of that format), the builtin-kernel rows' against the XNNPACK float row."""
    lines = ["| file | accuracy | vs float | int8 MACs | bytes | p50 us | speed-up vs float of its format |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        base = float_of(rows, r)
        ci = r["ci"] or [r["p50"], r["p50"]]
        share = "-" if r["int8_macs"] is None else f"{r['int8_macs']:.0%}"
        lines.append(f"| {r['label']} | {r['accuracy']:.2%} | {(r['accuracy'] - base['accuracy']) * 100:+.2f} "
                     f"pt | {share} | {r['artifact'].bytes:,} | {r['p50'] * 1000:.1f} [{ci[0] * 1000:.1f}, "
                     f"{ci[1] * 1000:.1f}] | {base['p50'] / r['p50']:.2f}x |")
    return lines


def float_of(rows: list[dict], row: dict) -> dict:
    """The float row `row` is compared with: the first row of its format."""
    return next(r for r in rows if r["artifact"].format == row["artifact"].format)


def describe_trial(params: dict) -> str:
    if not params.get("ratio"):
        return "no step (the base model's own exports)"
    rounding = f", round_to {params['round_to']}" if params.get("round_to", 1) != 1 else ""
    return (f"structured_prune {params['ratio']:g}{rounding} ({params['fine_tune_epochs']} epochs) + distill "
            f"({params['fine_tune_epochs']} epochs)" if params.get("distill") else
            f"structured_prune {params['ratio']:g}{rounding} ({params['fine_tune_epochs']} epochs)")


def goal_met(float_row: dict, pick: dict) -> bool:
    """Issue 23's goal: at least 2x lower p50 than float TFLite, at most 1 pt below it (accuracies are counts of
    test images: a tolerance for float rounding at the limit)."""
    return float_row["p50"] / pick["p50"] >= 2 and pick["accuracy"] >= float_row["accuracy"] - 0.01 - 1e-9


def trial_lines(trials: list[dict]) -> list[str]:
    """One line per distinct outcome: trials with the same choices and result (a repeat the tune answered from its
    cache, or the same refusal) share a line."""
    outcomes: dict[str, list[int]] = {}
    for t in trials:
        chosen = t["chosen"]
        got = (f"{chosen['artifact'].split('_', 1)[-1]} {chosen['accuracy']:.2%}, p50 {chosen['p50_ms'] * 1000:.1f} us"
               if chosen and chosen.get("accuracy") is not None and chosen.get("p50_ms") else t["status"])
        if t.get("reason"):
            got += f" ({t['reason']})"
        size = f", {t['params_count']:,} parameters" if t.get("params_count") else ""
        outcomes.setdefault(f"{describe_trial(t['params'])}{size}: {got}", []).append(t["number"])
    return [f"- trial{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))}: {outcome}"
            for outcome, numbers in outcomes.items()]


def tune_lines(tune: dict, float_row: dict, pick_row: dict | None) -> list[str]:
    """What the tune tried, trial by trial (its own measurements), and whether its pick met the issue's goal."""
    counts: dict[str, int] = {}
    for t in tune["trials"]:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    lines = [f"`edgepress tune` ({tune['budget_minutes']:g} min budget, {tune['minutes']:.1f} min with the source's "
             f"measurement and the summary): {len(tune['trials'])} trials ("
             + ", ".join(f"{n} {s}" for s, n in counts.items()) + f"), each spending {tune['epochs']} epochs "
             "(half fine-tuning after structured_prune, half distilling from the base): the same budget as every "
             "other contender, per trial; the search as a whole trained more, which the float model is not given "
             "(it is the price of the search, paid in wall time, not in the pick's training). Budget: accuracy at "
             f"most 1 pt below the base's float TFLite file ({tune['source_accuracy']:.2%}) on the validation set "
             f"(tune.validation_size {(tune['validation'] or {}).get('size')}: the last training images, which no "
             "contender trained on and the trials did not calibrate on; the table's test images selected nothing); "
             f"ratios {RATIOS[0]:g} to {RATIOS[1]:g} in steps of 0.05 (below 0.5 no file is 2x faster here), a "
             "channel multiple of 1 or 8, TFLite fp32, fp16, dynamic and int8 exported, and int8 with LayerNorm and "
             "attention float (float_ops) at a dynamic batch and at batch 1. Its trials, as the tune measured them "
             "(validation accuracy; p50 under the tune's own, shorter timing):",
             ""]
    lines += trial_lines(tune["trials"])
    for device, stopped in tune["stopped"].items():
        lines.append(f"- no longer exported on {device}: " + "; ".join(f"{c} ({why})" for c, why in stopped.items()))
    lines.append("")
    pick = tune["pick"]
    if pick is None or pick_row is None:
        lines.append("The tune found no artifact within 1 pt of the base: no pick to re-measure.")
        return lines
    speed = float_row["p50"] / pick_row["p50"]
    drop = (float_row["accuracy"] - pick_row["accuracy"]) * 100
    met = goal_met(float_row, pick_row)
    tested = (f" (its test accuracy, measured by the tune: {pick['test_accuracy']:.2%})"
              if pick.get("test_accuracy") is not None else "")
    lines.append(f"The tune's pick: trial {pick['trial']}, {describe_trial(pick['params'])}, {pick['artifact']}, "
                 f"{pick['accuracy']:.2%} on the validation set{tested}. "
                 f"Re-measured with the others: {pick_row['accuracy']:.2%} ({-drop:+.2f} pt against the equally "
                 f"trained float model's TFLite file), p50 {speed:.2f}x lower than float TFLite: issue 23's goal (at "
                 "least 2x lower p50 at most 1 pt below) " + ("MET." if met else "NOT met."))
    return lines


def torch_lines(rows: list[dict], torch: dict, facts: dict) -> list[str]:
    """The PyTorch ViT's table (its files were timed interleaved with the Keras ones) and what made them."""
    prune = torch["prune"]
    rounding = f", round_to {prune['round_to']}" if prune.get("round_to") else ""
    float_row = rows[0]
    pruned = next(r for r in rows if r["label"].startswith("edgepress structured_prune"))
    tune = torch.get("tune")
    if tune and tune["pick"]:
        whose = "the pick of its own tune"
        tuned = (f"`edgepress tune` on the PyTorch program ({tune['budget_minutes']:g} min budget, "
                 f"{len(tune['trials'])} trials, scored on the validation set like the Keras one) picked "
                 f"{tune['pick']['artifact']} ({tune['pick']['accuracy']:.2%} on the validation set); the run above "
                 "trained it again from the base.")
    else:
        whose = "the Keras tune's pick"
        tuned = ("the tune itself was not run on the PyTorch program" + (" (it found no pick within the budget)."
                 if tune else f" (its {facts['tune']['budget_minutes']:g} minutes went to the Keras model)."))
    return [
        "### the same ViT in PyTorch",
        "",
        f"nn.TransformerEncoder (2 pre-LayerNorm layers, 4 heads, GELU MLP of {MLP}, no dropout) between a Linear "
        f"embedding of each row and a LayerNorm + Flatten + Linear head, {torch['params']:,} parameters, trained on "
        f"the same images with Adam the same way ({facts['base_epochs']} epochs: {torch['base_accuracy']:.2%}; float: "
        f"{facts['extra_epochs']} more, {torch['float_accuracy']:.2%}), saved by torch.export as a .pt2 with a "
        "dynamic batch, and taken through `edgepress run` (litert-torch for TFLite, torch.onnx for ONNX). "
        f"edgepress: structured_prune {prune['ratio']:g}{rounding} ({whose}; heads and MLP units, "
        f"{prune['fine_tune_epochs']} epochs) + distill from the base ({prune['fine_tune_epochs']} epochs) to "
        f"{torch['pruned_params']:,} parameters ({torch['pruned_accuracy']:.2%}), exported "
        + ("as fp32 (the pick is int8 with its LayerNorm and attention float; this script does not ask a PyTorch "
           "program's int8 for its attention float)" if torch.get("pick_float_ops") else
           f"in the pick's precision ({torch['pick_precision']})")
        + f"; {tuned} Timed interleaved with the Keras files above.",
        "",
        *table(rows),
        "",
        f"The pruned PyTorch file against float TFLite: {float_row['p50'] / pruned['p50']:.2f}x lower p50, "
        f"{(pruned['accuracy'] - float_row['accuracy']) * 100:+.2f} pt.",
        "",
    ]


def render(rows: list[dict], facts: dict, seconds: float, args) -> str:
    from edgepress.api import environment

    torch_rows = [r for r in rows if r["group"] == "torch"]
    rows = [r for r in rows if r["group"] == "keras"]
    float_row = rows[0]
    best_float = facts["float_keras_accuracy"]
    lines = [
        "## transformers",
        "",
        f"Written by `benchmarks/transformers.py` on {time.strftime('%Y-%m-%d')} ({seconds / 60:.0f} min). A small "
        f"ViT in Keras 3 ({facts['params']:,} parameters: MNIST rows as 28 tokens, {BLOCKS} blocks of LayerNorm, "
        f"MultiHeadAttention with {HEADS} heads, residual Add, GELU MLP) trained on {facts['train']:,} real MNIST "
        f"images for {facts['base_epochs']} epochs (test accuracy {facts['base_accuracy']:.2%}); every contender "
        f"then spends {facts['extra_epochs']} epochs its own way (the float model trains on; qat fine-tunes "
        "quantization-aware; structured_prune fine-tunes and distill trains the pruned model from the base; each "
        "tune trial does the same at its own ratio). "
        f"Accuracy on {facts['test']:,} test images; every file measured by edgepress's runner on x86-host, batch 1, "
        "1 thread (TFLite with XNNPACK, ONNX with onnxruntime's CPU provider), all timed interleaved (95% interval "
        "of the p50 in brackets); the two builtin-kernel rows were timed together after them (their speed-up is "
        "against the XNNPACK float row). NNCF ran in its own venv (benchmarks/.venv-nncf, made by the script), "
        "on the float ONNX file with the same 200 calibration images. This machine's CPU: "
        f"{environment()['cpu']} ({int8_units()}); load average when the table was written "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other engineers' work: it slows every file alike, "
        "since they are timed interleaved, but widens the intervals).",
        "",
        *table(rows),
    ]
    qat = next(r for r in rows if r["label"].startswith("edgepress qat"))
    int8_ok = [r for r in rows if (r["int8_macs"] or 0) >= 0.9 and r["accuracy"] >= float_of(rows, r)["accuracy"]
               - 0.01 and not r.get("alone")]
    fastest = [r for r in rows[1:] if r["artifact"].format == "tflite" and r["accuracy"] >= float_row["accuracy"]
               - 0.01 and not r.get("alone")]
    best = min(fastest, key=lambda r: r["p50"]) if fastest else None
    pick_row = next((r for r in rows if r["label"].startswith("edgepress tune's pick")), None)
    lines += [
        "",
        f"Keras accuracies: float {best_float:.2%}, qat (fake-quant removed) {facts['qat_keras_accuracy']:.2%}, "
        f"structured_prune + distill {facts['pruned_keras_accuracy']:.2%} ({facts['pruned_params']:,} parameters). "
        f"Accuracy-aware search: {facts['aware']}",
        "",
        *tune_lines(facts["tune"], float_row, pick_row),
        "",
        "Done-when of issue 23, as measured here:",
        "- the tune's pick at least 2x lower p50 than float TFLite, at most 1 pt below the equally trained float "
        "model: " + ("no pick" if pick_row is None else
                     f"{float_row['p50'] / pick_row['p50']:.2f}x, "
                     f"{(pick_row['accuracy'] - float_row['accuracy']) * 100:+.2f} pt: "
                     + ("met" if goal_met(float_row, pick_row) else "NOT met"))
        + "; the fastest TFLite file within 1 pt: "
        + (f"{best['label']}, {float_row['p50'] / best['p50']:.2f}x" if best else "none") + ".",
        "- an int8 artifact keeps at least 90% of its MACs in int8 within 1 pt of float: "
        + (", ".join(f"{r['label']} ({r['int8_macs']:.0%}, {(r['accuracy'] - float_of(rows, r)['accuracy']) * 100:+.2f}"
                     " pt)" for r in int8_ok) or "none") + ".",
        f"- QAT of the attention model within 0.5 pt of float: its int8 file {qat['accuracy']:.2%} against float "
        f"{float_row['accuracy']:.2%} ({(qat['accuracy'] - float_row['accuracy']) * 100:+.2f} pt): "
        + ("met" if qat["accuracy"] >= float_row["accuracy"] - 0.005 else "NOT met") + ".",
        "",
        *(torch_lines(torch_rows, facts["torch"], facts) if torch_rows else []),
        "Measured on " + ", ".join(f"{k} {v}" for k, v in environment().items())
        + f"; NNCF {facts['nncf']} (its own venv).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
