"""Reading a Keras model file without loading it: which Keras wrote it, and its saved config.

    keras_version(path)     # "3.15.1" from a .keras archive's metadata.json or a .h5 file's root attribute
    model_config(path)      # the architecture as JSON, nothing deserialized: what the trust checks read

Both Kerases write `.keras` and `.h5` files; tf_keras also writes SavedModel directories with a
keras_metadata.pb. Nothing here imports TensorFlow (h5py and zipfile only, tf_keras's protobuf for a
SavedModel's metadata).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

from edgepress.errors import EdgepressError, first_line

KERAS_SUFFIXES = (".keras",)
H5_SUFFIXES = (".h5", ".hdf5")
SAVE_HINT = 'save the trained model with `model.save("model.keras")`'
ACCEPTED = "a .keras file, a .h5 file or a SavedModel directory"
# Class names of whole models inside a config (a nested model), not layers.
MODEL_CLASSES = ("Sequential", "Functional", "Model")
# tf_keras's layers for TensorFlow calls in a functional model (x + 1, tf.reshape(x, ...), x[:, :2]): built in,
# though not in tf_keras.layers.
TF_OP_LAYERS = ("TFOpLambda", "SlicingOpLambda")
# Parts of a saved model's top-level config that load_model(compile=False) never deserializes. Only there: Keras 3
# compiles a nested model from its own compile_config whatever `compile` says.
SKIPPED_CONFIG_KEYS = ("compile_config", "training_config")


def is_keras_file(path: Path) -> bool:
    """A .keras or .h5 file (by its name; its content is checked when it is read)."""
    return path.suffix.lower() in KERAS_SUFFIXES + H5_SUFFIXES


def keras_major(path: Path) -> int:
    """The major version of the Keras that wrote the .keras or .h5 file at `path` (2 for files without one)."""
    version = keras_version_of_archive(path) if path.suffix.lower() in KERAS_SUFFIXES else keras_version_of_h5(path)
    return major(version)


def is_plain_saved_model(path: str | os.PathLike) -> bool:
    """True if `path` is a SavedModel directory with no Keras model in it.

    `tf.saved_model.save` and Keras 3's `model.export()` write such SavedModels: they can be
    served and converted, but not rebuilt as Keras models. tf_keras's `model.save` also writes
    keras_metadata.pb, from which it can rebuild the model.
    """
    path = Path(path)
    has_graph = (path / "saved_model.pb").exists() or (path / "saved_model.pbtxt").exists()
    return has_graph and not (path / "keras_metadata.pb").exists()


# --- Keras 2 files and SavedModels -------------------------------------------------------------



def keras_metadata(path: Path) -> list[dict]:
    """The layer and model configs in a tf_keras SavedModel's keras_metadata.pb, one per saved object."""
    from edgepress.compat import keras

    keras()  # tf_keras's protobuf module imports tf_keras, which must come through compat
    from tf_keras.protobuf import saved_metadata_pb2

    metadata = saved_metadata_pb2.SavedMetadata()
    try:
        metadata.ParseFromString((path / "keras_metadata.pb").read_bytes())
        return [json.loads(node.metadata) for node in metadata.nodes if node.metadata]
    except Exception as error:  # protobuf's DecodeError, invalid JSON, OSError
        raise EdgepressError(
            f"Cannot load {path}: its keras_metadata.pb cannot be read ({first_line(error)}). The SavedModel may be "
            f"truncated or corrupt; {SAVE_HINT} again and pass the new file."
        ) from None


def keras_version_of_archive(path: Path) -> str:
    """The keras_version in a .keras archive's metadata.json (both Kerases write one)."""
    try:
        with zipfile.ZipFile(path) as archive:
            metadata = json.loads(archive.read("metadata.json"))
        return str(metadata["keras_version"])
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, OSError) as error:  # TypeError: not a mapping
        raise EdgepressError(
            f"Cannot load {path}: it is not a valid .keras model archive ({first_line(error)}). "
            f"The file may be truncated or corrupt, or not a Keras model at all; {SAVE_HINT} again "
            "and pass the new file."
        ) from error


def keras_version_of_h5(path: Path) -> str:
    """The keras_version root attribute of a .h5 model file ("" if absent: an old Keras 2 file)."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            has_model = "model_config" in h5.attrs
            version = h5.attrs.get("keras_version", "")
    except OSError as error:
        raise EdgepressError(
            f"Cannot load {path}: it is not a valid HDF5 file ({first_line(error)}). The file may "
            f"be truncated or corrupt; {SAVE_HINT} again and pass the new file."
        ) from error
    if not has_model:
        raise EdgepressError(
            f"Cannot load {path}: the .h5 file holds weights only, not a model (it has no model "
            'config; it was probably written by `save_weights`). Save the whole trained model with '
            '`model.save("model.keras")` and pass that file.'
        )
    return version.decode() if isinstance(version, bytes) else str(version)


def major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 2  # Files without a version predate Keras 3.


def read_model_config(path: Path) -> dict | None:
    """The model config stored in a .keras or .h5 file, or None if it cannot be read."""
    try:
        return model_config(path)
    except EdgepressError:
        return None


def model_config(path: Path) -> Any:
    """The model config stored in a .keras archive (config.json) or a .h5 file (model_config), as JSON.

    Read as text, nothing deserialized: this is what the untrusted-file check looks at.
    """
    try:
        if path.suffix.lower() in KERAS_SUFFIXES:
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("config.json"))
        import h5py

        with h5py.File(path, "r") as h5:
            config = h5.attrs["model_config"]
        return json.loads(config.decode() if isinstance(config, bytes) else config)
    except Exception as error:  # a missing member or attribute, invalid JSON, a corrupt archive
        raise EdgepressError(
            f"Cannot load {path}: its model config cannot be read ({first_line(error)}). The file may be truncated or "
            f"corrupt; {SAVE_HINT} again and pass the new file."
        ) from None
