"""Quantization-aware training of Keras attention models (Keras 3 and tf_keras), done natively: tfmot cannot wrap
MultiHeadAttention (tensorflow/model-optimization #718 and #661), so the `qat` step takes a model with attention
here.

    tuned = qat_native(model, x_train, y_train, QatConfig(fine_tune_epochs=2))

While it fine-tunes, every Dense and EinsumDense (MultiHeadAttention's query, key, value and output projections
included) computes as its int8 file will:
- its kernel on the int8 grid the TFLite converter and onnxruntime quantize it to: per output channel, symmetric,
  scale max|w| / 127. Straight-through: before each batch the kernel is rounded onto the grid, the gradient taken
  there is applied, and the rounding is added back, so the float kernel keeps learning;
- its input fake-quantized per tensor to 8 bits, in a range tracked as a moving average of each batch's min and max
  (tfmot's default for activations);
- inside each MultiHeadAttention, both batched matmuls' inputs too: the scaled query, the key, the softmax's
  probabilities and the value.
After the last epoch the kernels are left on the grid and the fake-quant is dropped: the result is a plain model of
the Keras it came in. Its int8 exports (tflite int8, onnx int8_static) quantize each kernel to exactly the grid it
learned on, and calibrate activation ranges on the recipe's data with the min/max statistic training tracked.
Conv layers are left to those exports' post-training quantization.
"""

from __future__ import annotations

import re

import numpy as np

from edgepress.errors import EdgepressError
from edgepress.models import training

# The layers whose kernel and input are fake-quantized, and the attention layer whose matmuls are.
QUANTIZED = ("Dense", "EinsumDense")
ATTENTION = "MultiHeadAttention"
# Attention layers whose matmuls this cannot reach (they do not compute through MultiHeadAttention's own code).
OTHER_ATTENTION = ("GroupedQueryAttention", "Attention", "AdditiveAttention")
# The moving average of each batch's activation min and max.
RANGE_MOMENTUM = 0.9
# What a MultiHeadAttention must have for its matmuls to be fake-quantized (each Keras's own implementation).
_ATTENTION_PARTS = ("_dot_product_equation", "_combine_equation", "_masked_softmax", "_dropout_layer")
# Its projections: Keras 3 names them query_dense..., tf_keras _query_dense...
_PROJECTIONS = ("query_dense", "key_dense", "value_dense", "output_dense")


def is_keras3(model) -> bool:
    return type(model).__module__.startswith("keras.")


def handles(model) -> bool:
    """True for a Keras model (Keras 3 or tf_keras) with attention (MultiHeadAttention or EinsumDense): the qat step
    trains it here."""
    return hasattr(model, "layers") and any(type(layer).__name__ in (ATTENTION, "EinsumDense", *OTHER_ATTENTION)
                                            for layer in _layers(model))


def projections(layer) -> list:
    """A MultiHeadAttention's query, key, value and output projections (EinsumDense layers), in either Keras; [] when
    it has no such attributes."""
    found = [getattr(layer, name, None) or getattr(layer, "_" + name, None) for name in _PROJECTIONS]
    return found if all(found) else []


def _reachable(layer) -> bool:
    """Whether a MultiHeadAttention computes through the parts `_fake_quantize_attention` replaces."""
    scale = "_inverse_sqrt_key_dim" if is_keras3(layer) else "_key_dim"
    return all(hasattr(layer, part) for part in (*_ATTENTION_PARTS, scale)) and bool(projections(layer))


def _layers(model) -> list:
    """The model's layers, nested models' layers included (MultiHeadAttention's projections are reached apart)."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if hasattr(layer, "layers") and hasattr(layer, "inputs"):
            found.extend(_layers(layer))
    return found


def check(model, config) -> None:
    """Refuse, naming the layer and what would work, what native QAT cannot do (before any training)."""
    if config.preserve in ("sparsity", "clusters"):
        raise EdgepressError(
            f"qat: `preserve: {config.preserve}` keeps what tfmot's prune or cluster made, and '{model.name}' is an "
            "attention model, which edgepress quantizes without tfmot (tfmot cannot wrap MultiHeadAttention). "
            "Set `preserve: none` on the qat step."
        )
    layers = _layers(model)
    by_name = {layer.name: layer for layer in layers}
    unknown = [n for n in config.layers or [] if n not in by_name]
    if unknown:
        raise EdgepressError(f"qat: no layer named {', '.join(unknown)} in the model. Its layers: "
                             f"{', '.join(by_name)}.")
    chosen = _chosen(model, config)
    refused = [layer for layer in chosen if type(layer).__name__ in OTHER_ATTENTION]
    refused += [layer for layer in chosen if type(layer).__name__ == ATTENTION and not _reachable(layer)]
    if refused:
        described = ", ".join(f"'{layer.name}' ({type(layer).__name__})" for layer in refused)
        others = [layer.name for layer in chosen if layer not in refused and _quantizable(layer)]
        raise EdgepressError(
            f"qat: edgepress's quantization-aware training of Keras attention fake-quantizes Dense, EinsumDense and "
            f"MultiHeadAttention's own matmuls, and cannot reach the matmuls of layer {described}. Quantize only the "
            f"others with `layers: [{', '.join(others)}]` in the qat step (the refused ones are still int8 in the "
            "int8 exports, by post-training quantization), or drop the qat step."
        )
    if not any(_quantizable(layer) for layer in chosen):
        raise EdgepressError(f"qat: '{model.name}' has no Dense, EinsumDense or MultiHeadAttention layer among those "
                             "asked for, so quantization-aware training has nothing to fake-quantize. Drop the qat "
                             "step (post-training quantization in the exports still applies).")


def _quantizable(layer) -> bool:
    return type(layer).__name__ in (*QUANTIZED, ATTENTION)


def _chosen(model, config) -> list:
    """The layers `config.layers` names (every layer by default)."""
    layers = _layers(model)
    return layers if config.layers is None else [layer for layer in layers if layer.name in set(config.layers)]


def qat_native(model, x: np.ndarray, y: np.ndarray, config, on_epoch=None) -> tuple[object, dict]:
    """A copy of the Keras `model` fine-tuned with fake-quantized kernels, inputs and attention matmuls, its kernels
    left on their int8 grid, and what was fake-quantized (for the step's report row); see the module doc."""
    import tensorflow as tf

    from edgepress.compat import keras_of

    keras = keras_of(model)
    check(model, config)
    work = training.copy_model(model)
    kernels: list[tuple] = []  # (variable, output axes)
    attention = []
    for layer in _chosen(work, config):
        name = type(layer).__name__
        if name == ATTENTION:
            attention.append(layer.name)
            _fake_quantize_attention(tf, keras, layer)
            for dense in projections(layer):
                kernels.append(_fake_quantize_dense(tf, dense))
        elif name in QUANTIZED:
            kernels.append(_fake_quantize_dense(tf, layer))
    training.fit(work, x, y, config.fine_tune_epochs, config.batch_size, config.learning_rate,
                 callbacks=[_on_grid_callback(keras, kernels)], on_epoch=on_epoch)
    for variable, axes in kernels:
        variable.assign(on_grid(np.asarray(variable.numpy()), axes))
    # A fresh copy: the trained one's layers still call through the fake-quant, and its functions were traced so.
    how = "native (Keras 3)" if is_keras3(model) else "native (tf_keras)"
    details = {"how": how, "kernels": len(kernels), "attention_layers": attention,
               "weights": "int8 per channel, symmetric", "activations": "int8 per tensor, moving min/max"}
    return training.copy_model(work), details


def on_grid(kernel: np.ndarray, out_axes: tuple[int, ...]) -> np.ndarray:
    """`kernel` rounded onto its symmetric int8 grid, one scale (max |w| / 127) per output channel."""
    reduce = tuple(a for a in range(kernel.ndim) if a not in out_axes)
    scale = np.max(np.abs(kernel), axis=reduce, keepdims=True) / 127.0
    scale = np.where(scale == 0, 1.0, scale)
    return (np.clip(np.round(kernel / scale), -127, 127) * scale).astype(kernel.dtype)


def output_axes(layer) -> tuple[int, ...]:
    """The axes of `layer`'s kernel that are output channels (see `kernel_output_axes`)."""
    return kernel_output_axes(getattr(layer, "equation", None), len(layer.kernel.shape))


def kernel_output_axes(equation: str | None, rank: int) -> tuple[int, ...]:
    """The output-channel axes of a kernel of `rank` dimensions: an EinsumDense's are those its `equation` keeps in
    the output ("abc,cde->abde": d and e); a Dense's (no equation) its last."""
    if equation:
        found = re.fullmatch(r"\s*([\w.]+)\s*,\s*(\w+)\s*->\s*([\w.]+)\s*", equation)
        if found:
            kept = tuple(i for i, c in enumerate(found.group(2)) if c in found.group(3))
            if kept:
                return kept
    return (rank - 1,)


def _fake_quantize_dense(tf, layer) -> tuple:
    """Fake-quantize `layer`'s input (its kernel is put on the grid by the callback); return (kernel, out axes)."""
    fake = _ActivationRange(tf)
    call = layer.call
    # Keras 3 passes `training` to a Dense; tf_keras does not (its Dense.call takes none) but keeps it in its call
    # context.
    context = None if is_keras3(layer) else _tf_keras_call_context

    def quantized_call(inputs, *args, **kwargs):
        training = kwargs.get("training") if context is None else context()
        return call(fake(inputs, training), *args, **kwargs)

    quantized_call.range = fake  # what the layer's input is quantized to (tests read it)
    layer.call = quantized_call
    return layer.kernel, output_axes(layer)


def _tf_keras_call_context():
    """The `training` value of the tf_keras call being run (None outside one)."""
    from tf_keras.src.engine import base_layer_utils

    return base_layer_utils.call_context().training


def _fake_quantize_attention(tf, keras, layer) -> None:
    """Compute `layer`'s attention as MultiHeadAttention does without a fused kernel, with the inputs of both
    batched matmuls fake-quantized."""
    query_range, key_range, value_range, probs_range = (_ActivationRange(tf) for _ in range(4))
    if not is_keras3(layer):
        scale = 1.0 / float(layer._key_dim) ** 0.5

        def tf_keras_attention(query, key, value, attention_mask=None, training=None):
            # tf_keras's own _compute_attention (its causal mask is already in attention_mask), fake-quantized.
            query = query_range(tf.multiply(query, scale), training)
            scores = tf.einsum(layer._dot_product_equation, key_range(key, training), query)
            scores = layer._masked_softmax(scores, attention_mask)
            dropped = layer._dropout_layer(scores, training=training)
            output = tf.einsum(layer._combine_equation, probs_range(dropped, training), value_range(value, training))
            return output, scores

        layer._compute_attention = tf_keras_attention
        return
    ops = keras.ops

    def compute_attention(query, key, value, attention_mask=None, training=None, return_attention_scores=False,
                          use_causal_mask=False):
        if use_causal_mask:
            causal = layer._compute_causal_mask(query, value)
            attention_mask = causal if attention_mask is None else ops.logical_and(
                ops.cast(attention_mask, "bool"), causal)
        query = query_range(ops.multiply(query, ops.cast(layer._inverse_sqrt_key_dim, query.dtype)), training)
        scores = ops.einsum(layer._dot_product_equation, key_range(key, training), query)
        scores = layer._masked_softmax(scores, attention_mask)
        dropped = layer._dropout_layer(scores, training=training) if layer._dropout > 0 else scores
        output = ops.einsum(layer._combine_equation, probs_range(dropped, training), value_range(value, training))
        return output, scores

    layer._compute_attention = compute_attention


class _ActivationRange:
    """8-bit fake quantization of one tensor, in the range of a moving average of its batches' min and max (updated
    while training; before any batch, the tensor passes unchanged)."""

    def __init__(self, tf) -> None:
        self.tf = tf
        self.low = tf.Variable(0.0, trainable=False)
        self.high = tf.Variable(0.0, trainable=False)
        self.seen = tf.Variable(False, trainable=False)

    def __call__(self, x, training):
        tf = self.tf
        x = tf.convert_to_tensor(x)
        if training:
            low, high = tf.reduce_min(x), tf.reduce_max(x)
            m = RANGE_MOMENTUM
            self.low.assign(tf.where(self.seen, m * self.low + (1 - m) * low, low))
            self.high.assign(tf.where(self.seen, m * self.high + (1 - m) * high, high))
            self.seen.assign(True)
        # The range must hold zero (as int8 ranges do) and not be empty.
        low = tf.minimum(self.low, 0.0)
        high = tf.maximum(self.high, low + 1e-6)
        quantized = tf.quantization.fake_quant_with_min_max_vars(x, low, high, num_bits=8)
        return tf.where(self.seen, quantized, x)


def _on_grid_callback(keras, kernels: list[tuple]):
    """Straight-through kernels: each batch is computed with the kernels on their int8 grid, and the update is
    applied to the float kernels (the rounding is added back after the batch)."""

    class OnGrid(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.rounding = []
            for variable, axes in kernels:
                w = np.asarray(variable.numpy())
                q = on_grid(w, axes)
                variable.assign(q)
                self.rounding.append(w - q)

        def on_train_batch_end(self, batch, logs=None):
            for (variable, _), rounding in zip(kernels, self.rounding, strict=True):
                variable.assign(np.asarray(variable.numpy()) + rounding)

    return OnGrid()
