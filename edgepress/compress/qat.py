"""Quantization-aware training with tfmot: fake-quantize weights and activations, fine-tune.

    qat_model = qat(model, x_train, y_train, QatConfig(fine_tune_epochs=1))

The result keeps tfmot's quantize wrappers: they carry the learned ranges that the TFLite
converter (int8 export) and tf2onnx (QuantizeLinear/DequantizeLinear pairs) turn into an int8 model.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgepress.errors import EdgepressError
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


def qat(model, x: np.ndarray, y: np.ndarray, config: QatConfig | None = None, on_epoch=None, **options):
    """Make `model` quantization-aware and fine-tune it on (x, y); return the quantize-aware Keras model."""
    import tensorflow_model_optimization as tfmot

    from edgepress.compat import keras

    config = config or QatConfig(**options)
    check_quantizable(model, config)
    if config.layers is None:
        aware = tfmot.quantization.keras.quantize_model(model)
    else:
        selected = set(config.layers)

        def annotate(layer):
            if layer.name in selected:
                return tfmot.quantization.keras.quantize_annotate_layer(layer)
            return layer

        # Annotating reuses the layers it is given: annotate a copy so the caller's model is left as it was.
        annotated = keras().models.clone_model(training.copy_model(model), clone_function=annotate)
        aware = tfmot.quantization.keras.quantize_apply(annotated)
    training.fit(aware, x, y, config.fine_tune_epochs, config.batch_size, config.learning_rate, on_epoch=on_epoch)
    return aware


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
