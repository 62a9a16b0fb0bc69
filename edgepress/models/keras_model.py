"""What the two Keras kinds share: a Keras model (Keras 3 or tf_keras) as a Source.

`keras3.Keras3Source` and `tf_keras.TfKerasSource` differ only in which Keras built the model: how its variables
reach TensorFlow, how it goes to ONNX, how it is written to a file. Every step that works on Keras layers takes
`source.model`; every format applies.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np


class KerasModel:
    """A Keras model as a source: steps transform `model`, every export applies."""

    kind: ClassVar[str]
    title: ClassVar[str]
    why_no_steps: ClassVar[str] = ""
    quantize_aware: ClassVar[bool] = False  # tf_keras says so for a model that went through qat

    def __init__(self, model, path: Path | None = None) -> None:
        self.model = model
        self.path = Path(path) if path is not None else None

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def input_shape(self) -> tuple:
        return tuple(self.model.input_shape)

    @property
    def input_dtype(self) -> np.dtype:
        raise NotImplementedError

    @property
    def io_counts(self) -> tuple[int, int]:
        return len(self.model.inputs), len(self.model.outputs)

    @property
    def layout(self) -> str | None:
        """NHWC for an image input (N, H, W, C), Keras' layout; None for any other input."""
        return "NHWC" if len(self.input_shape) == 4 else None

    def why_not(self, format: str) -> str | None:
        return None

    def takes_batch_size(self, format: str) -> bool:
        return True

    def stats(self) -> dict:
        from edgepress.models.stats import model_stats

        return model_stats(self.model)

    def predict(self, x: np.ndarray) -> np.ndarray:
        from edgepress.models import training

        return training.predict(self.model, x)

    def with_input_shape(self, sample_shape: Sequence[int]) -> KerasModel:
        """The same layers and weights on an Input whose unknown sample dimensions are fixed to `sample_shape`."""
        from edgepress.compat import keras_of

        keras = keras_of(self.model)
        fixed_input = keras.Input(tuple(sample_shape), dtype=self.input_dtype.name)
        fixed = keras.models.clone_model(self.model, input_tensors=fixed_input)
        fixed.set_weights(self.model.get_weights())
        return type(self)(fixed, self.path)

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
        model = self.model
        spec = tf.TensorSpec((batch_size, *self.input_shape[1:]), tf.as_dtype(self.input_dtype), name="input")
        holder = tf.Module()
        holder.weights = self.tf_variables()
        holder.call = tf.function(lambda input: model(input, training=False), input_signature=[spec])
        return tf.lite.TFLiteConverter.from_concrete_functions([holder.call.get_concrete_function()], holder)

    def tf_variables(self) -> list:
        """The model's weights as TensorFlow variables (what a SavedModel of its call must hold)."""
        raise NotImplementedError

    def weights(self) -> Iterator[tuple[str, np.ndarray]]:
        """(name, values) of each weight."""
        for variable in self.model.weights:
            yield getattr(variable, "path", None) or variable.name, np.asarray(variable.numpy())

    def to_onnx(self, out: Path, batch_size: int | None, opset: int) -> None:
        raise NotImplementedError

    def save(self, path: Path, like: str) -> dict[str, Any]:
        raise NotImplementedError
