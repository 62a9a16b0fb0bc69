"""Structured pruning: remove whole filters and units, so the model gets smaller *and* faster.

    smaller = structured_prune(model, x_train, y_train, ratio=0.5, fine_tune_epochs=3)

Magnitude pruning (prune.py) zeroes single weights: the file compresses better, but every
multiply still runs. This step removes whole output channels of Conv1D / Conv2D layers and units of
Dense layers, together with the slices of everything that reads them (the next layer's input
weights, the BatchNormalization and DepthwiseConv2D in between), and rebuilds the model from its
config with the new widths: a smaller dense model with fewer MACs, which is then fine-tuned.

How channels are followed. Each output channel of a Conv1D, Conv2D or Dense layer is an *atom*. The
model's graph is walked once, carrying for every tensor the atom behind each position of its last
(channel) axis:
- element-wise layers, pooling, padding, dropout, BatchNormalization and DepthwiseConv2D pass the
  atoms through (BatchNormalization and DepthwiseConv2D lose the matching slices of their weights);
- Flatten repeats them once per spatial position; Concatenate on the channel axis lays the inputs'
  atoms side by side (input channel ranges become output ranges);
- Add (and Subtract, Multiply, Average, Maximum, Minimum, or Concatenate on another axis) ties the
  atoms at the same position of each input into one group, which is removed as a whole or not at all;
- any other layer (Reshape, LayerNormalization, PReLU, a custom layer, ...) pins the atoms that reach
  it, and so do the model's outputs: the final classifier's units are the classes.
A layer whose channels are all pinned is left whole; `Plan.notes()` names it and says why.

`round_to: N` rounds the number of channels each pruned group keeps up to a multiple of N (never
below N, never above the original): a layer of 22 or 67 channels leaves a vectorized kernel's last
register half used, and measured on MobileNetV2, such counts made onnxruntime slower though MACs fell.
A device profile's `channel_multiple` is the N its kernels prefer.

Removal is exact: the smaller model computes what the original computes with the removed channels'
parameters set to zero (filter and bias, BatchNormalization gamma and beta, DepthwiseConv2D slice),
because each layer a removed channel passes through maps zero to zero. Activations are checked for
that (f(0) = 0); a layer with, say, a sigmoid is left whole. The `gradual` schedule uses exactly this:
it zeroes the chosen groups during fine-tuning, more each round, then removes them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from edgepress.compat import keras_of
from edgepress.compress.step import Step, register
from edgepress.errors import EdgepressError, first_line
from edgepress.models import training
from edgepress.models.keras_graph import PASS_THROUGH, Key, axes, calls, function_name, with_widths
from edgepress.specs.section import Section
from edgepress.values import MAX_BATCH, MAX_EPOCHS, MAX_LEARNING_RATE

log = logging.getLogger(__name__)

Ratio = Annotated[float, Field(ge=0, le=1)]


class StructuredPruneConfig(Section):
    """Remove whole channels (Conv filters, Dense units) with the smallest norms, then fine-tune."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["structured_prune"] = "structured_prune"
    ratio: Ratio = Field(0.5, description="Fraction of each prunable layer's channels to remove.")
    layers: dict[str, Ratio] | None = Field(
        None,
        description="Per-layer ratios, e.g. {conv2d: 0.25}; they override `ratio` for the layers named "
        "(set ratio: 0 to prune only these).",
    )
    criterion: Literal["l1", "l2"] = Field("l1", description="Norm of each filter that ranks the channels.")
    schedule: Literal["oneshot", "gradual"] = Field(
        "oneshot",
        description="oneshot: remove at once, then fine-tune; gradual: zero more channels each round while "
        "fine-tuning, then remove them.",
    )
    round_to: int | None = Field(
        None, ge=1, description="Round the channels each pruned layer keeps up to a multiple of this (never below it, "
        "never above the original), e.g. 8: kernels run best on channel counts their vector width divides "
        "(see a device profile's channel_multiple)."
    )
    rounds: int = Field(3, ge=1, description="gradual: rounds over which the ratio is reached.")
    fine_tune_epochs: int = Field(
        3, le=MAX_EPOCHS, ge=0, description="Epochs of training after (oneshot) or while (gradual) pruning."
    )
    batch_size: int = Field(128, ge=1, le=MAX_BATCH)
    learning_rate: float = Field(1e-3, gt=0, le=MAX_LEARNING_RATE)

    @model_validator(mode="after")
    def _rounds_fit(self) -> StructuredPruneConfig:
        if self.schedule == "gradual" and self.fine_tune_epochs < self.rounds:
            raise ValueError(
                f"the gradual schedule trains at least one epoch per round: fine_tune_epochs "
                f"({self.fine_tune_epochs}) must be at least rounds ({self.rounds})"
            )
        return self


def structured_prune(model, x: np.ndarray, y: np.ndarray, config: StructuredPruneConfig | None = None,
                     on_epoch=None, **options):
    """Remove the lowest-norm channels of `model`, fine-tune on (x, y), and return the smaller Keras model.

    `options` are StructuredPruneConfig fields, for calls without a config object:
    structured_prune(m, x, y, ratio=0.5, criterion="l2"). The input model is left as it was.
    """
    config = config or StructuredPruneConfig(**options)
    final = plan(model, config)
    for note in final.notes():
        log.info("structured_prune: %s", note)
    if config.schedule == "oneshot":
        smaller = remove_channels(model, final)
        if config.fine_tune_epochs:
            training.fit(smaller, x, y, config.fine_tune_epochs, config.batch_size, config.learning_rate,
                         on_epoch=on_epoch)
        return smaller

    # Gradual: round r zeroes the lowest r/rounds of the target and trains with them held at zero, so
    # the rest of the model learns to do without them before they go; the last round is the full plan.
    working = training.copy_model(model)
    done = 0
    for r in range(1, config.rounds + 1):
        current = plan(working, config, fraction=r / config.rounds)
        epochs = config.fine_tune_epochs // config.rounds + (config.fine_tune_epochs % config.rounds if
                                                             r == config.rounds else 0)
        masks = _masks(working, current)
        _apply(masks)
        callbacks = keras_of(working).callbacks
        keep_zero = callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs, m=masks: _apply(m))
        training.fit(working, x, y, epochs, config.batch_size, config.learning_rate, callbacks=[keep_zero],
                     on_epoch=_shifted(on_epoch, done, config.fine_tune_epochs))
        done += epochs
    return remove_channels(working, current)


def check_structured_prunable(model, config: StructuredPruneConfig) -> None:
    """Raise EdgepressError before any work if `config` cannot be applied to `model` (names the layer)."""
    plan(model, config)


def plan_notes(model, config: StructuredPruneConfig) -> list[str]:
    """Lines for the run log: the widths `config` gives `model`'s layers, and each layer left whole and why."""
    return plan(model, config).notes()


@dataclass
class Plan:
    """Which channels go: what `remove_channels` applies and what `notes()` reports."""

    removed: dict[str, list[int]]  # Conv / Dense layer -> indices of its output channels that are removed
    widths: dict[str, tuple[int, int]]  # Conv / Dense layer -> (channels before, channels after)
    left_whole: dict[str, str]  # prunable layer that keeps every channel -> why
    # How each layer with weights to slice reads its input: kind ("producer" for Conv / Dense,
    # "channelwise" for BatchNormalization and DepthwiseConv2D) and the kept input positions (None: all).
    slices: dict[str, tuple[str, list[int] | None]] = field(default_factory=dict)

    def notes(self) -> list[str]:
        changed = [f"{name} {a} -> {b}" for name, (a, b) in self.widths.items() if a != b]
        lines = [f"{name} left whole: {why}" for name, why in self.left_whole.items()]
        return ([f"channels: {', '.join(changed)}"] if changed else []) + lines


def plan(model, config: StructuredPruneConfig | None = None, fraction: float = 1.0, **options) -> Plan:
    """Decide which channels of `model` to remove under `config` (scaled by `fraction`, for gradual rounds).

    Raises EdgepressError naming the layer when the request cannot be met: a layer that would keep no
    channel, a layer asked for by name that structured pruning cannot follow, tied layers given
    different ratios, or a model with nothing it can prune.
    """
    config = config or StructuredPruneConfig(**options)
    graph = _Graph(model)
    _check_requested(model, config, graph)

    scores = _scores(model, graph, config.criterion)
    units: dict[int, list[int]] = {}
    for atom in range(1, len(graph.atoms)):
        root = graph.find(atom)
        if root != FIXED:
            units.setdefault(root, []).append(atom)

    # Layers that share a unit (tied by Add / Concatenate) are pruned as one group with one ratio.
    group_of = {name: name for name in graph.producers}

    def group(name: str) -> str:
        while group_of[name] != name:
            name = group_of[name]
        return name

    for atoms in units.values():
        names = {graph.atoms[a][0] for a in atoms}
        first = group(names.pop())
        for other in names:
            group_of[group(other)] = first
    groups: dict[str, list[list[int]]] = {}
    for atoms in units.values():
        groups.setdefault(group(graph.atoms[atoms[0]][0]), []).append(atoms)

    removed_atoms: set[int] = set()
    for members in groups.values():
        names = sorted({graph.atoms[a][0] for atoms in members for a in atoms})
        ratio = _group_ratio(names, config)
        count = _rounded(len(members), round(ratio * fraction * len(members)), config.round_to)
        # Lowest total score first; ties go to the lower channel index so the plan is reproducible.
        ranked = sorted(members, key=lambda atoms: (sum(scores[a] for a in atoms), min(atoms)))
        for atoms in ranked[:count]:
            removed_atoms.update(atoms)

    removed = {name: sorted(graph.atoms[a][1] for a in atoms if a in removed_atoms)
               for name, atoms in graph.producers.items()}
    widths = {name: (len(atoms), len(atoms) - len(removed[name])) for name, atoms in graph.producers.items()}
    for name, (before, after) in widths.items():
        if after == 0:
            ratio = (config.layers or {}).get(name, config.ratio)
            highest = math.floor(100 * (before - 1) / before) / 100  # rounded down: it must keep one channel
            raise EdgepressError(
                f"structured_prune: ratio {ratio:g} removes all {before} channels of layer '{name}', which would "
                f"leave it with zero channels. Give it a ratio of at most {highest:g} with "
                f"`layers: {{{name}: ...}}` in the step, or lower `ratio`."
            )
    slices = {name: (kind, graph.kept(key, removed_atoms)) for name, (kind, key) in graph.readers.items()}
    return Plan({n: r for n, r in removed.items() if r}, widths, graph.left_whole(), slices)


def remove_channels(model, plan: Plan):
    """A new, smaller Keras model: `model` rebuilt with the widths of `plan` and the kept weight slices.

    No training: the result computes what `model` computes with the removed channels zeroed.
    """
    try:
        smaller = with_widths(model, {name: after for name, (_, after) in plan.widths.items()})
    except Exception as e:  # Keras raises many types for a config it cannot rebuild (custom layers, ...)
        raise EdgepressError(
            f"structured_prune could not rebuild '{model.name}' from its config with the new widths "
            f"({first_line(e)}). Build the model from standard Keras layers, or leave out this step."
        ) from None
    for layer in smaller.layers:
        weights = model.get_layer(layer.name).get_weights()
        if layer.name in plan.slices:
            kind, keep_in = plan.slices[layer.name]
            keep_out = None
            if kind == "producer" and layer.name in plan.removed:
                gone = set(plan.removed[layer.name])
                keep_out = [i for i in range(plan.widths[layer.name][0]) if i not in gone]
            weights = [_slice(w, kind, keep_in, keep_out) for w in weights]
        layer.set_weights(weights)
    return smaller


def _slice(w: np.ndarray, kind: str, keep_in: list[int] | None, keep_out: list[int] | None) -> np.ndarray:
    if kind == "channelwise":
        # BatchNormalization vectors are (channels,); a DepthwiseConv2D kernel is (h, w, channels, 1).
        if keep_in is None:
            return w
        return np.take(w, keep_in, axis=0 if w.ndim == 1 else -2)
    if w.ndim >= 2 and keep_in is not None:  # a kernel: (..., inputs, outputs)
        w = np.take(w, keep_in, axis=-2)
    if keep_out is not None:  # the kernel's outputs, or the bias
        w = np.take(w, keep_out, axis=-1)
    return w


# -- following channels through the graph ------------------------------------------------------------

FIXED = 0  # the atom of every channel that cannot be removed
OUTPUT = "its channels are the model's outputs"

PRODUCERS = {"Conv1D", "Conv2D", "Dense"}
# Element-wise activations pass atoms through only if they map zero to zero (checked per layer).
ACTIVATIONS = {"Activation", "ReLU", "LeakyReLU", "ELU", "ThresholdedReLU"}
TIES = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}


class _Graph:
    """The atoms of a model and how they are tied, found by one walk over its layer calls."""

    def __init__(self, model) -> None:
        self.atoms: list[tuple[str, int]] = [("", -1)]  # atom id -> (layer, output channel); 0 is FIXED
        self.parent: list[int] = [FIXED]
        self.producers: dict[str, list[int]] = {}  # Conv / Dense layer -> its atoms, by output channel
        self.readers: dict[str, tuple[str, Key]] = {}  # layer with weights to slice -> (kind, input tensor)
        self.reasons: dict[str, list[str]] = {}  # producer -> why (some of) its channels are pinned
        self.maps: dict[Key, list[int] | None] = {}  # tensor -> atom per channel (None: width unknown)
        graph = calls(model)
        self.shapes = graph.shapes
        for key in graph.inputs:
            self.maps[key] = self._fixed(key)
        for call in graph.calls:
            self._follow(call.layer, call.inputs, call.outputs, call.shared)
        for key in graph.outputs:
            # Recorded even for atoms pinned already, so that a classifier ending in a softmax counts as
            # an output (never pruned, nothing to report) rather than as a layer left whole.
            for atom in self.maps[key] or []:
                if atom != FIXED:
                    self.reasons.setdefault(self.atoms[atom][0], []).append(OUTPUT)
            self._pin(self.maps[key], OUTPUT)

    # union-find over atoms; FIXED stays the root of its set, so "pinned" is find(atom) == FIXED.
    def find(self, atom: int) -> int:
        while self.parent[atom] != atom:
            self.parent[atom] = self.parent[self.parent[atom]]
            atom = self.parent[atom]
        return atom

    def _union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            low, high = min(a, b), max(a, b)
            self.parent[high] = low

    def _pin(self, atoms: list[int] | None, reason: str) -> None:
        for atom in atoms or []:
            if self.find(atom) != FIXED:
                self.reasons.setdefault(self.atoms[atom][0], []).append(reason)
                self._union(atom, FIXED)

    def _fixed(self, key: Key) -> list[int] | None:
        width = self.shapes[key][-1] if self.shapes[key] else None
        return None if width is None else [FIXED] * int(width)

    def kept(self, key: Key, removed: set[int]) -> list[int] | None:
        atoms = self.maps[key]
        if atoms is None or not any(a in removed for a in atoms):
            return None
        return [p for p, a in enumerate(atoms) if a not in removed]

    def left_whole(self) -> dict[str, str]:
        whole = {}
        for name, atoms in self.producers.items():
            if all(self.find(a) == FIXED for a in atoms):
                reasons = self.reasons.get(name, [])
                if OUTPUT in reasons:
                    continue  # the classifier: never pruned, nothing to report
                whole[name] = reasons[0] if reasons else (
                    "its channels are tied (by Add or Concatenate) to channels that cannot be removed")
        return whole

    def _follow(self, layer, inputs: list[Key], outputs: list[Key], shared: bool) -> None:
        kind = type(layer).__name__
        maps = [self.maps[k] for k in inputs]
        shape = self.shapes[inputs[0]] if inputs else None
        last_axis = len(shape) - 1 if shape else None

        def unknown(why: str) -> None:
            for m in maps:
                self._pin(m, why)
            for key in outputs:
                self.maps[key] = self._fixed(key)

        if kind == "InputLayer" or not inputs:
            unknown("")
            return
        cannot = f"it feeds '{layer.name}' ({kind}), which structured pruning cannot follow"
        if len(inputs) > 1 and kind not in TIES | {"Concatenate"}:
            unknown(cannot)
            return
        if shared and layer.weights:
            unknown(f"it feeds '{layer.name}', a layer called more than once (shared weights)")
            return
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            unknown(f"it feeds '{layer.name}', which is channels_first")
            return
        out = outputs[0]
        if kind in PRODUCERS and getattr(layer, "groups", 1) == 1:
            self.readers[layer.name] = ("producer", inputs[0])
            width = int(self.shapes[out][-1])
            atoms = list(range(len(self.atoms), len(self.atoms) + width))
            self.atoms += [(layer.name, i) for i in range(width)]
            self.parent += atoms
            self.producers[layer.name] = atoms
            self.maps[out] = atoms
            if not _zero_to_zero(layer.activation):
                self._pin(atoms, f"its activation ({function_name(layer.activation)}) does not map 0 to 0, "
                                 "so a removed channel would not vanish")
        elif kind == "DepthwiseConv2D" and layer.depth_multiplier == 1 and _zero_to_zero(layer.activation):
            self.readers[layer.name] = ("channelwise", inputs[0])
            self.maps[out] = maps[0]
        elif kind == "BatchNormalization" and axes(layer.axis, len(shape)) == [last_axis]:
            self.readers[layer.name] = ("channelwise", inputs[0])
            self.maps[out] = maps[0]
        elif kind in PASS_THROUGH or (kind in ACTIVATIONS and _zero_to_zero(layer)):
            self.maps[out] = maps[0]
        elif kind in ACTIVATIONS or kind == "Softmax":
            # Not zero-preserving (or, for softmax, not per channel): pinned, but followed on, so that
            # the classifier before a softmax is known as the output it is.
            self._pin(maps[0], f"it feeds '{layer.name}' ({kind}), which does not map 0 to 0 per channel")
            self.maps[out] = maps[0]
        elif kind == "Flatten":
            # Channels-last flattening puts the channel axis fastest: position p holds channel p % C.
            repeat = math.prod(int(d) for d in shape[1:-1]) if None not in shape[1:-1] else None
            self.maps[out] = None if maps[0] is None or repeat is None else maps[0] * repeat
        elif kind == "Concatenate" and axes([layer.axis], len(shape)) == [last_axis]:
            if any(m is None for m in maps):
                unknown(cannot)
                return
            self.maps[out] = [a for m in maps for a in m]
        elif kind in TIES or kind == "Concatenate":
            # The same position of every input meets in one output channel: those atoms go together.
            if any(m is None for m in maps) or len({len(m) for m in maps}) != 1:
                unknown(f"it meets differently shaped tensors at '{layer.name}' ({kind})")
                return
            for m in maps[1:]:
                for a, b in zip(maps[0], m, strict=True):
                    self._union(a, b)
            self.maps[out] = maps[0]
        else:
            unknown(cannot)


def _zero_to_zero(fn) -> bool:
    """True if the element-wise function or layer `fn` maps 0 to 0 (relu, tanh, linear, ...)."""
    try:
        return bool(np.all(np.asarray(fn(np.zeros((1, 4), np.float32))) == 0))
    except Exception:  # a function that cannot take a plain float tensor: do not follow through it
        return False


def _scores(model, graph: _Graph, criterion: str) -> dict[int, float]:
    """Importance of each atom: the norm of its filter, scaled by the BatchNormalization that follows.

    A BatchNormalization multiplies channel c by gamma_c / sqrt(var_c + eps), so that factor is part of
    the filter's effective size. Scores are divided by their layer's mean so that layers tied together
    count alike whatever their scale.
    """
    scores: dict[int, float] = {}
    for name, atoms in graph.producers.items():
        kernel = model.get_layer(name).get_weights()[0]
        filters = kernel.reshape(-1, kernel.shape[-1]).T
        norms = np.abs(filters).sum(axis=1) if criterion == "l1" else np.sqrt((filters ** 2).sum(axis=1))
        for atom, norm in zip(atoms, norms, strict=True):
            scores[atom] = float(norm)
    for name, (_, key) in graph.readers.items():
        layer = model.get_layer(name)
        if type(layer).__name__ != "BatchNormalization" or graph.maps[key] is None:
            continue
        gamma = layer.gamma.numpy() if layer.scale else np.ones(len(graph.maps[key]), np.float32)
        scale = np.abs(gamma) / np.sqrt(layer.moving_variance.numpy() + layer.epsilon)
        for atom, s in zip(graph.maps[key], scale, strict=True):
            if atom != FIXED:
                scores[atom] *= float(s)
    for atoms in graph.producers.values():
        mean = float(np.mean([scores[a] for a in atoms]))
        if mean > 0:
            for a in atoms:
                scores[a] /= mean
    return scores


def _check_requested(model, config: StructuredPruneConfig, graph: _Graph) -> None:
    """Refuse per-layer ratios for layers that do not exist or cannot be pruned, and a model with nothing to prune."""
    requested = config.layers or {}
    prunable = [n for n, atoms in graph.producers.items() if any(graph.find(a) != FIXED for a in atoms)]
    names = {layer.name for layer in model.layers}
    unknown = [n for n in requested if n not in names]
    if unknown:
        raise EdgepressError(
            f"structured_prune: no layer named {', '.join(unknown)} in '{model.name}'. "
            f"The layers it can prune: {', '.join(prunable) or 'none'}."
        )
    for name, ratio in requested.items():
        if ratio == 0 or name in prunable:
            continue
        layer = model.get_layer(name)
        if name not in graph.producers:
            why = (f"it is a {type(layer).__name__}; structured pruning removes channels of Conv1D, Conv2D "
                   "and Dense layers (the BatchNormalization and DepthwiseConv2D after them follow)")
        else:
            reasons = graph.reasons.get(name, [])
            why = ("its units are the model's outputs (the classes of a classifier are never pruned)"
                   if OUTPUT in reasons else graph.left_whole().get(name, "its channels cannot be removed"))
        raise EdgepressError(
            f"structured_prune cannot prune layer '{name}': {why}. Remove it from `layers` "
            f"(the layers it can prune: {', '.join(prunable) or 'none'})."
        )
    if not prunable and (config.ratio > 0 or any(requested.values())):
        blocked = "; ".join(f"'{n}' {why}" for n, why in graph.left_whole().items())
        raise EdgepressError(
            f"structured_prune cannot follow the channels of any layer of '{model.name}'"
            + (f": {blocked}" if blocked else " (it has no plain Conv1D, Conv2D or Dense layer besides the outputs; "
               "after qat they are wrapped, so run structured_prune before qat)")
            + ". Leave out this step, or rebuild the model with layers it can follow (see the README)."
        )


def _rounded(channels: int, count: int, multiple: int | None) -> int:
    """How many of `channels` to remove so that the number kept is a multiple of `multiple`: the kept number is
    rounded up, never below `multiple` and never above `channels` (a layer with fewer keeps them all)."""
    if not multiple or count == 0:
        return count
    keep = max(multiple, math.ceil((channels - count) / multiple) * multiple)
    return channels - min(channels, keep)


def _group_ratio(names: list[str], config: StructuredPruneConfig) -> float:
    """The ratio of layers pruned together: the one given for them by name, else the step's `ratio`."""
    given = {n: config.layers[n] for n in names if config.layers and n in config.layers}
    if len(set(given.values())) > 1:
        listed = ", ".join(f"{n}: {r:g}" for n, r in given.items())
        raise EdgepressError(
            f"structured_prune: layers {', '.join(names)} share their channels (tied by Add or Concatenate), "
            f"so they are pruned together and need one ratio; `layers` gives {listed}. Give them the same ratio."
        )
    return next(iter(given.values())) if given else config.ratio


# -- the gradual schedule: hold the chosen channels at zero while training ---------------------------

def _masks(model, plan: Plan) -> list[tuple]:
    """(variable, 0/1 mask) pairs that zero the removed channels of `plan` in `model`."""
    masks = []
    for name, (kind, keep_in) in plan.slices.items():
        layer = model.get_layer(name)
        if kind == "producer":
            if name not in plan.removed:
                continue
            keep = np.ones(plan.widths[name][0], np.float32)
            keep[plan.removed[name]] = 0
            masks += [(layer.kernel, keep)] + ([(layer.bias, keep)] if layer.use_bias else [])
        elif keep_in is not None and type(layer).__name__ == "BatchNormalization":
            keep = np.zeros(int(layer.moving_mean.shape[0]), np.float32)
            keep[keep_in] = 1
            # gamma = beta = 0 makes the output 0 whatever the input and the running statistics.
            masks += [(v, keep) for v in (layer.gamma, layer.beta) if v is not None]
        elif keep_in is not None:  # DepthwiseConv2D: kernel (h, w, channels, 1) and bias (channels,)
            keep = np.zeros(int(layer.depthwise_kernel.shape[-2]), np.float32)
            keep[keep_in] = 1
            masks.append((layer.depthwise_kernel, keep[:, None]))
            if layer.use_bias:
                masks.append((layer.bias, keep))
    return masks


def _apply(masks: list[tuple]) -> None:
    for variable, keep in masks:
        variable.assign(variable * keep)


def _shifted(on_epoch, done: int, total: int):
    """Report a round's epochs as epochs of the whole fine-tuning."""
    if on_epoch is None:
        return None
    return lambda epoch, epochs, logs, model=None: on_epoch(done + epoch, total, logs, model)


@register
class StructuredPrune(Step):
    config = StructuredPruneConfig
    kinds = frozenset({"keras3", "tf_keras"})
    not_after_qat = (
        "it rebuilds plain Keras layers, and after qat every layer is wrapped for quantization-aware training"
    )
    needs = "it removes channels from Keras layers and rebuilds the Keras model"

    def check(self, model, config, context):
        check_structured_prunable(model, config)

    def notes(self, model, config):
        return plan_notes(model, config)

    def run(self, model, x, y, config, context):
        return structured_prune(model, x, y, config, on_epoch=context.on_epoch), {}
