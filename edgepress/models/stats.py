"""Model statistics: parameters, multiply-accumulates (MACs) for one sample, and weight sparsity.

    model_stats(model)   # {"params": 93322, "macs": 2793536, "sparsity": 0.0}

MACs are what makes a model slow on a CPU; parameters and sparsity are what makes its file big.
MACs count the layers that do nearly all the arithmetic: convolutions (Conv1D/2D/3D, their
transposes, DepthwiseConv, SeparableConv) and Dense. BatchNormalization, pooling, activations and
element-wise merges are a few operations per value and are not counted. Layers inside a nested
model and inside tfmot wrappers (pruning, quantization) are counted as the layer they wrap.
"""

from __future__ import annotations

import math

import numpy as np


def model_stats(model) -> dict:
    """`params` (all weights, as Keras counts them), `macs` (one sample) and `sparsity` of `model`."""
    return {"params": int(model.count_params()), "macs": macs(model), "sparsity": sparsity(model)}


def macs(model) -> int:
    """Multiply-accumulates of one forward pass of one sample through `model`.

    Spatial sizes come from the model's shapes, so the input shape must be fixed (dimensions that
    are unknown count as 1).
    """
    total = 0
    for layer in model.layers:
        if hasattr(layer, "layers") and hasattr(layer, "inputs"):  # a nested model
            total += macs(layer)
            continue
        for in_shape, out_shape in _call_shapes(model, layer):
            total += _layer_macs(_unwrapped(layer), in_shape, out_shape)
    return int(total)


def sparsity(model) -> float:
    """Fraction of zeros over the kernels (weight matrices and filters, not biases) of `model`."""
    zeros = size = 0
    for kernel in _kernels(model):
        zeros += int((kernel == 0).sum())
        size += kernel.size
    return float(zeros / size) if size else 0.0


def _kernels(model) -> list[np.ndarray]:
    """The kernel variables (weight matrices and filters, not biases) of `model`, by name: a tfmot wrapper
    (QuantizeWrapper) swaps its layer's `kernel` attribute for a fake-quantized tensor, but keeps the variable."""
    kernels = []
    for layer in model.layers:
        if hasattr(layer, "layers") and hasattr(layer, "inputs"):
            kernels += _kernels(layer)
            continue
        kernels += [w.numpy() for w in layer.weights if "kernel" in w.name.split("/")[-1]]
    return kernels


def _unwrapped(layer):
    """The layer a tfmot wrapper (PruneLowMagnitude, QuantizeWrapper) holds, else the layer itself."""
    while hasattr(layer, "layer") and hasattr(layer.layer, "weights"):
        layer = layer.layer
    return layer


def _call_shapes(model, layer) -> list[tuple[tuple, tuple]]:
    """(input shape, output shape) of each call of `layer` in `model` (a shared layer is called more than once)."""
    if _is_keras3(layer):  # the layer's class, not its module: a user's own Keras 3 layer lives in their module
        return _keras3_call_shapes(model, layer)
    # A layer also keeps the calls of other models it was used in (tfmot's strip_pruning reuses the
    # layers of the pruned model): tf_keras lists the calls that belong to a model in _network_nodes.
    own = getattr(model, "_network_nodes", None)
    shapes = []
    for i in range(len(layer.inbound_nodes)):
        if own is not None and f"{layer.name}_ib-{i}" not in own:
            continue
        try:
            shapes.append((layer.get_input_shape_at(i), layer.get_output_shape_at(i)))
        except (AttributeError, RuntimeError, ValueError):  # an input layer, or a call without known shapes
            continue
    return shapes


def _is_keras3(layer) -> bool:
    return any(c.__module__.split(".")[0] == "keras" for c in type(layer).__mro__)


def _keras3_call_shapes(model, layer) -> list[tuple[tuple, tuple]]:
    """The same for a Keras 3 layer: its nodes that belong to `model` (a Sequential's are its inner functional's)."""
    from keras.src.ops.function import make_node_key

    graph = getattr(model, "_functional", None) or model
    own = getattr(graph, "_nodes", None)
    shapes = []
    for i, node in enumerate(layer._inbound_nodes):
        if (own is not None and make_node_key(layer, i) not in own) or not node.input_tensors:
            continue
        ins = [tuple(t.shape) for t in node.input_tensors]
        outs = [tuple(t.shape) for t in node.output_tensors]
        shapes.append((ins[0] if len(ins) == 1 else ins, outs[0] if len(outs) == 1 else outs))
    return shapes


def _layer_macs(layer, in_shape, out_shape) -> int:
    kind = type(layer).__name__
    if kind == "MultiHeadAttention":
        return _attention_macs(layer, in_shape, out_shape)
    if not isinstance(in_shape, tuple) or not isinstance(out_shape, tuple):
        return 0  # several inputs or outputs: none of the layers counted here has them
    if kind == "Dense":
        # A Dense on (batch, ..., features) applies its kernel at every leading position.
        return _prod(in_shape[1:-1]) * _dim(in_shape[-1]) * int(layer.units)
    kernel = getattr(layer, "kernel_size", None)
    if kernel is None:
        return 0
    window = _prod(kernel)
    if kind.startswith("DepthwiseConv"):
        channels = _channels(layer, in_shape)
        return _prod(_spatial(layer, out_shape)) * channels * int(layer.depth_multiplier) * window
    if kind.startswith("SeparableConv"):
        channels = _channels(layer, in_shape) * int(layer.depth_multiplier)
        positions = _prod(_spatial(layer, out_shape))
        return positions * channels * window + positions * channels * int(layer.filters)
    if kind.startswith("Conv") and kind.endswith("Transpose"):
        # Each input value is multiplied into a kernel-sized patch of every output channel.
        return _prod(_spatial(layer, in_shape)) * _channels(layer, in_shape) * window * int(layer.filters)
    if kind.startswith("Conv"):
        groups = int(getattr(layer, "groups", 1) or 1)
        in_per_group = _channels(layer, in_shape) // groups
        return _prod(_spatial(layer, out_shape)) * int(layer.filters) * window * in_per_group
    return 0


def _attention_macs(layer, in_shape, out_shape) -> int:
    """A MultiHeadAttention call: the query, key, value and output projections and the two batched matmuls
    (scores = QK^T, and scores x V) of every head. `in_shape` is the query's shape, or [query, value(, key)]."""
    shapes = [tuple(s) for s in in_shape] if isinstance(in_shape, list) else [tuple(in_shape)]
    query, value = shapes[0], shapes[1] if len(shapes) > 1 else shapes[0]
    key = shapes[2] if len(shapes) > 2 else value
    from edgepress.models.keras_graph import attention_sizes

    heads, key_dim, value_dim = attention_sizes(layer)
    tq, tk = _prod(query[1:-1]), _prod(key[1:-1])
    out_dim = _dim(out_shape[-1]) if isinstance(out_shape, tuple) else _dim(query[-1])
    projections = heads * (tq * _dim(query[-1]) * key_dim + tk * _dim(key[-1]) * key_dim
                           + tk * _dim(value[-1]) * value_dim + tq * value_dim * out_dim)
    return projections + heads * tq * tk * (key_dim + value_dim)


def _channels_first(layer) -> bool:
    return getattr(layer, "data_format", "channels_last") == "channels_first"


def _channels(layer, shape: tuple) -> int:
    return _dim(shape[1] if _channels_first(layer) else shape[-1])


def _spatial(layer, shape: tuple) -> tuple:
    return shape[2:] if _channels_first(layer) else shape[1:-1]


def _dim(d) -> int:
    return 1 if d is None else int(d)


def _prod(dims) -> int:
    return math.prod(_dim(d) for d in dims)
