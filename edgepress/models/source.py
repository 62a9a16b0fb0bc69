"""The model a run starts from, behind one interface, whatever its kind.

    model = as_source(keras_model)   # or a Graph: edgepress.models.graphs (a plain SavedModel, an .onnx file)
    model.trainable, model.why_not("tflite"), model.stats(), model.with_input_shape([28, 28]), model.save(path)

The three kinds answer the same questions: `kind`, `title` (for messages), `name`, `input_shape`
(batch first, None where unknown), `trainable` (the compression steps apply) and `why_no_steps`,
`why_not(format)` (None when it can be exported to that format), `takes_batch_size(format)`,
`stats()` (params, MACs, sparsity), `predict(x)`, `save(path)`, `tflite_converter(batch_size)`,
`to_onnx(out, batch_size, opset)`.
`as_source` is the one place that tells a Keras model from a graph. This module imports nothing above
`edgepress.models`; TensorFlow is imported inside the methods that need it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgepress.errors import EdgepressError
from edgepress.models.graphs import Graph


class KerasSource:
    """A Keras model (tf_keras: the steps' Keras) as a source: every step and every format applies."""

    kind = "keras"
    title = "a Keras model"
    trainable = True
    why_no_steps = ""
    tflite_route = "tensorflow"

    def __init__(self, model) -> None:
        self.keras = model

    @property
    def name(self) -> str:
        return self.keras.name

    @property
    def input_shape(self) -> tuple:
        return tuple(self.keras.input_shape)

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self.keras.inputs[0].dtype.as_numpy_dtype)

    @property
    def quantize_aware(self) -> bool:
        """True for a model that went through `qat` (it holds tfmot quantize wrappers)."""
        return any(type(layer).__name__.startswith("Quantize") for layer in self.keras.layers)

    @property
    def layout(self) -> str | None:
        """NHWC for an image input (N, H, W, C), Keras' layout; None for any other input."""
        return "NHWC" if len(self.input_shape) == 4 else None

    def why_not(self, format: str) -> str | None:
        return None

    def takes_batch_size(self, format: str) -> bool:
        return True

    def stats(self) -> dict:
        from edgepress.models.stats import macs, sparsity

        return {"params": int(self.keras.count_params()), "macs": macs(self.keras), "sparsity": sparsity(self.keras)}

    def predict(self, x: np.ndarray, batch_size: int = 256, verbose: int = 0) -> np.ndarray:
        from edgepress.models import training

        return training.predict(self.keras, x)

    def with_input_shape(self, sample_shape: Sequence[int]) -> KerasSource:
        """The same layers and weights on an Input whose unknown sample dimensions are fixed to `sample_shape`."""
        from edgepress.compat import keras

        model = self.keras
        fixed_input = keras().Input(tuple(sample_shape), dtype=model.inputs[0].dtype)
        fixed = keras().models.clone_model(model, input_tensors=fixed_input)
        fixed.set_weights(model.get_weights())
        return KerasSource(fixed)

    def save(self, path: Path, scope=None) -> Path:
        """Write the model as `path` (.keras), atomically, inside `scope` (the custom objects it needs)."""
        import contextlib

        from edgepress import files

        with scope or contextlib.nullcontext(), files.atomic_path(path) as tmp:
            self.keras.save(tmp)
        return path

    def tflite_converter(self, batch_size: int | None = None):
        """A plain TFLiteConverter, the input's batch fixed to `batch_size` if given (else dynamic).

        It converts a concrete function of the model's call held by a bare tf.Module with the model's
        variables, not the Keras model itself: the converter saves the object it is given as a SavedModel
        first, and a Keras model saves a trace of every layer's call with it (MobileNetV2: 26 of a 27 s
        conversion; this way 4 s, the same file). A fully static input shape (a fixed batch) is also what
        makes recurrent layers convertible.
        """
        from edgepress.compat import tensorflow

        tf = tensorflow()
        model = self.keras
        spec = tf.TensorSpec((batch_size, *model.input_shape[1:]), tf.as_dtype(self.input_dtype), name="input")
        holder = tf.Module()
        holder.weights = list(model.variables)
        holder.call = tf.function(lambda input: model(input, training=False), input_signature=[spec])
        return tf.lite.TFLiteConverter.from_concrete_functions([holder.call.get_concrete_function()], holder)

    def to_onnx(self, out: Path, batch_size: int | None, opset: int) -> None:
        import tf2onnx

        from edgepress.compat import tensorflow

        tf = tensorflow()
        spec = (tf.TensorSpec((batch_size, *self.input_shape[1:]), tf.as_dtype(self.input_dtype), name="input"),)
        tf2onnx.convert.from_keras(self.keras, input_signature=spec, opset=opset, output_path=str(out))


def as_source(model) -> KerasSource | Graph:
    """`model` behind the source interface: a Graph as it is, a Keras model wrapped."""
    if isinstance(model, Graph | KerasSource):
        return model
    return KerasSource(model)


def unwrap(model):
    """The Keras model behind a KerasSource (what the steps and the Keras-layer tools take), else `model`."""
    return model.keras if isinstance(model, KerasSource) else model


def fixed_input(model, input_shape: list[int] | None, what: str):
    """`model` with every input dimension but the batch known: as it is, or fixed to the recipe's input_shape."""
    source = as_source(model)
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
        return model
    fits = len(input_shape) == len(sample)
    if not fits or any(d is not None and d != s for d, s in zip(sample, input_shape, strict=True)):
        raise EdgepressError(
            f"model.input_shape {list(input_shape)} does not fit the input of {what}, which is "
            f"{shape_text(sample)} per sample: give one size per dimension, equal to the known ones."
        )
    if not unknown:
        return model
    return unwrap(source.with_input_shape(input_shape))


def shape_text(shape) -> str:
    """(?, 28, 28) for a shape with unknown dimensions."""
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
