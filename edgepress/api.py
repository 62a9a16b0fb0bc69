"""`run(recipe) -> Report`: the one orchestrator behind the CLI and the Python API.

load model and data -> steps, in order -> exports (each checked against its model) ->
measurement of each artifact on this host -> gates -> results.json, report.md, report.html.
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
from edgepress.report import SCHEMA_VERSION, Report, apply_gates, choose_best, run_passed


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

    progress = progress or Progress()
    started = time.perf_counter()
    spec = recipe.data
    # Everything that can be refused is checked before the run directory is made.
    data = load_dataset(spec.dataset, spec.path, spec.train_size, spec.test_size, spec.seed)
    needs_calibration = any(e.precision in ("int8", "int16x8", "int8_static") for e in recipe.exports)
    if needs_calibration:
        data.calibration(spec.calibration_samples)
    model, source_name = _load_source(recipe, data, progress)
    data = data.fit_to(tuple(model.input_shape[1:]))
    for step in recipe.steps:
        STEPS[step.type].validate(model, step)
    calibration = data.calibration(spec.calibration_samples) if needs_calibration else None
    check_x = data.x_test[: spec.check_samples]

    run_dir = Path(run_dir or Path("runs") / f"{recipe.name}-{dt.datetime.now():%Y%m%d-%H%M%S}")
    run_dir.mkdir(parents=True, exist_ok=True)
    files.write_text(run_dir / "recipe.yaml", recipe.to_yaml())

    source_outputs = training.predict(model, data.x_test)
    source_accuracy = training.accuracy(source_outputs, data.y_test)
    reference = np.argmax(source_outputs, axis=-1)
    stages = [_stage("source", model, source_accuracy, sparsity)]
    progress.done(f"source {source_name}: accuracy {source_accuracy:.2%} on {len(data.x_test)} test samples")
    _save_model(model, run_dir / "models" / "0-source.keras")

    chain: list[str] = []
    for i, step in enumerate(recipe.steps, start=1):
        progress.update(f"step {i} {step.type}")
        on_epoch = _epoch_reporter(progress, f"step {i} {step.type}")
        model = STEPS[step.type].run(model, data.x_train, data.y_train, step, on_epoch=on_epoch)
        chain.append(step.type)
        accuracy = training.accuracy(training.predict(model, data.x_test), data.y_test)
        stages.append(_stage(step.type, model, accuracy, sparsity))
        progress.done(f"step {i} {step.type}: accuracy {accuracy:.2%}")
        _save_model(model, run_dir / "models" / f"{i}-{step.type}.keras", quantize_aware=is_quantize_aware(model))

    devices = recipe.devices()
    failures: dict[str, str] = {}  # device name -> why it could not be measured
    artifacts = []
    for export in recipe.exports:
        label = f"{export.format} {export.precision}"
        progress.update(f"export {label}")
        artifact = _export(model, run_dir, recipe.name, export, calibration, check_x, chain)
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
        "source": {"model": source_name, "params": stages[0]["params"], "metrics": {"accuracy": source_accuracy}},
        "models": stages,
        "devices": {d.name: {"reach": d.reach.kind, "error": failures.get(d.name)} for d in devices},
        "artifacts": artifacts,
        "gates": recipe.gates.model_dump(),
        "best": choose_best(artifacts),
        "passed": run_passed(artifacts, failures, recipe.gates.require),
    }
    report = Report(results)
    report.save(run_dir)
    return report


def environment() -> dict:
    """Versions of the parts that shape the numbers, and the CPU they were measured on."""
    from edgepress.deploy.runner import cpu_model

    env = {"python": platform.python_version(), "machine": platform.machine(), "cpu": cpu_model()}
    for package in ("tensorflow", "tf_keras", "tensorflow-model-optimization", "ai-edge-litert", "onnxruntime",
                    "onnx", "tf2onnx", "numpy"):
        env[package] = _version(package)
    return env


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _load_source(recipe: Recipe, data, progress: Progress):
    from edgepress.models import zoo

    spec = recipe.model
    if spec.path is not None:
        from edgepress.models.loading import load_model

        progress.update(f"load {spec.path}")
        return load_model(spec.path), spec.path
    on_epoch = _epoch_reporter(progress, f"train {spec.zoo}")
    model = zoo.train(spec.zoo, data, spec.train_epochs, spec.batch_size, spec.learning_rate, spec.seed, on_epoch)
    return model, f"zoo:{spec.zoo}"


def _epoch_reporter(progress: Progress, what: str) -> Callable[[int, int, dict], None]:
    def report(epoch: int, epochs: int, logs: dict) -> None:
        progress.update(f"{what}: epoch {epoch}/{epochs}, loss {logs.get('loss', 0):.4f}, "
                        f"accuracy {logs.get('accuracy', 0):.2%}")

    return report


def _stage(name: str, model, accuracy: float, sparsity) -> dict:
    return {"stage": name, "accuracy": accuracy, "params": int(model.count_params()), "sparsity": sparsity(model)}


def _save_model(model, path: Path, quantize_aware: bool = False) -> None:
    import contextlib

    scope = contextlib.nullcontext()
    if quantize_aware:
        import tensorflow_model_optimization as tfmot

        scope = tfmot.quantization.keras.quantize_scope()
    with scope, files.atomic_path(path) as tmp:
        model.save(tmp)


def _export(model, run_dir: Path, name: str, export, calibration, check_x, chain):
    from edgepress.deploy import export_onnx, export_tflite

    exporter = export_tflite if export.format == "tflite" else export_onnx
    path = run_dir / "artifacts" / f"{name}_{export.precision}.{export.format}"
    return exporter(model, path, export.precision, calibration=calibration, check_data=check_x, steps=chain)


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
        "metrics": {"accuracy": result["accuracy"], "agreement": result.get("agreement")},
        "latency": latency,
        "load_ms": result["load_ms"],
        "memory": result["memory"],
        "runtime": result["runtime"],
    }


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ms"
