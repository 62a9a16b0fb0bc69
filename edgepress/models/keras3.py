"""A Keras 3 model, handled natively: loaded, transformed, exported and written back as Keras 3.

    source = Keras3Source.load(Path("encoder.keras"), trusted=False)
    source.to_tf_keras()   # for a step that needs tfmot: the same model rebuilt in tf_keras (edgepress.models.bridge)

Keras 3 (`import keras`, the default Keras of TensorFlow >= 2.16) runs on the TensorFlow backend in the same process
as tf_keras. Its TFLite exports convert a concrete function of the model's own call, its ONNX exports go through
tf2onnx from that function: nothing is rebuilt, so any layer Keras 3 has (MultiHeadAttention, EinsumDense, ...)
exports. The run's models of a Keras 3 source are Keras 3 `.keras` files that plain Keras 3 loads with
`safe_mode=True`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgepress import files
from edgepress.compat import quiet
from edgepress.errors import EdgepressError
from edgepress.models import keras_files, saving, trust
from edgepress.models.keras_model import KerasModel
from edgepress.models.source import register


@register
class Keras3Source(KerasModel):
    kind: ClassVar[str] = "keras3"
    title: ClassVar[str] = "a Keras 3 model"

    @classmethod
    def wraps(cls, model: Any) -> bool:
        return type(model).__module__.startswith("keras.") and hasattr(model, "layers")

    @classmethod
    def opens(cls, path: Path) -> bool:
        """A .keras or .h5 file Keras 3 wrote."""
        return path.is_file() and keras_files.is_keras_file(path) and keras_files.keras_major(path) >= 3

    @classmethod
    def load(cls, path: Path, trusted: bool) -> Keras3Source:
        """Unless `trusted`, the saved config is checked before anything is deserialized (edgepress.models.trust),
        and Keras 3's safe mode is on. A custom class is refused unless the model is trusted and the class is
        registered (the recipe's `model.custom_objects` imported its module): edgepress never imports a module a
        file names."""
        keras3 = _keras3(path)
        config = keras_files.model_config(path)
        keras_files.check_config_graph(path, config)
        if not trusted:
            trust.check_untrusted(path, [config])
        custom = trust.custom_classes(config)
        if custom and not trusted:
            raise trust.custom_objects_error(path, custom)
        missing = _unregistered(keras3, config, set(custom))
        if missing:
            raise EdgepressError(
                f"Cannot load {path}: it uses custom layer(s) {', '.join(missing)} that no imported module registers. "
                "Name the module that defines them in the recipe's model.custom_objects (e.g. [mypackage.layers]; "
                "they must be registered with keras.saving.register_keras_serializable), and retry."
            )
        try:
            with quiet():
                model = keras3.models.load_model(path, compile=False, safe_mode=not trusted)
        except Exception as error:
            raise trust.load_error(path, error, "Keras 3") from error
        return cls(model, path)

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self.model.inputs[0].dtype)  # Keras 3 names its dtypes ("float32")

    def tf_variables(self) -> list:
        return [variable.value for variable in self.model.variables]  # a keras.Variable holds its tf.Variable

    def to_onnx(self, out: Path, batch_size: int | None, opset: int) -> None:
        """tf2onnx from a tf.function of the model's call (tf2onnx's from_keras reads tf_keras models only)."""
        import tf2onnx

        from edgepress.compat import tensorflow

        tf = tensorflow()
        model = self.model
        spec = (tf.TensorSpec((batch_size, *self.input_shape[1:]), tf.as_dtype(self.input_dtype), name="input"),)
        call = tf.function(lambda input: model(input, training=False))
        tf2onnx.convert.from_function(call, input_signature=spec, opset=opset, output_path=str(out))

    def to_tf_keras(self):
        """The same model rebuilt in tf_keras, for a step that needs tfmot; RebuildError saying why it cannot be."""
        from edgepress.models.bridge import to_tf_keras
        from edgepress.models.tf_keras import TfKerasSource

        return TfKerasSource(to_tf_keras(self.model), self.path)

    def save(self, path: Path, like: str) -> dict[str, Any]:
        """A Keras 3 `.keras` file (whatever `like` says: a Keras 3 model is read back by Keras 3)."""
        import keras as keras3

        with quiet(), files.atomic_path(path) as tmp:
            self.model.save(tmp)
        return saving.write_manifest(path, "keras", f"keras {keras3.__version__}", None)


def _unregistered(keras3, config, custom: set[str]) -> list[str]:
    """The custom classes of a saved config that no imported module registered (by their registered name,
    "package>Class", as Keras 3 looks them up)."""
    wanted: set[str] = set()

    def visit(value) -> None:
        if isinstance(value, dict):
            if value.get("class_name") in custom:
                wanted.add(value.get("registered_name") or value["class_name"])
            for item in value.values():
                visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)

    visit(config)
    return sorted(name for name in wanted if name not in keras3.saving.get_custom_objects())


def _keras3(path: Path):
    try:
        with quiet():  # importing Keras 3 may import TensorFlow, whose native start-up lines are noise
            import keras as keras3
    except ImportError as error:
        raise EdgepressError(
            f"Cannot load {path}: it was written by Keras 3, and reading it needs the `keras` package 3.x, which is "
            "not installed. Install it (`pip install 'keras>=3'`) and retry."
        ) from error
    if keras_files.major(keras3.__version__) < 3:
        raise EdgepressError(
            f"Cannot load {path}: it was written by Keras 3, but `import keras` gives Keras {keras3.__version__}. "
            "Install the `keras` package 3.x (`pip install 'keras>=3'`) and retry."
        )
    return keras3
