"""`run(recipe) -> Report`: the one orchestrator behind the CLI and the Python API.

load model and data -> steps, in order -> exports (each checked against its model) ->
measurement of each artifact on this host -> gates -> results.json, report.md, report.html.

The model is a Keras model (every step applies), or a graph edgepress exports but cannot train
(`edgepress.models.graphs`): a plain TF SavedModel or an .onnx file. `edgepress.models.source`
decides what of the recipe applies to it, before anything is written.
"""

from __future__ import annotations

import datetime as dt
import platform
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

from edgepress import files
from edgepress.recipe import Recipe
from edgepress.report import (
    BUDGET_GATE,
    SCHEMA_VERSION,
    Report,
    apply_gates,
    choose_best,
    run_passed,
    stage_notes,
)


class Progress:
    """Receives progress from a run. The CLI shows it live; the default prints nothing."""

    def update(self, message: str) -> None:
        """Work in progress (e.g. a training epoch); replaces the previous update."""

    def done(self, message: str) -> None:
        """A finished stage, with its result."""


def run(recipe: Recipe, run_dir: str | Path | None = None, progress: Progress | None = None) -> Report:
    """Run `recipe` and return its Report; everything is written into `run_dir`.

    `run_dir` defaults to runs/<recipe name>-<timestamp>. Bad input raises EdgepressError before
    anything is written. Gates are recorded, not raised: call `report.check()` for that.
    """
    from edgepress.compress import STEPS, sparsity
    from edgepress.compress.qat import is_quantize_aware
    from edgepress.deploy.transports import DeviceError
    from edgepress.models import training
    from edgepress.models.datasets import load_dataset
    from edgepress.models.source import applicable, fixed_input
    from edgepress.models.source import kind as model_kind

    progress = progress or Progress()
    started = time.perf_counter()
    spec = recipe.data
    # Everything that can be refused is checked before the run directory is made.
    data = load_dataset(spec.dataset, spec.path, spec.train_size, spec.test_size, spec.seed)
    needs_calibration = any(e.precision in ("int8", "int16x8", "int8_static") for e in recipe.exports)
    if needs_calibration:
        data.calibration(spec.calibration_samples)
    model, source_name = _load_source(recipe, data, progress)
    model = fixed_input(model, recipe.model.input_shape, source_name)
    recipe, notes = applicable(model, recipe)
    loaded, data = data, data.fit_to(tuple(model.input_shape[1:]))  # `loaded` is refitted to a student's input
    source_model = model
    checked = model  # the model each step will get: after a distill step, its student
    for step in recipe.steps:
        entry = STEPS[step.type]
        extra = {"source": source_model} if entry.needs_source else {}
        entry.validate(checked, step, **extra)
        if entry.result_like is not None:
            checked = entry.result_like(checked, step, **extra)
    if any(e.quantize is not None for e in recipe.exports):
        from edgepress.deploy.accuracy_aware import check_quantizable
        from edgepress.errors import EdgepressError

        check_quantizable(model)
        if any(step.type == "qat" for step in recipe.steps):
            raise EdgepressError(
                "An export with `quantize:` (accuracy-aware post-training int8) cannot follow a qat step: the "
                "quantization-aware model already carries its int8 ranges. Export it as tflite int8 without "
                "`quantize:`, or drop the qat step."
            )
    calibration = data.calibration(spec.calibration_samples) if needs_calibration else None
    check_x = data.x_test[: spec.check_samples]

    run_dir = Path(run_dir or Path("runs") / f"{recipe.name}-{dt.datetime.now():%Y%m%d-%H%M%S}")
    run_dir.mkdir(parents=True, exist_ok=True)
    files.write_text(run_dir / "recipe.yaml", recipe.to_yaml())

    source_outputs = training.predict(model, data.x_test)
    source_metrics = _scores(source_outputs, data.y_test)
    source_accuracy = source_metrics["accuracy"]
    reference = np.argmax(source_outputs, axis=-1)
    stages = [_stage("source", model, source_metrics, sparsity)]
    progress.done(f"source {source_name}: {_scored(source_metrics)} on {len(data.x_test)} test samples")
    _save_model(model, run_dir / "models" / "0-source.keras")

    chain: list[str] = []
    for i, step in enumerate(recipe.steps, start=1):
        progress.update(f"step {i} {step.type}")
        for note in STEPS[step.type].notes(model, step) if STEPS[step.type].notes else []:
            progress.done(f"step {i} {step.type}: {note}")
        on_epoch = _epoch_reporter(progress, f"step {i} {step.type}")
        entry = STEPS[step.type]
        extra = {"source": source_model} if entry.needs_source else {}
        if entry.scored is not None:  # the step also scores what it compares itself with (distill: the teacher)
            model, details = entry.scored(model, data.x_train, data.y_train, step, on_epoch=on_epoch,
                                          test=(data.x_test, data.y_test), **extra)
        else:
            model, details = entry.run(model, data.x_train, data.y_train, step, on_epoch=on_epoch), {}
        chain.append(step.type)
        if tuple(model.input_shape[1:]) != data.x_test.shape[1:]:
            # A distilled student may take another input (an MLP after a CNN): fit the data to it from the source.
            data = loaded.fit_to(tuple(model.input_shape[1:]))
            calibration = data.calibration(spec.calibration_samples) if needs_calibration else None
            check_x = data.x_test[: spec.check_samples]
        scores = _scores(training.predict(model, data.x_test), data.y_test)
        stages.append({**_stage(step.type, model, scores, sparsity), **details})
        progress.done(f"step {i} {step.type}: {_scored(scores)}, {stages[-1]['params']:,} parameters, "
                      f"{stages[-1]['macs']:,} MACs" + "".join(f"; {note}" for note in stage_notes(stages[-1])))
        _save_model(model, run_dir / "models" / f"{i}-{step.type}.keras", quantize_aware=is_quantize_aware(model))

    devices = recipe.devices()
    failures: dict[str, str] = {}  # device name -> why it could not be measured
    artifacts = []
    quantized: list = []  # the accuracy-aware quantization results (QuantizeResult), for sensitivity.md
    made = _exports(model, run_dir, recipe, data, calibration, check_x, chain, progress, quantized)
    for export, artifact, extra in made:
        label = f"{export.format} {export.precision}"
        for device in devices:
            if not device.runs(export.format) or device.name in failures:
                continue
            progress.update(f"measure {label} on {device.name}")
            try:
                measured = _measure(artifact, data, recipe, reference, device)
            except DeviceError as e:
                # Keep going: the other devices' results still make the report.
                failures[device.name] = str(e)
                progress.done(f"{device.name} failed: {e}")
                continue
            accuracy = measured["metrics"]["accuracy"]
            measured["metrics"]["accuracy_drop"] = None if accuracy is None else source_accuracy - accuracy
            apply_gates(measured, recipe.gates.model_dump(), device.memory_budget_mb)
            _add_quantize_keys(measured, extra, stages[-1]["accuracy"])
            artifacts.append(measured)
            progress.done(f"{artifact.name} on {device.name}: {artifact.bytes:,} bytes, "
                          f"accuracy {_percent(accuracy)}, p50 {_ms(measured['latency']['p50'])}")

    results = {
        "schema_version": SCHEMA_VERSION,
        "edgepress_version": _version("edgepress"),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - started, 1),
        "recipe": recipe.model_dump(mode="json"),
        "environment": environment(),
        "data": {
            "dataset": data.name,
            "train_samples": len(data.x_train),
            "test_samples": len(data.x_test),
            "calibration_samples": 0 if calibration is None else len(calibration),
        },
        "source": {"model": source_name, "kind": model_kind(model), "params": stages[0]["params"],
                   "metrics": source_metrics},
        "models": stages,
        "devices": {d.name: {"reach": d.reach.kind, "error": failures.get(d.name)} for d in devices},
        "artifacts": artifacts,
        "gates": recipe.gates.model_dump(),
        "best": choose_best(_delivered(artifacts)),
        "passed": _passed(artifacts, failures, recipe.gates.require),
        "quantize": [q.to_dict() for q in quantized],
        "notes": notes,
    }
    report = Report(results)
    report.save(run_dir)
    if quantized:
        from edgepress.deploy.accuracy_aware import write_sensitivity

        write_sensitivity(run_dir, quantized)
    return report


def environment() -> dict:
    """Versions of the parts that shape the numbers, and the CPU they were measured on."""
    from edgepress.deploy.runner import cpu_model

    env = {"python": platform.python_version(), "machine": platform.machine(), "cpu": cpu_model()}
    for package in ("tensorflow", "tf_keras", "tensorflow-model-optimization", "ai-edge-litert", "onnxruntime",
                    "onnx", "tf2onnx", "numpy", "torch"):
        env[package] = _version(package)
    return env


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _load_source(recipe: Recipe, data, progress: Progress):
    """The run's model and its name: a Keras model, or a Graph (a plain SavedModel, an .onnx file)."""
    from edgepress.models import graphs, zoo

    spec = recipe.model
    if spec.path is not None:
        from edgepress.models.loading import load_model

        progress.update(f"load {spec.path}")
        return graphs.open_graph(spec.path) or load_model(spec.path), spec.path
    on_epoch = _epoch_reporter(progress, f"train {spec.zoo}")
    model = zoo.train(spec.zoo, data, spec.train_epochs, spec.batch_size, spec.learning_rate, spec.seed, on_epoch)
    entry = zoo.ZOO[spec.zoo]
    if entry.save is not None:  # a raw tf.Module or a PyTorch model: run as the file its users would bring
        model = graphs.from_trained(model, entry.save, entry.saved_as)
    return model, f"zoo:{spec.zoo}"


def _scores(outputs: np.ndarray, y: np.ndarray) -> dict:
    """accuracy, and for a sequence model cross_entropy and perplexity: the runner's own scoring, without per_class."""
    from edgepress.deploy.runner import score

    scores = score(outputs, y)
    scores.pop("per_class")
    return scores


def _scored(scores: dict) -> str:
    text = f"accuracy {scores['accuracy']:.2%}"
    return text + (f", perplexity {scores['perplexity']:.3f}" if "perplexity" in scores else "")


def _epoch_reporter(progress: Progress, what: str) -> Callable[[int, int, dict], None]:
    def report(epoch: int, epochs: int, logs: dict) -> None:
        progress.update(f"{what}: epoch {epoch}/{epochs}, loss {logs.get('loss', 0):.4f}, "
                        f"accuracy {logs.get('accuracy', 0):.2%}")

    return report


def _stage(name: str, model, scores: dict, sparsity) -> dict:
    from edgepress.models.graphs import Graph
    from edgepress.models.stats import macs

    stage = {"stage": name, "accuracy": scores["accuracy"], "params": int(model.count_params()), "macs": None,
             "sparsity": None}
    if not isinstance(model, Graph):  # MACs and sparsity are counted over Keras layers
        stage.update(macs=macs(model), sparsity=sparsity(model))
    if "perplexity" in scores:
        stage["perplexity"] = scores["perplexity"]
    return stage


def _save_model(model, path: Path, quantize_aware: bool = False) -> None:
    import contextlib

    from edgepress.models.graphs import Graph

    if isinstance(model, Graph):  # kept as given: an .onnx file, or a SavedModel directory
        model.save_copy(path.with_suffix(".onnx" if model.kind == "onnx" else ""))
        return

    scope = contextlib.nullcontext()
    if quantize_aware:
        import tensorflow_model_optimization as tfmot

        scope = tfmot.quantization.keras.quantize_scope()
    with scope, files.atomic_path(path) as tmp:
        model.save(tmp)


def _export(model, run_dir: Path, name: str, export, calibration, check_x, chain):
    from edgepress.deploy import export_onnx, export_tflite

    exporter = export_tflite if export.format == "tflite" else export_onnx
    batch = f"_b{export.batch_size}" if export.batch_size else ""
    sparse = "_sparse" if export.sparse else ""
    options = {"sparse": True} if export.sparse else {}  # a tflite option only (the recipe checks it)
    path = run_dir / "artifacts" / f"{name}_{export.precision}{batch}{sparse}.{export.format}"
    return exporter(model, path, export.precision, calibration=calibration, check_data=check_x, steps=chain,
                    batch_size=export.batch_size, **options)


def _exports(model, run_dir: Path, recipe: Recipe, data, calibration, check_x, chain, progress, quantized: list):
    """Yield (export, artifact, extra keys for its report rows): one artifact per plain export, and every
    artifact an accuracy-aware export tried (its QuantizeResult is appended to `quantized`)."""
    from edgepress.deploy.accuracy_aware import quantize_to_budget

    for export in recipe.exports:
        progress.update(f"export {export.format} {export.precision}")
        if export.quantize is None:
            yield export, _export(model, run_dir, recipe.name, export, calibration, check_x, chain), {}
            continue
        config = export.quantize
        result = quantize_to_budget(
            model, export.format, run_dir / "artifacts",
            data.calibration(config.calibration.samples or recipe.data.calibration_samples),
            data.x_test, data.y_test, config, name=recipe.name, check_data=check_x, steps=chain,
            on_trial=lambda message, f=export.format: progress.done(f"quantize {f}: {message}"),
        )
        quantized.append(result)
        progress.done(result.summary())
        for trial in result.trials:
            yield export, trial.artifact, {
                "float_layers": result.float_layer_rows(trial),
                "accuracy_aware": {"role": result.role(trial), "max_accuracy_drop": result.budget,
                                   "budget_met": result.budget_met, "accuracy_drop_from_float": trial.accuracy_drop,
                                   "remedy": trial.remedy},
            }


def _add_quantize_keys(row: dict, extra: dict, float_accuracy: float) -> None:
    """Add an accuracy-aware export's keys to its report row, and its budget as a gate: the drop from the
    exported float model, as measured on this device (so an artifact that misses it is never recommended)."""
    row.update(extra)
    aware = extra.get("accuracy_aware")
    if not aware:
        return
    accuracy, limit = row["metrics"]["accuracy"], aware["max_accuracy_drop"]
    value = None if accuracy is None else float_accuracy - accuracy
    # Accuracies are fractions of the same samples: allow float rounding at the limit.
    row["gates"][BUDGET_GATE] = {"limit": limit, "value": value, "passed": value is not None and value <= limit + 1e-9}
    row["passed"] = all(g["passed"] for g in row["gates"].values())


def _delivered(artifacts: list[dict]) -> list[dict]:
    """The rows of the artifacts the exports deliver: an accuracy-aware export delivers its final artifact;
    the others it tried are reported (with their gates) but neither recommended nor judged."""
    return [a for a in artifacts if a.get("accuracy_aware", {}).get("role", "final") == "final"]


def _passed(artifacts: list[dict], failures: dict[str, str], require: str) -> bool:
    """The recipe's verdict over the delivered artifacts, and every accuracy-aware budget met."""
    delivered = _delivered(artifacts)
    budgets = all(a["gates"][BUDGET_GATE]["passed"] for a in delivered if BUDGET_GATE in a["gates"])
    return run_passed(delivered, failures, require) and budgets


def _measure(artifact, data, recipe: Recipe, reference: np.ndarray, device) -> dict:
    from edgepress.deploy import measure

    m = recipe.measure
    result = measure(artifact, (data.x_test, data.y_test), m.runs, m.warmup, m.threads, reference, device)
    latency = dict(result["latency_ms"], unit="ms", threads=result["threads"], batch=result["batch"])
    return {
        "name": artifact.name,
        "device": device.name,
        "format": artifact.format,
        "precision": artifact.precision,
        "path": str(artifact.path),
        "bytes": artifact.bytes,
        "gzip_bytes": artifact.gzip_bytes,
        "sha256": artifact.sha256,
        "steps": artifact.steps,
        "quantization": artifact.quantization,
        "check": artifact.check,
        "metrics": {"accuracy": result["accuracy"], "agreement": result.get("agreement"),
                    **{k: result[k] for k in ("cross_entropy", "perplexity") if result.get(k) is not None}},
        "latency": latency,
        "load_ms": result["load_ms"],
        "memory": result["memory"],
        "runtime": result["runtime"],
    }


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ms"
