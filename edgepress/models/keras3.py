"""Models out in the Keras they came in: the run's tf_keras models written back as Keras 3 files.

edgepress's steps work on tf_keras (Keras 2) models, because tfmot needs them; a Keras 3 model that comes
in is rebuilt in tf_keras (`edgepress.models.loading`). This is the way back, for the run's `models/`:

    keras = source_keras("model.keras")                  # "keras3" or "tf_keras": who wrote the source file
    info = save_model(model, run_dir / "models" / "1-prune.keras", keras)   # -> {"file", "keras", ...}

A tf_keras model becomes a Keras 3 model through the file format both Kerases read, a legacy .h5 file
(tf_keras writes it, Keras 3's loader reads it, built-in layers only); then its weights must be identical
and its outputs equal within CONVERT_TOLERANCE on a fixed input, and Keras 3 writes the `.keras` file. Both
Kerases live in one process: `import keras` is Keras 3 (TF_USE_LEGACY_KERAS only changes what
`tf.keras` means), `tf_keras` is Keras 2.

A quantize-aware (QAT) model keeps tfmot's quantize wrappers, which carry the int8 ranges its export
needs and exist in tf_keras only: it is written by tf_keras as `.h5`, tfmot's own format (its wrappers lose
variables in a `.keras` round trip), and `load_model` reads it back (tfmot's classes are on loading's
allow-list). Each model file gets a manifest `<file>.json` saying which Keras wrote it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgepress import files
from edgepress.compat import quiet
from edgepress.errors import first_line

KERAS3 = "keras3"
TF_KERAS = "tf_keras"
# A Keras 3 model converted from tf_keras must reproduce its outputs to this absolute tolerance.
CONVERT_TOLERANCE = 1e-5
QUANTIZE_AWARE_NOTE = (
    "quantize-aware: it keeps tfmot's quantize wrappers (its int8 ranges), which exist in tf_keras only, so "
    "tf_keras wrote it as .h5 (tfmot's format); edgepress's load_model reads it back"
)


class ConversionError(Exception):
    """A tf_keras model that cannot be written as an equal Keras 3 model; the message says why."""


def source_keras(path: str | os.PathLike | None) -> str:
    """Which Keras a run's models are written in: "keras3" for a model file Keras 3 wrote, else "tf_keras"."""
    if path is None:
        return TF_KERAS  # a zoo model, built in tf_keras
    from edgepress.models import loading

    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file() or suffix not in loading.KERAS_SUFFIXES + loading.H5_SUFFIXES:
        return TF_KERAS  # a SavedModel directory (tf_keras only), or not a Keras model at all
    if suffix in loading.KERAS_SUFFIXES:
        version = loading._keras_version_of_archive(path)
    else:
        version = loading._keras_version_of_h5(path)
    return KERAS3 if loading._major(version) >= 3 else TF_KERAS


def save_model(model, path: str | os.PathLike, keras: str = TF_KERAS) -> dict[str, Any]:
    """Write one of a run's models near `path`, atomically, with its manifest; return what the manifest says.

    `keras` is the source's Keras (`source_keras`): "keras3" writes a Keras 3 `.keras` file converted from
    the tf_keras model, "tf_keras" writes it with tf_keras as before. A quantize-aware model is written by
    tf_keras as `.h5` whatever `keras` says (see the module doc), and a model that cannot be converted is
    written by tf_keras with the reason in `note`. A graph (SavedModel, ONNX, PyTorch program) is copied as
    it is. Returns {"file", "format", "keras" (e.g. "keras 3.15.1" or "tf_keras 2.21.0"; None for a graph),
    "note"}.
    """
    from edgepress.models.source import as_source

    path = Path(path)
    source = as_source(model)
    if not source.trainable:  # a graph: kept in its own format
        return _manifest(source.save(path), source.kind, None, None)
    if source.quantize_aware:
        return _save_tf_keras(model, path.with_suffix(".h5"), QUANTIZE_AWARE_NOTE)
    if keras != KERAS3:
        return _save_tf_keras(model, path, None)
    try:
        converted = to_keras3(model)
    except ConversionError as error:
        return _save_tf_keras(model, path, f"not converted to Keras 3: {error}")
    import keras as keras3

    with quiet(), files.atomic_path(path) as tmp:
        converted.save(tmp)
    return _manifest(path, "keras", f"keras {keras3.__version__}", None)


def to_keras3(model):
    """The tf_keras `model` as a Keras 3 model with identical weights; raises ConversionError if it cannot be."""
    import keras as keras3

    if int(keras3.__version__.split(".")[0]) < 3:
        raise ConversionError(f"`import keras` gives Keras {keras3.__version__}, not Keras 3")
    with tempfile.TemporaryDirectory(prefix="edgepress-keras3-") as work:
        h5 = Path(work) / "model.h5"
        try:
            with quiet():
                model.save(h5)  # the legacy format, which Keras 3's loader reads
                converted = keras3.models.load_model(h5, compile=False, safe_mode=True)
        except Exception as error:  # a layer Keras 3 lacks, a config it refuses
            raise ConversionError(f"Keras 3 cannot read its tf_keras config ({first_line(error)})") from None
    expected, got = model.get_weights(), converted.get_weights()
    if len(expected) != len(got) or any(
        e.shape != g.shape or not np.array_equal(e, g) for e, g in zip(expected, got, strict=True)
    ):
        raise ConversionError("its weights came out different in Keras 3")
    difference = max_output_difference(model, converted)
    if not difference <= CONVERT_TOLERANCE:
        raise ConversionError(
            f"its Keras 3 outputs differ by {difference:.3g} (allowed {CONVERT_TOLERANCE:g}) on a fixed input"
        )
    return converted


def max_output_difference(model, other) -> float:
    """Max abs difference of two models' outputs on a fixed input (batch 2) drawn from [0, 1)."""
    shape = [2] + [32 if d is None else int(d) for d in model.input_shape[1:]]
    dtype = np.dtype(model.inputs[0].dtype.as_numpy_dtype)
    rng = np.random.default_rng(0)
    x = rng.random(shape).astype(dtype) if dtype.kind == "f" else rng.integers(0, 2, size=shape).astype(dtype)
    expected = np.asarray(model(x, training=False), dtype=np.float64)
    got = np.asarray(other(x, training=False), dtype=np.float64)
    return float(np.max(np.abs(expected - got))) if expected.shape == got.shape else float("inf")


def _save_tf_keras(model, path: Path, note: str | None) -> dict[str, Any]:
    import tensorflow_model_optimization as tfmot

    from edgepress.compat import keras

    with quiet(), tfmot.quantization.keras.quantize_scope(), files.atomic_path(path) as tmp:
        model.save(tmp)
    return _manifest(path, "keras", f"tf_keras {keras().__version__}", note)


def _manifest(path: Path, kind: str, keras: str | None, note: str | None) -> dict[str, Any]:
    info = {"file": path.name, "format": kind, "keras": keras, "note": note}
    files.write_text(path.with_name(path.name + ".json"), json.dumps(info, indent=2) + "\n")
    return info
