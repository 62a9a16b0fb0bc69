"""Layers in converted models: which Keras layer an op came from (so quantization choices can be made by
layer name), and the typical activation size a layer's quantization error is measured in.

The converters keep the Keras name path in what they produce: TFLite names an op's output tensor
`model/dense/MatMul;model/dense/BiasAdd` (fused ops join their names with ';'), tf2onnx names a node
`model/dense/MatMul/MatMulAddFusion`. The layer is the deepest path component that is a layer name.
TFLite names the model's outputs after the function it traced (`StatefulPartitionedCall:0`); those
belong to the model's output layers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

from edgepress.errors import EdgepressError
from edgepress.formats import QUANTIZED


def all_layers(model) -> list:
    """Every layer, nested models' layers included (in model order)."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if hasattr(layer, "layers"):  # a nested Sequential or functional model
            found.extend(all_layers(layer))
    return found


def layer_names(model) -> list[str]:
    """Every layer's name, nested models' layers included (in model order)."""
    return [layer.name for layer in all_layers(model)]


def scopes_suffixed(model) -> bool:
    """Whether the converted graph of `model` names each layer's ops in a name scope made unique by a suffix: Keras 3
    does (layer `dense` -> scope `dense_1`, `dense_1` -> `dense_1_2`: TensorFlow's unique scope names), tf_keras uses
    the layer names as they are."""
    return type(model).__module__.startswith("keras.")


def layer_of(node: str, layers: Iterable[str], outputs: Sequence[str] = (), suffixed: bool = False) -> str | None:
    """The Keras layer that op `node` belongs to, or None when its name names no layer.

    `outputs` are the model's output layer names, for TFLite's traced-function output names. `suffixed`: the graph's
    scopes carry a unique-name suffix (`scopes_suffixed`), which is dropped before matching a layer name.
    """
    layers = set(layers)
    for piece in reversed(node.split(";")):
        for part in reversed(piece.split("/")):
            if suffixed and re.sub(r"_\d+$", "", part) in layers:
                return re.sub(r"_\d+$", "", part)
            if part in layers:
                return part
    if node.startswith("StatefulPartitionedCall") and outputs:
        index = node.rsplit(":", 1)[-1]
        return outputs[int(index)] if index.isdigit() and int(index) < len(outputs) else outputs[0]
    return None


def node_layer(node: str, tensors: Sequence[str], layers: Iterable[str], outputs: Sequence[str] = (),
               suffixed: bool = False) -> str | None:
    """The Keras layer a graph node comes from, by one rule whichever name was read: the layer its own name names,
    else the one its first output tensor that names a layer names.

    A converter that folds a layer into the one before it names the node after the first and its output after the
    second (tf2onnx folds Conv2D -> BatchNormalization into one Conv node `m/proj/Conv2D` whose output is
    `m/proj_bn/FusedBatchNormV3:0`): the node is `proj`'s, whether the node or its output tensor was read.
    `tensors` are the node's output tensors; `outputs` and `suffixed` as in `layer_of`.
    """
    layers = set(layers)
    found = layer_of(node, layers, outputs, suffixed) if node else None
    return found or next((t for t in (layer_of(o, layers, outputs, suffixed) for o in tensors) if t is not None),
                         None)


def output_layers(model) -> list[str]:
    """The names of the layers that produce the model's outputs."""
    return list(getattr(model, "output_names", None) or [model.layers[-1].name])


def nodes_of(wanted: Sequence[str], nodes: Sequence[str], model, what: str,
             tensors: dict[str, Sequence[str]] | None = None) -> list[str]:
    """The nodes (op names) that make up the layers in `wanted`; a name may also be a node itself.

    `tensors` (node -> its output tensors) makes a node's layer `node_layer`'s (ONNX, where node and tensor names
    can name different layers); a layer folded into another (a BatchNormalization into its Conv) then also names
    the node it was folded into. Without it a node's layer is its name's (TFLite names ops by their outputs).
    Raises EdgepressError naming any entry that matches no node, with the layers that do have nodes.
    """
    layers, outputs = layer_names(model), output_layers(model)
    tensors = tensors or {}
    suffixed = scopes_suffixed(model)
    owner = {node: node_layer(node, tensors.get(node, ()), layers, outputs, suffixed) for node in nodes}
    folded = {node: {layer_of(t, layers, outputs, suffixed) for t in tensors.get(node, ())} - {None}
              for node in nodes}
    found, missing = [], []
    for name in wanted:
        matched = [node for node in nodes if owner[node] == name or node == name]
        matched = matched or [node for node in nodes if name in folded[node]]
        if not matched:
            missing.append(name)
        found.extend(n for n in matched if n not in found)
    if missing:
        known = sorted({layer for layer in owner.values() if layer is not None})
        raise EdgepressError(
            f"{what}: no quantized op belongs to {', '.join(repr(m) for m in missing)}. "
            f"Name layers of '{model.name}' that the quantizer quantizes: {', '.join(known) or 'none'}."
        )
    return found


def typical_magnitude(x: np.ndarray) -> float:
    """The median magnitude of the nonzero values of `x` (0 when all are zero): a typical activation.

    A few huge outliers do not move it, which is what makes errors in its units show the layers whose
    outliers wipe out everything else (an energy ratio such as ||error|| / ||x|| barely notices them).
    """
    nonzero = np.abs(x[x != 0])
    return float(np.median(nonzero)) if nonzero.size else 0.0


def layers_of_type(model, type_name: str) -> set[str]:
    """The names of `model`'s layers (nested models' included) of the Keras class `type_name`."""
    found = set()
    for layer in model.layers:
        if type(layer).__name__ == type_name:
            found.add(layer.name)
        if hasattr(layer, "layers") and hasattr(layer, "inputs"):
            found |= layers_of_type(layer, type_name)
    return found


# Kinds of ops an int8 export can keep in float (`float_ops`), by the Keras class whose ops they are; "elementwise"
# (onnx only) is every op that is not a matmul or convolution, of whichever layer.
FLOAT_OPS = {"layernorm": "LayerNormalization", "attention": "MultiHeadAttention", "elementwise": None}
# The kinds only an ONNX export keeps float: onnxruntime runs a quantized Add or Mul as a requantizing QLinearAdd /
# QLinearMul, slower than the float op on small tensors; XNNPACK runs them in int8 as fast as in float.
ONNX_ONLY_FLOAT_OPS = ("elementwise",)
# The same kinds in a PyTorch program, by the aten op that is them (its tflite int8 export, litert-torch's quantizer).
PROGRAM_FLOAT_OPS = {"layernorm": "aten.layer_norm.default", "attention": "aten.scaled_dot_product_attention.default"}
# The sublayers of a Keras MultiHeadAttention (Keras 3 and tf_keras alike) that project its inputs and its output;
# its other ops are the attention itself: the score and context batch matmuls, the softmax, the scaling and the
# transposes and reshapes between them.
_PROJECTIONS = ("query", "key", "value", "attention_output")


def check_float_ops(source, kinds: Sequence[str], what: str, format: str, precision: str) -> None:
    """EdgepressError unless `kinds` suit the export (check_float_op_kinds) and each kind that goes by a Keras class
    has layers in `source`'s Keras model."""
    check_float_op_kinds(kinds, what, format, precision)
    layered = [kind for kind in kinds if FLOAT_OPS[kind] is not None]  # "elementwise" goes by op type, any model
    model = getattr(source, "model", None)
    if layered and (model is None or not hasattr(model, "layers")):
        raise EdgepressError(f"{what} float_ops {', '.join(map(repr, layered))} finds its ops by their Keras layers, "
                             f"and '{source.name}' is {getattr(source, 'title', 'not a Keras model')}. Remove "
                             f"{', '.join(map(repr, layered))} from that export's float_ops.")
    for kind in layered:
        if not layers_of_type(model, FLOAT_OPS[kind]):
            raise EdgepressError(f"{what} float_ops: '{source.name}' has no {FLOAT_OPS[kind]} layer, so "
                                 f"float_ops {kind!r} would keep nothing in float. Remove {kind!r} from float_ops.")


def check_float_op_kinds(kinds: Sequence[str], what: str, format: str, precision: str) -> None:
    """EdgepressError unless every kind of `kinds` is one of FLOAT_OPS and the export (`what`, in `format` at
    `precision`) is its format's full-integer int8 one (tflite int8, onnx int8_static; "elementwise" onnx only):
    what every model's float_ops must meet, whichever way its ops are then found."""
    unknown = [kind for kind in kinds if kind not in FLOAT_OPS]
    if unknown:
        raise EdgepressError(f"{what} float_ops: {', '.join(map(repr, unknown))} is no kind of op edgepress keeps "
                             f"in float; use {' or '.join(FLOAT_OPS)}.")
    if precision != QUANTIZED[format]:
        raise EdgepressError(f"float_ops keeps kinds of ops of a full-integer model in float; it needs {format} "
                             f"precision {QUANTIZED[format]}, not '{precision}'.")
    only_onnx = [kind for kind in kinds if kind in ONNX_ONLY_FLOAT_OPS]
    if only_onnx and format != "onnx":
        raise EdgepressError(f"{what} float_ops: {', '.join(map(repr, only_onnx))} keeps ops float that onnxruntime "
                             f"runs slower in int8; XNNPACK runs them in int8. It is for onnx int8_static: remove it "
                             f"from the {format} export.")


def float_op_nodes(kinds: Sequence[str], nodes: Sequence[str], model,
                   owner: dict[str, str | None] | None = None) -> list[str]:
    """The nodes of `nodes` (op names, as the converter names them) of the `kinds` of FLOAT_OPS: "layernorm", every
    op of each LayerNormalization layer; "attention", the ops of each MultiHeadAttention that are not its
    query / key / value / output projections (those stay int8). `owner` (node -> its Keras layer) is the layer of
    each node when its name alone does not say it (ONNX: `enclosing_layers`); by default, its name's."""
    layers, outputs, suffixed = layer_names(model), output_layers(model), scopes_suffixed(model)
    owners = {kind: layers_of_type(model, FLOAT_OPS[kind]) for kind in kinds if FLOAT_OPS[kind] is not None}
    found = []
    for node in nodes:
        layer = owner[node] if owner is not None else layer_of(node, layers, outputs, suffixed)
        if layer in owners.get("layernorm", ()):
            found.append(node)
        elif layer in owners.get("attention", ()) and not _projection(node):
            found.append(node)
    return found


def enclosing_layers(owner: dict[str, str | None], inputs: dict[str, Sequence[str]],
                     outputs: dict[str, Sequence[str]]) -> dict[str, str | None]:
    """`owner` (node -> its layer, None when its name names none) with each unnamed node given the one layer that
    has nodes both before and after it in the graph, if there is exactly one. tf2onnx names the ops it writes for an
    einsum or a transpose after no layer (`MatMul__226`, `Transpose__204`): the score and context matmuls of an
    attention lie between its own named ops (its query projection before, its softmax after). `inputs` and
    `outputs` are each node's tensors; `owner`'s order is the graph's (topological) order."""
    producer = {t: node for node, ts in outputs.items() for t in ts}
    consumers: dict[str, list[str]] = {}
    for node, ts in inputs.items():
        for t in ts:
            if t in producer:
                consumers.setdefault(producer[t], []).append(node)
    order = list(owner)
    before: dict[str, set] = {}  # the layers of each node and of every node before it
    for node in order:
        before[node] = {owner[node]} - {None}
        for t in inputs.get(node, ()):
            if t in producer:
                before[node] |= before[producer[t]]
    after: dict[str, set] = {}
    for node in reversed(order):
        after[node] = {owner[node]} - {None}
        for later in consumers.get(node, ()):
            after[node] |= after[later]
    found = dict(owner)
    for node in order:
        if owner[node] is None:
            both = before[node] & after[node]
            found[node] = next(iter(both)) if len(both) == 1 else None
    return found


def _projection(node: str) -> bool:
    """Whether `node` belongs to an attention's query, key, value or output projection (a scope of that name, with
    or without Keras 3's unique-name suffix)."""
    parts = {re.sub(r"_\d+$", "", part) for piece in node.split(";") for part in piece.split("/")}
    return bool(parts & set(_PROJECTIONS))
