"""Magnitude pruning without tfmot: for Keras 3 models (MultiHeadAttention and EinsumDense included, which tfmot
cannot wrap in Keras 3) and PyTorch programs.

    pruned = prune_keras3(model, x, y, config)      # a Keras 3 model whose kernels are target_sparsity zeros
    pruned = prune_program(program, x, y, config)   # a TorchSource, written again as a .pt2 at its batch

What tfmot's prune_low_magnitude does, done on the weights themselves: while fine-tuning, every `frequency` steps
each kernel's smallest weights (by magnitude) are set to zero up to the schedule's current sparsity (constant, or
tfmot's polynomial decay reaching the target after two thirds of the steps), and after every step the zeros are put
back, so training cannot revive them. The kernels: Dense / EinsumDense / Conv / Embedding kernels, the query, key,
value and output projections of MultiHeadAttention (Keras 3); every parameter of two or more dimensions (linear and
conv weights, in_proj_weight, out_proj; a PyTorch program). Biases and normalization scales stay dense, as in tfmot.
`sparsity_m_by_n` keeps the n - m largest of every n consecutive weights along the input axis instead.
Nothing is left to strip: the result is a plain model with zeros in its kernels.
"""

from __future__ import annotations

import math

import numpy as np

from edgepress.errors import EdgepressError

KERAS3_KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel", "embeddings")


def mask(weights: np.ndarray, sparsity: float, m_by_n: tuple[int, int] | None = None, axis: int = -1) -> np.ndarray:
    """0/1 mask zeroing the `sparsity` smallest-magnitude entries of `weights` (or m of every n along `axis`)."""
    magnitude = np.abs(weights)
    if m_by_n is not None:
        m, n = m_by_n
        moved = np.moveaxis(magnitude, axis, -1)
        length = moved.shape[-1] // n * n  # a tail shorter than n stays dense
        groups = moved[..., :length].reshape(*moved.shape[:-1], -1, n)
        order = np.argsort(groups, axis=-1, kind="stable")
        keep = np.ones_like(groups)
        np.put_along_axis(keep, order[..., :m], 0, axis=-1)
        full = np.ones_like(moved)
        full[..., :length] = keep.reshape(*moved.shape[:-1], length)
        return np.moveaxis(full, -1, axis).astype(np.float32)
    count = int(round(sparsity * weights.size))
    if count == 0:
        return np.ones_like(weights, np.float32)
    flat = np.zeros(weights.size, np.float32)
    flat[np.argsort(magnitude, axis=None, kind="stable")[count:]] = 1
    return flat.reshape(weights.shape)


class Schedule:
    """The sparsity at each training step, and when masks are recomputed (as prune.py configures tfmot)."""

    def __init__(self, config, steps_per_epoch: int) -> None:
        self.config = config
        total = steps_per_epoch * config.fine_tune_epochs
        self.frequency = max(1, steps_per_epoch // 4)  # a few times per epoch, as prune.py gives tfmot
        self.end = max(1, (2 * total) // 3)

    def sparsity(self, step: int) -> float:
        c = self.config
        if c.schedule == "constant" or c.sparsity_m_by_n is not None:
            return c.target_sparsity
        done = min(1.0, step / self.end)
        return c.target_sparsity + (c.initial_sparsity - c.target_sparsity) * (1 - done) ** 3

    def updates(self, step: int) -> bool:
        return step % self.frequency == 0 or step == self.end


# -- Keras 3 -------------------------------------------------------------------------------------------------------

def named_layers(model, names: list[str]) -> list:
    """The layers of `model` called `names`; raises EdgepressError naming any it does not have."""
    by_name = {layer.name: layer for layer in model.layers}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise EdgepressError(
            f"prune: no layer named {', '.join(unknown)} in the model. Its layers: {', '.join(by_name)}."
        )
    return [by_name[n] for n in names]


def keras3_kernels(model, names: list[str] | None = None) -> list:
    """The kernel variables pruning takes in `model` (of the layers `names`, default all): Dense, EinsumDense, Conv and
    Embedding kernels, and those of the projections inside MultiHeadAttention (a named layer without one, such as a
    LayerNormalization, is left as it is, as tfmot leaves it)."""
    chosen = named_layers(model, names) if names is not None else list(model.layers)
    kernels = [v for layer in chosen for v in layer.trainable_weights if v.name in KERAS3_KERNELS]
    if not kernels:
        raise EdgepressError(f"prune: '{model.name}' has no Dense, EinsumDense, Conv, Embedding or attention kernel "
                             "to prune. Leave out this step.")
    return kernels


def prune_keras3(model, x: np.ndarray, y: np.ndarray, config, on_epoch=None):
    """A copy of the Keras 3 `model` pruned by magnitude while fine-tuning on (x, y)."""
    import keras

    from edgepress.models import training

    working = training.copy_model(model)
    kernels = keras3_kernels(working, config.layers)
    schedule = Schedule(config, math.ceil(len(x) / config.batch_size))
    masks: list = [None] * len(kernels)
    step = [0]

    def after_batch(batch, logs) -> None:
        if schedule.updates(step[0]) or masks[0] is None:
            for i, v in enumerate(kernels):
                masks[i] = mask(np.asarray(v.numpy()), schedule.sparsity(step[0]), config.sparsity_m_by_n, axis=-2
                                if len(v.shape) > 1 else -1)
        for v, m in zip(kernels, masks, strict=True):
            v.assign(v.numpy() * m)
        step[0] += 1

    callback = keras.callbacks.LambdaCallback(on_train_batch_end=after_batch)
    training.fit(working, x, y, config.fine_tune_epochs, config.batch_size, config.learning_rate,
                 callbacks=[callback], on_epoch=on_epoch)
    final = config.target_sparsity
    for v in kernels:  # the target reached on every kernel, whatever the last update's step was
        v.assign(v.numpy() * mask(np.asarray(v.numpy()), final, config.sparsity_m_by_n,
                                  axis=-2 if len(v.shape) > 1 else -1))
    return working


# -- PyTorch programs ----------------------------------------------------------------------------------------------

def program_weights(program, names: list[str] | None = None) -> dict:
    """The weight tensors pruning takes in a program's module: parameters of 2 or more dimensions (of the module
    paths `names`, default all)."""
    parameters = {name: p for name, p in program.module.named_parameters() if p.dim() >= 2}
    if names is not None:
        known = sorted({n.rpartition(".")[0] for n in parameters})
        unknown = [n for n in names if n not in known]
        if unknown:
            raise EdgepressError(
                f"prune: {program.name} has no layer {', '.join(map(repr, unknown))} with a weight to prune; its "
                f"layers with weights: {', '.join(known)}."
            )
        parameters = {n: p for n, p in parameters.items() if n.rpartition(".")[0] in names}
    if not parameters:
        raise EdgepressError(f"prune: {program.name} has no weight matrix or filter to prune. Leave out this step.")
    return parameters


def check_program_prune(program, config) -> None:
    program_weights(program, config.layers)


def prune_program(program, x: np.ndarray, y: np.ndarray, config, on_epoch=None):
    """The program pruned by magnitude while fine-tuning on (x, y), written again as a .pt2 at its batch."""
    import copy

    import torch

    from edgepress.compress.structured_prune_torch import exported_program, fine_tune_program

    work = copy.copy(program)
    work.module = copy.deepcopy(program.module)
    weights = program_weights(work, config.layers)
    batch = program.fixed_batch or config.batch_size
    schedule = Schedule(config, max(1, len(x) // batch))
    masks: dict = {}
    step = [0]

    def apply(sparsity: float | None = None) -> None:
        with torch.no_grad():
            for name, p in weights.items():
                if sparsity is not None:  # a PyTorch weight is (out, in, ...): the input axis is 1
                    masks[name] = torch.from_numpy(mask(p.numpy(), sparsity, config.sparsity_m_by_n, axis=1))
                p.mul_(masks[name])

    def after_step() -> None:
        apply(schedule.sparsity(step[0]) if schedule.updates(step[0]) or not masks else None)
        step[0] += 1

    fine_tune_program(work.module, program, x, y, config, on_epoch, after_step=after_step)
    apply(config.target_sparsity)
    return exported_program(work.module, program, x)

