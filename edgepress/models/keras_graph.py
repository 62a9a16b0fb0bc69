"""The call graph of a Keras model: every layer call in dependency order, with the tensors it reads and writes.

    graph = calls(model)                 # Keras 3 or tf_keras; Sequential or functional
    for call in graph.calls: call.layer, call.inputs, call.outputs, call.shared
    graph.inputs, graph.outputs, graph.shapes[key]
    values(model, [key, ...], x)         # those tensors' values on inputs x

A tensor is a `Key`: (layer name, node index, tensor index), the layer call that made it. structured_prune follows
channels through this graph, equalize finds its pairs of layers in it. A layer that takes a tensor as a keyword
argument (x + y recorded as a TFOpLambda with y in its kwargs, a mask) has all its inputs listed, and the call's
layer is an `Opaque`, which a walker cannot follow. A subclassed model, whose structure is its Python code, is
refused naming the step that needed the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgepress.compat import keras_of
from edgepress.errors import EdgepressError

Key = tuple  # a tensor: (layer name, node index, tensor index)
INPUT = ("<input>", 0, 0)  # a Sequential model's input

# Layers that treat each channel on its own and map zero to zero: channels pass through them unchanged.
PASS_THROUGH = {
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianDropout", "ActivityRegularization",
    "MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D", "GlobalAveragePooling1D",
    "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "ZeroPadding1D", "ZeroPadding2D",
    "Cropping1D", "Cropping2D", "UpSampling1D", "UpSampling2D",
}


@dataclass(frozen=True)
class Call:
    """One call of a layer: the tensors it reads (positional, then keyword ones) and writes."""

    layer: object  # the Keras layer, or an Opaque standing for it
    inputs: list[Key]
    outputs: list[Key]
    shared: bool = False  # the layer is called more than once (shared weights)


class Opaque:
    """A layer called with a tensor as a keyword argument: whatever its type, a walker cannot follow it."""

    def __init__(self, layer) -> None:
        self.name, self.weights = layer.name, layer.weights


@dataclass
class Graph:
    calls: list[Call]
    inputs: list[Key]
    outputs: list[Key]
    shapes: dict[Key, tuple | None] = field(default_factory=dict)


def calls(model, step: str = "structured_prune") -> Graph:
    """The layer calls of `model` in dependency order, its input and output tensors, and every tensor's shape.
    `step` names the step in error messages."""
    keras = keras_of(model)
    if isinstance(model, keras.Sequential):
        return _sequential(model, keras3=keras.__name__ == "keras")
    if not is_graph(model):
        raise _subclassed(model, step)
    if keras.__name__ == "keras":
        pending, inputs, outputs, shapes = _keras3_calls(model)
    else:
        pending, inputs, outputs, shapes = _tf_keras_calls(model, step)
    return Graph(_ordered(pending, shapes, model, step), inputs, outputs, shapes)


def is_graph(model) -> bool:
    """Whether `model` is a Sequential or functional model (its structure is in its config), not a subclassed one."""
    keras = keras_of(model)
    if isinstance(model, keras.Sequential):
        return True
    if keras.__name__ == "keras":
        from keras.src.models.functional import Functional

        return isinstance(model, Functional)
    return bool(getattr(model, "_is_graph_network", False))


def with_widths(model, widths: dict[str, int], name: str | None = None):
    """`model`'s architecture (fresh weights) with the layers named in `widths` given that many filters, units or
    attention heads (MultiHeadAttention),
    rebuilt from its config (layer names kept). Keras 3 records each layer's built input shape in the config
    (`build_config`), which the new widths make stale: a layer is built on its first call instead. Raises what the
    Keras that built it raises for a config it cannot take."""
    config = model.get_config()
    for entry in config["layers"]:
        entry.pop("build_config", None)
        layer = entry["config"]
        for stale in ("query_shape", "key_shape", "value_shape"):  # tf_keras's MultiHeadAttention builds from these
            if stale in layer:
                layer[stale] = None
        if layer.get("name") in widths:
            width = "filters" if "filters" in layer else "num_heads" if "num_heads" in layer else "units"
            layer[width] = widths[layer["name"]]
    if name is not None:
        config["name"] = name
    return type(model).from_config(config)


def attention_sizes(layer) -> tuple[int, int, int]:
    """(heads, key size, value size) of a MultiHeadAttention layer, in Keras 3 or tf_keras (which name them apart)."""
    heads = getattr(layer, "num_heads", None) or layer._num_heads
    key = int(layer._key_dim)
    return int(heads), key, int(layer._value_dim or key)


def tensor(model, key: Key):
    """The symbolic tensor `key` of `model` (for a sub-model that outputs it)."""
    name, node, index = key
    if key == INPUT:
        return model.inputs[0]
    layer = model.get_layer(name)
    if keras_of(model).__name__ == "keras":
        return layer._inbound_nodes[node].output_tensors[index]
    output = layer.get_output_at(node)
    return output[index] if isinstance(output, list | tuple) else output


def values(model, keys: list[Key], x: np.ndarray) -> list[np.ndarray]:
    """The values of some of `model`'s tensors on inputs `x`."""
    probe = keras_of(model).Model(model.inputs, [tensor(model, key) for key in keys])
    result = probe.predict(x, batch_size=256, verbose=0)
    return result if isinstance(result, list) else [result]


def axes(axis, rank: int) -> list[int]:
    """A layer's `axis` argument (an int, or a list of them) as sorted non-negative axes of a rank-`rank` tensor."""
    given = axis if isinstance(axis, list | tuple) else [axis]
    flat = [a for item in given for a in (item if isinstance(item, list | tuple) else [item])]
    return sorted(int(a) % rank for a in flat)


def function_name(fn) -> str:
    """The name of an activation function or layer, for messages."""
    return getattr(fn, "__name__", type(fn).__name__)


def _subclassed(model, step: str) -> EdgepressError:
    return EdgepressError(
        f"{step} cannot follow the channels of '{model.name}': it is a subclassed Keras model, whose structure is "
        "its Python code. Build it as a Sequential or functional model, or leave out this step (prune and the "
        "quantized exports still apply)."
    )


def _sequential(model, keras3: bool) -> Graph:
    shapes: dict[Key, tuple | None] = {INPUT: tuple(model.input_shape)}
    found, key = [], INPUT
    for layer in model.layers:
        out = (layer.name, 0, 0)
        shapes[out] = tuple(layer.output.shape) if keras3 else tuple(layer.output_shape)
        found.append(Call(layer, [key], [out]))
        key = out
    return Graph(found, [INPUT], [key], shapes)


def _tf_keras_calls(model, step: str):
    """tf_keras: the calls as its config records them ([[layer, node, tensor, kwargs], ...] per node)."""
    shapes: dict[Key, tuple | None] = {}
    config = model.get_config()
    pending = []
    for entry in config["layers"]:
        layer = model.get_layer(entry["config"]["name"])
        nodes = entry["inbound_nodes"] or [[]]  # an InputLayer has no inbound node
        for index, node in enumerate(nodes):
            inputs, extra = _node_inputs(node, step)
            out_shapes = layer.get_output_shape_at(index) if inputs or extra else layer.output_shape
            out_shapes = out_shapes if isinstance(out_shapes, list) else [out_shapes]
            outputs = [(layer.name, index, t) for t in range(len(out_shapes))]
            for key, s in zip(outputs, out_shapes, strict=True):
                shapes[key] = tuple(s) if s is not None else None
            pending.append(Call(_opaque(layer, extra), inputs + extra, outputs, len(nodes) > 1))
    inputs = [tuple(k) for k in config["input_layers"]]
    outputs = [tuple(k) for k in config["output_layers"]]
    return pending, inputs, outputs, shapes


def _keras3_calls(model):
    """Keras 3: the calls from the model's own nodes (its config names tensors the same way, as keras_history)."""
    from keras.src import tree
    from keras.src.ops.function import make_node_key

    def key(t) -> Key:
        history = t._keras_history
        return (history.operation.name, int(history.node_index), int(history.tensor_index))

    def tensors(value) -> list:
        return [t for t in tree.flatten(value) if hasattr(t, "_keras_history")]

    shapes: dict[Key, tuple | None] = {}
    pending = []
    for layer in model.layers:
        own = [(i, node) for i, node in enumerate(layer._inbound_nodes) if make_node_key(layer, i) in model._nodes]
        for index, node in own:
            inputs = [key(t) for t in tensors(node.arguments.args)]
            extra = [key(t) for t in tensors(node.arguments.kwargs)]
            outputs = [(layer.name, index, t) for t in range(len(node.output_tensors))]
            for k, t in zip(outputs, node.output_tensors, strict=True):
                shapes[k] = tuple(t.shape)
            pending.append(Call(_opaque(layer, extra), inputs + extra, outputs, len(own) > 1))
    for t in model.inputs:
        shapes.setdefault(key(t), tuple(t.shape))
    return pending, [key(t) for t in model.inputs], [key(t) for t in model.outputs], shapes


def _opaque(layer, extra: list[Key]):
    """The layer of a call, or an Opaque for it when a tensor came as a keyword argument. MultiHeadAttention takes
    its value (and key, mask) as keywords by design and is followed whole (structured_prune treats its heads, not
    its input channels), so it stays itself."""
    return Opaque(layer) if extra and type(layer).__name__ != "MultiHeadAttention" else layer


def _ordered(pending: list[Call], shapes: dict, model, step: str) -> list[Call]:
    """The calls in dependency order: Keras's config order is not promised to be one."""
    ordered, ready = [], set(shapes) - {k for call in pending if call.inputs for k in call.outputs}
    pending = list(pending)
    while pending:
        progressed = False
        for call in list(pending):
            if all(k in ready for k in call.inputs):
                ordered.append(call)
                ready.update(call.outputs)
                pending.remove(call)
                progressed = True
        if not progressed:
            raise EdgepressError(f"{step} could not order the layers of '{model.name}'.")
    return ordered


def _node_inputs(node, step: str) -> tuple[list[Key], list[Key]]:
    """Input tensors of one call in a tf_keras functional config: [[layer, node, tensor, kwargs], ...]."""
    inputs, extra = [], []
    for item in node:
        if not (isinstance(item, list | tuple) and len(item) >= 3 and isinstance(item[0], str)):
            raise EdgepressError(f"{step} cannot read a layer call in this model's config: {item!r}.")
        inputs.append((item[0], int(item[1]), int(item[2])))
        if len(item) > 3:
            extra += _tensor_refs(item[3])
    return inputs, extra


def _tensor_refs(value) -> list[Key]:
    if isinstance(value, dict):
        return [k for v in value.values() for k in _tensor_refs(v)]
    if isinstance(value, list | tuple):
        if len(value) == 3 and isinstance(value[0], str) and all(isinstance(v, int) for v in value[1:]):
            return [(value[0], value[1], value[2])]
        return [k for v in value for k in _tensor_refs(v)]
    return []
