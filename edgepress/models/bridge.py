"""The bridge between the two Kerases: a Keras 3 model rebuilt in tf_keras for the steps that need tfmot, and a
tf_keras model written back as Keras 3.

    rebuilt = to_tf_keras(keras3_model)   # the same architecture and weights in tf_keras; RebuildError if it cannot
    back = to_keras3(tf_keras_model)      # the same model in Keras 3; ConversionError if it cannot

Keras 3 models are handled natively by every step that does not need tfmot (structured_prune, equalize,
distill) and by every export; only prune, cluster and qat wrap layers with tfmot, which works on tf_keras only.
For them the plan bridges the model entering the step (`to_tf_keras`): the Keras 3 config is translated config
by config into the Keras 2 format, the architecture is rebuilt in tf_keras, the weights are copied layer by layer,
and the two models must give the same outputs on a fixed input. The run writes its models back in the Keras the
source came in (`to_keras3`): through the file format both Kerases read, a legacy .h5 file (tf_keras writes it,
Keras 3's loader reads it, built-in layers only); then its weights must be identical and its outputs equal within
CONVERT_TOLERANCE. Both Kerases live in one process: `import keras` is Keras 3 (TF_USE_LEGACY_KERAS only changes
what `tf.keras` means), `tf_keras` is Keras 2.
"""

from __future__ import annotations

import inspect
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgepress.compat import keras, quiet
from edgepress.errors import first_line
from edgepress.models.keras_files import MODEL_CLASSES
from edgepress.models.trust import is_keras_module

# A rebuilt model must reproduce the Keras 3 model's outputs to this absolute tolerance.
REBUILD_TOLERANCE = 1e-4
# A Keras 3 model converted from tf_keras must reproduce its outputs to this absolute tolerance.
CONVERT_TOLERANCE = 1e-5

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


class RebuildError(Exception):
    """A Keras 3 model that tf_keras cannot rebuild; the message says which layer and why."""


class ConversionError(Exception):
    """A tf_keras model that cannot be written as an equal Keras 3 model; the message says why."""


class _LayerError(Exception):
    """One layer of a Keras 3 model cannot be rebuilt in tf_keras."""

    def __init__(self, layer_name: str, class_name: str, reason: str):
        super().__init__(reason)
        self.layer_name = layer_name
        self.class_name = class_name
        self.reason = reason


def to_tf_keras(model):
    """The Keras 3 `model` rebuilt in tf_keras with the same weights and outputs; RebuildError saying why not."""
    try:
        rebuilt = _rebuild_in_tf_keras(model)
        difference = max_output_difference(model, rebuilt)
    except _LayerError as error:
        raise RebuildError(f"layer {error.layer_name!r} ({error.class_name}) cannot be rebuilt in tf_keras: "
                           f"{error.reason}") from None
    except Exception as error:  # tf_keras's from_config raises many types for a config it cannot take
        raise RebuildError(f"rebuilding it in tf_keras failed ({first_line(error)})") from None
    if not difference < REBUILD_TOLERANCE:
        raise RebuildError(
            f"its rebuild in tf_keras does not reproduce its outputs (max abs difference {difference:.3g} on a fixed "
            f"input, allowed {REBUILD_TOLERANCE:g}): some layer or activation behaves differently in the two Kerases "
            "(for example hard_sigmoid)"
        )
    return rebuilt


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
        raise _LayerError(
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
        if entry["class_name"] in MODEL_CLASSES:
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
        nested = entry["config"].get("layers") if entry["class_name"] in MODEL_CLASSES else None
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

    if class_name in MODEL_CLASSES and is_keras_module(module or "keras"):
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
            raise _LayerError(
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
        raise _LayerError(name, class_name, "its output_shape or mask is a function, which the rebuild cannot carry")
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
        raise _LayerError(layer_name, class_name, f"it is called with {len(args)} positional arguments")
    if _keras_tensors(kwargs):
        raise _LayerError(layer_name, class_name, "it is called with a tensor as a keyword argument")
    tensors = _keras_tensors(args[0])
    if not tensors:
        raise _LayerError(layer_name, class_name, "it is called on something other than tensors")
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
        if entry["class_name"] in MODEL_CLASSES:
            _check_layers_deserialize(entry["config"])
            continue
        try:
            tf_keras.layers.deserialize({"class_name": entry["class_name"], "config": entry["config"]})
        except Exception as error:
            raise _LayerError(entry["config"].get("name", "?"), entry["class_name"], first_line(error)) from error


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
                    raise _LayerError(
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
            raise _LayerError(
                layer.name,
                type(layer).__name__,
                f"its weights do not fit the tf_keras layer ({first_line(error)})",
            ) from error


def max_output_difference(model, other) -> float:
    """Max abs difference of two models' outputs (either Keras) on a fixed input drawn from [0, 1): a batch of 2,
    unknown sample sizes set to 32 (enough for the usual stack of poolings)."""
    rng = np.random.default_rng(0)
    inputs = []
    for tensor in model.inputs:
        shape = [2] + [32 if size is None else int(size) for size in tensor.shape[1:]]
        dtype = np.dtype(getattr(tensor.dtype, "as_numpy_dtype", tensor.dtype))  # tf.DType (tf_keras) or a name
        inputs.append(rng.random(shape).astype(dtype) if dtype.kind == "f" else
                      rng.integers(0, 2, size=shape).astype(dtype))
    feed = inputs[0] if len(inputs) == 1 else inputs
    with quiet():  # Keras 3 warns when a model rebuilt from its config (inputs a list of one) is fed a bare array
        expected = _flat_arrays(model(feed, training=False))
        actual = _flat_arrays(other(feed, training=False))
    if len(expected) != len(actual) or any(e.shape != a.shape for e, a in zip(expected, actual, strict=True)):
        return float("inf")
    differences = [
        float(np.max(np.abs(e.astype(np.float64) - a.astype(np.float64)))) if e.size else 0.0
        for e, a in zip(expected, actual, strict=True)
    ]
    return max(differences, default=0.0)


def _flat_arrays(outputs) -> list:
    if isinstance(outputs, dict):
        outputs = [outputs[key] for key in sorted(outputs)]
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    return [np.asarray(output) for output in outputs]
