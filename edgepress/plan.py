"""`make_plan(recipe) -> Plan`: every check and decision of a run, made before any work is written.

    plan = make_plan(Recipe.from_yaml("recipes/mnist_cnn.yaml"), "runs/mnist")

The plan resolves the recipe against what it names: the run directory (checked writable), the device
profiles (loaded once), the data (loaded and fitted to each model's input once, calibration taken once),
the source model (loaded from its file as a Source of its kind, wrapped once; a zoo model built, to be trained
by the run), each step with its config checked against the model it will get (a distilled student's input
included; a Keras 3 model bridged to tf_keras for a step that needs tfmot), and each export checked by its
exporter, with its final file name. Every refusal a recipe can get is raised here as an EdgepressError, before
the run directory exists; `edgepress.api.run` then only does the work.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from edgepress import files
from edgepress.compress.step import Step
from edgepress.deploy.registry import ExportRequest
from edgepress.devices import Device
from edgepress.errors import EdgepressError
from edgepress.formats import FORMATS, TITLES, artifact_filename, is_calibrated, precision_names
from edgepress.models.datasets import Dataset
from edgepress.models.source import Source
from edgepress.recipe import ExportSpec, Recipe
from edgepress.specs.lm import LMSpec


@dataclass(frozen=True)
class PlannedStep:
    """One step of the run: its registered protocol, its resolved config, and the data fitted to its input."""

    index: int  # 1 for the first step
    config: BaseModel
    step: Step
    data: Dataset
    # The model entering it is rebuilt in tf_keras first: a Keras 3 model, and a step that needs tfmot.
    bridge: bool = False

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
    lm: LMSpec | None = None  # a decoder LM's cache and prompt lengths

    @property
    def label(self) -> str:
        return f"{self.spec.format} {self.spec.precision}"

    def request(self, source: Source, calibration: np.ndarray | None = None, check_data: np.ndarray | None = None,
                steps: tuple[str, ...] = ()) -> ExportRequest:
        """The exporter's request for this export of `source`."""
        s = self.spec
        lm = {} if self.lm is None else {"cache_len": self.lm.cache_len, "prompt_len": self.lm.prompt_len}
        return ExportRequest(source, self.path, s.format, s.precision, calibration, check_data, steps, s.batch_size,
                             s.sparse, s.layout, s.block_size, tuple(s.float_layers or ()),
                             float_ops=tuple(s.float_ops or ()), **lm)


@dataclass(frozen=True)
class Plan:
    """A run, decided: what `edgepress.api.run` does, in order, with nothing left to refuse."""

    recipe: Recipe  # resolved: default exports filled in from the targets
    run_dir: Path
    devices: tuple[Device, ...]
    data: Dataset  # fitted to the source model's input
    source: Source  # the source model; for a zoo model the untrained build (see `train`)
    source_name: str
    train: Callable[[Callable | None], Source] | None  # trains the zoo model (on_epoch) -> the trained model
    steps: tuple[PlannedStep, ...]
    exports: tuple[PlannedExport, ...]
    export_data: Dataset  # fitted to the model the exports start from (a student may take another input)
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
    recipe = _with_lm(recipe, source, source_name, devices, data)
    data = data.fit_to(tuple(source.input_shape[1:]))
    _check_data_fits(source, data, source_name)
    _check_finite(source, data.x_test[: spec.check_samples], source_name)
    recipe, notes = _applicable(source, recipe)
    notes += _fixed_batch_notes(source)
    notes += _kernel_notes(recipe, devices)
    steps, final = _steps(recipe, source, data)
    export_data = data if final is source else data.fit_to(tuple(final.input_shape[1:]))
    calibration = _calibration(recipe, export_data)
    exports = tuple(
        PlannedExport(e, run_dir / "artifacts" / artifact_filename(
            recipe.name, e.format, e.precision, e.batch_size, e.sparse, layout=e.layout, block_size=e.block_size,
            float_ops=e.float_ops or ()),
            recipe.lm)
        for e in recipe.exports
    )
    _check_exports(recipe, exports, final, calibration)
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


def _devices(recipe: Recipe) -> list[Device]:
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


def _source(recipe: Recipe, data, progress) -> tuple[Source, str, Callable | None]:
    """The source model, its name, and for a zoo Keras model the training the run does.

    A zoo Keras model is built here (untrained, from the recipe's seed) so that every step and export is
    checked against its layers before any training; a zoo tf.Module or PyTorch model is trained here, since
    it becomes the file its users would bring (a graph) only once trained.
    """
    from edgepress.models import zoo
    from edgepress.models.loading import import_custom_objects, open_model
    from edgepress.models.source import fixed_input, kinds, wrap

    spec = recipe.model
    if spec.custom_objects and spec.path is None:
        raise EdgepressError("model.custom_objects names the modules of a saved model's own layers; a zoo model has "
                             "none. Remove model.custom_objects, or give model.path.")
    if spec.path is not None:
        import_custom_objects(spec.custom_objects, spec.path, spec.trusted)
        if progress:
            progress.update(f"load {spec.path}")
        return fixed_input(open_model(spec.path, trusted=spec.trusted), spec.input_shape, spec.path), spec.path, None
    name = f"zoo:{spec.zoo}"
    entry = zoo.ZOO.get(spec.zoo)
    if entry is None or entry.save is None:
        from edgepress.compat import keras

        # Layer names come from Keras' counters: from zero here and in `train`, so the names checked are the names
        # the trained model has (recipes name layers: qat `layers: [dense]`, an export's float_layers).
        keras().backend.reset_uids()
        built = zoo.build(spec.zoo, data.num_classes)  # names the zoo's models when unknown

        def train(on_epoch) -> Source:
            keras().backend.reset_uids()
            model = zoo.train(spec.zoo, data, spec.train_epochs, spec.batch_size, spec.learning_rate, spec.seed,
                              on_epoch)
            return fixed_input(wrap(model), spec.input_shape, name)

        return fixed_input(wrap(built), spec.input_shape, name), name, train
    kind = kinds()[entry.saved_as]
    # A graph takes no step: refuse before training it.
    _refuse_steps(recipe, name, kind)
    if progress:
        progress.update(f"train {spec.zoo}")
    model = zoo.train(spec.zoo, data, spec.train_epochs, spec.batch_size, spec.learning_rate, spec.seed)
    return fixed_input(kind.from_trained(model, entry.save), spec.input_shape, name), name, None


def _check_one_input_one_output(source: Source, what: str) -> None:
    """Refuse a model with several inputs or outputs (a graph checks that when it is opened)."""
    inputs, outputs = source.io_counts
    if inputs != 1 or outputs != 1:
        raise EdgepressError(
            f"{what} has {inputs} inputs and {outputs} outputs; edgepress handles models with one input tensor and "
            "one output tensor (a classifier's logits or probabilities). Export the single-input, single-output "
            "model you deploy."
        )


def _check_data_fits(source: Source, data, what: str) -> None:
    """Refuse data the model cannot score: too few classes, labels of another shape than its output."""
    outputs = np.asarray(source.predict(data.x_test[:1]))
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


def _check_finite(source: Source, x: np.ndarray, what: str) -> None:
    """Refuse a model with NaN or infinite weights, or whose outputs on the check samples are not finite numbers:
    every export of it would be measured against nonsense (an export check of NaN against NaN agrees)."""
    bad = [(name, values) for name, values in source.weights()
           if values.dtype.kind == "f" and not np.isfinite(values).all()]
    if bad:
        name, values = bad[0]
        more = f" (and {len(bad) - 1} more weights)" if len(bad) > 1 else ""
        raise EdgepressError(
            f"{what} has weights that are not finite numbers: '{name}' holds {int(np.isnan(values).sum())} NaN and "
            f"{int(np.isinf(values).sum())} infinite values{more}. The model diverged in training or the file is "
            "damaged; train it again (a lower learning rate) or pass another file."
        )
    outputs = np.asarray(source.predict(x))
    if not np.isfinite(outputs).all():
        rows = int((~np.isfinite(outputs.reshape(len(outputs), -1))).any(axis=1).sum())
        raise EdgepressError(
            f"{what} outputs values that are not finite numbers (NaN or infinite) for {rows} of {len(x)} test "
            "samples. Its exports could only be measured against nonsense; fix the model (or the data: check that "
            "it is scaled the way the model expects) and try again."
        )


def _with_lm(recipe: Recipe, source: Source, what: str, devices: list[Device], data: Dataset) -> Recipe:
    """The recipe with its lm: section resolved for a decoder LM (defaults filled in), refused where the model, the
    data or a target cannot have it: token ids past the model's vocabulary, a cache past its position limit, a
    prompt or a cache that does not fit the data's windows, a target reached over adb (benchmark_model times one
    signature), lm: for a model that is not a decoder."""
    if source.kind != "decoder":
        if recipe.lm is not None and source.kind == "torch":
            raise EdgepressError(
                f"The recipe has an lm: section (a KV cache for a decoder language model), and {what} is a PyTorch "
                "program, not a decoder with a cache edgepress can drive: one traced forward whose attention keeps no "
                "cache outside it, so edgepress cannot make "
                "prefill/decode signatures or past/present key-values from it. A .pt2 decoder (tokens (1, T) -> "
                "logits (1, T, vocabulary)) is measured without lm: as a sequence model (perplexity over whole "
                "windows, its TFLite and ONNX exports without a cache). For the KV-cache exports and measures give the "
                "decoder as a model directory: edgepress's (config.json + model.safetensors, model.zoo: char_gpt) or "
                "a Hugging Face Llama's (what save_pretrained writes)."
            )
        if recipe.lm is not None:
            raise EdgepressError(
                f"The recipe has an lm: section (a KV cache for a decoder language model), and {what} is "
                f"{source.title}, not a decoder: edgepress exports decoders it built (model.zoo: char_gpt) or a model "
                "directory with config.json and model.safetensors. Remove lm:, or give a decoder."
            )
        return recipe
    lm = recipe.lm or LMSpec.for_positions(source.max_len)
    top, vocab = int(max(data.x_train.max(initial=0), data.x_test.max(initial=0))), source.config.vocab
    if top >= vocab:
        raise EdgepressError(f"The data '{data.name}' has token ids up to {top}, and {what} has a vocabulary of "
                             f"{vocab}: its tokenizer cannot encode the data. Give a model whose vocabulary covers "
                             f"{top + 1} ids, or data encoded with the model's own tokenizer.")
    adb = [d.name for d in devices if d.reach.kind == "adb"]
    if adb:
        raise EdgepressError(f"{what} is a decoder language model, measured through its prefill and decode by "
                             f"edgepress's runner, and {', '.join(adb)} is reached over adb, where LiteRT's "
                             "benchmark_model times one signature only. Reach it over ssh with a Python, or measure on "
                             "another target.")
    window = source.input_shape[1]
    if lm.cache_len > source.max_len:
        raise EdgepressError(f"lm.cache_len {lm.cache_len} is above the position limit of {what} ({source.max_len} "
                             f"tokens): it cannot attend that far. Set lm.cache_len to at most {source.max_len}.")
    if window is not None and lm.cache_len < window:
        raise EdgepressError(f"lm.cache_len {lm.cache_len} is shorter than the data's windows ({window} tokens), "
                             f"which are scored through the cache: set lm.cache_len to at least {window}.")
    if window is not None and lm.prompt_len >= window:
        raise EdgepressError(f"lm.prompt_len {lm.prompt_len} is not shorter than the data's windows ({window} tokens): "
                             "perplexity is measured on the tokens decoded after the prompt. Set lm.prompt_len "
                             f"below {window}.")
    return recipe.model_copy(update={"lm": lm})


def _refuse_steps(recipe: Recipe, what: str, kind) -> None:
    """Refuse, naming each, the steps that do not take a model of `kind` (a Source class) natively and cannot have
    it bridged to one they take, and the accuracy-aware exports, which keep Keras layers in float."""
    from edgepress.compress.step import STEPS
    from edgepress.quantize.accuracy_aware import KINDS as QUANTIZE_KINDS

    bridged = "tf_keras" if hasattr(kind, "to_tf_keras") else None
    refused = [f"{s.type} ({STEPS[s.type].needs})" for s in recipe.steps
               if kind.kind not in STEPS[s.type].kinds and bridged not in STEPS[s.type].kinds]
    if kind.kind not in QUANTIZE_KINDS:
        refused += [f"exports[{i}].quantize (accuracy-aware quantization keeps chosen Keras layers in float)"
                    for i, e in enumerate(recipe.exports) if e.quantize is not None]
    if refused:
        raise EdgepressError(
            f"Not applicable to {what}, {kind.title}: {'; '.join(refused)}. They need a Keras model, and "
            f"{kind.why_no_steps}. Remove them from the recipe; its exports (post-training quantization included) "
            "and measurements apply."
        )


def _applicable(source: Source, recipe: Recipe) -> tuple[Recipe, list[str]]:
    """The recipe reduced to what applies to `source`, and notes on what was left out.

    Steps and accuracy-aware exports that do not take the model's kind (a graph's) are refused; exports to a
    format it has no path to are left out with a note (refused when nothing is left).
    """
    _refuse_steps(recipe, str(source.path), type(source))
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
            raise EdgepressError(f"{source.path} is {source.title} and the recipe asks for {TITLES[format]} exports "
                                 f"only. {why} Ask for exports it can have: {others}.")
        notes.append(f"Left out {', '.join(f'{e.format} {e.precision}' for e in left)}: {why}")
    return recipe.model_copy(update={"exports": exports}), notes


def _fixed_batch_notes(source: Source) -> list[str]:
    """How a program whose batch its exporter fixed (a .pt2 exported without a dynamic batch) is handled."""
    batch = getattr(source, "fixed_batch", None)
    if batch is None:
        return []
    return [f"{source.path} was exported with its batch fixed at {batch} (no torch.export.Dim): its reshapes name "
            f"that batch, so every export keeps batch {batch}, and calibration, checks and measurements feed it "
            f"{batch} sample(s) at a time. Export it with `dynamic_shapes` (a torch.export.Dim batch) for files "
            "that take any batch."]


def _steps(recipe: Recipe, source: Source, data) -> tuple[tuple[PlannedStep, ...], Source]:
    """Each step checked against the model it will get, with data fitted to that model's input; and a model
    shaped like the last step's result (the exports' model). A Keras 3 model entering a step that needs tf_keras
    (tfmot's) is bridged here already, so a model tf_keras cannot rebuild is refused before any training."""
    from edgepress.compress.step import STEPS, StepContext
    from edgepress.models.source import framework_model, wrap

    planned, model, fitted = [], source, data
    for i, config in enumerate(recipe.steps, start=1):
        step = STEPS[config.type]
        bridge = step.bridges(model)
        if bridge:
            model = _bridged(model, i, config.type, recipe)
        if tuple(model.input_shape[1:]) != fitted.x_test.shape[1:]:
            fitted = data.fit_to(tuple(model.input_shape[1:]))  # after a student that takes another input
        context = StepContext(source=framework_model(source),
                              before=tuple(s.type for s in recipe.steps[: i - 1]))
        step.check(framework_model(model), config, context)
        planned.append(PlannedStep(i, config, step, fitted, bridge))
        model = wrap(step.result_like(framework_model(model), config, context))
    return tuple(planned), model


def _bridged(model: Source, index: int, step: str, recipe: Recipe) -> Source:
    """`model` rebuilt in tf_keras for step `index` (one that needs tfmot), or the refusal naming the step and the
    steps that would work on the model as it is."""
    from edgepress.compress.step import STEPS
    from edgepress.models.bridge import RebuildError

    native = sorted(name for name, s in STEPS.items() if model.kind in s.kinds)
    if not hasattr(model, "to_tf_keras"):
        raise EdgepressError(f"step {index} {step} works on {', '.join(sorted(STEPS[step].kinds))} models, and "
                             f"{model.name} is {model.title}.")
    try:
        return model.to_tf_keras()
    except RebuildError as e:
        raise EdgepressError(
            f"step {index} {step} needs tfmot, which works on tf_keras (Keras 2) models only, so edgepress must "
            f"rebuild '{model.name}' ({model.title}) in tf_keras for it, and it cannot: {e}. The steps that work on "
            f"it as it is: {', '.join(native) or 'none'}; to use {step}, build and save the model with tf_keras."
        ) from None


def _check_exports(recipe: Recipe, exports: tuple[PlannedExport, ...], final: Source,
                   calibration: np.ndarray | None) -> None:
    """Refuse exports the model they start from cannot have, before any work: each exporter's own checks on a
    model shaped like the exports' one (a distilled student's layers included)."""
    from edgepress.deploy.registry import exporter_for

    if any(e.quantize is not None for e in recipe.exports):
        from edgepress.quantize.accuracy_aware import check_quantizable

        check_quantizable(final)
        if any(step.type == "qat" for step in recipe.steps):
            raise EdgepressError(
                "An export with `quantize:` (accuracy-aware post-training int8) cannot follow a qat step: the "
                "quantization-aware model already carries its int8 ranges. Export it as tflite int8 without "
                "`quantize:`, or drop the qat step."
            )
    for i, export in enumerate(exports):
        request = export.request(final, calibration)
        exporter_for(request).check(request)
        if request.float_layers:
            from edgepress.deploy.layers import layer_names

            if not hasattr(final, "model"):
                raise EdgepressError(f"exports[{i}].float_layers names Keras layers, and {final.name} is "
                                     f"{final.title}. Remove float_layers from that export.")
            known = layer_names(final.model)
            unknown = [name for name in request.float_layers if name not in known]
            if unknown:
                raise EdgepressError(f"exports[{i}].float_layers names {', '.join(map(repr, unknown))}, which "
                                     f"'{final.name}' does not have; its layers: {', '.join(known)}.")


def _kernel_notes(recipe: Recipe, devices: list) -> list[str]:
    """Where a device's runtime has no right kernel for an export's precision (said, not hidden)."""
    notes = []
    for e in recipe.exports:
        for d in devices:
            notes += [f"{e.format} {e.precision} on {d.name}: known not to run there ({known.reason}); it is tried, "
                      "and reported for that device with the runtime's reason if it fails."
                      for known in d.known_failures if (known.format, known.precision) == (e.format, e.precision)]
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
