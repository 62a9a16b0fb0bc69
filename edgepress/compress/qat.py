"""Quantization-aware training with tfmot: fake-quantize weights and activations, fine-tune.

    qat_model = qat(model, x_train, y_train, QatConfig(fine_tune_epochs=1))

The result keeps tfmot's quantize wrappers: they carry the learned ranges that the TFLite
converter (int8 export) and tf2onnx (QuantizeLinear/DequantizeLinear pairs) turn into an int8 model.
tfmot decides what it quantizes: its transforms fake-quantize a Conv2D/DepthwiseConv2D + BatchNormalization
(+ ReLU/ReLU6) as one unit, which the converter folds into one int8 op, and quantize residual Adds, so
Conv-BN-ReLU and residual models go through whole. Only the layers
tfmot itself refuses (PReLU, say) are refused here, each by name, with the `layers:` list that leaves them out.

Plain QAT trains every weight freely, so it undoes what a step before it made: the zeros of `prune`
and the shared values of `cluster`. tfmot's collaborative schemes keep them: `preserve: sparsity`
(pruning-preserving QAT, PQAT) and `preserve: clusters` (cluster-preserving QAT, CQAT; it also keeps
the zeros when the clustered model has any). `preserve: auto` picks from the step right before qat.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import ConfigDict, Field

from edgepress.compress.step import Step, register
from edgepress.errors import EdgepressError, first_line
from edgepress.models import training
from edgepress.specs.section import Section
from edgepress.values import MAX_BATCH, MAX_EPOCHS, MAX_LEARNING_RATE


class QatConfig(Section):
    """Quantization-aware fine-tuning (8-bit weights and activations)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["qat"] = "qat"
    fine_tune_epochs: int = Field(1, le=MAX_EPOCHS, ge=1, description="Epochs of quantization-aware fine-tuning.")
    batch_size: int = Field(128, ge=1, le=MAX_BATCH)
    learning_rate: float = Field(1e-4, gt=0, le=MAX_LEARNING_RATE)
    layers: list[str] | None = Field(
        None, description="Names of the layers to quantize; default: the whole model."
    )
    preserve: Literal["auto", "none", "sparsity", "clusters"] = Field(
        "auto",
        description="Keep what the step before made: sparsity (PQAT: pruned zeros stay zero), clusters (CQAT: "
        "each kernel keeps its shared values, and its zeros if it has any), none (plain QAT), or auto: sparsity "
        "right after prune, clusters right after cluster, none otherwise.",
    )


# What `preserve: auto` keeps, by the type of the step right before qat.
PRESERVED_AFTER = {"prune": "sparsity", "cluster": "clusters"}


def resolve_preserve(config: QatConfig, after: Sequence[str] = ()) -> QatConfig:
    """`config` with preserve 'auto' replaced by what the step right before qat (the last of `after`) calls for."""
    if config.preserve != "auto":
        return config
    previous = after[-1] if after else None
    return config.model_copy(update={"preserve": PRESERVED_AFTER.get(previous, "none")})


def qat(model, x: np.ndarray, y: np.ndarray, config: QatConfig | None = None, on_epoch=None,
        after: Sequence[str] = (), **options):
    """Make `model` quantization-aware and fine-tune it on (x, y); return the quantize-aware Keras model.

    `after` names the steps that made `model`, in order (e.g. ["prune"]): `preserve: auto` looks at the last.
    """
    config = resolve_preserve(config or QatConfig(**options), after)
    aware = _checked_aware(model, config)
    training.fit(aware, x, y, config.fine_tune_epochs, config.batch_size, config.learning_rate, on_epoch=on_epoch)
    return aware


def check_quantizable(model, config: QatConfig) -> None:
    """Raise EdgepressError naming each layer of `model` that `config` asks for and tfmot refuses to quantize.

    tfmot is asked: it wraps a copy of the model (a second or so, no training). Its transforms take more
    than its per-layer registry says (a BatchNormalization after a convolution, which the registry alone
    refuses), so its registry is not consulted here.
    """
    _check_no_integer_readers(model, config)
    _checked_aware(model, config)


def _check_no_integer_readers(model, config: QatConfig) -> None:
    """Refuse quantizing a layer that reads an integer model input (token ids into an Embedding): tfmot puts a
    float fake-quantizer on a quantized layer's input, which fails on integers when training starts."""
    integers = [t for t in model.inputs if not t.dtype.is_floating]
    asked = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"
             and (config.layers is None or layer.name in config.layers)]
    readers = [layer for layer in asked if any(x is t for t in integers for x in _inputs_of(layer))]
    if readers:
        described = ", ".join(f"'{layer.name}' ({type(layer).__name__})" for layer in readers)
        others = [layer.name for layer in asked if layer not in readers]
        raise EdgepressError(
            f"qat: layer {described} reads the model's integer input ({integers[0].dtype.name}, e.g. token ids), and "
            "tfmot fake-quantizes the input of each layer it quantizes as float, which fails on integers. Quantize "
            f"the other layers with `layers: [{', '.join(others)}]` in the qat step (the refused ones stay float), "
            "or drop the step; post-training quantization in the exports still applies to this model."
        )


def _inputs_of(layer) -> list:
    try:
        inputs = layer.input
    except (AttributeError, ValueError):  # a layer called more than once has no single input
        return []
    return list(inputs) if isinstance(inputs, list | tuple) else [inputs]


def _checked_aware(model, config: QatConfig):
    """The quantize-aware copy of `model`, or EdgepressError naming the layers tfmot refuses and what to do."""
    if is_quantize_aware(model):
        raise EdgepressError(
            f"qat: '{model.name}' is already quantization-aware (it went through qat): run the qat step once."
        )
    by_name = {layer.name: layer for layer in model.layers}
    unknown = [n for n in config.layers or [] if n not in by_name]
    if unknown:
        raise EdgepressError(
            f"qat: no layer named {', '.join(unknown)} in the model. Its layers: {', '.join(by_name)}."
        )
    refused, aware = _refused_layers(model, config)
    if not refused:
        return aware
    described = ", ".join(f"'{name}' ({type(by_name[name]).__name__})" for name in refused)
    asked = config.layers if config.layers is not None else [
        layer.name for layer in model.layers if type(layer).__name__ != "InputLayer"
    ]
    others = [name for name in asked if name not in refused]
    scheme = {"sparsity": "sparsity-preserving QAT", "clusters": "cluster-preserving QAT"}.get(config.preserve)
    if scheme:
        # The preserving schemes take fewer layer types than plain QAT (Conv2D, Dense, DepthwiseConv2D...).
        plain_refuses, _ = _refused_layers(model, config.model_copy(update={"preserve": "none"}))
        plain = [name for name in refused if name not in plain_refuses]
        also = f" or set `preserve: none` (plain QAT takes {', '.join(plain)})" if plain else ""
        raise EdgepressError(
            f"qat: tfmot's {scheme} cannot quantize layer {described}. Quantize only the other layers with "
            f"`layers: [{', '.join(others)}]` in the qat step (the refused ones stay float){also}, "
            "or drop the step."
        )
    raise EdgepressError(
        f"qat: tfmot cannot quantize layer {described}. Quantize only the layers it supports with "
        f"`layers: [{', '.join(others)}]` in the qat step (the refused ones stay float), or drop the step; "
        "post-training quantization in the exports (tflite int8 / dynamic, onnx int8) still applies to this model."
    )


# tfmot's words for a layer it has no quantize config for: "Layer prelu:<class '...PReLU'> is not supported."
_REFUSED = re.compile(r"Layer (\S+):<class [^>]*> is not supported")


def _refused_layers(model, config: QatConfig) -> tuple[list[str], object]:
    """(names of the layers tfmot refuses, the quantize-aware model of the others; None if any is refused).

    tfmot stops at the first layer it refuses: wrap again without it until it takes the rest, so every
    refused layer is named at once.
    """
    refused: list[str] = []
    names = {layer.name for layer in model.layers}
    while True:
        try:
            aware = _quantize_aware(model, config, leave=refused)
        except (ValueError, RuntimeError) as e:
            found = _REFUSED.search(str(e))
            name = found.group(1) if found else None
            if name in names and name not in refused:
                refused.append(name)
                continue
            layer = _unquantizable_activation(model) if "activation" in str(e).lower() else None
            if layer is not None:
                raise EdgepressError(
                    f"qat: tfmot has no quantizer for the activation '{layer.activation.__name__}' of layer "
                    f"'{layer.name}' ({type(layer).__name__}). Give it one tfmot quantizes "
                    f"({', '.join(_ACTIVATION_LAYER_ACTIVATIONS)}), or drop the qat step (post-training "
                    "quantization in the exports still applies)."
                ) from None
            raise EdgepressError(
                f"qat: tfmot could not make '{model.name}' quantization-aware: {first_line(e)}. tfmot "
                "quantizes Sequential and functional Keras models of built-in layers; drop the qat step "
                "(post-training quantization in the exports still applies) or simplify the model."
            ) from None
        return refused, (aware if not refused else None)


# The activations tfmot fake-quantizes: in a layer's `activation` (Dense, Conv2D...), and as an Activation layer.
_LAYER_ACTIVATIONS = ("linear", "relu", "swish", "gelu", "softmax", "sigmoid", "tanh")
_ACTIVATION_LAYER_ACTIVATIONS = (*_LAYER_ACTIVATIONS, "relu6")


def _unquantizable_activation(model):
    """The first layer of `model` whose activation tfmot has no quantizer for, or None.

    tfmot's error about it names no layer, and leaving the layer out does not help: tfmot still wraps a
    layer whose output feeds a quantized one, activation included.
    """
    for layer in model.layers:
        activation = getattr(getattr(layer, "activation", None), "__name__", None)
        allowed = _ACTIVATION_LAYER_ACTIVATIONS if type(layer).__name__ == "Activation" else _LAYER_ACTIVATIONS
        if activation is not None and activation not in allowed:
            return layer
    return None


def _quantize_aware(model, config: QatConfig, leave: Sequence[str] = ()):
    """`model` (a copy) wrapped for quantization-aware training with the scheme `config.preserve` asks for.

    The layers named in `leave` (and, when `config.layers` is set, every layer not in it) stay unwrapped.
    """
    import tensorflow_model_optimization as tfmot

    from edgepress.compat import keras, quiet

    quantization = tfmot.quantization.keras
    # Annotating reuses the layers it is given: annotate a copy so the caller's model is left as it was.
    if config.layers is None and not leave:
        annotated = quantization.quantize_annotate_model(training.copy_model(model))
    else:
        selected = set(config.layers) if config.layers is not None else None

        def annotate(layer):
            if layer.name in leave or (selected is not None and layer.name not in selected):
                return layer
            return quantization.quantize_annotate_layer(layer)

        annotated = keras().models.clone_model(training.copy_model(model), clone_function=annotate)
    if config.preserve == "sparsity":
        scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
    elif config.preserve == "clusters":
        # Keeping zeros on a kernel without any would force its centroid nearest zero to zero: only when pruned.
        keep_zeros = _has_zeros(model)
        scheme = tfmot.experimental.combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=keep_zeros)
    else:
        scheme = quantization.default_8bit.Default8BitQuantizeScheme()
    with quiet():  # CQAT warns for each kernel it finds too many distinct values in to keep
        return quantization.quantize_apply(annotated, scheme)


def _has_zeros(model) -> bool:
    return any(bool((w.numpy() == 0).any()) for layer in model.layers for w in layer.weights if "kernel" in w.name)


def is_quantize_aware(model) -> bool:
    """True for a model that went through `qat` (it holds tfmot quantize wrappers)."""
    from edgepress.models.tf_keras import TfKerasSource

    return TfKerasSource.wraps(model) and TfKerasSource(model).quantize_aware


@register
class Qat(Step):
    config = QatConfig
    # tfmot wraps tf_keras layers only; a Keras model with attention (tfmot cannot wrap MultiHeadAttention) is trained
    # natively (edgepress.compress.qat_native, a Keras 3 one without bridging it, see `bridges`);
    # a PyTorch program with PT2E (edgepress.compress.qat_torch).
    kinds = frozenset({"tf_keras", "torch"})
    not_after_qat = None  # check_quantizable refuses a model that is already quantization-aware
    # A QAT model already carries int8 ranges: exporting it as float is wrong. A tfmot model's onnx fp32 and
    # int8_static are both its QDQ pairs with the learned ranges; a natively trained attention model is a plain model
    # whose kernels are on their int8 grid, calibrated by the int8 exports (its onnx fp32 is float). A PyTorch
    # program's are its quantize / dequantize pairs: TFLite int8 and QDQ ONNX (fp32 and int8_static alike).
    exports_after = frozenset({("tflite", "int8"), ("tflite", "dynamic"), ("onnx", "fp32"), ("onnx", "int8_static")})
    needs = ("tfmot quantization-aware training wraps Keras layers and retrains them (attention natively, a PyTorch "
             "program with PT2E)")

    def bridges(self, model) -> bool:
        from edgepress.compress import qat_native

        # A Keras model with attention is trained as it is (natively); any other Keras 3 model is bridged for tfmot.
        return not qat_native.handles(getattr(model, "model", None)) and super().bridges(model)

    def resolve(self, config, before):
        return resolve_preserve(config, before)

    def check(self, model, config, context):
        from edgepress.compress import qat_native, qat_torch

        if qat_torch.handles(model):
            qat_torch.check(model, config)
        elif qat_native.handles(model):
            qat_native.check(model, config)
        else:
            check_quantizable(model, config)

    def result_like(self, model, config, context):
        from edgepress.compress import qat_torch

        return qat_torch.result_like(model) if qat_torch.handles(model) else model

    def notes(self, model, config):
        from edgepress.compress import qat_native, qat_torch

        if qat_torch.handles(model):
            return [f"{model.path} is trained quantization-aware with PT2E (litert-torch's quantizer): every linear "
                    "and conv layer's weight (int8 per channel) and inputs and outputs are fake-quantized; LayerNorm "
                    "and the matmuls inside scaled_dot_product_attention stay float, as in its int8 export"]
        if not qat_native.handles(model):
            return []
        return [f"'{model.name}' has attention, which tfmot cannot wrap: its Dense / EinsumDense kernels and inputs "
                "and its attention matmuls' inputs are fake-quantized natively, without tfmot; the int8 exports "
                "calibrate activation ranges on the recipe's data"]

    def run(self, model, x, y, config, context):
        from edgepress.compress import qat_native, qat_torch

        if qat_torch.handles(model):
            tuned, details = qat_torch.qat_program(model, x, y, config, on_epoch=context.on_epoch)
            return tuned, {"qat": details}
        if qat_native.handles(model):
            tuned, details = qat_native.qat_native(model, x, y, config, on_epoch=context.on_epoch)
            return tuned, {"qat": details}
        return qat(model, x, y, config, on_epoch=context.on_epoch, after=context.before), {}
