"""A Keras 2 model (tf_keras): what the zoo builds and tfmot's steps (prune, cluster, qat) transform.

    source = TfKerasSource.load(Path("model.h5"), trusted=False)   # a .keras/.h5 file or a SavedModel tf_keras wrote

A quantize-aware (QAT) model keeps tfmot's quantize wrappers, which carry the int8 ranges its export needs and
exist in tf_keras only: it is written by tf_keras as `.h5`, tfmot's own format (its wrappers lose variables in a
`.keras` round trip), and loading reads it back (tfmot's classes are on the trust check's allow-list).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgepress import files
from edgepress.compat import keras, quiet
from edgepress.errors import EdgepressError
from edgepress.models import keras_files, saving, trust
from edgepress.models.keras_model import KerasModel
from edgepress.models.source import register, wrap

QUANTIZE_AWARE_NOTE = (
    "quantize-aware: it keeps tfmot's quantize wrappers (its int8 ranges), which exist in tf_keras only, so "
    "tf_keras wrote it as .h5 (tfmot's format); edgepress's load_model reads it back"
)


@register
class TfKerasSource(KerasModel):
    kind: ClassVar[str] = "tf_keras"
    title: ClassVar[str] = "a tf_keras (Keras 2) model"

    @classmethod
    def wraps(cls, model: Any) -> bool:
        return type(model).__module__.startswith("tf_keras.") and hasattr(model, "layers")

    @classmethod
    def opens(cls, path: Path) -> bool:
        """A .keras or .h5 file Keras 2 wrote, or a SavedModel directory with a Keras model in it."""
        if path.is_dir():
            return (path / "keras_metadata.pb").exists() or not keras_files.is_plain_saved_model(path)
        return keras_files.is_keras_file(path) and keras_files.keras_major(path) < 3

    @classmethod
    def load(cls, path: Path, trusted: bool) -> TfKerasSource:
        """Unless `trusted`, the saved config is checked before anything is deserialized (edgepress.models.trust);
        tf_keras's own safe mode is on as well."""
        if path.is_dir():
            if not (path / "saved_model.pb").exists():
                raise EdgepressError(
                    f"Cannot load {path}: it is a directory but not a SavedModel (it has no saved_model.pb). "
                    f"Pass {keras_files.ACCEPTED}."
                )
            if not trusted:
                trust.check_graph(path, trusted)  # tf_keras revives layers from the graph's functions
            configs = keras_files.keras_metadata(path)
        else:
            configs = [keras_files.model_config(path)]
        for config in configs:
            keras_files.check_config_graph(path, config)
        if not trusted:
            trust.check_untrusted(path, configs)
        tf_keras = keras()
        from tf_keras.src.saving.serialization_lib import SafeModeScope

        config = keras_files.read_model_config(path) if path.is_file() else None
        try:
            # compile=False: the steps compile the model themselves, and a custom loss or metric in the training
            # setup must not stop the model from loading. Safe mode (tf_keras refuses Python lambdas) is on for
            # untrusted files besides edgepress's own check; load_model's safe_mode reaches .keras archives only,
            # the scope .h5 files and SavedModels too. tfmot's own classes (a run's QAT model) are deserialized
            # through the allow-list scope.
            with SafeModeScope(not trusted), trust.tfmot_scope(config):
                model = tf_keras.models.load_model(path, compile=False, safe_mode=not trusted)
        except Exception as error:
            raise trust.load_error(path, error, "tf_keras (Keras 2)") from error
        return cls(model, path)

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self.model.inputs[0].dtype.as_numpy_dtype)

    @property
    def quantize_aware(self) -> bool:
        """True for a model that went through `qat` (it holds tfmot quantize wrappers)."""
        return any(type(layer).__name__.startswith("Quantize") for layer in self.model.layers)

    def tf_variables(self) -> list:
        return list(self.model.variables)

    def to_onnx(self, out: Path, batch_size: int | None, opset: int) -> None:
        import tf2onnx

        from edgepress.compat import tensorflow

        tf = tensorflow()
        spec = (tf.TensorSpec((batch_size, *self.input_shape[1:]), tf.as_dtype(self.input_dtype), name="input"),)
        tf2onnx.convert.from_keras(self.model, input_signature=spec, opset=opset, output_path=str(out))

    def save(self, path: Path, like: str) -> dict[str, Any]:
        """Written by tf_keras, unless the run's source was a Keras 3 model (`like`), whose users read Keras 3
        files: then converted (edgepress.models.bridge.to_keras3) and written by Keras 3. A quantize-aware model is
        written by tf_keras as `.h5` whatever `like` says, and a model that cannot be converted by tf_keras with
        the reason in the manifest's note."""
        if self.quantize_aware:
            return self._save(path.with_suffix(".h5"), QUANTIZE_AWARE_NOTE)
        if like != "keras3":
            return self._save(path, None)
        from edgepress.models.bridge import ConversionError, to_keras3

        try:
            converted = to_keras3(self.model)
        except ConversionError as error:
            return self._save(path, f"not converted to Keras 3: {error}")
        return wrap(converted).save(path, like)

    def _save(self, path: Path, note: str | None) -> dict[str, Any]:
        import tensorflow_model_optimization as tfmot

        with quiet(), tfmot.quantization.keras.quantize_scope(), files.atomic_path(path) as tmp:
            self.model.save(tmp)
        return saving.write_manifest(path, "keras", f"tf_keras {keras().__version__}", note)
