"""`make_plan(recipe) -> Plan`: every check and decision of a run, made before any work is written.

    plan = make_plan(Recipe.from_yaml("recipes/mnist_cnn.yaml"), "runs/mnist")

The plan resolves the recipe against what it names: the run directory (checked writable), the device
profiles (loaded once), the data (loaded and fitted to each model's input once, calibration taken once),
the source model (loaded from its file; a zoo model built, to be trained by the run), each step with its
config checked against the model it will get (a distilled student's input included), and each export
with its final file name. Every refusal a recipe can get is raised here as an EdgepressError, before
the run directory exists; `edgepress.api.run` then only does the work.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from edgepress import files
from edgepress.errors import EdgepressError
from edgepress.formats import FORMATS, TITLES, artifact_filename, is_calibrated, precision_names
from edgepress.recipe import ExportSpec, Recipe


@dataclass(frozen=True)
class PlannedStep:
    """One step of the run: its registered protocol, its resolved config, and the data fitted to its input."""

    index: int  # 1 for the first step
    config: BaseModel
    step: Any  # edgepress.compress.step.Step
    data: Any  # edgepress.models.datasets.Dataset

    @property
    def type(self) -> str:
        return self.config.type

    @property
    def label(self) -> str:
        return f"step {self.index} {self.type}"


@dataclass(frozen=True)
class PlannedExport:
    """One export: what the recipe asked, and the file it writes (the one naming rule, `artifact_filename`)."""

    spec: ExportSpec
    path: Path

    @property
    def label(self) -> str:
        return f"{self.spec.format} {self.spec.precision}"

    @property
    def options(self) -> dict:
        """The exporter's keywords beyond the model, path, precision and data."""
        options: dict = {"batch_size": self.spec.batch_size}
        if self.spec.sparse:  # a tflite option only (the recipe checks it)
            options["sparse"] = True
        if self.spec.layout is not None:  # tflite from a PyTorch model (the plan checks it)
            options["layout"] = self.spec.layout
        if self.spec.block_size is not None:  # int4_weight (the recipe checks it)
            options["block_size"] = self.spec.block_size
        return options


@dataclass(frozen=True)
class Plan:
    """A run, decided: what `edgepress.api.run` does, in order, with nothing left to refuse."""

    recipe: Recipe  # resolved: default exports filled in from the targets
    run_dir: Path
    devices: tuple
    data: Any  # the Dataset fitted to the source model's input
    source: Any  # the source model: Keras or a Graph; for a zoo model the untrained build (see `train`)
    source_name: str
    train: Callable[[Callable | None], Any] | None  # trains the zoo model (on_epoch) -> the trained model
    steps: tuple[PlannedStep, ...]
    exports: tuple[PlannedExport, ...]
    export_data: Any  # the Dataset fitted to the model the exports start from (a student may take another input)
    calibration: np.ndarray | None  # taken once, for every calibrated export
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def check_x(self) -> np.ndarray:
        """Test inputs each export is checked on against its model."""
        return self.export_data.x_test[: self.recipe.data.check_samples]

    def calibration_for(self, samples: int | None) -> np.ndarray | None:
        """The calibration set, or its first `samples` (an accuracy-aware export's own count)."""
        return self.calibration if self.calibration is None or samples is None else self.calibration[:samples]


def make_plan(recipe: Recipe, run_dir: str | os.PathLike | None = None, progress=None) -> Plan:
    """Check `recipe` against everything it names and decide the run; raise EdgepressError on any refusal.

    `run_dir` defaults to runs/<recipe name>-<timestamp>. `progress` (edgepress.api.Progress) hears about
    slow loading. Nothing is written.
    """
    from edgepress.models.datasets import load_dataset

    run_dir = _checked_run_dir(recipe, run_dir)
    devices = _devices(recipe)
    recipe = with_default_exports(recipe, devices)
    spec = recipe.data
    data = load_dataset(spec.dataset, spec.path, spec.train_size, spec.test_size, spec.seed)
    source, source_name, train = _source(recipe, data, progress)
    _check_one_input_one_output(source, source_name)
    data = data.fit_to(tuple(source.input_shape[1:]))
    _check_data_fits(source, data, source_name)
    recipe, notes = _applicable(source, recipe)
    notes += _kernel_notes(recipe, devices)
    steps, final = _steps(recipe, source, data)
    _check_exports(recipe, source, final)
    export_data = data if final is source else data.fit_to(tuple(final.input_shape[1:]))
    calibration = _calibration(recipe, export_data)
    exports = tuple(
        PlannedExport(e, run_dir / "artifacts" / artifact_filename(
            recipe.name, e.format, e.precision, e.batch_size, e.sparse, layout=e.layout, block_size=e.block_size))
        for e in recipe.exports
    )
    _check_names(exports)
    return Plan(recipe, run_dir, tuple(devices), data, source, source_name, train, steps, exports, export_data,
                calibration, tuple(notes))


def _checked_run_dir(recipe: Recipe, run_dir) -> Path:
    """The run directory, refused now if it cannot be made or written (not after minutes of training)."""
    import datetime as dt

    path = Path(run_dir) if run_dir is not None else Path("runs") / f"{recipe.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    text = str(path)
    if "\0" in text:
        raise EdgepressError(f"The run directory {text!r} contains a NUL byte; give a plain folder path.")
    long = [part for part in path.parts if len(part.encode()) > 255]
    if long:
        raise EdgepressError(
            f"The run directory {text} has a name part of {len(long[0].encode())} bytes ('{long[0][:40]}...'); "
            "file systems allow at most 255. Give a shorter -o path."
        )
    if path.exists() and not path.is_dir():
        raise EdgepressError(f"The run directory {path} is an existing file, not a folder. Give -o a folder path.")
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise EdgepressError(f"The run directory {path} cannot be made: {existing} is a file, not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK) or str(existing.resolve()).startswith(("/proc", "/sys")):
        raise EdgepressError(f"The run directory {path} cannot be written ({existing} is not writable). "
                             "Give -o a folder you can write to.")
    files.check_run_dir(path)  # a folder of other files, not an earlier run
    return path


def _devices(recipe: Recipe) -> list:
    """The target Device profiles (read once), with the recipe's overrides applied."""
    devices = [target.device() for target in recipe.targets]
    names = [d.name for d in devices]
    if len(set(names)) < len(names):
        raise EdgepressError(
            f"Recipe targets must have different names, got {', '.join(names)}; give one a `label`."
        )
    return devices


def with_default_exports(recipe: Recipe, devices: list) -> Recipe:
    """The recipe with its exports, by default the targets' preferred precisions (each once, in order), less
    those a step forbids after it (a qat model exports as int8, dynamic or QDQ only)."""
    from edgepress.compress.step import STEPS

    if recipe.exports:
        return recipe
    wanted = {(c.format, c.precision): None for d in devices for c in d.precisions if d.runs(c.format)}
    exports = [ExportSpec(format=f, precision=p) for f, p in wanted]
    for step in recipe.steps:
        allowed = STEPS[step.type].exports_after
        if allowed:
            exports = [e for e in exports if (e.format, e.precision) in allowed] or [
                ExportSpec(format=f, precision=p) for f, p in sorted(allowed, reverse=True)
            ]
    return recipe.model_copy(update={"exports": exports})


def _source(recipe: Recipe, data, progress) -> tuple[Any, str, Callable | None]:
    """The source model, its name, and for a zoo Keras model the training the run does.

    A zoo Keras model is built here (untrained, from the recipe's seed) so that every step and export is
    checked against its layers before any training; a zoo tf.Module or PyTorch model is trained here, since
    it becomes the file its users would bring (a graph) only once trained.
    """
    from edgepress.models import graphs, zoo
    from edgepress.models.source import fixed_input

    spec = recipe.model
    if spec.path is not None:
        from edgepress.models.loading import load_model

        if progress:
            progress.update(f"load {spec.path}")
        model = graphs.open_graph(spec.path) or load_model(spec.path, trusted=spec.trusted)
        return fixed_input(model, spec.input_shape, spec.path), spec.path, None
    name = f"zoo:{spec.zoo}"
    entry = zoo.ZOO.get(spec.zoo)
    if entry is None or entry.save is None:
        built = zoo.build(spec.zoo, data.num_classes)  # names the zoo's models when unknown

        def train(on_epoch):
            # Layer names come from Keras' counters: reset them, so the trained model's layers are named as the
            # build checked here was (recipes name layers, e.g. qat `layers: [dense]`).
            from edgepress.compat import keras

            keras().backend.reset_uids()
            model = zoo.train(spec.zoo, data, spec.train_epochs, spec.batch_size, spec.learning_rate, spec.seed,
                              on_epoch)
            return fixed_input(model, spec.input_shape, name)

        return fixed_input(built, spec.input_shape, name), name, train
    # A graph takes no step: refuse before training it.
    _refuse_steps(recipe, name, graphs.GRAPH_KINDS[entry.saved_as].why_no_steps)
    if progress:
        progress.update(f"train {spec.zoo}")
    model = zoo.train(spec.zoo, data, spec.train_epochs, spec.batch_size, spec.learning_rate, spec.seed)
    return fixed_input(graphs.from_trained(model, entry.save, entry.saved_as), spec.input_shape, name), name, None


def _check_one_input_one_output(model, what: str) -> None:
    """Refuse a Keras model with several inputs or outputs (a graph checks that when it is opened)."""
    from edgepress.models.source import as_source

    keras = getattr(as_source(model), "keras", None)
    if keras is not None and (len(keras.inputs) != 1 or len(keras.outputs) != 1):
        raise EdgepressError(
            f"{what} has {len(keras.inputs)} inputs and {len(keras.outputs)} outputs; edgepress handles models with "
            "one input tensor and one output tensor (a classifier's logits or probabilities). Export the single-input, "
            "single-output model you deploy."
        )


def _check_data_fits(model, data, what: str) -> None:
    """Refuse data the model cannot score: too few classes, labels of another shape than its output."""
    from edgepress.models.source import as_source

    outputs = np.asarray(as_source(model).predict(data.x_test[:1]))
    classes, labels = outputs.shape[-1], data.y_test
    if labels.ndim != outputs.ndim - 1:
        hint = (" (one-hot rows? give their argmax)" if labels.ndim == outputs.ndim else "")
        raise EdgepressError(
            f"The labels of '{data.name}' have shape {labels.shape[1:]} per sample{hint}, but {what} outputs "
            f"{outputs.shape[1:]}: give one integer class label per sample (per time step for a sequence output)."
        )
    if data.num_classes > classes:
        raise EdgepressError(
            f"The labels of '{data.name}' go up to {data.num_classes - 1} ({data.num_classes} classes), but {what} "
            f"outputs {classes} classes. Give data whose labels are 0..{classes - 1}, or a model with "
            f"{data.num_classes} outputs."
        )


def _refuse_steps(recipe: Recipe, what: str, why: str) -> None:
    """Refuse the steps and accuracy-aware exports of a recipe whose model has no Keras layers."""
    from edgepress.compress.step import STEPS

    refused = [f"{s.type} ({STEPS[s.type].needs})" for s in recipe.steps]
    refused += [f"exports[{i}].quantize (accuracy-aware quantization keeps chosen Keras layers in float)"
                for i, e in enumerate(recipe.exports) if e.quantize is not None]
    if refused:
        raise EdgepressError(
            f"Not applicable to {what}: {'; '.join(refused)}. They need a Keras model, and {why}. Remove them from "
            "the recipe; its exports (post-training quantization included) and measurements apply."
        )


def _applicable(model, recipe: Recipe) -> tuple[Recipe, list[str]]:
    """The recipe reduced to what applies to `model`, and notes on what was left out.

    A model that takes no steps (a graph) has its steps and accuracy-aware exports refused; exports to a
    format it has no path to are left out with a note (refused when nothing is left).
    """
    from edgepress.models.source import as_source, shape_text

    source = as_source(model)
    if not source.trainable:
        _refuse_steps(recipe, str(model.path), source.why_no_steps)
    if source.tflite_route != "litert-torch" and any(e.layout is not None for e in recipe.exports):
        raise EdgepressError(
            f"layout on an export of {getattr(model, 'path', source.name)}: layout chooses the image layout of TFLite "
            "files from a PyTorch model (NCHW or NHWC); this model is not one, and its files keep its own layout. "
            "Remove layout from its exports."
        )
    if source.tflite_route == "litert-torch":  # TFLite through litert-torch, ONNX through torch.onnx
        from edgepress.deploy.torch_tflite import check_torch_exports

        check_torch_exports(model, recipe.exports)
    fixed = [f"{e.format} {e.precision}" for e in recipe.exports
             if e.batch_size and not source.takes_batch_size(e.format)]
    if fixed:
        raise EdgepressError(
            f"batch_size on {', '.join(fixed)}: {model.path} is already {source.kind.upper()} and keeps its own input "
            f"shape {shape_text(source.input_shape)}. Remove batch_size from those exports."
        )
    notes, exports = [], list(recipe.exports)
    for format in dict.fromkeys(e.format for e in exports):
        why = source.why_not(format)
        if why is None:
            continue
        left = [e for e in exports if e.format == format]
        exports = [e for e in exports if e.format != format]
        if not exports:
            others = "; ".join(f"{{format: {f}, precision: {' | '.join(precision_names(f))}}}" for f in FORMATS
                               if source.why_not(f) is None)
            raise EdgepressError(f"{model.path} is {source.title} and the recipe asks for {TITLES[format]} exports "
                                 f"only. {why} Ask for exports it can have: {others}.")
        notes.append(f"Left out {', '.join(f'{e.format} {e.precision}' for e in left)}: {why}")
    return recipe.model_copy(update={"exports": exports}), notes


def _steps(recipe: Recipe, source, data) -> tuple[tuple[PlannedStep, ...], Any]:
    """Each step checked against the model it will get, with data fitted to that model's input; and a model
    shaped like the last step's result (the exports' model)."""
    from edgepress.compress.step import STEPS, StepContext

    planned, model, fitted = [], source, data
    for i, config in enumerate(recipe.steps, start=1):
        step = STEPS[config.type]
        if tuple(model.input_shape[1:]) != fitted.x_test.shape[1:]:
            fitted = data.fit_to(tuple(model.input_shape[1:]))  # after a student that takes another input
        context = StepContext(source=source, before=tuple(s.type for s in recipe.steps[: i - 1]))
        step.check(model, config, context)
        planned.append(PlannedStep(i, config, step, fitted))
        model = step.result_like(model, config, context)
    return tuple(planned), model


def _check_exports(recipe: Recipe, source, final) -> None:
    """Refuse exports the model they start from cannot have, before any work."""
    if any(e.quantize is not None for e in recipe.exports):
        from edgepress.deploy.accuracy_aware import check_quantizable

        check_quantizable(final)
        if any(step.type == "qat" for step in recipe.steps):
            raise EdgepressError(
                "An export with `quantize:` (accuracy-aware post-training int8) cannot follow a qat step: the "
                "quantization-aware model already carries its int8 ranges. Export it as tflite int8 without "
                "`quantize:`, or drop the qat step."
            )
    # A calibrated TFLite export of a model whose graph loops over time would crash the converter. `final` is
    # shaped like the exports' model (a distilled student's layers included).
    calibrated = [e for e in recipe.exports if e.format == "tflite" and is_calibrated(e.format, e.precision)]
    if calibrated:
        from edgepress.deploy.tflite import check_calibratable

        for e in calibrated:
            check_calibratable(final, e.precision, e.batch_size)


def _kernel_notes(recipe: Recipe, devices: list) -> list[str]:
    """Where a device's runtime has no right kernel for an export's precision (said, not hidden)."""
    notes = []
    for e in recipe.exports:
        if e.format == "tflite" and e.precision == "int4_weight" and e.block_size:
            for d in devices:
                if d.runs("tflite") and d.delegate != "xnnpack":
                    notes.append(
                        f"tflite int4_weight with block_size {e.block_size} on {d.name}: LiteRT 2.3 computes "
                        f"blockwise int4 right only with the XNNPACK delegate, and {d.name} uses {d.delegate}; its "
                        "accuracy there is not the model's. Use int4_weight per channel (no block_size) or int8_weight."
                    )
    return notes


def _check_names(exports: tuple[PlannedExport, ...]) -> None:
    """Refuse two exports that would write the same file (the second would overwrite the first)."""
    seen: dict[str, int] = {}
    for i, export in enumerate(exports):
        name = export.path.name
        if name in seen:
            raise EdgepressError(
                f"exports[{seen[name]}] and exports[{i}] would both write {name}; an accuracy-aware export (quantize:) "
                f"writes {export.spec.format} {export.spec.precision} files itself. Remove one of the two, or make "
                "them differ (batch_size, sparse)."
            )
        seen[name] = i


def _calibration(recipe: Recipe, data) -> np.ndarray | None:
    """The calibration samples, taken once: as many as the largest calibrated export asks for."""
    wanted = [recipe.data.calibration_samples for e in recipe.exports if is_calibrated(e.format, e.precision)]
    wanted += [e.quantize.calibration.samples or recipe.data.calibration_samples
               for e in recipe.exports if e.quantize is not None]
    if not wanted:
        return None
    if max(wanted) > len(data.x_train) > 0:
        raise EdgepressError(
            f"{max(wanted):,} calibration samples were asked for, but '{data.name}' has {len(data.x_train):,} "
            f"training samples to take them from. Set data.calibration_samples (or the export's "
            f"quantize.calibration.samples) to at most {len(data.x_train):,}."
        )
    return data.calibration(max(wanted))
