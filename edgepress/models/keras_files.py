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
from edgepress.limits import MAX_CONFIG_BYTES, MAX_GRAPH_BYTES, regular_file, zip_member

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
    regular_file(path / "keras_metadata.pb", "The Keras metadata", MAX_GRAPH_BYTES)
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
            metadata = json.loads(zip_member(archive, "metadata.json", path, MAX_CONFIG_BYTES))
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
                return json.loads(zip_member(archive, "config.json", path, MAX_CONFIG_BYTES))
        import h5py

        with h5py.File(path, "r") as h5:
            config = h5.attrs["model_config"]
        return json.loads(config.decode() if isinstance(config, bytes) else config)
    except EdgepressError:
        raise
    except Exception as error:  # a missing member or attribute, invalid JSON, a corrupt archive
        raise EdgepressError(
            f"Cannot load {path}: its model config cannot be read ({first_line(error)}). The file may be truncated or "
            f"corrupt; {SAVE_HINT} again and pass the new file."
        ) from None


def check_config_graph(path: Path, config: Any) -> None:
    """Refuse a functional model config whose layers call a layer it does not have, a call of a layer that never
    happens, or calls that depend on each other in a cycle: Keras waits for such inputs forever when it rebuilds
    the model. Nested functional models are checked the same way; JSON only, nothing deserialized."""
    for model in _functional_configs(config):
        layers = {_entry_name(entry): entry for entry in model["layers"] if isinstance(entry, dict)}
        calls = {name: _inbound_nodes(entry) for name, entry in layers.items()}
        edges: dict[tuple, list[tuple]] = {}
        for name, nodes in calls.items():
            for index, node in enumerate(nodes):
                edges[(name, index)] = refs = [(ref, ref_node) for ref, ref_node in _references(node)]
                for ref, ref_node in refs:
                    if ref not in layers:
                        _refuse(path, f"layer '{name}' takes its input from a layer '{ref}' the model does not have")
                    if ref_node >= max(1, len(calls[ref])):  # an Input layer has one call and no inbound node
                        _refuse(path, f"layer '{name}' takes the output of call {ref_node} of layer '{ref}', which "
                                      f"is called {len(calls[ref])} time(s)")
        for key in ("input_layers", "output_layers"):
            for ref, _ in _references(model.get(key)):
                if ref not in layers:
                    _refuse(path, f"the model's {key} name a layer '{ref}' the model does not have")
        cycle = _cycle(edges)
        if cycle:
            _refuse(path, "its layers take their inputs from each other in a cycle (" + " -> ".join(cycle) + ")")


def _refuse(path: Path, what: str) -> None:
    raise EdgepressError(f"{path} is refused: {what}, so Keras could never build it. The file is damaged or was "
                         f"not written by Keras; {SAVE_HINT} again and pass the new file.")


def _functional_configs(config: Any, depth: int = 0) -> list[dict]:
    """The configs (with a `layers` list of called layers) of the functional models in `config`, nested ones too."""
    found: list[dict] = []
    if depth > 100:
        return found
    if isinstance(config, dict):
        inner = config.get("config")
        if config.get("class_name") in ("Functional", "Model") and isinstance(inner, dict) and \
                isinstance(inner.get("layers"), list):
            found.append(inner)
        for value in config.values():
            found += _functional_configs(value, depth + 1)
    elif isinstance(config, list):
        for value in config:
            found += _functional_configs(value, depth + 1)
    return found


def _entry_name(entry: dict) -> Any:
    inner = entry.get("config")
    return entry.get("name") or (inner.get("name") if isinstance(inner, dict) else None)


def _inbound_nodes(entry: dict) -> list:
    nodes = entry.get("inbound_nodes")
    return nodes if isinstance(nodes, list) else []


def _references(node: Any, depth: int = 0) -> list[tuple[str, int]]:
    """(layer name, call index) of each tensor a call's config refers to: Keras 3's `keras_history` entries, tf_keras's
    [name, node_index, tensor_index(, kwargs)] lists."""
    refs: list[tuple[str, int]] = []
    if depth > 100:
        return refs
    if isinstance(node, dict):
        history = node.get("keras_history")
        if isinstance(history, list) and len(history) >= 2 and isinstance(history[0], str):
            refs.append((history[0], history[1] if isinstance(history[1], int) else 0))
        for key, value in node.items():
            if key != "keras_history":
                refs += _references(value, depth + 1)
    elif isinstance(node, list):
        if len(node) in (3, 4) and isinstance(node[0], str) and isinstance(node[1], int) and isinstance(node[2], int):
            refs.append((node[0], node[1]))
            refs += _references(node[3:], depth + 1)  # tf_keras's call kwargs may name tensors too
        else:
            for value in node:
                refs += _references(value, depth + 1)
    return refs


def _cycle(edges: dict[tuple, list[tuple]]) -> list[str] | None:
    """A cycle in the calls' graph, as layer names, or None (an iterative depth-first search)."""
    state: dict[tuple, int] = {}  # 1: on the current path, 2: done
    for start in edges:
        if start in state:
            continue
        path, stack = [], [(start, iter(edges.get(start, ())))]
        state[start] = 1
        path.append(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return [name for name, _ in path[path.index(child):]] + [child[0]]
            elif child not in state:
                state[child] = 1
                path.append(child)
                stack.append((child, iter(edges.get(child, ()))))
    return None
