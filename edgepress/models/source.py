"""The model a run starts from and each step returns, behind one interface, whatever its framework.

    source = open_model("model.keras")           # edgepress.models.loading: the file's kind, loaded as data
    source.kind, source.why_not("tflite"), source.stats(), source.predict(x)
    source = wrap(keras_model)                   # a framework model a step returned, as a Source

Each kind is one module that defines one class and registers it (`@register`): keras3 (a Keras 3 model, handled
natively), tf_keras (a Keras 2 model: what tfmot works on), saved_model (a plain TensorFlow SavedModel), onnx_model
(an .onnx file), torch_program (a torch.export program). A step declares the kinds it works on natively
(`Step.kinds`); an exporter the kinds it converts (`edgepress.deploy.registry`). Adding a kind is adding a module
here (README "Adding a model kind").

What every kind answers is `Source` below. A kind that a step can transform holds the framework's model as
`model` (a Keras model, a torch module); a Keras 3 model can also become a tf_keras one (`to_tf_keras`) for a step
that needs tfmot. This module imports nothing above `edgepress.models`; TensorFlow, onnx and torch are imported
inside the methods that need them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from edgepress.errors import EdgepressError

# The modules that define the kinds, in the order `open_model` asks them whether they open a path.
KIND_MODULES = ("decoder", "torch_program", "onnx_model", "saved_model", "keras3", "tf_keras")


@runtime_checkable
class Source(Protocol):
    """What edgepress asks of a model, whatever its kind."""

    kind: ClassVar[str]  # keras3, tf_keras, saved_model, onnx or torch
    title: ClassVar[str]  # how messages name the kind: "a Keras 3 model"
    why_no_steps: ClassVar[str]  # why no compression step applies ("" when some do)
    name: str
    path: Path | None  # the file it was loaded from; None for a model built or trained in this process

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        """The input's shape, batch first, None where unknown."""

    @property
    def input_dtype(self) -> np.dtype: ...

    @property
    def io_counts(self) -> tuple[int, int]:
        """How many input and output tensors the model has (edgepress runs models with one of each)."""

    @property
    def layout(self) -> str | None:
        """The image layout its input takes: NHWC (TensorFlow), NCHW (PyTorch), None for other inputs."""

    def why_not(self, format: str) -> str | None:
        """Why it cannot be exported to `format`, or None when it can."""

    def takes_batch_size(self, format: str) -> bool:
        """Whether an export to `format` can fix its batch dimension."""

    def stats(self) -> dict:
        """{params, macs, sparsity}: MACs (one sample) and sparsity where the kind can count them, else None."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Float32 outputs for `x`."""

    def weights(self) -> Iterator[tuple[str, np.ndarray]]:
        """(name, values) of each weight (a variable, an initializer, a parameter or buffer)."""

    def with_input_shape(self, sample_shape: Sequence[int]) -> Source:
        """This model with its unknown sample dimensions fixed to `sample_shape` (one sample, no batch)."""

    def save(self, path: Path, like: str) -> dict[str, Any]:
        """Write the model near `path` (its suffix may change) in its own format, or converted to the kind `like`
        (the run's source kind) where that is how a user reads it back; return the manifest's fields."""


KINDS: dict[str, type] = {}


def register(cls: type) -> type:
    """Register a Source class under its `kind`."""
    if cls.kind in KINDS:
        raise ValueError(f"two model kinds are registered as '{cls.kind}'")
    KINDS[cls.kind] = cls
    return cls


def kinds() -> dict[str, type]:
    """Every kind, each module of KIND_MODULES imported (in that order: `open_model` asks them in it)."""
    order = {f"edgepress.models.{module}": i for i, module in enumerate(KIND_MODULES)}
    for module in order:
        importlib.import_module(module)
    return dict(sorted(KINDS.items(), key=lambda item: order[item[1].__module__]))


def wrap(model: Any) -> Source:
    """`model` as a Source: as it is when it is one, else the kind whose `wraps(model)` claims it (a Keras model a
    step returned, a torch module)."""
    if isinstance(model, Source):
        return model
    for cls in kinds().values():
        if cls.wraps(model):
            return cls(model)
    raise TypeError(f"edgepress has no model kind for a {type(model).__module__}.{type(model).__name__}")


def framework_model(source: Source) -> Any:
    """What a step transforms: the framework's model a kind holds (a Keras model), or the Source itself for a kind
    whose steps work on the Source (a PyTorch program: distill)."""
    return getattr(source, "model", source)


def fixed_input(source: Source, input_shape: Sequence[int] | None, what: str) -> Source:
    """`source` with every input dimension but the batch known: as it is, or fixed to the recipe's input_shape."""
    sample = tuple(source.input_shape[1:])
    unknown = [i for i, d in enumerate(sample, start=1) if d is None]
    if input_shape is None:
        if unknown:
            example = "[" + ", ".join("N" if d is None else str(d) for d in sample) + "]"
            plural = len(unknown) > 1
            raise EdgepressError(
                f"The input of {what} has shape {shape_text(source.input_shape)}: dimension{'s' if plural else ''} "
                f"{', '.join(map(str, unknown))} (after the batch, dimension 0) {'are' if plural else 'is'} "
                "unknown, and the data, the calibration and the TFLite converter need every dimension but the batch "
                f"fixed. Set them in the recipe: `model: {{input_shape: {example}}}` with N the size your data has "
                "(one sample's shape, no batch), or build the model with a fixed input shape."
            )
        return source
    check_fits(sample, input_shape, what)
    if not unknown:
        return source
    return source.with_input_shape(input_shape)


def check_fits(sample: Sequence[int | None], input_shape: Sequence[int], what: str) -> None:
    """Refuse a recipe input_shape that does not fit a model's sample shape (one size per dimension, equal to the
    known ones)."""
    fits = len(input_shape) == len(sample)
    if not fits or any(d is not None and d != s for d, s in zip(sample, input_shape, strict=True)):
        raise EdgepressError(
            f"model.input_shape {list(input_shape)} does not fit the input of {what}, which is "
            f"{shape_text(sample)} per sample: give one size per dimension, equal to the known ones."
        )


def shape_text(shape: Sequence[int | None]) -> str:
    """(?, 28, 28) for a shape with unknown dimensions."""
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
