"""A plain TensorFlow SavedModel (a `tf.Module` saved with `tf.saved_model.save`, or Keras 3's `model.export()`):
exported to TFLite (`TFLiteConverter.from_saved_model`, every post-training precision) and to ONNX (tf2onnx),
measured, never retrained.

    source = SavedModelSource(Path("saved_model_dir"))   # called through its serving signature

A SavedModel is graphs (GraphDefs and their function library) and variables, no pickled Python objects; its graph is
checked before it is loaded (edgepress.models.trust.check_graph: no Python, and unless the file is trusted, no op
that reaches outside the model).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np

from edgepress.compat import quiet
from edgepress.errors import EdgepressError, first_line
from edgepress.models.graph import Graph, temporary
from edgepress.models.keras_files import is_plain_saved_model
from edgepress.models.source import register
from edgepress.models.trust import check_graph

SERVING = "serving_default"


@register
class SavedModelSource(Graph):
    """A TensorFlow SavedModel without a Keras model in it, called through its serving signature."""

    kind: ClassVar[str] = "saved_model"
    title = "a plain TensorFlow SavedModel"
    why_no_steps = (
        "it is a plain TensorFlow SavedModel (tf.Variables and a tf.function, no Keras layers): pruning and "
        "quantization-aware training wrap Keras layers with tfmot, and distillation trains a Keras student"
    )

    def __init__(self, path: str | Path, keep: object | None = None, trusted: bool = False) -> None:
        from edgepress.compat import tensorflow

        tf = tensorflow()
        self.path = Path(path)
        self.name = self.path.name
        self._keep = keep  # a TemporaryDirectory that holds the files, when edgepress saved them
        check_graph(self.path, trusted)
        try:
            with quiet():
                self._loaded = tf.saved_model.load(str(self.path))
        except Exception as e:  # TF raises OSError, ValueError and its own errors for bad directories
            raise EdgepressError(
                f"Cannot load the SavedModel {self.path}: {first_line(e)}. Save it again with tf.saved_model.save."
            ) from None
        signatures = dict(self._loaded.signatures)
        if SERVING not in signatures:
            others = f" (it has: {', '.join(signatures)})" if signatures else ""
            raise EdgepressError(
                f"The SavedModel {self.path} has no serving signature '{SERVING}'{others}, so edgepress cannot "
                "tell which function is the model, nor its input shape. Save it with one: "
                "tf.saved_model.save(module, path, signatures={'serving_default': module.__call__}), where "
                "__call__ is a tf.function with an input_signature, e.g. [tf.TensorSpec([None, 784], tf.float32)]."
            )
        self._function = signatures[SERVING]
        args, kwargs = self._function.structured_input_signature
        outputs = self._function.structured_outputs
        if args or len(kwargs) != 1 or len(outputs) != 1:
            raise EdgepressError(
                f"The serving signature of {self.path} has inputs {sorted(kwargs) or list(args)} and outputs "
                f"{sorted(outputs)}; edgepress handles models with one input tensor and one output tensor."
            )
        (self.input_name, spec), = kwargs.items()
        self._output_name = next(iter(outputs))
        self.input_dtype = np.dtype(spec.dtype.as_numpy_dtype)
        self._signature_shape = tuple(spec.shape.as_list())
        self.input_shape = self._signature_shape

    @classmethod
    def wraps(cls, model) -> bool:
        return False  # a tf.Module comes in saved (`from_trained`): its signature says what the model is

    @classmethod
    def opens(cls, path: Path) -> bool:
        return path.is_dir() and is_plain_saved_model(path)

    @classmethod
    def load(cls, path: Path, trusted: bool) -> SavedModelSource:
        return cls(path, trusted=trusted)

    @classmethod
    def from_trained(cls, module, save: Callable[[object, Path], None]) -> SavedModelSource:
        """Save a trained `tf.Module` with `save(module, path)` into a temporary directory and open it.

        The directory lives as long as the returned graph (the converters read the files).
        """
        keep, path = temporary("edgepress-savedmodel-", getattr(module, "name", None) or "module")
        save(module, path)
        return cls(path, keep=keep, trusted=True)  # saved by this process from a module built here

    def count_params(self) -> int:
        return int(sum(np.prod(v.shape) for v in self._function.variables))

    def weights(self) -> Iterator[tuple[str, np.ndarray]]:
        for variable in self._function.variables:
            yield variable.name, np.asarray(variable.numpy())

    def tf_function(self):
        """The serving function as a tf.function of one tensor named `input`, for tf2onnx and fixed shapes."""
        from edgepress.compat import tensorflow

        tf = tensorflow()
        function, name, output = self._function, self.input_name, self._output_name
        return tf.function(lambda input: function(**{name: input})[output])

    def tflite_converter(self, batch_size: int | None = None):
        """A TFLiteConverter for this model, its input fixed to `batch_size` rows if given.

        The SavedModel itself is converted when its signature already has the shape wanted; otherwise
        (a fixed batch, or sample dimensions fixed by the recipe) a concrete function of the serving
        signature at that shape is.
        """
        from edgepress.compat import tensorflow

        tf = tensorflow()
        shape = (batch_size or self.input_shape[0], *self.input_shape[1:])
        if shape == self._signature_shape:
            return tf.lite.TFLiteConverter.from_saved_model(str(self.path), signature_keys=[SERVING])
        spec = tf.TensorSpec(shape, tf.as_dtype(self.input_dtype), name="input")
        return tf.lite.TFLiteConverter.from_concrete_functions(
            [self.tf_function().get_concrete_function(spec)], self._loaded
        )

    def to_onnx(self, out: Path, batch_size: int | None, opset: int) -> None:
        import tf2onnx

        from edgepress.compat import tensorflow

        tf = tensorflow()
        spec = (tf.TensorSpec((batch_size, *self.input_shape[1:]), tf.as_dtype(self.input_dtype), name="input"),)
        tf2onnx.convert.from_function(self.tf_function(), input_signature=spec, opset=opset, output_path=str(out))

    def write(self, path: Path) -> None:
        shutil.copytree(self.path, path)

    def _run(self, x: np.ndarray) -> np.ndarray:
        from edgepress.compat import tensorflow

        tf = tensorflow()
        return self._function(**{self.input_name: tf.constant(x)})[self._output_name].numpy()
