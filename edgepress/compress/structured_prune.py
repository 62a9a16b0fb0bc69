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

Attention. Each head of a MultiHeadAttention layer is one atom: removing it removes its query, key and value
columns and the rows of the output projection that read it, together (and the layer is rebuilt with fewer
`num_heads`). Its output is the residual width, and its inputs are read by every head, so both are pinned:
residual widths are left whole (LayerNormalization pins them too); the MLP between two residual Adds (Dense -> GELU
-> Dense) loses hidden units as any Dense does. Removing a head is exact (the output projection's rows of a removed
head are what it contributes).

Importance. `criterion: l1 | l2` ranks channels by the norm of their filters (for a head: its value and output
weights); `taylor` measures it on the training data: the first-order change of the loss when the channel or head
is removed, (sum of weight x gradient over its filter and bias, or over a head's output-projection rows)^2,
averaged over batches (Molchanov et al., "Importance Estimation for Neural Network Pruning", 2019).

`round_to: N` rounds the number of channels each pruned group keeps up to a multiple of N (never
below N, never above the original): a layer of 22 or 67 channels leaves a vectorized kernel's last
register half used, and measured on MobileNetV2, such counts made onnxruntime slower though MACs fell.
A device profile's `channel_multiple` is the N its kernels prefer.

Removal is exact: the smaller model computes what the original computes with the removed channels'
parameters set to zero (filter and bias, BatchNormalization gamma and beta, DepthwiseConv2D slice),
because each layer a removed channel passes through maps zero to zero. Activations are checked for
that (f(0) = 0); a layer with, say, a sigmoid is left whole. The `gradual` schedule uses exactly this:
it zeroes the chosen groups during fine-tuning, more each round, then removes them.

A PyTorch program (`.pt2`) is pruned on its own graph by structured_prune_torch (heads, MLP units, conv channels),
and written again as a `.pt2` at the batch it takes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from edgepress.compat import keras_of
from edgepress.compress.counts import group_ratio as _group_ratio
from edgepress.compress.counts import rounded as _rounded
from edgepress.compress.step import Step, holds_program, register
from edgepress.errors import EdgepressError, first_line
from edgepress.models import training
from edgepress.models.keras_graph import (
    PASS_THROUGH,
    Key,
    attention_sizes,
    axes,
    calls,
    function_name,
    with_widths,
)
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
    criterion: Literal["l1", "l2", "taylor"] = Field(
        "l1", description="What ranks channels and attention heads: the l1 or l2 norm of their weights, or taylor, "
        "their importance measured on the training data (the first-order loss change when removed).")
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
    distill: bool = Field(
        False, description="Decoder LMs: fine-tune by logit distillation from the unpruned model (lm_distill's loss: "
        "half cross-entropy, half KL divergence to its distribution at temperature 2) instead of on the data alone."
    )

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
    final = plan(model, config, data=(x, y))
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
        current = plan(working, config, fraction=r / config.rounds, data=(x, y))
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


def plan(model, config: StructuredPruneConfig | None = None, fraction: float = 1.0,
         data: tuple[np.ndarray, np.ndarray] | None = None, **options) -> Plan:
    """Decide which channels of `model` to remove under `config` (scaled by `fraction`, for gradual rounds).
    `data` (x, y) is what the taylor criterion measures on; without it (the plan's check, which decides only how
    many go) taylor ranks by the l1 norm.

    Raises EdgepressError naming the layer when the request cannot be met: a layer that would keep no
    channel, a layer asked for by name that structured pruning cannot follow, tied layers given
    different ratios, or a model with nothing it can prune.
    """
    config = config or StructuredPruneConfig(**options)
    graph = _Graph(model)
    _check_requested(model, config, graph)

    criterion = "l1" if config.criterion == "taylor" and data is None else config.criterion
    scores = _scores(model, graph, criterion, data)
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
        count = _rounded(len(members), round(ratio * fraction * len(members)), config.round_to,
                         graph.unit_width(names))
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
                f"structured_prune: ratio {ratio:g} removes all {before} {graph.what(name)} of layer '{name}', "
                f"which would leave it with zero {graph.what(name)}. Give it a ratio of at most {highest:g} with "
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
        if type(layer).__name__ == "MultiHeadAttention" and layer.name in plan.removed:
            _keep_heads(model.get_layer(layer.name), layer, plan.removed[layer.name])
            continue
        if layer.name in plan.slices:
            kind, keep_in = plan.slices[layer.name]
            keep_out = None
            if kind == "producer" and layer.name in plan.removed:
                gone = set(plan.removed[layer.name])
                keep_out = [i for i in range(plan.widths[layer.name][0]) if i not in gone]
            weights = [_slice(w, kind, keep_in, keep_out) for w in weights]
        layer.set_weights(weights)
    return smaller


def _projections(layer) -> tuple:
    """The query, key, value and output EinsumDense layers of a MultiHeadAttention (Keras 3 and tf_keras)."""
    return layer._query_dense, layer._key_dense, layer._value_dense, layer._output_dense


def _keep_heads(old, new, removed: list[int]) -> None:
    """Give `new` (built with fewer heads) the weights of the heads of `old` that stay: the heads axis of the query,
    key and value kernels (input, heads, size) and biases (heads, size), and of the output kernel
    (heads, size, output); the output bias is whole."""
    keep = [h for h in range(attention_sizes(old)[0]) if h not in set(removed)]
    *qkv, out = _projections(old)
    *new_qkv, new_out = _projections(new)
    for source, target in zip(qkv, new_qkv, strict=True):
        weights = source.get_weights()
        target.set_weights([np.take(w, keep, axis=1 if w.ndim == 3 else 0) for w in weights])
    kernel, *bias = out.get_weights()
    new_out.set_weights([np.take(kernel, keep, axis=0), *bias])


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
        self.attention: dict[str, int] = {}  # MultiHeadAttention layer -> the width of one head (its atoms are heads)
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

    def what(self, name: str) -> str:
        """What a producer's atoms are, for messages."""
        return "heads" if name in self.attention else "channels"

    def unit_width(self, names: list[str]) -> int:
        """How many projection columns one atom of these (tied) producers is: a head's size, else 1."""
        return max([self.attention.get(n, 1) for n in names])

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
        if kind == "MultiHeadAttention" and not shared and len(outputs) == 1:
            self._attention(layer, maps, outputs[0])
            return
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


    def _attention(self, layer, maps: list, out: Key) -> None:
        """Heads are the atoms of a MultiHeadAttention; what it reads and writes is pinned (see the module doc)."""
        for m in maps:
            self._pin(m, f"it feeds attention '{layer.name}', whose every head reads every channel")
        heads, size, _ = attention_sizes(layer)
        atoms = list(range(len(self.atoms), len(self.atoms) + heads))
        self.atoms += [(layer.name, h) for h in range(heads)]
        self.parent += atoms
        self.producers[layer.name] = atoms
        self.attention[layer.name] = size
        self.maps[out] = self._fixed(out)


def _zero_to_zero(fn) -> bool:
    """True if the element-wise function or layer `fn` maps 0 to 0 (relu, tanh, linear, ...)."""
    try:
        return bool(np.all(np.asarray(fn(np.zeros((1, 4), np.float32))) == 0))
    except Exception:  # a function that cannot take a plain float tensor: do not follow through it
        return False


def _scores(model, graph: _Graph, criterion: str, data: tuple[np.ndarray, np.ndarray] | None = None,
            ) -> dict[int, float]:
    """Importance of each atom: the norm of its filter (a head: of its value and output weights), scaled by the
    BatchNormalization that follows; or, for `taylor`, measured on `data` (`_taylor`).

    A BatchNormalization multiplies channel c by gamma_c / sqrt(var_c + eps), so that factor is part of
    the filter's effective size. Scores are divided by their layer's mean so that layers tied together
    count alike whatever their scale.
    """
    if criterion == "taylor":
        return _normalized(graph, _taylor(model, graph, *data))
    scores: dict[int, float] = {}
    for name, atoms in graph.producers.items():
        layer = model.get_layer(name)
        if name in graph.attention:
            _, _, value, out = _projections(layer)
            v, o = value.get_weights()[0], out.get_weights()[0]  # (input, heads, size), (heads, size, output)
            filters = np.concatenate([v.transpose(1, 0, 2).reshape(len(atoms), -1), o.reshape(len(atoms), -1)], 1)
        else:
            kernel = layer.get_weights()[0]
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
    return _normalized(graph, scores)


def _normalized(graph: _Graph, scores: dict[int, float]) -> dict[int, float]:
    for atoms in graph.producers.values():
        mean = float(np.mean([scores[a] for a in atoms]))
        if mean > 0:
            for a in atoms:
                scores[a] /= mean
    return scores


def _taylor(model, graph: _Graph, x: np.ndarray, y: np.ndarray, samples: int = 512, batch: int = 64,
            ) -> dict[int, float]:
    """Each atom's measured importance: (sum of weight x loss gradient over what removing it zeroes)^2, the square of
    the first-order loss change, averaged over batches of up to `samples` training samples. What removing an atom
    zeroes: a Conv / Dense channel's filter and bias; a head's rows of the output projection (with them at zero the
    head contributes nothing)."""
    from edgepress.compat import tensorflow
    from edgepress.models.training import outputs_logits

    tf = tensorflow()
    loss_fn = keras_of(model).losses.SparseCategoricalCrossentropy(from_logits=outputs_logits(model))
    groups = []  # (atoms, variables, reduce: variable value x gradient -> one number per atom)
    for name, atoms in graph.producers.items():
        layer = model.get_layer(name)
        if name in graph.attention:
            out = _projections(layer)[3]
            groups.append((atoms, [out.kernel], lambda p: p.reshape(p.shape[0], -1).sum(axis=1)))
        else:
            variables = [layer.kernel] + ([layer.bias] if getattr(layer, "use_bias", False) else [])
            groups.append((atoms, variables, lambda p: p.reshape(-1, p.shape[-1]).sum(axis=0)))
    variables = [v for _, vs, _ in groups for v in vs]
    totals = {a: 0.0 for atoms, _, _ in groups for a in atoms}
    count = min(samples, len(x))
    batches = range(0, count, batch)
    for start in batches:
        xb = tf.convert_to_tensor(np.asarray(x[start : start + batch], np.float32))
        with tf.GradientTape() as tape:
            loss = loss_fn(y[start : start + batch], model(xb, training=False))
        grads = tape.gradient(loss, variables)
        i = 0
        for atoms, vs, reduce in groups:
            change = sum(reduce(np.asarray(v.numpy()) * np.asarray(g)) if g is not None else 0.0
                         for v, g in zip(vs, grads[i : i + len(vs)], strict=True))
            i += len(vs)
            for atom, c in zip(atoms, np.broadcast_to(change, (len(atoms),)), strict=True):
                totals[atom] += float(c) ** 2 / len(batches)
    return totals


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


# -- the gradual schedule: hold the chosen channels at zero while training ---------------------------

def _masks(model, plan: Plan) -> list[tuple]:
    """(variable, 0/1 mask) pairs that zero the removed channels of `plan` in `model`."""
    masks = []
    for name, gone in plan.removed.items():
        layer = model.get_layer(name)
        if type(layer).__name__ == "MultiHeadAttention":  # a head's output-projection rows silence it
            keep = np.ones(attention_sizes(layer)[0], np.float32)
            keep[gone] = 0
            masks.append((_projections(layer)[3].kernel, keep[:, None, None]))
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


# -- decoder LMs (edgepress.models.decoder_prune): whole heads and MLP units, the same count in every block ----------

DECODER_PARTS = ("attention", "mlp")


def is_decoder(model) -> bool:
    """Whether `model` is a decoder LM's module (char_gpt, a Llama): it steps against a cache and has a config."""
    return hasattr(model, "step_static") and hasattr(model, "config")


def _decoder_ratios(config: StructuredPruneConfig) -> tuple[float, float]:
    """The heads' and the MLP units' ratios: `ratio`, or `layers: {attention: r, mlp: r}`."""
    given = config.layers or {}
    return given.get("attention", config.ratio), given.get("mlp", config.ratio)


def decoder_counts(model, config: StructuredPruneConfig) -> tuple[int, int]:
    """How many kv groups (attention heads without grouped-query attention) and MLP units each block keeps,
    `round_to` counting a group as its width in the output projection. Raises EdgepressError when a ratio would
    leave none."""
    from edgepress.models.decoder_prune import structures

    groups, width, units = structures(model)
    heads, mlp = _decoder_ratios(config)
    what = "attention heads" if width == model.config.head_dim else "kv groups (a key/value head and its queries)"
    kept = []
    for total, ratio, unit, name in ((groups, heads, width, what), (units, mlp, 1, "MLP units")):
        count = round(ratio * total)
        if count >= total:
            raise EdgepressError(f"structured_prune: ratio {ratio:g} removes all {total} {name} of every block of "
                                 f"the decoder; give it a ratio of at most {_highest(total):g}.")
        kept.append(total - _rounded(total, count, config.round_to, unit))
    return kept[0], kept[1]


def _highest(total: int) -> float:
    """The highest ratio (in hundredths, rounded down) that leaves one of `total` structures."""
    return math.floor(100 * (total - 1) / total) / 100


def decoder_highest_ratio(model) -> tuple[float, str]:
    """The highest one `ratio` the decoder `model` takes (every block keeps a head or kv group and an MLP unit), and
    its structures per block in words ("2 attention heads and 64 MLP units")."""
    from edgepress.models.decoder_prune import structures

    groups, width, units = structures(model)
    what = "attention heads" if width == model.config.head_dim else "kv groups"
    return min(_highest(groups), _highest(units)), f"{groups} {what} and {units} MLP units"


def check_decoder(model, config: StructuredPruneConfig) -> None:
    unknown = sorted(set(config.layers or {}) - set(DECODER_PARTS))
    if unknown:
        raise EdgepressError(
            f"structured_prune: `layers` names {', '.join(unknown)}, and a decoder LM is pruned by part, the same "
            "in every block: give `layers: {attention: r, mlp: r}` (heads, MLP units) or one `ratio`."
        )
    if config.schedule != "oneshot":
        raise EdgepressError("structured_prune: a decoder LM is pruned oneshot (then fine-tuned or distilled from "
                             "the unpruned model); the gradual schedule is for Keras models. Set schedule: oneshot.")
    decoder_counts(model, config)


def decoder_notes(model, config: StructuredPruneConfig) -> list[str]:
    from edgepress.models.decoder_prune import choose, pruned, widths

    after = pruned(model, choose(model, *decoder_counts(model, config)))
    how = "distilled from the unpruned model" if config.distill else "fine-tuned"
    return [f"decoder: {widths(model)} -> {widths(after)}, ranked by {config.criterion}, then {how} for "
            f"{config.fine_tune_epochs} epoch(s)"]


def prune_decoder(model, x: np.ndarray, y: np.ndarray, config: StructuredPruneConfig, on_epoch=None):
    """The decoder `model` with its least important heads and MLP units removed (ranked on (x, y) for taylor), then
    fine-tuned on the windows, or distilled from `model` with `config.distill`."""
    from edgepress.models.char_gpt import train_char_gpt
    from edgepress.models.decoder_prune import choose, pruned

    keep = choose(model, *decoder_counts(model, config), config.criterion, x, y)
    smaller = pruned(model, keep)
    if config.fine_tune_epochs:
        train_char_gpt(smaller, x, y, config.fine_tune_epochs, config.batch_size, config.learning_rate, on_epoch,
                       teacher=model if config.distill else None)
    return smaller


@register
class StructuredPrune(Step):
    config = StructuredPruneConfig
    kinds = frozenset({"keras3", "tf_keras", "torch", "decoder"})
    not_after_qat = (
        "it rebuilds plain Keras layers, and after qat every layer is wrapped for quantization-aware training"
    )
    needs = ("it removes channels from Keras layers and rebuilds the Keras model, or heads and units of a program "
             "or of a decoder")

    def check(self, model, config, context):
        if is_decoder(model):
            return check_decoder(model, config)
        if config.distill:
            raise EdgepressError("structured_prune: `distill` is for decoder LMs (logit distillation from the "
                                 "unpruned model); for another model add a distill step after it instead.")
        if holds_program(model):  # a PyTorch program: its own graph walk (structured_prune_torch)
            from edgepress.compress.structured_prune_torch import check_program_prunable

            return check_program_prunable(model, config)
        check_structured_prunable(model, config)

    def result_like(self, model, config, context):
        if not is_decoder(model):
            return model
        from edgepress.models.decoder_prune import choose, pruned

        return pruned(model, choose(model, *decoder_counts(model, config)))

    def notes(self, model, config):
        if is_decoder(model):
            return decoder_notes(model, config)
        if holds_program(model):
            from edgepress.compress.structured_prune_torch import plan_program

            return plan_program(model, config).notes()
        return plan_notes(model, config)

    def run(self, model, x, y, config, context):
        if is_decoder(model):
            smaller = prune_decoder(model, x, y, config, on_epoch=context.on_epoch)
            return smaller, {"heads": int(smaller.config.heads), "mlp_units": int(smaller.config.hidden)}
        if holds_program(model):
            from edgepress.compress.structured_prune_torch import prune_program

            return prune_program(model, x, y, config, on_epoch=context.on_epoch), {}
        return structured_prune(model, x, y, config, on_epoch=context.on_epoch), {}

