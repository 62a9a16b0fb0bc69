"""Magnitude pruning with tfmot: zero the smallest weights, fine-tune, strip the wrappers.

    pruned = prune(model, x_train, y_train, PruneConfig(target_sparsity=0.8))

The inverse of tfmot's wrappers is applied before returning (`strip_pruning`), so the result is a
plain Keras model whose kernels are `target_sparsity` zeros. Unstructured sparsity shrinks the
gzip-compressed file, not the latency (../shared/DESIGN.md measured this).

`sparsity_m_by_n=(2, 4)` prunes to a fixed pattern instead: 2 zeros in every 4 consecutive weights along
each kernel's input channels (the TFLite layout's last axis), which sparse runtimes can exploit.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from edgepress.compress.step import Step, register
from edgepress.errors import EdgepressError
from edgepress.models import training
from edgepress.specs.section import Section
from edgepress.values import MAX_BATCH, MAX_EPOCHS, MAX_LEARNING_RATE


class PruneConfig(Section):
    """Magnitude pruning of Conv and Dense kernels to a target sparsity, then fine-tuning."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["prune"] = "prune"
    target_sparsity: float = Field(0.5, gt=0, lt=1, description="Fraction of each kernel's weights set to zero.")
    schedule: Literal["constant", "polynomial_decay"] = Field(
        "polynomial_decay",
        description="constant: prune to the target at once; polynomial_decay: ramp up from initial_sparsity.",
    )
    initial_sparsity: float = Field(0.0, ge=0, lt=1, description="Start of the polynomial_decay ramp.")
    fine_tune_epochs: int = Field(2, le=MAX_EPOCHS, ge=1, description="Epochs of training while and after pruning.")
    batch_size: int = Field(128, ge=1, le=MAX_BATCH)
    learning_rate: float = Field(1e-3, gt=0, le=MAX_LEARNING_RATE)
    layers: list[str] | None = Field(
        None, description="Names of the layers to prune; default: every layer with weights tfmot can prune."
    )
    sparsity_m_by_n: tuple[int, int] | None = Field(
        None,
        description="[m, n], e.g. [2, 4]: m zeros in every n consecutive weights along each kernel's input-channel "
        "axis (tfmot's sparsity_m_by_n), the pattern sparse kernels and `sparse: true` TFLite exports use. "
        "Replaces target_sparsity and schedule: the pattern is chosen at the first training step and held.",
    )

    @model_validator(mode="after")
    def _m_by_n(self) -> PruneConfig:
        if self.sparsity_m_by_n is None:
            return self
        m, n = self.sparsity_m_by_n
        if not 0 < m < n:
            raise ValueError(f"sparsity_m_by_n [{m}, {n}] needs 0 < m < n (m zeros in every n weights), e.g. [2, 4]")
        given = {"target_sparsity", "schedule", "initial_sparsity"} & self.model_fields_set
        if given:
            raise ValueError(
                f"sparsity_m_by_n sets the sparsity pattern itself ({m} of every {n} weights are zero); "
                f"leave out {', '.join(sorted(given))}"
            )
        return self


def prune(model, x: np.ndarray, y: np.ndarray, config: PruneConfig | None = None, on_epoch=None, **options):
    """Prune `model` by weight magnitude while fine-tuning on (x, y); return the stripped Keras model.

    `options` are PruneConfig fields, for calls without a config object: prune(m, x, y, target_sparsity=0.8).
    """
    import tensorflow_model_optimization as tfmot

    from edgepress.compat import keras

    config = config or PruneConfig(**options)
    selected = layers_to_prune(model, config)
    steps_per_epoch = math.ceil(len(x) / config.batch_size)
    total_steps = steps_per_epoch * config.fine_tune_epochs
    # tfmot's default frequency (100 steps) never fires on a short fine-tune: prune a few times per epoch.
    frequency = max(1, steps_per_epoch // 4)
    if config.schedule == "constant":
        schedule = tfmot.sparsity.keras.ConstantSparsity(config.target_sparsity, begin_step=0, frequency=frequency)
    else:
        # Reach the target after two thirds of the steps, then fine-tune at full sparsity to recover.
        end_step = max(1, (2 * total_steps) // 3)
        schedule = tfmot.sparsity.keras.PolynomialDecay(
            config.initial_sparsity, config.target_sparsity, begin_step=0, end_step=end_step, frequency=frequency
        )

    def wrap(layer):
        if layer.name in selected:
            return tfmot.sparsity.keras.prune_low_magnitude(
                layer, pruning_schedule=schedule, sparsity_m_by_n=config.sparsity_m_by_n
            )
        return layer

    # Wrapping reuses the layers it is given: wrap a copy so the caller's model is left as it was.
    wrapped = keras().models.clone_model(training.copy_model(model), clone_function=wrap)
    training.fit(
        wrapped,
        x,
        y,
        config.fine_tune_epochs,
        config.batch_size,
        config.learning_rate,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
        on_epoch=on_epoch,
    )
    return tfmot.sparsity.keras.strip_pruning(wrapped)


def sparsity(model) -> float:
    """Fraction of zeros over the kernels (weight matrices, not biases) of `model` (`edgepress.models.stats`)."""
    from edgepress.models.stats import sparsity as kernel_sparsity

    return kernel_sparsity(model)


def layers_to_prune(model, config: PruneConfig) -> set[str]:
    """Names of the layers `config` prunes in `model`; raises EdgepressError naming any tfmot cannot prune."""
    from tensorflow_model_optimization.python.core.sparsity.keras import prunable_layer, prune_registry

    def prunable(layer) -> bool:
        return prune_registry.PruneRegistry.supports(layer) or isinstance(layer, prunable_layer.PrunableLayer)

    from edgepress.compress.prune_native import named_layers

    names = config.layers
    if names is not None:
        layers = named_layers(model, names)
    else:
        layers = [layer for layer in model.layers if layer.trainable_weights]
    unsupported = [layer for layer in layers if not prunable(layer)]
    if unsupported:
        described = ", ".join(f"'{layer.name}' ({type(layer).__name__})" for layer in unsupported)
        supported = [layer.name for layer in model.layers if layer.trainable_weights and prunable(layer)]
        raise EdgepressError(
            f"prune: tfmot cannot prune layer {described}. Prune only the layers it supports with "
            f"`layers: [{', '.join(supported)}]` in the prune step, or drop the step; the exports "
            "(TFLite and ONNX, with post-training quantization) still apply to this model."
        )
    if config.sparsity_m_by_n is not None:
        _check_m_by_n(model, layers, config.sparsity_m_by_n)
    return {layer.name for layer in layers}


def _check_m_by_n(model, layers: list, m_by_n: tuple[int, int]) -> None:
    """tfmot lays an m:n pattern on 2-D (Dense) and 4-D (Conv2D) kernels only; name a layer with another kernel."""

    def fits(layer) -> bool:
        return all(len(w.shape) in (2, 4) for w in layer.trainable_weights if "kernel" in w.name)

    unfit = [layer for layer in layers if not fits(layer)]
    if unfit:
        described = ", ".join(f"'{layer.name}' ({type(layer).__name__})" for layer in unfit)
        fitting = [layer.name for layer in model.layers if layer.trainable_weights and fits(layer)]
        raise EdgepressError(
            f"prune: sparsity_m_by_n {list(m_by_n)} needs Dense or Conv2D kernels (2-D or 4-D), not layer "
            f"{described}. Choose the layers with `layers: [{', '.join(fitting)}]` in the prune step, or drop "
            "sparsity_m_by_n for unstructured pruning."
        )


@register
class Prune(Step):
    config = PruneConfig
    # tfmot wraps tf_keras layers; Keras 3 models (MultiHeadAttention included) and PyTorch programs are pruned on
    # their weights by prune_native, the same magnitude schedule without wrappers.
    kinds = frozenset({"tf_keras", "keras3", "torch"})
    not_after_qat = None  # layers_to_prune refuses a quantization-aware model by name
    needs = "tfmot magnitude pruning wraps Keras layers and fine-tunes them (Keras 3 and PyTorch: on their weights)"

    def check(self, model, config, context):
        if _kind(model) == "torch":
            from edgepress.compress.prune_native import check_program_prune

            return check_program_prune(model, config)
        if _kind(model) == "keras3":
            from edgepress.compress.prune_native import keras3_kernels

            keras3_kernels(model, config.layers)
            if config.sparsity_m_by_n is not None:
                chosen = [model.get_layer(n) for n in config.layers] if config.layers else [
                    layer for layer in model.layers if layer.trainable_weights]
                _check_m_by_n(model, chosen, config.sparsity_m_by_n)
            return None
        layers_to_prune(model, config)

    def run(self, model, x, y, config, context):
        if _kind(model) == "torch":
            from edgepress.compress.prune_native import prune_program

            return prune_program(model, x, y, config, on_epoch=context.on_epoch), {}
        if _kind(model) == "keras3":
            from edgepress.compress.prune_native import prune_keras3

            return prune_keras3(model, x, y, config, on_epoch=context.on_epoch), {}
        return prune(model, x, y, config, on_epoch=context.on_epoch), {}


def _kind(model) -> str:
    """torch for a PyTorch program, keras3 for a Keras 3 model, else tf_keras (tfmot's)."""
    if getattr(model, "kind", None) == "torch":
        return "torch"
    return "keras3" if type(model).__module__.split(".")[0] == "keras" else "tf_keras"
