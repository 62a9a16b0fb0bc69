"""`run(recipe) -> Report`: the one orchestrator behind the CLI and the Python API.

plan (every check, `edgepress.plan`) -> train the source if it is a zoo model -> steps, in order ->
exports (each checked against its model) -> measurement of each artifact on each device -> the verdict
(`edgepress.verdict.judge`) -> results.json, report.md, report.html.
"""

from __future__ import annotations

import datetime as dt
import platform
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from edgepress import files
from edgepress.compare import compare_with_baseline
from edgepress.errors import EdgepressError, Hopeless, Refused
from edgepress.models import training
from edgepress.models.source import Source
from edgepress.plan import Plan, make_plan
from edgepress.recipe import Recipe
from edgepress.report import Report
from edgepress.results import SCHEMA_VERSION, Results
from edgepress.text import interval_text, ms, percent, stage_notes
from edgepress.verdict import judge


class Progress:
    """Receives progress from a run. The CLI shows it live; the default prints nothing."""

    def update(self, message: str) -> None:
        """Work in progress (e.g. a training epoch); replaces the previous update."""

    def done(self, message: str) -> None:
        """A finished stage, with its result."""


def run(recipe: Recipe, run_dir: str | Path | None = None, progress: Progress | None = None,
        first_epoch_floor: float | None = None) -> Report:
    """Run `recipe` and return its Report; everything is written into `run_dir`.

    `run_dir` defaults to runs/<recipe name>-<timestamp>. Bad input raises EdgepressError before
    anything is written (see `edgepress.plan`). Gates are recorded, not raised: call `report.check()` for that.
    `first_epoch_floor`: stop with `Hopeless` when the model's test accuracy after the first training epoch of
    the first step is below it, before anything is exported (how `edgepress tune` stops a hopeless trial).
    """
    from edgepress.report_html import render

    progress = progress or Progress()
    started = time.perf_counter()
    try:
        plan = make_plan(recipe, run_dir, progress)
    except EdgepressError as e:
        raise Refused(str(e)) from e
    _start(plan, progress)
    source = _train_source(plan, progress)
    stages, model = _run_steps(plan, source, progress, first_epoch_floor)
    made, quantized = _export(plan, model, [s.type for s in plan.steps], progress)
    rows, failures = _measure_all(plan, made, _reference(source, plan.data), progress)
    results = _results(plan, source, stages, rows, failures, quantized, started)
    # results["baseline"], for judge; the baseline's artifacts timed again beside these
    baseline_error = compare_with_baseline(results, plan.recipe.gates.baseline, plan.run_dir, list(plan.devices),
                                           plan.recipe.measure, progress.update)
    results.update(judge(results))
    report = Report(results)
    report.save(plan.run_dir, render)
    if quantized:
        from edgepress.quantize import write_sensitivity

        write_sensitivity(plan.run_dir, quantized)
    if baseline_error:  # raised only now, so this run's own results are written (a first CI run has no baseline)
        raise EdgepressError(baseline_error)
    return report


# -- the stages of a run, each reading the plan ------------------------------------------------------


def _start(plan: Plan, progress: Progress) -> None:
    """Make the run directory (a killed run's temporaries removed, an earlier run moved aside) and keep the
    resolved recipe in it."""
    moved = files.prepare_run_dir(plan.run_dir)
    if moved is not None:
        progress.done(f"the earlier run in {plan.run_dir} was moved to {moved}")
    files.write_text(plan.run_dir / "recipe.yaml", plan.recipe.to_yaml())


def _train_source(plan: Plan, progress: Progress) -> Source:
    """The source model, trained here when it is a zoo model."""
    if plan.train is None:
        return plan.source
    return plan.train(_epoch_reporter(progress, f"train {plan.recipe.model.zoo}"))


def _run_steps(plan: Plan, source: Source, progress: Progress, first_epoch_floor: float | None = None
               ) -> tuple[list[dict], Source]:
    """Run each step in order; return the model rows (the source, then each step's result) and the last model.
    Each model is written into models/ in the framework (and the Keras) the source came in."""
    from edgepress.compress.step import StepContext
    from edgepress.models.source import framework_model, wrap

    data = plan.data
    source_scores = _scores(source.predict(data.x_test), data.y_test)
    stages = [_stage("source", source, source_scores)]
    progress.done(f"source {plan.source_name}: {_scored(source_scores)} on {len(data.x_test)} test samples")
    like = source.kind
    stages[0]["file"] = source.save(plan.run_dir / "models" / "0-source.keras", like)
    model = source
    for planned in plan.steps:
        data = planned.data
        if planned.bridge:  # a Keras 3 model into a step that needs tfmot: rebuilt in tf_keras (checked by the plan)
            model = model.to_tf_keras()
            progress.done(f"{planned.label}: {model.name} rebuilt in tf_keras for tfmot")
        for note in planned.step.notes(framework_model(model), planned.config):
            progress.done(f"{planned.label}: {note}")
        on_epoch = _epoch_reporter(progress, planned.label)
        if first_epoch_floor is not None and planned.index == 1:
            on_epoch = _stop_if_hopeless(on_epoch, first_epoch_floor, data.x_test, data.y_test)
        context = StepContext(source=framework_model(source),
                              before=tuple(s.type for s in plan.steps[: planned.index - 1]),
                              test=(data.x_test, data.y_test), on_epoch=on_epoch)
        progress.update(planned.label)
        result, details = planned.step.run(framework_model(model), data.x_train, data.y_train, planned.config,
                                           context)
        model = wrap(result)
        out = plan.export_data if planned is plan.steps[-1] else plan.steps[planned.index].data
        scores = _scores(model.predict(out.x_test), out.y_test)
        stages.append({**_stage(planned.type, model, scores), **details})
        macs = stages[-1]["macs"]  # None for a graph kind (a PyTorch program), whose MACs are not counted
        progress.done(f"{planned.label}: {_scored(scores)}, {stages[-1]['params']:,} parameters"
                      + ("" if macs is None else f", {macs:,} MACs")
                      + "".join(f"; {note}" for note in stage_notes(stages[-1])))
        stages[-1]["file"] = model.save(plan.run_dir / "models" / f"{planned.index}-{planned.type}.keras", like)
    return stages, model


def _export(plan: Plan, model: Source, chain: list[str], progress: Progress) -> tuple[list[tuple], list]:
    """Make every export: [(export spec, artifact, extra keys for its report rows)], and the accuracy-aware
    results (QuantizeResult), whose every tried artifact is made and reported."""
    from edgepress.deploy.registry import export as write
    from edgepress.quantize import quantize_to_budget

    made, quantized = [], []
    data = plan.export_data
    for export in plan.exports:
        spec = export.spec
        progress.update(f"export {export.label}")
        if spec.quantize is None:
            artifact = write(export.request(model, plan.calibration, plan.check_x, tuple(chain)))
            made.append((spec, artifact, {}))
            continue
        result = quantize_to_budget(
            model, spec.format, export.path.parent, plan.calibration_for(spec.quantize.calibration.samples),
            data.x_test, data.y_test, spec.quantize, name=plan.recipe.name, check_data=plan.check_x, steps=chain,
            on_trial=lambda message, f=spec.format: progress.done(f"quantize {f}: {message}"),
        )
        quantized.append(result)
        progress.done(result.summary())
        made += [(spec, trial.artifact, result.row_keys(trial)) for trial in result.trials]
    return made, quantized


def _measure_all(plan: Plan, made: list[tuple], reference: np.ndarray, progress: Progress) -> tuple[list, dict]:
    """Measure on each device every artifact whose format it runs, timed together in interleaved rounds
    (edgepress/deploy/measure.py, measure_many); a device that fails is recorded and skipped."""
    from edgepress.deploy.transports import DeviceError

    rows, failures = [], {}  # failures: device name -> why it could not be measured
    for device in plan.devices:
        todo = [(spec, artifact, extra) for spec, artifact, extra in made if device.runs(spec.format)]
        if not todo:
            continue
        progress.update(f"measure {len(todo)} artifact(s) on {device.name}")
        try:
            measured = _measure(plan, [artifact for _, artifact, _ in todo], reference, device)
        except DeviceError as e:  # keep going: the other devices' results still make the report
            failures[device.name] = str(e)
            progress.done(f"{device.name} failed: {e}")
            continue
        ran = [(artifact, row) for (_, artifact, _), row in zip(todo, measured, strict=True) if not row.get("error")]
        # An emulated CPU's op times mean nothing; a decoder's signatures are timed by the runner's LM mode.
        if plan.recipe.measure.profile and ran and not device.emulated and plan.recipe.lm is None:
            from edgepress.deploy.profile import profile_many

            progress.update(f"profile {len(ran)} artifact(s) op by op on {device.name}")
            m = plan.recipe.measure
            for (_, row), profile in zip(ran, profile_many([a for a, _ in ran], device, m.runs, m.warmup,
                                                           m.threads), strict=True):
                row["profile"] = profile
        for (_, artifact, extra), row in zip(todo, measured, strict=True):
            rows.append({**row, **extra})
            if row.get("error"):
                progress.done(f"{artifact.name} on {device.name}: not measured: {row['error']}")
                continue
            if row.get("lm"):  # a decoder LM: what its user reads
                lm = row["lm"]
                progress.done(f"{artifact.name} on {device.name}: {artifact.bytes:,} bytes, perplexity "
                              f"{row['metrics']['perplexity']:.3f}, {lm['decode_tokens_per_s']['p50']:,.0f} decode "
                              f"tokens/s, TTFT {ms(lm['ttft_ms']['p50'])} ms for {lm['prompt_len']} tokens")
                continue
            progress.done(f"{artifact.name} on {device.name}: {artifact.bytes:,} bytes, "
                          f"accuracy {percent(row['metrics']['accuracy'])}, p50 {ms(row['latency']['p50'])} ms"
                          + (" (emulated)" if device.emulated else interval_text(row["latency"])))
    return rows, failures


def _reference(source: Source, data) -> np.ndarray:
    """The source model's top-1 predictions on the test set: what each artifact's agreement is measured against."""
    return np.argmax(source.predict(data.x_test), axis=-1)


def _results(plan: Plan, source: Source, stages: list[dict], rows: list[dict], failures: dict, quantized: list,
             started: float) -> Results:
    """results.json, less the verdict (`judge` adds it)."""
    from edgepress.across import across_devices

    data, recipe = plan.export_data, plan.recipe
    source_accuracy = stages[0]["accuracy"]
    # Each artifact on each device against the first device that ran it (the predictions are not kept).
    across = across_devices(rows, recipe.gates.max_accuracy_drop)
    for row in rows:
        row.pop("predictions", None)
    for row in rows:
        accuracy = row["metrics"]["accuracy"]
        row["metrics"]["accuracy_drop"] = None if accuracy is None else source_accuracy - accuracy
    source_metrics = {k: v for k, v in stages[0].items() if k in ("accuracy", "cross_entropy", "perplexity")}
    return {
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
            "calibration_samples": 0 if plan.calibration is None else len(plan.calibration),
        },
        "source": {"model": plan.source_name, "kind": source.kind, "params": stages[0]["params"],
                   "metrics": source_metrics},
        "models": stages,
        "devices": {d.name: {"reach": d.reach.kind, "error": failures.get(d.name),
                             "memory_budget_mb": d.memory_budget_mb, "emulated": d.emulated} for d in plan.devices},
        "artifacts": rows,
        "across_devices": across,
        "gates": recipe.gates.model_dump(),
        "quantize": [q.to_dict() for q in quantized],
        "notes": list(plan.notes),
    }


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


def _scores(outputs: np.ndarray, y: np.ndarray) -> dict:
    """accuracy, and for a sequence model cross_entropy and perplexity: the runner's own scoring, without per_class."""
    from edgepress.deploy.runner import score

    scores = score(outputs, y)
    scores.pop("per_class")
    return scores


def _scored(scores: dict) -> str:
    text = f"accuracy {scores['accuracy']:.2%}"
    return text + (f", perplexity {scores['perplexity']:.3f}" if "perplexity" in scores else "")


def _epoch_reporter(progress: Progress, what: str) -> training.EpochCallback:
    def report(epoch: int, epochs: int, logs: dict, model=None) -> None:
        progress.update(f"{what}: epoch {epoch}/{epochs}, loss {logs.get('loss', 0):.4f}, "
                        f"accuracy {logs.get('accuracy', 0):.2%}")

    return report


def _stop_if_hopeless(report: training.EpochCallback, floor: float, x_test: np.ndarray, y_test: np.ndarray
                      ) -> training.EpochCallback:
    """`report`, which after the first epoch also scores the model being trained on the test split and raises
    Hopeless below `floor` (a step that trains without a model to score is not stopped)."""
    def check(epoch: int, epochs: int, logs: dict, model=None) -> None:
        report(epoch, epochs, logs, model)
        if epoch == 1 and model is not None:
            accuracy = training.accuracy(training.predict(model, x_test), y_test)
            if accuracy < floor:
                raise Hopeless(accuracy, floor)

    return check


def _stage(name: str, model: Source, scores: dict) -> dict:
    """A model row: its scores on the test split, its parameters, MACs and sparsity (what its kind has)."""
    stats = model.stats()
    stage = {"stage": name, "accuracy": scores["accuracy"], **stats}
    if "perplexity" in scores:
        stage.update(cross_entropy=scores["cross_entropy"], perplexity=scores["perplexity"])
    return stage


def _measure(plan: Plan, artifacts: list, reference: np.ndarray, device) -> list[dict]:
    """The report rows of `artifacts` on `device`: scored one by one, timed together (adaptive runs)."""
    from edgepress.deploy.measure import measure_many

    m, data, lm = plan.recipe.measure, plan.export_data, plan.recipe.lm
    x, y = data.x_test, data.y_test
    if lm is not None:  # a decoder LM: its first eval_windows, each teacher-forced token by token through the file
        x, y, reference = x[: lm.eval_windows], y[: lm.eval_windows], reference[: lm.eval_windows]
    results = measure_many(artifacts, (x, y), device, m.runs, m.warmup, m.threads, reference, m.run_cap,
                           m.target_ci_width, m.max_seconds, keep_going=True,
                           lm_prompt=None if lm is None else lm.prompt_len)
    return [_row(artifact, device, result) for artifact, result in zip(artifacts, results, strict=True)]


# An artifact's runtime facts and numbers when the device could not run it (the `error` says why).
_NOT_RUN = {
    "metrics": {"accuracy": None, "agreement": None},
    "latency": {"p50": None, "p90": None, "p99": None, "mean": None, "std": None, "min": None, "max": None,
                "runs": 0, "warmup": 0, "threads": None, "batch": None, "p50_ci": None, "p90_ci": None,
                "confidence": 0.95, "stopped": None, "times_ms": [], "unit": "ms"},
    "load_ms": None, "memory": {"peak_rss_bytes": None}, "host": None,
    "runtime": {"name": "-", "version": None, "providers": [], "warnings": []},
}


def _row(artifact, device, result: dict) -> dict:
    if result.get("error"):
        import copy

        numbers = copy.deepcopy(_NOT_RUN)
        latency = numbers.pop("latency")
    else:
        latency = dict(result["latency_ms"], unit="ms", threads=result["threads"], batch=result["batch"])
        numbers = {
            "metrics": {"accuracy": result["accuracy"], "agreement": result.get("agreement"),
                        **{k: result[k] for k in ("cross_entropy", "perplexity") if result.get(k) is not None}},
            "load_ms": result["load_ms"],
            "memory": result["memory"],
            "runtime": result["runtime"],
            "host": result.get("host"),  # CPU, cores, load average before and after the timing (the runner's)
        }
    if device.emulated:
        latency["emulated"] = True  # recorded, never compared with a real board's nor recommended on
    row = {
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
        "layout": artifact.layout,
        **numbers,
        "latency": latency,
        "output_checksum": result.get("output_checksum"),  # the outputs rounded to 4 decimals, hashed (the runner's)
        "lm": result.get("lm"),  # a decoder LM's TTFT, decode tokens/s, cache and prompt lengths (runner.lm_benchmark)
        "profile": None,  # the per-op profile (edgepress/deploy/profile.py), when measure.profile is on
    }
    if result.get("error"):
        row["error"] = result["error"]
    if result.get("predictions") is not None:
        row["predictions"] = result["predictions"]  # for across_devices; not kept in results.json
    return row
