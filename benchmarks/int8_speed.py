"""Is int8 faster than float on this machine, and where does the time go when it is not?

    .venv/bin/python benchmarks/int8_speed.py            # about 25-40 minutes on 2 cores
    .venv/bin/python benchmarks/int8_speed.py --tiny     # proves it runs; the numbers mean nothing

For the seed CNN (trained as compression.py trains it), the same CNN pruned by recipes/mnist_cnn_fast.yaml's
structured_prune, MobileNetV2 (alpha 0.35) at 32x32 and at 96x96, and the seed CNN with outlier channels
(accuracy_aware.py's), every precision in both formats and the int8 export options and runtime settings this
machine has (TFLite: int8 with the first convolution kept float, the builtin kernels instead of XNNPACK; ONNX
int8_static: per-tensor weights, uint8 weights, QOperator), and the small Keras 3 ViT of benchmarks/transformers.py
(`--models vit`: its float, dynamic-range and int8 files, int8 with `float_ops` keeping LayerNorm and the attention
in float where XNNPACK runs them, and in ONNX keeping them and the elementwise ops float), each measured by
edgepress's runner on x86-host at batch 1, 1 thread, all of a model's files timed interleaved, and each profiled
op by op (edgepress/deploy/profile.py).
The roofline context: each model's MACs and weight bytes, the MAC/s each file reaches, against the runtime's own peak
on this CPU (a 1024x1024 fully connected layer at batch 64, fp32 and int8, timed the same way). It writes the
`## int8 speed` section of RESULTS.md; a run of some of the models (`--models vit`) replaces only their
subsections.
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

from accuracy_aware import add_outliers  # noqa: E402
from compression import mnist_and_seed_cnn, say, write_section  # noqa: E402

# (format, precision, options, label): the files of every model. Options are the exporters' keywords.
VARIANTS = [
    ("tflite", "fp32", {}, "tflite fp32"),
    ("tflite", "fp16", {}, "tflite fp16"),
    ("tflite", "dynamic", {}, "tflite dynamic"),
    ("tflite", "int8", {}, "tflite int8"),
    ("tflite", "int8", {"float_layers": "first"}, "tflite int8, first conv float"),
    ("tflite", "int16x8", {}, "tflite int16x8"),
    ("tflite", "int8_weight", {}, "tflite int8_weight"),
    ("tflite", "int4_weight", {}, "tflite int4_weight"),
    ("onnx", "fp32", {}, "onnx fp32"),
    ("onnx", "fp16", {}, "onnx fp16"),
    ("onnx", "int8_dynamic", {}, "onnx int8_dynamic"),
    ("onnx", "int8_static", {}, "onnx int8_static (QDQ, u8 x s8, per channel)"),
    ("onnx", "int8_static", {"per_channel": False}, "onnx int8_static, per tensor"),
    ("onnx", "int8_static", {"weight_type": "uint8"}, "onnx int8_static, u8 weights"),
    ("onnx", "int8_static", {"quant_format": "qoperator"}, "onnx int8_static, QOperator"),
    ("onnx", "int8_static", {"float_layers": "first"}, "onnx int8_static, first conv float"),
    ("onnx", "int4_weight", {}, "onnx int4_weight"),
]
# The ViT's files: LayerNorm, softmax and the attention's batch matmuls have no int8 kernel in XNNPACK, so the
# int8 variants differ in which of them stay float (`float_ops`); no convolution, so no "first conv float".
VIT_VARIANTS = [
    ("tflite", "fp32", {}, "tflite fp32"),
    ("tflite", "fp16", {}, "tflite fp16"),
    ("tflite", "dynamic", {}, "tflite dynamic"),
    ("tflite", "int8", {}, "tflite int8"),
    ("tflite", "int8", {"float_ops": ["layernorm"]}, "tflite int8, float_ops layernorm"),
    ("tflite", "int8", {"float_ops": ["layernorm", "attention"]}, "tflite int8, float_ops layernorm + attention"),
    ("tflite", "int8_weight", {}, "tflite int8_weight"),
    # A fixed batch: every RESHAPE's target is then a constant, which XNNPACK takes (with a dynamic batch the
    # converter computes it from the input's SHAPE at run time, and those RESHAPEs run on the builtin kernels).
    ("tflite", "fp32", {"batch_size": 1}, "tflite fp32, batch 1"),
    ("tflite", "dynamic", {"batch_size": 1}, "tflite dynamic, batch 1"),
    ("tflite", "int8", {"float_ops": ["layernorm", "attention"], "batch_size": 1},
     "tflite int8, float_ops layernorm + attention, batch 1"),
    # int16 activations for chosen ops only: the TFLite converter cannot (its 16x8 mode is the whole model; its
    # debugger's deny-list leaves ops float, not int16); LiteRT's quantizer can, by a regex per op (`int16_ops`).
    ("tflite", "int16x8", {}, "tflite int16x8"),
    ("tflite", "int8", {"int16_ops": "LayerNormalization"}, "tflite int8 (LiteRT's quantizer), LayerNorm int16"),
    ("onnx", "fp32", {}, "onnx fp32"),
    ("onnx", "int8_dynamic", {}, "onnx int8_dynamic"),
    ("onnx", "int8_static", {}, "onnx int8_static (QDQ, u8 x s8, per channel)"),
    # onnxruntime runs quantized elementwise ops (bias and residual adds, GELU's muls, LayerNorm) as requantizing
    # QLinearAdd / QLinearMul between QuantizeLinear and DequantizeLinear nodes: `float_ops` keeps them float.
    ("onnx", "int8_static", {"float_ops": ["layernorm", "attention"]},
     "onnx int8_static, float_ops layernorm + attention"),
    ("onnx", "int8_static", {"float_ops": ["layernorm", "attention", "elementwise"]},
     "onnx int8_static, float_ops layernorm + attention + elementwise"),
    # A fixed batch: onnxruntime folds the shape arithmetic tf2onnx writes for a dynamic one (Shape, Gather, Concat).
    ("onnx", "fp32", {"batch_size": 1}, "onnx fp32, batch 1"),
    ("onnx", "int8_static", {"float_ops": ["layernorm", "attention", "elementwise"], "batch_size": 1},
     "onnx int8_static, float_ops layernorm + attention + elementwise, batch 1"),
]
ALL_MODELS = "seed_cnn,pruned_cnn,outliers,mobilenet_32,mobilenet_96,vit"
FLOAT = ("fp32", "fp16")  # what "the best float artifact" is chosen from
INT8 = ("int8", "int8_static")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mnist"), help="MNIST idx directory")
    parser.add_argument("--work", default=str(REPO / "runs" / "bench-int8-speed"), help="where files are written")
    parser.add_argument("--runs", type=int, default=300, help="timed runs per file at least (interleaved)")
    parser.add_argument("--max-seconds", type=float, default=90, help="cap on each model's interleaved timing")
    parser.add_argument("--models", default=ALL_MODELS)
    parser.add_argument("--tiny", action="store_true", help="few samples, 1 epoch, few runs: proves it runs")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args()
    started = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        args.runs, args.max_seconds = 20, 5
    rows = [*peaks(work, args), *[row for name in args.models.split(",") for row in measure(name, work, args)]]
    body = render(rows, time.perf_counter() - started, args)
    print(body)
    if not args.tiny:
        results = Path(args.results)
        if set(args.models.split(",")) == set(ALL_MODELS.split(",")):
            write_section(results, "int8 speed", body)
        else:
            write_section(results, "int8 speed", with_models(section(results, "int8 speed"), body))
        say(f"wrote the 'int8 speed' section of {args.results}")


def models(name: str, work: Path, args):
    """(Keras model, data fitted to it, calibration samples) for one of the benchmark's models."""
    from edgepress.models import zoo
    from edgepress.models.datasets import load_dataset

    if name == "vit":
        return _vit(args)
    if name in ("seed_cnn", "outliers", "pruned_cnn"):
        data, model = mnist_and_seed_cnn(args.data) if not args.tiny else _tiny_cnn(args)
        if name == "outliers":
            add_outliers(model.layers[-2], model.layers[-1])
        if name == "pruned_cnn":
            from edgepress.compress.structured_prune import structured_prune

            recipe = edgepress.Recipe.from_yaml(REPO / "recipes" / "mnist_cnn_fast.yaml")
            config = next(s for s in recipe.steps if s.type == "structured_prune")
            epochs = 1 if args.tiny else config.fine_tune_epochs
            say(f"pruning the seed CNN as mnist_cnn_fast.yaml does (ratio {config.ratio}, {epochs} epochs)")
            model = structured_prune(model, data.x_train, data.y_train,
                                     config.model_copy(update={"fine_tune_epochs": epochs}))
        return model, data, data.calibration(200)
    side = 32 if name == "mobilenet_32" else 96
    data = load_dataset("mnist", args.data, train_size=800 if args.tiny else 8000, test_size=200 if args.tiny else
                        2000)
    build = zoo.ZOO["mobilenet_v2"].build
    from edgepress.models import training

    epochs = 1 if args.tiny else (20 if side == 32 else 4)
    say(f"training MobileNetV2 (alpha 0.35, {side}x{side}x3) on {len(data.x_train)} MNIST images ({epochs} epochs)")
    model = build((side, side, 3), data.num_classes)
    fitted = data.fit_to((side, side, 3))
    training.fit(model, fitted.x_train, fitted.y_train, epochs, seed=0)
    return model, fitted, fitted.calibration(200)


def _vit(args):
    """benchmarks/transformers.py's ViT (MNIST rows as tokens), trained on real MNIST (fewer epochs than there: only
    the int8 files' agreement with it matters here)."""
    import keras
    import numpy as np
    from transformers import SEED, vit  # benchmarks/transformers.py (benchmarks/ is first on sys.path)

    from edgepress.models import training
    from edgepress.models.datasets import load_dataset

    data = load_dataset("mnist", args.data, train_size=1000 if args.tiny else 8000,
                        test_size=200 if args.tiny else 2000).fit_to((28, 28))
    keras.utils.set_random_seed(SEED)
    model = vit(keras)
    epochs = 1 if args.tiny else 10
    say(f"training the ViT ({model.count_params():,} parameters) on {len(data.x_train)} MNIST images, {epochs} epochs")
    training.fit(model, data.x_train.astype(np.float32), data.y_train, epochs, 128, 2e-3, seed=SEED)
    return model, data, data.x_train[:200].astype(np.float32)


def _tiny_cnn(args):
    from edgepress.models import zoo
    from edgepress.models.datasets import load_dataset

    data = load_dataset("mnist", args.data, train_size=512, test_size=200).fit_to((28, 28, 1))
    return data, zoo.train("seed_cnn", data, epochs=1, seed=0)


def measure(name: str, work: Path, args) -> list[dict]:
    """Every variant of one model, exported, measured interleaved, and profiled op by op."""
    from edgepress.artifact import Artifact
    from edgepress.deploy import export_onnx, export_tflite
    from edgepress.deploy.measure import measure_many
    from edgepress.deploy.profile import profile_many
    from edgepress.devices import load_device
    from edgepress.models.source import wrap

    started = time.perf_counter()
    model, data, calibration = models(name, work, args)
    source = wrap(model)
    first = _first_conv(model) if name != "vit" else None
    out = work / name
    out.mkdir(exist_ok=True)
    files = []
    for fmt, precision, options, label in VIT_VARIANTS if name == "vit" else VARIANTS:
        options = dict(options)
        if options.get("float_layers") == "first":
            options["float_layers"] = [first]
        export = export_tflite if fmt == "tflite" else export_onnx
        path = out / f"{len(files):02d}_{precision}.{fmt}"
        if "int16_ops" in options:
            files.append((label, fmt, precision, _int16_ops(files[0][3], path, model, options["int16_ops"],
                                                             calibration)))
            continue
        files.append((label, fmt, precision, export(source, path, precision, calibration=calibration, **options)))
    host = load_device("x86-host")
    builtin = host.with_overrides({"name": "x86-host, builtin kernels", "delegate": "none"})
    say(f"{name}: measuring {len(files)} files interleaved")
    test = (data.x_test, data.y_test)
    # The files LiteRT's quantizer made are no Artifacts (no manifest): passed by path.
    artifacts = [a if isinstance(a, Artifact) else a.path for *_, a in files]
    timed = measure_many(artifacts, test, host, args.runs, 30, 1, max_runs=args.runs * 10,
                         target_ci_width=0.03, max_seconds=args.max_seconds)
    profiles = profile_many(artifacts, host, runs=max(20, args.runs // 3), warmup=20, threads=1)
    rows = [_row(name, label, fmt, precision, artifact, result, profile)
            for (label, fmt, precision, artifact), result, profile in zip(files, timed, profiles, strict=True)]
    int8_tflite = next(a for label, _, _, a in files if label == "tflite int8")
    fp32_tflite = next(a for label, _, _, a in files if label == "tflite fp32")
    say(f"{name}: timing tflite fp32 and int8 on the builtin kernels (no XNNPACK)")
    alone = ((fp32_tflite, "tflite fp32, builtin kernels"), (int8_tflite, "tflite int8, builtin kernels"))
    for artifact, label in alone:
        (result,) = measure_many([artifact], test, builtin, args.runs, 30, 1)
        (profile,) = profile_many([artifact], builtin, runs=max(20, args.runs // 3), warmup=20, threads=1)
        rows.append({**_row(name, label, "tflite", artifact.precision, artifact, result, profile), "alone": True})
    for row in rows:  # a run of some models only: their subsections say when and under what load they were taken
        row.update(minutes=(time.perf_counter() - started) / 60, load=os.getloadavg()[0])
    return rows


def _int16_ops(fp32, path: Path, model, layer_type: str, calibration):
    """`fp32` (the model's fp32 .tflite artifact) quantized by LiteRT's quantizer: int8 weights and activations,
    but int16 activations for the ops of every `layer_type` layer (a regex on their names), calibrated on
    `calibration`; an object with what the table reads (path, bytes, quantization)."""
    import contextlib
    import types

    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import qtyping, quantizer, recipe_manager

    from edgepress.deploy.coverage import int8_macs
    from edgepress.deploy.layers import layers_of_type

    names = "|".join(sorted(layers_of_type(model, layer_type)))
    manager = recipe_manager.RecipeManager()
    every = qtyping.TFLOperationName.ALL_SUPPORTED
    manager.add_static_config(regex=".*", operation_name=every, activation_num_bits=8, weight_num_bits=8)
    manager.add_static_config(regex=f".*/({names})(_\\d+)?/.*", operation_name=every, activation_num_bits=16,
                              weight_num_bits=8)
    ((key, signature),) = Interpreter(model_path=str(fp32.path)).get_signature_list().items()
    (name,) = signature["inputs"]
    with contextlib.redirect_stdout(sys.stderr):  # it prints progress
        q = quantizer.Quantizer(str(fp32.path), manager.get_quantization_recipe())
        path.write_bytes(bytes(q.quantize(q.calibrate({key: [{name: x[None]} for x in calibration]})).quantized_model))
    return types.SimpleNamespace(path=path, bytes=path.stat().st_size, precision="int8",
                                 quantization=int8_macs(path))


def _row(model: str, label: str, fmt: str, precision: str, artifact, result: dict, profile: dict) -> dict:
    return {"model": model, "label": label, "format": fmt, "precision": precision, "artifact": artifact,
            "accuracy": result["accuracy"], "p50": result["latency_ms"]["p50"], "ci": result["latency_ms"]["p50_ci"],
            "profile": profile, "macs": artifact.quantization.get("macs"),
            "int8_macs": artifact.quantization.get("int8_macs")}


def _first_conv(model) -> str:
    return next(layer.name for layer in model.layers if type(layer).__name__ == "Conv2D")


def peaks(work: Path, args) -> list[dict]:
    """The runtimes' own peak MAC/s on this CPU: a 1024x1024 fully connected layer at batch 64, fp32 and int8."""
    import numpy as np

    from edgepress.compat import keras
    from edgepress.deploy import export_onnx, export_tflite
    from edgepress.deploy.runner import benchmark

    k = keras()
    k.utils.set_random_seed(0)
    model = k.Sequential([k.Input((1024,)), k.layers.Dense(1024, use_bias=False)], name="gemm")
    calibration = np.random.default_rng(0).random((50, 1024)).astype(np.float32)
    out = work / "peak"
    out.mkdir(exist_ok=True)
    rows = []
    for fmt, precision in (("tflite", "fp32"), ("tflite", "int8"), ("onnx", "fp32"), ("onnx", "int8_static")):
        export = export_tflite if fmt == "tflite" else export_onnx
        artifact = export(model, out / f"gemm_{precision}.{fmt}", precision, calibration=calibration, batch_size=64)
        result = benchmark(str(artifact.path), runs=max(20, args.runs // 10), warmup=5, batch=64)
        rows.append({"model": "peak", "label": f"{fmt} {precision}", "format": fmt, "precision": precision,
                     "macs": 64 * 1024 * 1024, "p50": result["latency_ms"]["p50"]})
    return rows


def render(rows: list[dict], seconds: float, args) -> str:
    from edgepress.api import environment
    from edgepress.text import op_text, top_ops

    peak = {r["label"]: r["macs"] / (r["p50"] / 1000) for r in rows if r["model"] == "peak"}
    lines = [
        "## int8 speed",
        "",
        f"Written by `benchmarks/int8_speed.py` on {time.strftime('%Y-%m-%d')} ({seconds / 60:.0f} min). Every file "
        "measured by edgepress's runner on x86-host, batch 1, 1 thread; a model's files timed interleaved (95% "
        "interval of the p50 in brackets; builtin-kernel rows timed alone after them); per-op times from "
        "edgepress's profile (ONNX: onnxruntime's profiler; TFLite: each op timed alone, which adds about 1 us of "
        "invocation cost per op). This machine's CPU: "
        f"{environment()['cpu']} ({int8_units()}). Load average when the tables were written: "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work on the machine slows every file alike, "
        "since a model's files are timed interleaved, but widens the intervals).",
        "",
        "Runtime peaks on this CPU (a 1024x1024 fully connected layer at batch 64): "
        + ", ".join(f"{label} {value / 1e9:.1f} GMAC/s" for label, value in peak.items()) + ".",
        "",
    ]
    for model in dict.fromkeys(r["model"] for r in rows if r["model"] != "peak"):
        mine = [r for r in rows if r["model"] == model]
        base = next(r for r in mine if r["label"] == "tflite fp32")
        best_float = min((r for r in mine if r["precision"] in FLOAT and not r.get("alone")), key=lambda r: r["p50"])
        best_int8 = min((r for r in mine if r["precision"] in INT8 and not r.get("alone")), key=lambda r: r["p50"])
        lines += [f"### {model} ({base['macs']:,} MACs)", ""]
        if set(args.models.split(",")) != set(ALL_MODELS.split(",")):
            lines += [f"Measured on its own on {time.strftime('%Y-%m-%d')} ({base['minutes']:.0f} min, load average "
                      f"{base['load']:.1f} on {os.cpu_count()} cores when its files were timed), the way the section "
                      "says.", ""]
        lines += ["| file | accuracy | int8 MACs | bytes | p50 us | vs tflite fp32 | GMAC/s | slowest op |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in mine:
            ci = r["ci"] or [r["p50"], r["p50"]]
            top = top_ops(r["profile"], 1) if r["profile"] and not r["profile"].get("error") else []
            gmacs = r["macs"] / (r["p50"] / 1000) / 1e9 if r["macs"] else 0
            lines.append(
                f"| {r['label']} | {r['accuracy']:.2%} | {r['int8_macs'] or 0:.0%} | {r['artifact'].bytes:,} | "
                f"{r['p50'] * 1000:.1f} [{ci[0] * 1000:.1f}, {ci[1] * 1000:.1f}] | {base['p50'] / r['p50']:.2f}x | "
                f"{gmacs:.2f} | {op_text(top[0]) if top else '-'} |")
        faster = best_int8["ci"][1] <= best_float["ci"][0]
        tie = not faster and best_int8["ci"][0] <= best_float["ci"][1]
        verdict = "faster than" if faster else "tied with (intervals overlap)" if tie else "slower than"
        lines += ["", f"Best int8: {best_int8['label']} at {best_int8['p50'] * 1000:.1f} us, {verdict} the best float "
                  f"file, {best_float['label']} at {best_float['p50'] * 1000:.1f} us.", ""]
        slower = _why_slower(mine)
        if slower:
            lines += ["Files slower than their format's fp32 file beyond the noise (and by 5% or more), and why "
                      "(edgepress's per-op explanation, as its reports give it):", "", *slower, ""]
    lines.append("Measured on " + ", ".join(f"{k} {v}" for k, v in environment().items()) + ".")
    return "\n".join(lines) + "\n"


def _why_slower(rows: list[dict]) -> list[str]:
    """One line per file slower than its format's fp32 file (on the same delegate) beyond the noise and by 5% or more:
    edgepress's own explanation from the two per-op profiles (edgepress.deploy.profile.why_slower)."""
    from edgepress.deploy.profile import why_slower

    lines = []
    for r in rows:
        base = next((b for b in rows if b["format"] == r["format"] and b["precision"] == "fp32"
                     and b.get("alone") == r.get("alone")), None)
        profiled = all(x["profile"] and not x["profile"].get("error") for x in (r, base or r))
        if base is None or r is base or not profiled or not r["ci"] or not base["ci"] or r["ci"][0] <= base["ci"][1]:
            continue
        if r["p50"] < 1.05 * base["p50"]:  # intervals apart but within 5%: nothing an op table can explain
            continue
        lines.append(f"- {r['label']}: {r['p50'] / base['p50']:.1f}x slower than {base['label']}: "
                     f"{why_slower(r['profile'], base['profile'], 3)}.")
    return lines


def section(path: Path, name: str) -> str:
    """Section `## name` of the markdown file `path` ("" when it has none)."""
    import re

    text = path.read_text() if path.exists() else ""
    found = [part for part in re.split(r"(?m)^(?=## )", text) if part.startswith(f"## {name}\n")]
    return found[0] if found else ""


def with_models(old: str, new: str) -> str:
    """Section `old` with the `### model` subsections of `new` in place of its own of those models (added before its
    closing "Measured on" line if new); `old`'s other subsections and its opening stay as they were."""
    import re

    if not old:
        return new

    def blocks(text: str) -> tuple[str, dict[str, str], str]:
        head, *parts = re.split(r"(?m)^(?=### )", text)
        tail = ""
        if parts and "\nMeasured on " in parts[-1]:
            last, _, rest = parts[-1].rpartition("\nMeasured on ")
            parts[-1], tail = last + "\n", "Measured on " + rest
        return head, {part.split()[1]: part for part in parts}, tail

    head, mine, tail = blocks(old)
    _, theirs, _ = blocks(new)
    merged = {**mine, **theirs}
    return head + "".join(part.rstrip("\n") + "\n\n" for part in merged.values()) + tail


def int8_units() -> str:
    """What this CPU has for int8 dot products, from /proc/cpuinfo (the kernels' fast paths depend on it)."""
    try:
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        return "CPU flags unknown"
    units = [name for flag, name in (("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"),
                                     ("amx_int8", "AMX-INT8"), ("avx512bw", "AVX-512 BW"), ("avx2", "AVX2"))
             if flag in flags]
    return "int8 units: " + (", ".join(units) if units else "none beyond SSE")


if __name__ == "__main__":
    main()
