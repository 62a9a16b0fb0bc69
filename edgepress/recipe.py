"""`Recipe`: the whole job as one validated document (model, data, steps, exports, measure, gates).

    recipe = Recipe.from_yaml("recipes/mnist_cnn.yaml")

A pure schema: validating reads no file (device profiles, models and data are read by `edgepress.plan`).
Every section forbids unknown keys, so a typo is an error that names the key and the valid ones.
Relative paths in a recipe file are relative to that file. `edgepress schema` prints the JSON Schema.
The steps are the registered ones (`edgepress.compress.step`), the precisions those of `edgepress.formats`.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgepress.compress.step import registered
from edgepress.errors import EdgepressError
from edgepress.formats import PRECISIONS, QUANTIZED, precision_names, sparse_precisions
from edgepress.specs.baseline import BaselineSpec
from edgepress.specs.lm import LMSpec
from edgepress.specs.measure import MeasureSpec
from edgepress.specs.quantize import QuantizeConfig
from edgepress.specs.section import Section
from edgepress.specs.tune import TuneSpec
from edgepress.values import MAX_BATCH, MAX_EPOCHS, MAX_LEARNING_RATE, fraction, plain_name, plain_path

STEPS = registered()
SPARSE_PRECISIONS = sparse_precisions("tflite")
# Limits past which a value can only be a mistake (a typo that would train for days or fail deep in numpy).
MAX_SEED = 2**32 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="Random seed, 0 to 2**32 - 1.")]


class ModelSpec(Section):
    """The model to compress: a zoo name (trained here on the recipe's data) or a saved model file."""

    zoo: str | None = Field(None, description="Zoo model to train here, e.g. seed_cnn (see `edgepress models`).")
    path: str | None = Field(
        None, description=".keras or .h5 file, SavedModel directory (Keras, or a plain tf.Module: exports only), "
        "or .onnx file (e.g. from PyTorch: ONNX exports only)."
    )
    input_shape: list[Annotated[int, Field(ge=1, le=1_000_000)]] | None = Field(
        None, description="One sample's input shape, without the batch, for a model whose input has unknown "
        "dimensions (e.g. [28, 28] for an LSTM built on (None, 28)): data, calibration and TFLite need them fixed."
    )
    trusted: bool = Field(
        False, description="Trust the model file: allow code saved in it (Lambda layers, Python functions) to run "
        "when it is loaded. Off, such a file is refused before anything in it runs; set it only for files you trust."
    )
    custom_objects: list[str] = Field(
        default_factory=list, description="Python modules that define the model's own Keras layers (registered with "
        "keras.saving.register_keras_serializable), e.g. [mypackage.layers]: imported before the model is loaded, "
        "and only for a trusted model (--trust-model), since importing a module runs its code."
    )
    train_epochs: int = Field(5, ge=1, le=MAX_EPOCHS, description="Training epochs for a zoo model.")
    batch_size: int = Field(128, ge=1, le=MAX_BATCH)
    learning_rate: float = Field(1e-3, gt=0, le=MAX_LEARNING_RATE)
    seed: Seed = 0

    @field_validator("path")
    @classmethod
    def _a_path(cls, value):
        return plain_path(value)

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.zoo is None) == (self.path is None):
            raise ValueError("give exactly one of model.zoo (a zoo name) or model.path (a saved model)")
        return self


class DataSpec(Section):
    """Where train, test and calibration samples come from."""

    dataset: Literal["digits", "mnist", "npz", "python_source"] = "digits"
    path: str | None = Field(
        None, description="mnist: idx directory or mnist.npz; npz: file with x and y; python_source: a folder of "
        ".py files (default: this Python's standard library), cut into 64-character next-character windows."
    )
    train_size: int | None = Field(None, ge=0, description="Samples for training (from the start of the data).")
    test_size: int | None = Field(None, ge=1, description="Samples for testing (from the end of the data).")
    calibration_samples: int = Field(200, ge=1, description="Training samples that calibrate quantization.")
    check_samples: int = Field(200, ge=1, description="Test samples each export is checked on against its model.")
    seed: Seed = 0

    @field_validator("path")
    @classmethod
    def _a_path(cls, value):
        return plain_path(value)

    @model_validator(mode="after")
    def _path_of_a_dataset_that_reads_one(self) -> DataSpec:
        if self.dataset == "digits" and self.path is not None:
            raise ValueError("dataset digits is scikit-learn's, built in: it reads no file, so path "
                             f"{self.path!r} would be ignored; remove path, or set dataset to mnist or npz")
        return self


# One config per registered step, told apart by its `type`.
Step = Annotated[Union[tuple(step.config for step in STEPS.values())], Field(discriminator="type")]  # noqa: UP007


class ExportSpec(Section):
    """One artifact: a format and a precision (or, with `quantize`, int8 within an accuracy budget)."""

    format: Literal["tflite", "onnx"]
    precision: str = "fp32"
    batch_size: int | None = Field(
        None, ge=1, le=MAX_BATCH, description="Fix the artifact's batch dimension (default: dynamic). TFLite needs "
        "it for LSTM and GRU layers (set 1): they convert only with a static batch and sequence length."
    )
    quantize: QuantizeConfig | None = Field(
        None, description="Accuracy-aware int8: keep the most sensitive layers in float until the accuracy drop "
        "from the exported (float) model is within max_accuracy_drop. Sets precision to tflite int8 / onnx int8_static."
    )
    layout: Literal["NCHW", "NHWC"] | None = Field(
        None, description="tflite from a PyTorch model: the artifact's image input layout. Default: the model's own "
        "(NCHW); NHWC wraps it with litert-torch's to_channel_last_io, the layout TFLite users expect."
    )
    sparse: bool = Field(
        False, description="tflite fp32 / fp16: store mostly-zero weights (after prune, e.g. sparsity_m_by_n [2, 4]) "
        "as sparse tensors for XNNPACK's sparse inference; the report compares it with the same export dense."
    )
    block_size: int | None = Field(
        None, description="int4_weight: quantize weights in blocks of this many (tflite 32, 64, 128 or 256, Dense "
        "layers, default per channel; onnx 16 to 256, default 32)."
    )
    float_layers: list[str] | None = Field(
        None, description="tflite int8 / onnx int8_static: Keras layers to keep in float, the rest int8 (e.g. the "
        "first convolution: int8 kernels on a 1- or 3-channel input are slower than float ones on many CPUs; see "
        "each artifact's per-op profile)."
    )
    float_ops: list[Literal["layernorm", "attention", "elementwise"]] | None = Field(
        None, description="tflite int8 / onnx int8_static: kinds of ops to keep in float, the rest int8: `layernorm` "
        "(every LayerNormalization), `attention` (each MultiHeadAttention's score and context matmuls and softmax, "
        "its projections int8; a PyTorch program's scaled_dot_product_attention in tflite int8), "
        "`elementwise` (onnx only, any model: every op but the matmuls and convolutions, "
        "whose outputs are then float). XNNPACK runs no int8 LayerNorm or attention, so in a plain int8 file they run "
        "on LiteRT's builtin kernels (see the per-op profile): on a small ViT here the int8 file with both in float is "
        "faster than fp32, the plain one 2.7x slower. onnxruntime runs quantized elementwise ops as requantizing "
        "QLinearAdd / QLinearMul between QuantizeLinear and DequantizeLinear nodes, slower than in float."
    )

    @model_validator(mode="after")
    def _float_layers_of_int8(self) -> ExportSpec:
        if self.float_layers is not None and (self.precision != QUANTIZED[self.format] or self.quantize):
            raise ValueError("float_layers keeps layers of an int8 export in float: it is for tflite int8 and onnx "
                             "int8_static without quantize (which chooses its own), not "
                             f"{self.format} {self.precision}")
        return self

    @model_validator(mode="after")
    def _float_ops_of_int8(self) -> ExportSpec:
        if self.float_ops is not None and (self.precision != QUANTIZED[self.format] or self.quantize):
            raise ValueError("float_ops keeps kinds of ops of an int8 export in float (where the runtime has no fast "
                             "int8 kernel for them): it is for tflite int8 and onnx int8_static without quantize, "
                             f"not {self.format} {self.precision}")
        return self

    @model_validator(mode="after")
    def _block_size_fits(self) -> ExportSpec:
        if self.block_size is None:
            return self
        sizes = PRECISIONS[self.format][self.precision].block_sizes if self.precision in PRECISIONS[self.format] \
            else ()
        if self.block_size not in sizes:
            takes = [f"{f} {p.name} ({', '.join(map(str, p.block_sizes))})" for f in PRECISIONS
                     for p in PRECISIONS[f].values() if p.block_sizes]
            raise ValueError(f"block_size {self.block_size} does not apply to {self.format} {self.precision}; "
                             f"it is for: {'; '.join(takes)}")
        return self

    @model_validator(mode="after")
    def _sparse_tflite_float(self) -> ExportSpec:
        if self.sparse and (self.format != "tflite" or self.precision not in SPARSE_PRECISIONS or self.quantize):
            raise ValueError(
                f"sparse is a tflite option at precision {' or '.join(SPARSE_PRECISIONS)} (sparse int8 and dynamic "
                f"files are larger and LiteRT's XNNPACK cannot load them), not {self.format} {self.precision}"
                + (" with quantize" if self.quantize else "")
            )
        return self

    @model_validator(mode="after")
    def _known_precision(self) -> ExportSpec:
        if self.precision not in precision_names(self.format):
            raise ValueError(
                f"{self.format} has no precision '{self.precision}'; use one of: "
                f"{', '.join(precision_names(self.format))}"
            )
        return self

    @model_validator(mode="after")
    def _quantized_precision(self) -> ExportSpec:
        if self.quantize is None:
            return self
        self.quantize.check_format(self.format)
        wanted = QUANTIZED[self.format]
        if "precision" in self.model_fields_set and self.precision != wanted:
            raise ValueError(
                f"quantize makes {self.format} {wanted} artifacts; leave out precision or set it to {wanted}"
            )
        self.precision = wanted
        return self


class Target(BaseModel):
    """A device profile (shipped name or .yaml file) with fields to override, e.g. reach: {host: ...}."""

    model_config = ConfigDict(extra="allow")  # the extra keys are Device fields, validated by the Device

    name: str
    label: str | None = Field(None, description="The target's name in the report; default: the profile's name.")

    @field_validator("label")
    @classmethod
    def _a_name(cls, value):
        return None if value is None else plain_name(value)

    def device(self):
        from edgepress.devices import load_device

        overrides = dict(self.model_extra or {}, **({"name": self.label} if self.label else {}))
        device = load_device(self.name)
        return device.with_overrides(overrides) if overrides else device


class Gates(Section):
    """Limits an artifact must meet. Unset gates are not checked."""

    max_accuracy_drop: float | None = Field(
        None, description="Accuracy drop from the source model, as a fraction (0.01) or a percentage ('1%')."
    )
    max_p50_ms: float | None = Field(None, gt=0, description="Median latency at batch 1, in milliseconds.")
    max_bytes: int | None = Field(None, gt=0, description="Artifact file size in bytes.")
    max_perplexity: float | None = Field(
        None, ge=1, description="Per-token perplexity of a sequence model (a language model) on the test data."
    )
    min_decode_tokens_per_s: float | None = Field(
        None, gt=0, description="A decoder LM's decode speed: tokens per second (1000 / the decode step's p50)."
    )
    max_ttft_ms: float | None = Field(
        None, gt=0, description="A decoder LM's time to first token (the p50 of a prefill of lm.prompt_len tokens)."
    )
    max_memory_mb: float | None = Field(
        None, gt=0, description="Peak memory (RSS, MiB) of the runner with the model loaded (a decoder's KV cache "
        "full); a target's own memory budget is a gate too."
    )
    require: Literal["any", "all"] = Field(
        "any", description="any: every target has an artifact meeting every gate; all: every row must pass."
    )
    baseline: BaselineSpec | None = Field(
        None, description="A previous run's results.json to gate against (edgepress/compare.py)."
    )

    def with_baseline_path(self, resolve) -> Gates:
        """These gates with the baseline's path passed through `resolve` (relative to the recipe's folder)."""
        if self.baseline is None:
            return self
        baseline = self.baseline.model_copy(update={"path": resolve(self.baseline.path)})
        return self.model_copy(update={"baseline": baseline})

    @field_validator("max_accuracy_drop", mode="before")
    @classmethod
    def _percent(cls, value):
        return fraction(value)


class Recipe(Section):
    """A compression and deployment job: model -> steps -> exports -> measurements -> gates."""

    name: str = Field(
        "edgepress", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
        description="The run's name, used in its folder and artifact names: letters, digits, '.', '_' and '-', "
        "at most 100 characters (a name, not a path).",
    )
    model: ModelSpec
    data: DataSpec = Field(default_factory=DataSpec)
    steps: list[Step] = Field(default_factory=list, description="Compression steps, applied in order.")
    exports: list[ExportSpec] = Field(
        default_factory=list, description="Artifacts to make; default (empty): the precisions the targets prefer."
    )
    targets: list[Target] = Field(
        default_factory=lambda: [Target(name="x86-host")],
        description="Devices to measure on (see `edgepress devices`): names, profile files, or {name, overrides}.",
    )
    measure: MeasureSpec = Field(default_factory=MeasureSpec)
    lm: LMSpec | None = Field(
        None, description="A decoder language model's KV cache length, prompt length and evaluation windows "
        "(default for a decoder: cache_len 128, prompt_len 16, eval_windows 32)."
    )
    gates: Gates = Field(default_factory=Gates)
    tune: TuneSpec | None = Field(
        None, description="`edgepress tune`: search steps and exports for the fastest artifact per target within "
        "the gates (trials, time_budget, space); `edgepress run` ignores it."
    )

    @field_validator("targets", mode="before")
    @classmethod
    def _target_names(cls, value):
        return [{"name": t} if isinstance(t, str) else t for t in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _steps_in_an_order_that_works(self) -> Recipe:
        types = [step.type for step in self.steps]
        if "qat" in types:
            late = [t for t in types[types.index("qat") + 1 :] if STEPS[t].not_after_qat]
            if late:
                raise ValueError(f"{late[0]} must come before qat: {STEPS[late[0]].not_after_qat}")
        # Choices that depend on the steps before (qat's preserve: auto); the resolved recipe shows them.
        self.steps = [STEPS[step.type].resolve(step, types[:i]) for i, step in enumerate(self.steps)]
        return self

    @model_validator(mode="after")
    def _exports_fit_the_steps(self) -> Recipe:
        for step in self.steps:
            allowed = STEPS[step.type].exports_after
            bad = [f"{e.format} {e.precision}" for e in self.exports if allowed and (e.format, e.precision)
                   not in allowed]
            if bad:
                raise ValueError(
                    f"after a {step.type} step the model is already quantization-aware; export it as "
                    f"{_choices(allowed)}, not: {', '.join(bad)}"
                )
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> Recipe:
        """Read and validate a recipe file; relative paths in it are taken relative to the file."""
        from edgepress.yamlfile import read_mapping

        path = Path(path)
        raw = read_mapping(path, "Recipe")
        return cls.from_dict(raw, base=path.parent, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict, base: str | Path = ".", source: str = "recipe") -> Recipe:
        """Validate a recipe given as a dict; relative paths are resolved against `base`."""
        raw = {**raw, "targets": _profile_paths(raw["targets"], Path(base))} if "targets" in raw else raw
        try:
            recipe = cls.model_validate(raw)
        except ValidationError as e:
            raise EdgepressError(_explain(e, source)) from None
        return recipe.with_paths_from(Path(base))

    def with_paths_from(self, base: Path) -> Recipe:
        """This recipe with relative model and data paths resolved against `base`."""

        def resolve(p: str | None) -> str | None:
            return None if p is None else str((base / p).resolve()) if not Path(p).is_absolute() else p

        return self.model_copy(
            update={
                "model": self.model.model_copy(update={"path": resolve(self.model.path)}),
                "data": self.data.model_copy(update={"path": resolve(self.data.path)}),
                "gates": self.gates.with_baseline_path(resolve),
                # A step may name files too (distill: its student model and its unlabelled samples).
                "steps": [s.with_paths_from(resolve) if hasattr(s, "with_paths_from") else s for s in self.steps],
            }
        )

    def with_overrides(self, data: str | None = None, model: str | None = None,
                       devices: list[str] | None = None) -> Recipe:
        """This recipe with the data path, the model file and/or the targets replaced (command-line --data, --model,
        --device: shipped profile names or profile files, relative to the working directory)."""
        recipe = self
        if devices:
            targets = _profile_paths(list(devices), Path.cwd())
            recipe = recipe.model_copy(update={"targets": [Target(name=name) for name in targets]})
        if data is not None:
            spec = recipe.data.model_copy(update={"path": str(Path(data).resolve())})
            recipe = recipe.model_copy(update={"data": spec})
        if model is not None:
            spec = recipe.model.model_copy(update={"path": str(Path(model).resolve()), "zoo": None})
            recipe = recipe.model_copy(update={"model": spec})
        return recipe

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _profile_paths(targets, base: Path):
    """Targets with device profile files (not shipped names) resolved against the recipe's folder."""
    if not isinstance(targets, list):
        return targets

    def resolve(name):
        if isinstance(name, str) and name.endswith((".yaml", ".yml")) and not Path(name).is_absolute():
            return str((base / name).resolve())
        return name

    return [{**t, "name": resolve(t.get("name"))} if isinstance(t, dict) else resolve(t) for t in targets]


def schema() -> dict:
    """The recipe's JSON Schema."""
    return Recipe.model_json_schema()


def _explain(error: ValidationError, source: str) -> str:
    problems = []
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            valid = _fields_at(e["loc"][:-1])
            problems.append(f"unknown key '{where}'" + (f" (valid keys there: {', '.join(valid)})" if valid else ""))
        else:
            problems.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
    return f"Recipe {source} is invalid: " + "; ".join(problems) + "."


def _fields_at(loc: tuple) -> list[str]:
    """The valid keys of the recipe section at `loc` (e.g. ('steps', 0, 'prune'))."""
    model: type[BaseModel] | None = Recipe
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        if part in model.model_fields:
            model = _section(model.model_fields[part].annotation)
        else:  # a discriminated union's tag, e.g. 'prune' under steps.0
            model = STEPS[part].config if part in STEPS else None
    return list(model.model_fields) if model else []


def _section(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _section(arg)
        if found:
            return found
    return None


def _choices(pairs) -> str:
    """'tflite int8 or dynamic, or onnx fp32' for a set of (format, precision) pairs."""
    by_format: dict[str, list[str]] = {}
    for format, precision in sorted(pairs, reverse=True):
        by_format.setdefault(format, []).append(precision)
    return ", or ".join(f"{f} {' or '.join(p)}" for f, p in by_format.items())
