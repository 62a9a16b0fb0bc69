"""Quantization-aware training with tfmot: fake-quantize weights and activations, fine-tune.

    qat_model = qat(model, x_train, y_train, QatConfig(fine_tune_epochs=1))

The result keeps tfmot's quantize wrappers: they carry the learned ranges that the TFLite
converter (int8 export) and tf2onnx (QuantizeLinear/DequantizeLinear pairs) turn into an int8 model.

Plain QAT trains every weight freely, so it undoes what a step before it made: the zeros of `prune`
and the shared values of `cluster`. tfmot's collaborative schemes keep them: `preserve: sparsity`
(pruning-preserving QAT, PQAT) and `preserve: clusters` (cluster-preserving QAT, CQAT; it also keeps
the zeros when the clustered model has any). `preserve: auto` picks from the step right before qat.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgepress.compress.step import Step, register
from edgepress.errors import EdgepressError, first_line
from edgepress.models import training


class QatConfig(BaseModel):
    """Quantization-aware fine-tuning (8-bit weights and activations)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["qat"] = "qat"
    fine_tune_epochs: int = Field(1, ge=1, description="Epochs of quantization-aware fine-tuning.")
    batch_size: int = Field(128, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
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
    check_quantizable(model, config)
    aware = _quantize_aware(model, config)
    training.fit(aware, x, y, config.fine_tune_epochs, config.batch_size, config.learning_rate, on_epoch=on_epoch)
    return aware


def _quantize_aware(model, config: QatConfig):
    """`model` (a copy) wrapped for quantization-aware training with the scheme `config.preserve` asks for."""
    import tensorflow_model_optimization as tfmot

    from edgepress.compat import keras, quiet

    quantization = tfmot.quantization.keras
    # Annotating reuses the layers it is given: annotate a copy so the caller's model is left as it was.
    if config.layers is None:
        annotated = quantization.quantize_annotate_model(training.copy_model(model))
    else:
        selected = set(config.layers)

        def annotate(layer):
            if layer.name in selected:
                return quantization.quantize_annotate_layer(layer)
            return layer

        annotated = keras().models.clone_model(training.copy_model(model), clone_function=annotate)
    if config.preserve == "sparsity":
        scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
    elif config.preserve == "clusters":
        # Keeping zeros on a kernel without any would force its centroid nearest zero to zero: only when pruned.
        keep_zeros = _has_zeros(model)
        scheme = tfmot.experimental.combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=keep_zeros)
    else:
        scheme = quantization.default_8bit.Default8BitQuantizeScheme()
    try:
        with quiet():  # CQAT warns for each kernel it finds too many distinct values in to keep
            return quantization.quantize_apply(annotated, scheme)
    except (ValueError, RuntimeError) as e:
        if config.preserve in ("none", "auto"):
            raise
        # The preserving schemes take fewer layer types than plain QAT (Conv2D, Dense, DepthwiseConv2D).
        raise EdgepressError(
            f"qat: tfmot's {config.preserve}-preserving QAT cannot quantize this model: {first_line(e)}. Quantize "
            "only the layers it supports with `layers: [...]` in the qat step, or set `preserve: none`."
        ) from None


def _has_zeros(model) -> bool:
    return any(bool((w.numpy() == 0).any()) for layer in model.layers for w in layer.weights if "kernel" in w.name)


def is_quantize_aware(model) -> bool:
    """True for a model that went through `qat` (it holds tfmot quantize wrappers)."""
    return any(type(layer).__name__.startswith("Quantize") for layer in model.layers)


def check_quantizable(model, config: QatConfig) -> None:
    """Raise EdgepressError naming each layer of `model` that `config` asks for and tfmot cannot quantize."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry,
    )

    names = config.layers
    registry = default_8bit_quantize_registry.Default8BitQuantizeRegistry()
    by_name = {layer.name: layer for layer in model.layers}
    unknown = [n for n in names or [] if n not in by_name]
    if unknown:
        raise EdgepressError(
            f"qat: no layer named {', '.join(unknown)} in the model. Its layers: {', '.join(by_name)}."
        )
    layers = [by_name[n] for n in names] if names is not None else model.layers
    unsupported = [
        layer for layer in layers
        if type(layer).__name__ != "InputLayer" and not registry.supports(layer)
    ]
    if unsupported:
        described = ", ".join(f"'{layer.name}' ({type(layer).__name__})" for layer in unsupported)
        supported = [layer.name for layer in model.layers if layer.trainable_weights and registry.supports(layer)]
        raise EdgepressError(
            f"qat: tfmot cannot quantize layer {described}. Quantize only the layers it supports with "
            f"`layers: [{', '.join(supported)}]` in the qat step, or drop the step; post-training "
            "quantization in the exports (tflite int8 / dynamic, onnx int8) still applies to this model."
        )
    if config.preserve in ("sparsity", "clusters"):
        # The preserving schemes take fewer layers, and only wrapping tells which (BatchNormalization passes
        # through tfmot's own transforms): wrap once without training, which refuses in a second or so.
        _quantize_aware(model, config)


@register
class Qat(Step):
    config = QatConfig
    not_after_qat = None  # check_quantizable refuses a model that is already quantization-aware
    # A QAT model already carries int8 ranges: quantizing it again, or exporting it as float, is wrong
    # (onnx fp32 keeps the ranges as QDQ pairs).
    exports_after = frozenset({("tflite", "int8"), ("tflite", "dynamic"), ("onnx", "fp32")})
    needs = "tfmot quantization-aware training wraps Keras layers and retrains them"

    def resolve(self, config, before):
        return resolve_preserve(config, before)

    def check(self, model, config, context):
        check_quantizable(model, config)

    def run(self, model, x, y, config, context):
        return qat(model, x, y, config, on_epoch=context.on_epoch, after=context.before), {}
