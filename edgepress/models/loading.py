"""Load a trained Keras model as a tf_keras (Keras 2) model, whichever Keras wrote it.

edgepress's steps use tfmot, which works with tf_keras models only, and tf_keras cannot read the
files Keras 3 writes. So the file itself says which Keras wrote it (the `.keras` archive's
metadata.json, the `.h5` root attribute): a Keras 2 file is loaded by tf_keras directly; a Keras 3
file is loaded by Keras 3, its config is translated into the Keras 2 format, the same architecture
is rebuilt in tf_keras, the weights are copied layer by layer, and the two models must then give
the same outputs on a fixed input.

A model file is data: unless the caller says the file is trusted, its saved config (the .h5 file's
model_config, the archive's config.json, a SavedModel's keras_metadata.pb) is read and checked before
anything is deserialized, and a file that would run Python while loading (a Lambda layer, a serialized
lambda, a module outside Keras) is refused; Keras's own safe mode is on as well. Plain TF SavedModels
and .onnx files never come here: edgepress.models.graphs loads them as graphs, which hold no Python.

TensorFlow and both Kerases are imported inside functions only: the CLI imports this module and
must start instantly.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepress.compat import keras, quiet
from edgepress.errors import EdgepressError, first_line

KERAS_SUFFIXES = (".keras",)
H5_SUFFIXES = (".h5", ".hdf5")
# A rebuilt model must reproduce the Keras 3 model's outputs to this absolute tolerance.
REBUILD_TOLERANCE = 1e-4

_SAVE_HINT = 'save the trained model with `model.save("model.keras")`'
_ACCEPTED = "a .keras file, a .h5 file or a SavedModel directory"

# Keras 3 config keys that Keras 2 spells differently, by layer class.
_RENAMED_KEYS = {
    "InputLayer": {"batch_shape": "batch_input_shape"},
    "LeakyReLU": {"negative_slope": "alpha"},
}
# Keyword arguments every Keras 2 layer takes through **kwargs (tf_keras's base Layer allows them).
_BASE_LAYER_KWARGS = {
    "input_dim",
    "input_shape",
    "batch_input_shape",
    "batch_size",
    "weights",
    "activity_regularizer",
    "autocast",
    "implementation",
}
_MODEL_CLASSES = ("Sequential", "Functional", "Model")
# tf_keras's layers for TensorFlow calls in a functional model (x + 1, tf.reshape(x, ...), x[:, :2]): built in,
# though not in tf_keras.layers.
_TF_OP_LAYERS = ("TFOpLambda", "SlicingOpLambda")
# Parts of a saved model's top-level config that load_model(compile=False) never deserializes. Only there: Keras 3
# compiles a nested model from its own compile_config whatever `compile` says.
_SKIPPED_CONFIG_KEYS = ("compile_config", "training_config")

if TYPE_CHECKING:
    import tf_keras


class _RebuildError(Exception):
    """One layer of a Keras 3 model cannot be rebuilt in tf_keras; load_model names the path."""

    def __init__(self, layer_name: str, class_name: str, reason: str):
        super().__init__(reason)
        self.layer_name = layer_name
        self.class_name = class_name
        self.reason = reason


def load_model(path: str | os.PathLike, trusted: bool = False) -> tf_keras.Model:
    """Load a trained Keras model for edgepress's steps and exporters, whichever Keras wrote it.

    Accepts .keras and .h5 files written by tf_keras (Keras 2) or Keras 3, and SavedModel
    directories written by tf_keras. Always returns a tf_keras model; raises EdgepressError on any
    input it cannot turn into one. Unless `trusted`, a file whose loading would run Python code
    from it (a Lambda layer, a serialized function, a module outside Keras) is refused before
    anything in it is deserialized.
    """
    path = Path(path)
    if not path.exists():
        raise EdgepressError(f"Model not found: {path} does not exist. Pass the path of {_ACCEPTED}.")
    if path.is_dir():
        return _load_saved_model(path, trusted)

    suffix = path.suffix.lower()
    if suffix in KERAS_SUFFIXES:
        version = _keras_version_of_archive(path)
    elif suffix in H5_SUFFIXES:
        version = _keras_version_of_h5(path)
    else:
        raise EdgepressError(
            f"Cannot load {path}: edgepress does not know the extension {suffix or '(none)'!r}. "
            f"Pass {_ACCEPTED} (accepted extensions: {', '.join(KERAS_SUFFIXES + H5_SUFFIXES)}); "
            f"to convert a model from elsewhere, {_SAVE_HINT}."
        )

    if not trusted:
        check_untrusted(path, [_model_config(path)])
    if _major(version) >= 3:
        return _load_keras3_file(path, trusted)
    return _load_with_tf_keras(path, trusted)


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


def _load_saved_model(path: Path, trusted: bool):
    if is_plain_saved_model(path):
        raise EdgepressError(
            f"Cannot load {path}: it is a plain TensorFlow SavedModel (written by "
            "`tf.saved_model.save` or Keras 3's `model.export()`) with no Keras model in it, and "
            "edgepress's compression steps need the Keras model. Load the model in the Keras that "
            f"trained it and {_SAVE_HINT}, then pass that file."
        )
    if not (path / "saved_model.pb").exists():
        raise EdgepressError(
            f"Cannot load {path}: it is a directory but not a SavedModel (it has no saved_model.pb). "
            f"Pass {_ACCEPTED}."
        )
    if not trusted:
        check_untrusted(path, _keras_metadata(path))
    return _load_with_tf_keras(path, trusted)


def _load_with_tf_keras(path: Path, trusted: bool):
    tf_keras = keras()
    from tf_keras.src.saving.serialization_lib import SafeModeScope

    try:
        # compile=False: the steps compile the model themselves, and a custom loss or metric in
        # the training setup must not stop the model from loading. Safe mode (tf_keras refuses
        # Python lambdas) is on for untrusted files besides edgepress's own check; load_model's
        # safe_mode reaches .keras archives only, the scope .h5 files and SavedModels too. tfmot's
        # own classes (a run's QAT model) are deserialized through the allow-list scope.
        with SafeModeScope(not trusted), tfmot_scope(_read_model_config(path) if path.is_file() else None):
            return tf_keras.models.load_model(path, compile=False, safe_mode=not trusted)
    except Exception as error:
        raise _load_error(path, error, "tf_keras (Keras 2)") from error


def _keras_metadata(path: Path) -> list[dict]:
    """The layer and model configs in a tf_keras SavedModel's keras_metadata.pb, one per saved object."""
    keras()  # tf_keras's protobuf module imports tf_keras, which must come through compat
    from tf_keras.protobuf import saved_metadata_pb2

    metadata = saved_metadata_pb2.SavedMetadata()
    try:
        metadata.ParseFromString((path / "keras_metadata.pb").read_bytes())
        return [json.loads(node.metadata) for node in metadata.nodes if node.metadata]
    except Exception as error:  # protobuf's DecodeError, invalid JSON, OSError
        raise EdgepressError(
            f"Cannot load {path}: its keras_metadata.pb cannot be read ({first_line(error)}). The SavedModel may be "
            f"truncated or corrupt; {_SAVE_HINT} again and pass the new file."
        ) from None


def tfmot_scope(config: Any) -> contextlib.AbstractContextManager:
    """The allow-list of tfmot's own classes: a scope that deserializes them, when they are all `config` uses.

    A run's QAT model keeps tfmot's quantize wrappers (they carry the int8 ranges its export needs), so
    `models/N-qat.keras` names QuantizeWrapperV2, QuantizeLayer, QuantizeAwareActivation and tfmot's quantize
    configs. These are classes of edgepress's own dependency, looked up by name in tfmot's registries
    (quantize_scope, prune_scope, cluster_scope), never imported from the module a file names; any other
    custom object leaves the scope empty and the load refuses it as before.
    """
    if config is None or not _custom_classes(config) or not only_tfmot_classes(config):
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    for scope in _tfmot_scopes():
        stack.enter_context(scope)
    return stack


def only_tfmot_classes(config: Any) -> bool:
    """Whether every custom class `config` names is one of tfmot's registered classes, from tfmot's modules."""
    custom = set(_custom_classes(config))
    if not custom:
        return True  # nothing to look up: tfmot (and TensorFlow) stay unimported
    known = {name for scope in _tfmot_scopes() for objects in scope.custom_objects for name in objects}
    return custom <= known and _modules_are_tfmot(config)


def _tfmot_scopes() -> list:
    with quiet():  # tfmot imports TensorFlow, whose native start-up lines are not asked for
        import tensorflow_model_optimization as tfmot

    return [tfmot.quantization.keras.quantize_scope(), tfmot.sparsity.keras.prune_scope(),
            tfmot.clustering.keras.cluster_scope()]


def _modules_are_tfmot(config: Any) -> bool:
    """Every non-Keras module a config names is tfmot's."""
    if isinstance(config, dict):
        module = config.get("module")
        if isinstance(module, str) and not _is_keras_module(module) and module.split(".")[0] != _TFMOT:
            return False
        return all(_modules_are_tfmot(value) for value in config.values())
    if isinstance(config, list):
        return all(_modules_are_tfmot(value) for value in config)
    return True


_TFMOT = "tensorflow_model_optimization"


# --- Reading the file to learn which Keras wrote it ---------------------------------------------


def _keras_version_of_archive(path: Path) -> str:
    """The keras_version in a .keras archive's metadata.json (both Kerases write one)."""
    try:
        with zipfile.ZipFile(path) as archive:
            metadata = json.loads(archive.read("metadata.json"))
        return str(metadata["keras_version"])
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, OSError) as error:  # TypeError: not a mapping
        raise EdgepressError(
            f"Cannot load {path}: it is not a valid .keras model archive ({first_line(error)}). "
            f"The file may be truncated or corrupt, or not a Keras model at all; {_SAVE_HINT} again "
            "and pass the new file."
        ) from error


def _keras_version_of_h5(path: Path) -> str:
    """The keras_version root attribute of a .h5 model file ("" if absent: an old Keras 2 file)."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            has_model = "model_config" in h5.attrs
            version = h5.attrs.get("keras_version", "")
    except OSError as error:
        raise EdgepressError(
            f"Cannot load {path}: it is not a valid HDF5 file ({first_line(error)}). The file may "
            f"be truncated or corrupt; {_SAVE_HINT} again and pass the new file."
        ) from error
    if not has_model:
        raise EdgepressError(
            f"Cannot load {path}: the .h5 file holds weights only, not a model (it has no model "
            'config; it was probably written by `save_weights`). Save the whole trained model with '
            '`model.save("model.keras")` and pass that file.'
        )
    return version.decode() if isinstance(version, bytes) else str(version)


def _major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 2  # Files without a version predate Keras 3.


def _read_model_config(path: Path) -> dict | None:
    """The model config stored in a .keras or .h5 file, or None if it cannot be read."""
    try:
        return _model_config(path)
    except EdgepressError:
        return None


def _model_config(path: Path) -> Any:
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
            f"corrupt; {_SAVE_HINT} again and pass the new file."
        ) from None


# --- Untrusted files: what in a saved config would run Python ----------------------------------

TRUST_HINT = (
    "If you trust this file and whoever wrote it, allow its code with `model.trusted: true` in the recipe "
    "(`trusted: true` beside a distill student's `path`), `--trust-model` on the command line, or "
    "`load_model(path, trusted=True)` in Python"
)
# Keras namespaces whose objects a config may name (module "keras.layers", "keras.src.ops.numpy",
# "tf_keras.src.engine.functional", ...): layers, models and their parts, nothing that reads files or imports.
_KERAS_NAMESPACES = (
    "layers", "models", "engine", "ops", "initializers", "regularizers", "constraints", "activations",
    "dtype_policies", "quantizers", "random", "losses", "metrics", "optimizers",
)
# tf_keras records a TensorFlow call in a functional model (x + 1, tf.nn.relu(x)) as a TFOpLambda layer naming
# the function; it runs that TF function when the model is built and called. Math namespaces only: not tf.io
# (files), tf.compat, tf.raw_ops, nor the top-level functions below that print, load libraries or call Python.
_TF_OP_NAMESPACES = ("math", "nn", "linalg", "__operators__", "image", "signal", "bitwise", "random", "dtypes")
_TF_NOT_OPS = {
    "print", "py_function", "numpy_function", "load_op_library", "load_library", "function", "map_fn",
    "vectorized_map", "while_loop", "cond", "case", "switch_case", "foldl", "foldr", "scan", "custom_gradient",
    "recompute_grad", "init_scope", "device", "control_dependencies", "name_scope", "Module", "Variable",
}
# tf_keras layers that call a TensorFlow method named in the config, or build any raw TF op (a TF1 NodeDef, file
# writes included): refused in an untrusted file rather than checked name by name.
_TF_CALL_LAYERS = ("ClassMethod", "InstanceMethod", "InstanceProperty", "TensorFlowOpLayer")


def check_untrusted(path: Path, configs: list) -> None:
    """Refuse an untrusted model whose saved `configs` would run Python when deserialized.

    `configs` are read as JSON only (nothing deserialized): a Lambda layer (its marshalled bytecode or named
    function runs when the model is built), a serialized lambda anywhere, a Keras module outside the layer
    namespaces, a TFOpLambda outside TensorFlow's math ops, and custom objects (classes or functions from a
    module outside Keras, which Keras 3 would import) are refused, naming the layer.
    """
    found: list[str] = []
    custom: list[str] = []
    try:
        for config in configs:
            for layer, what in _code_in_config(config):
                entry = f"layer {layer!r} {what}"
                if entry not in found:  # a SavedModel repeats each layer's config in the model's
                    found.append(entry)
            # tfmot's own classes (a run's QAT model) are edgepress's dependency's, loaded by name: allowed.
            custom += [] if only_tfmot_classes(config) else _custom_classes(config)
    except RecursionError:
        raise EdgepressError(
            f"{path} is refused: its saved config is nested too deeply to be checked, which no Keras model needs. "
            f"The file may be corrupt or crafted; {_SAVE_HINT} again and pass the new file."
        ) from None
    if found:
        raise EdgepressError(
            f"{path} is refused: {'; '.join(found)}. A model file is data, and edgepress runs no code from it "
            f"unless told the file is trusted. {TRUST_HINT}; otherwise replace the layer with built-in Keras "
            f"layers and {_SAVE_HINT} again."
        )
    if custom and path.is_file():  # a SavedModel revives a custom layer from its graph, running no Python
        raise _custom_objects_error(path, custom)


def _code_in_config(config: Any) -> list[tuple[str, str]]:
    """(layer name, what it would run) for each part of a saved config that runs Python when deserialized."""
    found: list[tuple[str, str]] = []

    def visit(value: Any, layer: str) -> None:
        if isinstance(value, list):
            for item in value:
                visit(item, layer)
            return
        if not isinstance(value, dict):
            return
        what = _runs_python(value)
        if what:
            found.append((layer, what))
            return
        for key, item in value.items():
            if value is config and key in _SKIPPED_CONFIG_KEYS:
                continue
            if key == "layers" and isinstance(item, list):
                for entry in item:
                    visit(entry, _layer_name(entry) or layer)
            else:
                visit(item, layer)

    visit(config, _layer_name(config) or "?")
    return found


def _layer_name(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return None
    inner = entry.get("config")
    name = entry.get("name") or (inner.get("name") if isinstance(inner, dict) else None)
    return name if isinstance(name, str) else None


def _runs_python(value: dict) -> str | None:
    """What Python the serialized object `value` would run when deserialized, or None."""
    class_name = value.get("class_name")
    if class_name == "Lambda":
        return "is a Lambda layer, whose Python function (saved in the file) runs when the model is loaded"
    if class_name == "__lambda__" or "function_type" in value:
        return "holds a serialized Python function (marshalled bytecode) that runs when the model is loaded"
    inner = value.get("config")
    if class_name in _TF_OP_LAYERS:
        function = inner.get("function") if isinstance(inner, dict) else None
        if not _is_tf_math_op(function):
            return f"calls tf.{function}, which is not one of TensorFlow's math or neural-network ops"
    if class_name in _TF_CALL_LAYERS:
        return f"is a {class_name} layer, which calls the TensorFlow method or op its config names"
    module = value.get("module")
    if isinstance(module, str) and _is_keras_module(module):
        if not _is_layer_namespace(module) or not (isinstance(class_name, str) and class_name.isidentifier()):
            return f"names {module}.{class_name}, which is not a Keras layer or one of its parts"
    return None


def _is_layer_namespace(module: str) -> bool:
    """keras, keras.layers, keras.src.ops.numpy, tf_keras.src.engine.functional: yes; keras.src.utils: no."""
    parts = module.split(".")[1:]
    if parts[:1] == ["src"]:
        parts = parts[1:]
        if not parts:
            return False
    return not parts or parts[0] in _KERAS_NAMESPACES


def _is_tf_math_op(function: Any) -> bool:
    if not isinstance(function, str) or not all(part.isidentifier() for part in function.split(".")):
        return False
    namespace, _, rest = function.partition(".")
    return namespace in _TF_OP_NAMESPACES if rest else function not in _TF_NOT_OPS


# --- Errors --------------------------------------------------------------------------------------


def _load_error(path: Path, error: Exception, loader: str) -> EdgepressError:
    """Turn a loader's exception into one paragraph naming the path and what to do."""
    custom = _custom_classes(_read_model_config(path)) if path.is_file() else []
    if custom:
        return _custom_objects_error(path, custom)
    return EdgepressError(
        f"Cannot load {path} with {loader}: {first_line(error)}. The file may be corrupt or "
        "truncated, or use custom layers or functions that edgepress cannot deserialize; pass a "
        f"plain Keras model (built from built-in Keras layers), or {_SAVE_HINT} again."
    )


def _custom_objects_error(path: Path, class_names: list[str]) -> EdgepressError:
    names = ", ".join(sorted(set(class_names)))
    return EdgepressError(
        f"Cannot load {path}: it uses custom object(s) {names} that edgepress cannot deserialize, "
        "because its steps and exporters work on plain Keras models. Pass a plain Keras model built "
        f"from built-in Keras layers and activations (replace {names} with built-in layers), then "
        f"{_SAVE_HINT}."
    )


def _custom_classes(config: Any) -> list[str]:
    """Class names in a saved model config that are neither Keras built-ins nor model classes."""
    tf_keras = keras()
    found: list[str] = []

    def visit(value: Any, is_layer_entry: bool = False) -> None:
        if isinstance(value, dict):
            class_name = value.get("class_name")
            module = value.get("module")
            if isinstance(class_name, str):
                if module is not None and not (isinstance(module, str) and _is_keras_module(module)):
                    # Keras 3 stores a custom function as class "function" with its name as config.
                    found.append(value.get("config") if class_name == "function" else class_name)
                elif (
                    module is None
                    and is_layer_entry
                    and class_name not in _MODEL_CLASSES + _TF_OP_LAYERS
                    and not hasattr(tf_keras.layers, class_name)
                ):
                    found.append(class_name)  # Legacy .h5 configs name layers without a module.
            for key, item in value.items():
                if value is config and key in _SKIPPED_CONFIG_KEYS:
                    continue
                if key == "layers" and isinstance(item, list):
                    for entry in item:
                        visit(entry, is_layer_entry=True)
                else:
                    visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)

    visit(config)
    return [name for name in found if isinstance(name, str)]


def _is_keras_module(module: str) -> bool:
    return module.split(".")[0] in ("keras", "tf_keras")


# --- Keras 3 files: load with Keras 3, rebuild in tf_keras ---------------------------------------


def _load_keras3_file(path: Path, trusted: bool):
    try:
        with quiet():  # importing Keras 3 may import TensorFlow, whose native start-up lines are noise
            import keras as keras3
    except ImportError as error:
        raise EdgepressError(
            f"Cannot load {path}: it was written by Keras 3, and reading it needs the `keras` "
            "package 3.x, which is not installed. Install it (`pip install 'keras>=3'`) and retry."
        ) from error
    if _major(keras3.__version__) < 3:
        raise EdgepressError(
            f"Cannot load {path}: it was written by Keras 3, but `import keras` gives Keras "
            f"{keras3.__version__}. Install the `keras` package 3.x (`pip install 'keras>=3'`) and retry."
        )
    custom = _custom_classes(_read_model_config(path))
    if custom:
        # Checked before loading: Keras 3 may import the custom class's module, but tf_keras still
        # cannot rebuild it.
        raise _custom_objects_error(path, custom)
    try:
        with quiet():
            source = keras3.models.load_model(path, compile=False, safe_mode=not trusted)
    except Exception as error:
        raise _load_error(path, error, "Keras 3") from error

    try:
        rebuilt = _rebuild_in_tf_keras(source)
        difference = _max_output_difference(source, rebuilt)
    except _RebuildError as error:
        raise EdgepressError(
            f"Cannot load {path}: it was written by Keras 3, and edgepress must rebuild it in "
            f"tf_keras (Keras 2) for its compression steps, but layer {error.layer_name!r} "
            f"({error.class_name}) cannot be rebuilt: {error.reason}. Replace that layer with "
            "built-in layers tf_keras also has (Conv2D, Dense, BatchNormalization, pooling, Add, "
            "Concatenate, ...), or build and save the model with tf_keras."
        ) from error
    except EdgepressError:
        raise
    except Exception as error:
        raise EdgepressError(
            f"Cannot load {path}: it was written by Keras 3, and rebuilding it in tf_keras (Keras 2) "
            f"for edgepress's compression steps failed ({first_line(error)}). Pass a Sequential or "
            "functional model built from built-in Keras layers, or build and save it with tf_keras."
        ) from error

    if not difference < REBUILD_TOLERANCE:
        raise EdgepressError(
            f"Cannot load {path}: it was written by Keras 3, and its rebuild in tf_keras (Keras 2) "
            f"does not reproduce its outputs (max abs difference {difference:.3g} on a fixed input, "
            f"allowed {REBUILD_TOLERANCE:g}); some layer or activation behaves differently in the two "
            "Kerases (for example hard_sigmoid). Replace it, or build and save the model "
            "with tf_keras."
        )
    return rebuilt


def _rebuild_in_tf_keras(source):
    """Build the same architecture in tf_keras from the Keras 3 model's config, then copy weights."""
    tf_keras = keras()
    config = source.get_config()
    # A Lambda layer (only in a trusted file) is rebuilt around the function Keras 3 already loaded.
    functions = {layer.name: layer.function for layer in _all_layers(source) if type(layer).__name__ == "Lambda"}
    if _is_sequential(source):
        translated = _with_functions(_translate_model_config(config, functional=False), functions)
        _check_layers_deserialize(translated)
        rebuilt = tf_keras.Sequential.from_config(translated)
    elif "input_layers" in config and "output_layers" in config:
        translated = _with_functions(_translate_model_config(config, functional=True), functions)
        _check_layers_deserialize(translated)
        _check_node_references(translated)
        rebuilt = tf_keras.Model.from_config(translated)
    else:
        raise _RebuildError(
            source.name,
            type(source).__name__,
            "it is a subclassed model, which has no architecture config to rebuild from; "
            "pass a Sequential or functional model",
        )
    _copy_weights(source, rebuilt)
    return rebuilt


def _all_layers(model) -> list:
    """The layers of `model`, those of nested models included."""
    found = []
    for layer in model.layers:
        found += [layer, *_all_layers(layer)] if hasattr(layer, "layers") else [layer]
    return found


def _with_functions(model_config: dict, functions: dict) -> dict:
    """`model_config` with each Lambda layer given the Python function of the Keras 3 layer of its name."""
    for entry in model_config["layers"]:
        if entry["class_name"] in _MODEL_CLASSES:
            _with_functions(entry["config"], functions)
        elif entry["class_name"] == "Lambda":
            entry["config"]["function"] = functions[entry["config"]["name"]]
    return model_config


def _is_sequential(model) -> bool:
    return type(model).__name__ == "Sequential"


def _translate_model_config(config: dict, functional: bool) -> dict:
    """A Keras 3 Sequential or functional config in the Keras 2 format."""
    offsets = _node_index_offsets(config["layers"]) if functional else {}
    translated: dict[str, Any] = {
        "name": config["name"],
        "layers": [_translate_layer(entry, functional, offsets) for entry in config["layers"]],
    }
    if functional:
        translated["input_layers"] = _triples(config["input_layers"], offsets)
        translated["output_layers"] = _triples(config["output_layers"], offsets)
    elif config.get("build_input_shape") is not None:
        translated["build_input_shape"] = config["build_input_shape"]
    return translated


def _node_index_offsets(layer_entries: list[dict]) -> dict[str, int]:
    """How much to add to Keras 3 node indices that refer to each layer, to get Keras 2's.

    A nested model built on an Input already has one node (its own graph) when it is created.
    Keras 2 counts that node in the node indices of its configs; Keras 3 does not.
    """
    offsets = {}
    for entry in layer_entries:
        nested = entry["config"].get("layers") if entry["class_name"] in _MODEL_CLASSES else None
        if nested and ("input_layers" in entry["config"] or nested[0]["class_name"] == "InputLayer"):
            offsets[entry.get("name") or entry["config"]["name"]] = 1
    return offsets


def _keras2_history(history: list, offsets: dict[str, int]) -> list:
    layer_name, node_index, tensor_index = history
    return [layer_name, node_index + offsets.get(layer_name, 0), tensor_index]


def _triples(value: list, offsets: dict[str, int]) -> list:
    # Keras 3 writes a single input or output as a bare [layer, node, tensor] triple.
    if len(value) == 3 and isinstance(value[0], str):
        value = [value]
    return [_keras2_history(list(item), offsets) for item in value]


def _translate_layer(entry: dict, functional: bool, offsets: dict[str, int]) -> dict:
    class_name = entry["class_name"]
    config = entry["config"]
    name = entry.get("name") or config.get("name", "?")
    module = entry.get("module") or ""

    if class_name in _MODEL_CLASSES and _is_keras_module(module or "keras"):
        # A nested model (e.g. a backbone) is rebuilt recursively.
        nested_is_functional = "input_layers" in config
        translated: dict[str, Any] = {
            "class_name": "Functional" if nested_is_functional else "Sequential",
            "config": _translate_model_config(config, nested_is_functional),
        }
    else:
        layer_class = getattr(keras().layers, class_name, None)
        if not module.startswith("keras.layers") or layer_class is None:
            where = f" from {module}" if module and not module.startswith("keras.layers") else ""
            raise _RebuildError(
                name,
                class_name,
                f"tf_keras has no equivalent of {class_name}{where}"
                + (" (a keras.ops call in the model)" if module.startswith("keras.src.ops") else ""),
            )
        translated = {"class_name": class_name, "config": _translate_config(layer_class, config)}
        if class_name == "Lambda":
            translated["config"] = _lambda_config(name, class_name, config, translated["config"])

    if functional:
        translated["name"] = name
        translated["inbound_nodes"] = [
            _translate_node(name, class_name, node, offsets) for node in entry["inbound_nodes"]
        ]
    return translated


def _lambda_config(name: str, class_name: str, config: dict, translated: dict) -> dict:
    """A Keras 3 Lambda's config for tf_keras; _with_functions then puts in the function itself ("raw")."""
    output_shape = config.get("output_shape")
    if isinstance(output_shape, dict) or config.get("mask") is not None:
        raise _RebuildError(name, class_name, "its output_shape or mask is a function, which the rebuild cannot carry")
    return {
        **{key: value for key, value in translated.items() if key not in ("function", "output_shape", "mask")},
        "function": None,
        "function_type": "raw",
        "output_shape": output_shape,
        "output_shape_type": "raw",
    }


def _translate_config(cls: type, config: dict) -> dict:
    """A Keras 3 layer or object config as the keyword arguments the tf_keras class accepts."""
    renames = _RENAMED_KEYS.get(cls.__name__, {})
    accepted = _accepted_keys(cls)
    translated = {}
    for key, value in config.items():
        key = renames.get(key, key)
        # Keys Keras 2 does not know (quantization_config, InputLayer's optional, initializers'
        # input_axes, ...) are dropped; the output check after the rebuild catches any whose
        # value mattered.
        if key in accepted:
            translated[key] = _translate_value(value)
    return translated


def _accepted_keys(cls: type) -> set[str]:
    """Keyword arguments the constructors of `cls` and its bases declare."""
    keys = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            for parameter in inspect.signature(klass.__init__).parameters.values():
                if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
                    keys.add(parameter.name)
    if issubclass(cls, keras().layers.Layer):
        keys |= _BASE_LAYER_KWARGS
    return keys - {"self"}


def _translate_value(value: Any) -> Any:
    """A config value in the Keras 2 form: dtype policies as names, serialized objects as Keras 2 dicts."""
    if isinstance(value, dict):
        class_name = value.get("class_name")
        if isinstance(class_name, str) and class_name.endswith("DTypePolicy"):
            return value["config"]["name"]
        if isinstance(class_name, str) and "module" in value and isinstance(value.get("config"), dict):
            return _translate_object(value)
        return {key: _translate_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_translate_value(item) for item in value)
    return value


def _translate_object(value: dict) -> dict:
    """A serialized Keras 3 initializer, regularizer or constraint as a Keras 2 {class_name, config}."""
    kind = value["module"].split(".")[-1]  # "keras.initializers" -> "initializers"
    namespace = getattr(keras(), kind, None)
    cls = getattr(namespace, value["class_name"], None)
    if not isinstance(cls, type):
        return value  # Left as is: tf_keras's from_config then says what it cannot deserialize.
    return {"class_name": value["class_name"], "config": _translate_config(cls, value["config"])}


def _translate_node(layer_name: str, class_name: str, node: dict, offsets: dict[str, int]) -> list:
    """A Keras 3 inbound node ({"args", "kwargs"}) as Keras 2 node data [[layer, node, tensor, kwargs], ...]."""
    args = node.get("args", [])
    kwargs = {key: value for key, value in node.get("kwargs", {}).items() if value is not None}
    if len(args) != 1:
        raise _RebuildError(layer_name, class_name, f"it is called with {len(args)} positional arguments")
    if _keras_tensors(kwargs):
        raise _RebuildError(layer_name, class_name, "it is called with a tensor as a keyword argument")
    tensors = _keras_tensors(args[0])
    if not tensors:
        raise _RebuildError(layer_name, class_name, "it is called on something other than tensors")
    return [[*_keras2_history(tensor["config"]["keras_history"], offsets), kwargs] for tensor in tensors]


def _keras_tensors(value: Any) -> list[dict]:
    """The serialized Keras 3 tensors in `value`, flattened in order."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            return [value]
        return [tensor for item in value.values() for tensor in _keras_tensors(item)]
    if isinstance(value, (list, tuple)):
        return [tensor for item in value for tensor in _keras_tensors(item)]
    return []


def _check_layers_deserialize(model_config: dict) -> None:
    """Build each translated layer alone first, so a failure names the layer rather than the model."""
    tf_keras = keras()
    for entry in model_config["layers"]:
        if entry["class_name"] in _MODEL_CLASSES:
            _check_layers_deserialize(entry["config"])
            continue
        try:
            tf_keras.layers.deserialize({"class_name": entry["class_name"], "config": entry["config"]})
        except Exception as error:
            raise _RebuildError(entry["config"].get("name", "?"), entry["class_name"], first_line(error)) from error


def _check_node_references(model_config: dict) -> None:
    """Every node a layer is called on must exist: tf_keras's from_config loops forever otherwise."""
    offsets = _node_index_offsets(model_config["layers"])
    available = {}
    for entry in model_config["layers"]:
        count = max(len(entry["inbound_nodes"]), 1)  # An InputLayer has one node and no inbound ones.
        available[entry["name"]] = range(offsets.get(entry["name"], 0), offsets.get(entry["name"], 0) + count)
    for entry in model_config["layers"]:
        for node in entry["inbound_nodes"]:
            for layer_name, node_index, *_ in node:
                if node_index not in available.get(layer_name, ()):
                    raise _RebuildError(
                        entry["name"],
                        entry["class_name"],
                        f"it is called on node {node_index} of layer {layer_name!r}, which the config lacks",
                    )


def _copy_weights(source, target) -> None:
    """Copy each Keras 3 layer's weights into the tf_keras layer of the same name."""
    for layer in source.layers:
        counterpart = target.get_layer(layer.name)
        if hasattr(layer, "layers"):
            _copy_weights(layer, counterpart)
            continue
        weights = layer.get_weights()
        if not weights:
            continue
        try:
            counterpart.set_weights(weights)
        except Exception as error:
            raise _RebuildError(
                layer.name,
                type(layer).__name__,
                f"its weights do not fit the tf_keras layer ({first_line(error)})",
            ) from error


def _max_output_difference(source, rebuilt) -> float:
    """Max abs difference of the two models' outputs on a fixed input drawn from [0, 1)."""
    import numpy as np

    rng = np.random.default_rng(0)
    inputs = []
    for tensor in rebuilt.inputs:
        # Batch of 2; unknown spatial sizes get 32, enough for the usual stack of poolings.
        shape = [2] + [32 if size is None else int(size) for size in tensor.shape[1:]]
        if tensor.dtype.is_floating:
            inputs.append(rng.random(shape).astype(tensor.dtype.as_numpy_dtype))
        else:
            inputs.append(rng.integers(0, 2, size=shape).astype(tensor.dtype.as_numpy_dtype))
    feed = inputs[0] if len(inputs) == 1 else inputs
    expected = _flat_arrays(source(feed, training=False))
    actual = _flat_arrays(rebuilt(feed, training=False))
    if len(expected) != len(actual):
        return float("inf")
    differences = [
        float(np.max(np.abs(e.astype(np.float64) - a.astype(np.float64)))) if e.size else 0.0
        for e, a in zip(expected, actual, strict=True)
    ]
    return max(differences, default=0.0)


def _flat_arrays(outputs) -> list:
    import numpy as np

    if isinstance(outputs, dict):
        outputs = [outputs[key] for key in sorted(outputs)]
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    return [np.asarray(output) for output in outputs]
