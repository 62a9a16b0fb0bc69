"""Cross-layer equalization, high-bias absorption and bias correction (Nagel et al. 2019, "Data-Free
Quantization Through Weight Equalization and Bias Correction"), so a model quantizes well to int8.

    equalized = equalize(model, x_train, y_train, EqualizeConfig())
    equalized, details = equalize_for_quantization(model, calibration)   # what accuracy-aware int8 tries first

Keras model in, Keras model out: same architecture, new weights; the input model is left as it was.

Pairs. Two layers with weights (Conv2D, DepthwiseConv2D, Dense) form a pair when the output channel i
of the first reaches input channel i of the second only through layers that commute with a positive
per-channel scale: a BatchNormalization right after the first layer, activations that are positively
homogeneous (f(a x) = a f(x) for a > 0: relu, leaky relu, linear), pooling, padding, dropout,
Flatten (channel i is every position p with p % C == i). Scaling channel i of the first layer's output
by 1/s_i and the second layer's input weights of channel i by s_i then leaves the model's function
unchanged. The walk is structured pruning's (edgepress.models.keras_graph: the same layer calls, tensors and shapes).
- A BatchNormalization between them is followed, not folded (the architecture stays): its gamma and
  beta take the 1/s_i, which scales its output exactly, and the first layer's range is that of the
  kernel with the BatchNormalization folded in, as the TFLite and ONNX converters fold it.
- ReLU6 is not positively homogeneous (the clip at 6 does not scale), but min(max(x, 0), 6) / s =
  min(max(x / s, 0), 6) wherever neither x nor x / s reaches 6. So a pair through a ReLU6 layer (any
  min(max(x, 0), b) layer) is scaled within the clip: a channel that reaches the clip on the calibration
  data keeps its scale (it is counted in the notes), every other channel is scaled down at least enough
  to stay below CLIP_MARGIN of it. The function is then exact on the calibration data and within a tenth of
  the clip's headroom elsewhere. A ReLU6 given as a Conv's own activation (no tensor before it to
  measure) leaves that layer as it is, and says so. Replacing ReLU6 by ReLU, as the paper does for
  MobileNetV2, changes the float model; that is the user's choice to make, not this step's.
- Residual connections: a tensor read by more than one layer (the skip of a residual block) or met
  by an Add ties its channels to every other tensor of the Add, so it is in no pair. The whole set of
  tensors an Add ties (its inputs, its sum, and through further Adds the rest of the residual stream,
  reached through BatchNormalization, ReLU, linear and pooling only) is equalized as one `Group`: one
  per-channel scale for all of them, held by the layers that make them (a BatchNormalization's gamma and
  beta, or a Conv's kernel) and taken back by every Conv / Dense that reads them. Its s_i balances the
  stream's own range on the calibration data (a_i, per-tensor int8's problem: a few outlier channels
  of the stream) against its readers' weights: s_i = sqrt(a_i / r2_i). A stream that also passes
  through a layer that does not scale (ReLU6, a BatchNormalization reading the sum) is left as it is,
  and why is said (`Details.ties`).

Per pair, s_i = sqrt(r1_i / r2_i) = (1 / r2_i) sqrt(r1_i r2_i), with r1_i the largest |weight| of
output channel i of the first layer and r2_i that of input channel i of the second; after it both are
sqrt(r1_i r2_i). Pairs share layers (conv1 -> conv2 -> conv3), so the scaling is repeated over all pairs
until no scale moves by more than 0.01% (or `iterations`).

High-bias absorption (section 4.2). After equalization a channel with a small s_i has a large bias, and
so a large activation range. When the activation after the first layer is at least c_i > 0 on the
calibration data (c_i: its per-channel minimum there), c_i is moved from the first layer's bias
(or BatchNormalization beta) to the second layer's bias (b2 += W2 c): exact wherever the activation
stays at or above c_i, so exact on the calibration data. It needs the second layer to see every input
position with its constant (no zero padding: Conv 'valid' or 1x1, Dense) and the activation to be the
identity above 0 (relu, leaky relu, linear).

Bias correction (section 4.2, empirical; `bias_correction: true`). For each Conv2D, DepthwiseConv2D
and Dense layer, the output error of its weights quantized to int8 as both exporters quantize them
(symmetric, per output channel: scale max|w_c| / 127, values in [-127, 127]; a following
BatchNormalization folded in, as the converters fold it) is measured on the calibration data, with the
float model's inputs to the layer, and its per-channel mean subtracted from the bias (or beta).
This makes the *quantized* model's outputs right on average and changes the float model's, so it runs
only when asked (accuracy-aware int8 tries it as a remedy: `bias_correct_for_quantization`, kept only
when the int8 file it gives is more accurate).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import ConfigDict, Field

from edgepress.compress.step import Step, register
from edgepress.errors import EdgepressError
from edgepress.models.keras_graph import PASS_THROUGH, Key, axes, calls, function_name, values
from edgepress.specs.section import Section

log = logging.getLogger(__name__)

FIRST_OR_SECOND = {"Conv2D", "DepthwiseConv2D", "Dense"}
ACTIVATION_LAYERS = {"Activation", "ReLU", "LeakyReLU"}
# Pass-through layers that do not commute with a constant shift (they insert zeros, not -c).
PADDING = {"ZeroPadding1D", "ZeroPadding2D"}
_CONVERGED = 1e-4  # largest |log s| of a sweep below which the scales have settled
# Why the last layer is in no pair: nothing after it to take the scale (not a shortfall of equalization).
MODEL_OUTPUT = "its output is an output of the model"
CLIP_MARGIN = 0.9  # a channel scaled within a clip stays below this share of it on the calibration data


class EqualizeConfig(Section):
    """Cross-layer equalization of consecutive Conv / Dense pairs, high-bias absorption, bias correction."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["equalize"] = "equalize"
    iterations: int = Field(20, ge=1, description="Most sweeps over all pairs (it stops when the scales settle).")
    bias_absorption: bool = Field(
        True, description="Move the part of a bias that the ReLU after it always passes into the next layer's bias "
        "(per-channel minimum of the activation on the calibration data)."
    )
    bias_correction: bool = Field(
        False, description="Subtract from each layer's bias the mean output error of its int8 weights on the "
        "calibration data. For the int8 export: it changes the float model's outputs."
    )
    samples: int = Field(
        1000, ge=1, description="Training samples used as calibration data (absorption is exact on these; more "
        "samples give a safer activation minimum)."
    )


@dataclass
class Pair:
    """Two layers whose channels can be rescaled against each other."""

    first: str
    second: str
    bn: str | None  # the BatchNormalization right after `first`, which takes the scale
    positions: list[int] | None  # channel of each input position of `second` (after a Flatten); None: the same
    shift_key: Key | None  # the activation whose minimum can be absorbed; None: no absorption (why: no_absorb)
    no_absorb: str = ""
    clips: list[tuple[Key, float]] = field(default_factory=list)  # (the tensor a ReLU6-like clip reads, its bound)
    held: int = 0  # channels that reach a clip on the calibration data, so keep their scale


@dataclass
class Group:
    """Tensors tied by residual Adds (a residual stream): every tensor an Add sums and the sum itself take one
    per-channel scale together. The scale reaches each tensor through layers that commute with it (ReLU, linear,
    pooling, padding); each `holder` (a BatchNormalization's gamma and beta, or a Conv / Dense layer's kernel and
    bias) multiplies its output channel i by 1/s_i, and each `reader` (Conv / Dense) its input channel i by s_i."""

    adds: list[str]
    holders: list[str]
    readers: list[str]
    keys: list[Key]  # every tensor of the stream (their ranges on the calibration data set the scales)
    layers: list[str]  # the Conv / Dense layers whose outputs the stream carries (no longer left as they are)

    def label(self) -> str:
        return (f"residual stream of {', '.join(self.adds)} ({', '.join(self.holders)} -> "
                f"{', '.join(self.readers)})")


@dataclass
class Details:
    """What equalize did: for the run log, and for accuracy-aware quantization's report."""

    pairs: list[Pair]
    left: dict[str, str]  # layer -> why it is in no pair
    groups: list[Group] = field(default_factory=list)  # residual streams equalized as one
    ties: dict[str, str] = field(default_factory=dict)  # Add layer -> why its stream is left as it is
    sweeps: int = 0
    largest_scale: float = 1.0  # max over channels of max(s, 1/s) applied in total
    absorbed: dict[str, float] = field(default_factory=dict)  # first layer -> largest shift c moved
    corrected: list[str] = field(default_factory=list)  # layers whose bias was corrected

    @property
    def found(self) -> bool:
        """Whether there is anything to equalize: a pair or a residual stream."""
        return bool(self.pairs or self.groups)

    def notes(self) -> list[str]:
        lines = [f"pairs equalized: {', '.join(f'{p.first} -> {p.second}' for p in self.pairs) or 'none'}"]
        lines += [f"equalized as one: {g.label()}" for g in self.groups]
        if self.sweeps:
            lines.append(f"{self.sweeps} sweep(s), largest channel scale {self.largest_scale:.3g}x")
        lines += [f"{p.first} -> {p.second}: scaled within its clip (ReLU6)"
                  + (f"; {p.held} channel(s) reach the clip on the calibration data and keep their scale"
                     if p.held else "") for p in self.pairs if p.clips]
        lines += [f"{p.first} -> {p.second}: no bias absorption, {p.no_absorb}" for p in self.pairs if p.no_absorb]
        if self.absorbed:
            lines.append("high biases absorbed: " + ", ".join(f"{n} (up to {c:.3g})" for n, c in self.absorbed.items()))
        if self.corrected:
            lines.append(f"biases corrected: {', '.join(self.corrected)}")
        lines += [f"residual stream of {name} left as it is: {why}" for name, why in self.ties.items()]
        return lines + [f"{name} left as it is: {why}" for name, why in self.left.items()]

    def to_dict(self) -> dict:
        return {
            "pairs": [[p.first, p.second] for p in self.pairs], "left": dict(self.left), "sweeps": self.sweeps,
            "clipped": {p.first: {"second": p.second, "channels_held": p.held} for p in self.pairs if p.clips},
            "groups": [{"adds": g.adds, "holders": g.holders, "readers": g.readers} for g in self.groups],
            "ties": dict(self.ties),
            "largest_scale": self.largest_scale, "absorbed": dict(self.absorbed), "corrected": list(self.corrected),
        }


def equalize(model, x: np.ndarray, y: np.ndarray | None = None, config: EqualizeConfig | None = None,
             on_epoch=None, **options):
    """`model` with its pairs equalized (and high biases absorbed, biases corrected, as `config` says).

    `x` is calibration data (the first `config.samples` are used); `y` and `on_epoch` are unused (no
    training), there for the step signature. Raises EdgepressError when no pair can be equalized.
    """
    config = config or EqualizeConfig(**options)
    result, details = _equalize(model, x, config)
    for note in details.notes():
        log.info("equalize: %s", note)
    return result


def equalize_for_quantization(model, calibration: np.ndarray) -> tuple[object, Details]:
    """Equalization and absorption for int8, without bias correction: (a new model, what was done).

    A model with no pair comes back as a copy, with `details.pairs` empty (and `details.left` saying why);
    only a model the walker cannot read at all (a subclassed model) raises EdgepressError.
    """
    from edgepress.models import training

    config = EqualizeConfig(bias_correction=False, samples=max(1, len(calibration)))
    details = find_pairs(model)
    if not details.found:
        return training.copy_model(model), details
    return _equalize(model, calibration, config)


def bias_correct_for_quantization(model, calibration: np.ndarray,
                                  keep: Sequence[str] = ()) -> tuple[object, list[str]]:
    """`model` copied with the bias of every Conv2D, DepthwiseConv2D and Dense layer (but those named in `keep`, which
    stay float) corrected for its int8 weights (see the module docs): (the new model, the layers corrected). Its
    float outputs change: it is for the int8 export only. A model the walker cannot read (a subclassed model) raises
    EdgepressError."""
    from edgepress.models import training

    if calibration is None or len(calibration) == 0:
        raise EdgepressError("bias correction needs calibration inputs, and none were given.")
    result = training.copy_model(model)
    details = Details(pairs=[], left={})
    _correct(result, details, np.asarray(calibration), skip=set(keep))
    return result, details.corrected


def check_equalizable(model, config: EqualizeConfig | None = None) -> None:
    """Raise EdgepressError, saying why for each layer, when `model` has no pair to equalize."""
    details = find_pairs(model)
    if details.found:
        return
    why = "; ".join([f"'{name}' {reason}" for name, reason in details.left.items()]
                    + [f"the residual stream of '{name}' {reason}" for name, reason in details.ties.items()])
    raise EdgepressError(
        f"equalize found no pair of layers in '{model.name}' to equalize (a Conv2D, DepthwiseConv2D or Dense "
        "followed, through BatchNormalization, ReLU, pooling or Flatten only, by another one that alone reads its "
        "output), nor a residual stream (the tensors an Add sums, made and read through such layers only)"
        f"{': ' + why if why else ''}. Leave out this step."
    )


def equalize_notes(model, config: EqualizeConfig | None = None) -> list[str]:
    """Lines for the run log before the step runs: the pairs found and the layers left as they are."""
    details = find_pairs(model)
    return [f"pairs: {', '.join(f'{p.first} -> {p.second}' for p in details.pairs)}"] + [
        f"equalized as one: {g.label()}" for g in details.groups] + [
        f"residual stream of {name} left as it is: {why}" for name, why in details.ties.items()] + [
        f"{name} left as it is: {why}" for name, why in details.left.items()]


def _equalize(model, x: np.ndarray, config: EqualizeConfig):
    from edgepress.models import training

    check_equalizable(model, config)
    if x is None or len(x) == 0:
        raise EdgepressError("equalize needs calibration inputs (the step's training data), and none were given.")
    result = training.copy_model(model)
    details = find_pairs(result)
    samples = np.asarray(x[: config.samples])
    _cross_layer(result, details, config.iterations, samples)
    if config.bias_absorption:
        _absorb(result, details, samples)
    if config.bias_correction:
        _correct(result, details, samples)
    return result, details


# -- finding pairs -----------------------------------------------------------------------------------


def find_pairs(model) -> Details:
    """The pairs of `model` and, for every Conv / Dense layer in none as first layer, why."""
    graph = calls(model, step="equalize")
    readers: dict[Key, list] = {}
    for call in graph.calls:
        for key in call.inputs:
            readers.setdefault(key, []).append(call)
    pairs, left = [], {}
    for call in graph.calls:
        layer = call.layer
        if type(layer).__name__ not in FIRST_OR_SECOND:
            continue
        found = _pair_from(layer, call.outputs, call.shared, readers, set(graph.outputs), graph.shapes)
        if isinstance(found, Pair):
            pairs.append(found)
        else:
            left[layer.name] = found
    details = Details(pairs, left)
    makers = {key: call for call in graph.calls for key in call.outputs}
    for call in graph.calls:
        if type(call.layer).__name__ != "Add" or any(call.outputs[0] in g.keys for g in details.groups):
            continue
        group = _group_from(call, readers, makers, set(graph.outputs), graph.shapes)
        if isinstance(group, Group):
            details.groups.append(group)
            for name in group.layers:
                left.pop(name, None)
        else:
            details.ties[call.layer.name] = group
    return details


def _weighted(layer, shared: bool) -> str | None:
    """Why `layer` cannot be in a pair, or None."""
    kind = type(layer).__name__
    if shared:
        return "it is called more than once (shared weights)"
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return "it is channels_first"
    if kind == "Conv2D" and layer.groups != 1:
        return "it is a grouped convolution"
    if kind == "DepthwiseConv2D" and layer.depth_multiplier != 1:
        return "it is a DepthwiseConv2D with depth_multiplier > 1"
    return None


def _pair_from(layer, outs: list[Key], shared: bool, readers: dict, outputs: set, shapes: dict) -> Pair | str:
    """The pair `layer` starts, or why there is none."""
    why = _weighted(layer, shared)
    if why:
        return why
    if not _homogeneous(layer.activation):
        return f"its activation ({function_name(layer.activation)}) does not commute with scaling"
    key, bn, passed, shift_key, no_absorb = outs[0], None, False, outs[0], ""
    positions, clips = None, []
    nonlinear = not _linear(layer.activation)
    if not _identity_above_zero(layer.activation):
        shift_key, no_absorb = None, f"its activation ({function_name(layer.activation)}) is not the identity above 0"
    while True:
        users = readers.get(key, [])
        if key in outputs:
            return MODEL_OUTPUT
        if len(users) != 1:
            names = ", ".join(f"'{u.layer.name}'" for u in users)
            return f"its output is read by {len(users)} layers ({names}): a residual connection ties its channels"
        nxt, nins, nouts, nshared = users[0].layer, users[0].inputs, users[0].outputs, users[0].shared
        kind = type(nxt).__name__
        if len(nins) != 1:
            return f"it feeds '{nxt.name}' ({kind}), which ties its channels to another input"
        rank = len(shapes[nins[0]] or ())
        if kind in FIRST_OR_SECOND:
            why = _weighted(nxt, nshared)
            if why:
                return f"it feeds '{nxt.name}', but {why}"
            if shift_key is not None and kind != "Dense" and nxt.padding != "valid" and any(
                    k != 1 for k in nxt.kernel_size):
                shift_key, no_absorb = None, f"'{nxt.name}' pads its input with zeros"
            return Pair(layer.name, nxt.name, bn, positions, shift_key, no_absorb, clips)
        if kind == "BatchNormalization" and axes(nxt.axis, rank) == [rank - 1]:
            if passed or nonlinear or key != outs[0]:
                return f"it feeds '{nxt.name}' (BatchNormalization) after an activation or another layer"
            if not nxt.scale or nshared:
                return f"it feeds '{nxt.name}', a BatchNormalization without gamma (scale=False) or called twice"
            bn = nxt.name
            shift_key = nouts[0] if shift_key is not None else None
        elif kind in ACTIVATION_LAYERS and _homogeneous(nxt):
            nonlinear = nonlinear or not _linear(nxt)
            if passed and shift_key is not None:
                shift_key, no_absorb = None, f"'{nxt.name}' comes after pooling"
            elif shift_key is not None and not _identity_above_zero(nxt):
                shift_key, no_absorb = None, f"'{nxt.name}' is not the identity above 0"
            elif shift_key is not None:
                shift_key = nouts[0]
        elif kind in PASS_THROUGH:
            passed = True
            if kind in PADDING and shift_key is not None:
                shift_key, no_absorb = None, f"'{nxt.name}' pads with zeros"
        elif kind == "Flatten":
            shape = shapes[nins[0]]
            if shape is None or None in shape[1:] or positions is not None:
                return f"it feeds '{nxt.name}' (Flatten) of an unknown shape"
            repeat, channels = math.prod(int(d) for d in shape[1:-1]), int(shape[-1])
            positions = [p % channels for p in range(repeat * channels)]  # channels last: channel is fastest
            passed = True
        elif kind in ACTIVATION_LAYERS and _clip_bound(nxt) is not None and positions is None and not nshared:
            # min(max(x, 0), b) commutes with 1/s wherever neither x nor x / s reaches b: scaled within the clip.
            clips.append((nins[0], _clip_bound(nxt)))
            nonlinear = True
            if shift_key is not None:
                shift_key, no_absorb = None, f"'{nxt.name}' clips at {_clip_bound(nxt):g}"
        elif kind in ACTIVATION_LAYERS:
            clip = f", max_value {nxt.max_value:g}" if getattr(nxt, "max_value", None) is not None else ""
            return (f"it feeds '{nxt.name}' ({kind}{clip}), which does not commute with a per-channel scale "
                    "(f(a x) != a f(x); ReLU6's clip at 6 does not scale)")
        else:
            return f"it feeds '{nxt.name}' ({kind}), which does not commute with a per-channel scale"
        key = nouts[0]


def _group_from(add, readers: dict, makers: dict, outputs: set, shapes: dict) -> Group | str:
    """The residual stream through the Add call `add`: every tensor tied to its output by Adds and by layers that
    commute with a per-channel scale, with the layers that hold and read the scale; or why there is none."""
    keys: list[Key] = []
    holders, readers_of, layers, adds = [], [], [], []
    todo = [add.outputs[0]]
    while todo:
        key = todo.pop()
        if key in keys:
            continue
        keys.append(key)
        if key in outputs:
            return "is an output of the model"
        call = makers.get(key)
        if call is None:
            return "starts at the model's input, which has no layer to take the scale"
        made = _stream_maker(call, shapes)
        if isinstance(made, str):
            return made
        role, more = made
        if role == "add":
            adds.append(call.layer.name)
        elif role == "holder":
            holders.append(call.layer.name)
            layers.append(more.pop())  # the Conv / Dense whose output the holder scales (itself, or before a BN)
        todo += more
        for user in readers.get(key, []):
            read = _stream_reader(user)
            if read not in ("reader", "add", "through"):
                return read  # why not
            if read == "reader":
                readers_of.append(user.layer.name)
            else:
                todo += list(user.outputs) + (list(user.inputs) if read == "add" else [])
    channels = {(shapes.get(k) or (None,))[-1] for k in keys}
    if len(channels) != 1 or None in channels:
        return f"ties tensors whose channel counts differ or are unknown ({sorted(map(str, channels))})"
    if not readers_of:
        return "is read by no Conv2D, DepthwiseConv2D or Dense layer to take the scale back"
    return Group(adds, list(dict.fromkeys(holders)), list(dict.fromkeys(readers_of)), keys,
                 list(dict.fromkeys(n for n in layers if n)))


def _stream_maker(call, shapes: dict) -> tuple[str, list] | str:
    """How the layer call that makes a stream tensor takes the scale: ("add", its inputs: the stream goes on
    through them), ("holder", [the Conv / Dense it scales or None]) or ("through", its inputs); or why it cannot."""
    layer, kind = call.layer, type(call.layer).__name__
    if call.shared:
        return f"is made by '{layer.name}', which is called more than once"
    if kind == "Add":
        return "add", list(call.inputs)
    if kind == "BatchNormalization":
        rank = len(shapes.get(call.inputs[0]) or ())
        if not rank or axes(layer.axis, rank) != [rank - 1] or not layer.scale:
            return f"is made by '{layer.name}', a BatchNormalization not over channels or without gamma"
        return "holder", [call.inputs[0][0]]
    if kind in FIRST_OR_SECOND:
        why = _weighted(layer, False)
        if why or not _homogeneous(layer.activation):
            why = why or f"its activation ({function_name(layer.activation)}) does not commute with scaling"
            return f"is made by '{layer.name}': {why}"
        return "holder", [layer.name]
    if (kind in ACTIVATION_LAYERS and _homogeneous(layer)) or kind in PASS_THROUGH:
        return "through", list(call.inputs)
    return f"is made by '{layer.name}' ({kind}){_clip_text(layer)}, which does not commute with a per-channel scale"


def _stream_reader(call) -> str:
    """How a layer reading a stream tensor takes the scale: "reader" (a Conv / Dense scales its input channels),
    "add" (another Add: the stream goes on through its output and its other inputs), "through" (the stream goes
    on through its output); else why it cannot."""
    layer, kind = call.layer, type(call.layer).__name__
    if call.shared:
        return f"is read by '{layer.name}', which is called more than once"
    if kind == "Add":
        return "add"
    if kind in FIRST_OR_SECOND:
        why = _weighted(layer, False)
        return f"is read by '{layer.name}', but {why}" if why else "reader"
    if (kind in ACTIVATION_LAYERS and _homogeneous(layer)) or kind in PASS_THROUGH:  # zeros padded stay zeros
        return "through"
    return f"is read by '{layer.name}' ({kind}){_clip_text(layer)}, which does not commute with a per-channel scale"


def _clip_text(layer) -> str:
    clip = getattr(layer, "max_value", None)
    return f", max_value {clip:g}: a clip does not scale" if clip is not None else ""


_PROBE = np.array([[-20.0, -3.0, -0.5, 0.0, 0.5, 3.0, 7.0, 20.0]], np.float32)


def _apply(fn, x: np.ndarray):
    try:
        return np.asarray(fn(x), dtype=np.float64)
    except Exception:  # a function that cannot take a plain float tensor
        return None


def _homogeneous(fn) -> bool:
    """f(a x) = a f(x) for a > 0: relu, leaky relu, linear (not relu6, not sigmoid)."""
    base = _apply(fn, _PROBE)
    return base is not None and all(
        np.allclose(_apply(fn, a * _PROBE), a * base, rtol=1e-5, atol=1e-6) for a in (0.25, 4.0))


def _clip_bound(fn) -> float | None:
    """b when f(x) = min(max(x, 0), b) (ReLU6: 6), else None."""
    out = _apply(fn, _PROBE)
    if out is None:
        return None
    bound = float(out.max())
    return bound if 0 < bound < float(_PROBE.max()) and np.allclose(out, np.clip(_PROBE, 0, bound)) else None


def _linear(fn) -> bool:
    out = _apply(fn, _PROBE)
    return out is not None and np.allclose(out, _PROBE)


def _identity_above_zero(fn) -> bool:
    out = _apply(fn, _PROBE)
    positive = _PROBE >= 0
    return out is not None and np.allclose(out[positive], _PROBE[positive])


# -- weights per channel -----------------------------------------------------------------------------


def _out_weights(model, pair_layer: str, bn: str | None) -> np.ndarray:
    """(channels, n) the weights of each output channel of a layer, with its BatchNormalization folded in."""
    layer = model.get_layer(pair_layer)
    kernel = layer.get_weights()[0]
    if type(layer).__name__ == "DepthwiseConv2D":
        per = kernel[..., 0].reshape(-1, kernel.shape[-2]).T
    else:
        per = kernel.reshape(-1, kernel.shape[-1]).T
    return per * _bn_factor(model, bn)[:, None] if bn else per


def _bn_factor(model, bn: str) -> np.ndarray:
    """gamma / sqrt(var + eps) of a BatchNormalization: what multiplies each channel."""
    layer = model.get_layer(bn)
    return layer.gamma.numpy() / np.sqrt(layer.moving_variance.numpy() + layer.epsilon)


def _in_ranges(model, pair: Pair, channels: int) -> np.ndarray:
    """Largest |weight| of each input channel of `pair.second`."""
    layer = model.get_layer(pair.second)
    kernel = np.abs(layer.get_weights()[0])
    if type(layer).__name__ == "DepthwiseConv2D":
        return kernel[..., 0].reshape(-1, kernel.shape[-2]).max(axis=0)
    rows = kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1]).max(axis=(0, 2))  # per input position
    if pair.positions is None:
        return rows
    ranges = np.zeros(channels, rows.dtype)
    np.maximum.at(ranges, pair.positions, rows)
    return ranges


def _scale_out(model, pair: Pair, factor: np.ndarray) -> None:
    """Multiply output channel i of `pair.first` (or its BatchNormalization's gamma and beta) by factor[i]."""
    if pair.bn:
        layer = model.get_layer(pair.bn)
        layer.gamma.assign(layer.gamma * factor)
        if layer.center:
            layer.beta.assign(layer.beta * factor)
        return
    layer = model.get_layer(pair.first)
    weights = layer.get_weights()
    if type(layer).__name__ == "DepthwiseConv2D":
        weights[0] = weights[0] * factor[:, None]
    else:
        weights[0] = weights[0] * factor
    if layer.use_bias:
        weights[1] = weights[1] * factor
    layer.set_weights(weights)


def _scale_in(model, pair: Pair, factor: np.ndarray) -> None:
    """Multiply the weights of `pair.second` that read input channel i by factor[i]."""
    layer = model.get_layer(pair.second)
    weights = layer.get_weights()
    per_position = factor if pair.positions is None else factor[pair.positions]
    # Input channels are the kernel's second-to-last axis: (in, out), (h, w, in, out), depthwise (h, w, in, 1).
    weights[0] = weights[0] * per_position[:, None]
    layer.set_weights(weights)


def _cross_layer(model, details: Details, iterations: int, x: np.ndarray) -> None:
    total = {p.first: None for p in details.pairs}
    # Each stream's per-channel range on the calibration data; a sweep's scale s divides it exactly.
    ranges = [_stream_ranges(model, g, x) for g in details.groups]
    # Each clipped pair's per-channel share of its clip reached on the calibration data (1: it clips), likewise.
    reached = _clip_shares(model, details.pairs, x)
    held = {first: share >= 1 for first, share in reached.items()}
    for pair in details.pairs:
        if pair.first in held:
            pair.held = int(held[pair.first].sum())
    for sweep in range(1, iterations + 1):
        moved = 0.0
        for index, group in enumerate(details.groups):
            s = _stream_scales(model, group, ranges[index])
            for holder in group.holders:
                _scale_holder(model, holder, (1 / s).astype(np.float32))
            for reader in group.readers:
                _scale_in(model, Pair("", reader, None, None, None), s.astype(np.float32))
            ranges[index] = ranges[index] / s
            name = f"stream:{group.adds[0]}"
            total[name] = s if total.get(name) is None else total[name] * s
            moved = max(moved, float(np.abs(np.log(s)).max(initial=0.0)))
        for pair in details.pairs:
            r1 = np.abs(_out_weights(model, pair.first, pair.bn)).max(axis=1).astype(np.float64)
            r2 = _in_ranges(model, pair, len(r1)).astype(np.float64)
            s = np.ones_like(r1)
            live = (r1 > 0) & (r2 > 0)  # a dead channel (all zeros on one side) keeps its scale
            s[live] = np.sqrt(r1[live] / r2[live])
            if pair.first in reached:
                s = _within_clip(s, reached[pair.first], held[pair.first])
                reached[pair.first] = reached[pair.first] / s
            _scale_out(model, pair, (1 / s).astype(np.float32))
            _scale_in(model, pair, s.astype(np.float32))
            total[pair.first] = s if total[pair.first] is None else total[pair.first] * s
            moved = max(moved, float(np.abs(np.log(s)).max(initial=0.0)))
        details.sweeps = sweep
        if moved < _CONVERGED:
            break
    details.largest_scale = max((float(np.maximum(s, 1 / s).max(initial=1.0)) for s in total.values()
                                 if s is not None), default=1.0)


def _clip_shares(model, pairs: list[Pair], x: np.ndarray) -> dict[str, np.ndarray]:
    """For each pair through a clip (ReLU6), keyed by its first layer: the share of the clip each channel reaches on
    inputs `x` (its largest value before the clip over the bound; the largest over its clips)."""
    clipped = [p for p in pairs if p.clips]
    if not clipped:
        return {}
    keys = [key for p in clipped for key, _ in p.clips]
    found = iter(values(model, keys, x))
    shares = {}
    for pair in clipped:
        per_clip = [next(found) for _ in pair.clips]
        shares[pair.first] = np.max([v.reshape(-1, v.shape[-1]).max(axis=0) / bound
                                     for v, (_, bound) in zip(per_clip, pair.clips, strict=True)], axis=0)
    return shares


def _within_clip(s: np.ndarray, reached: np.ndarray, held: np.ndarray) -> np.ndarray:
    """`s` kept where a clip stays exact: a channel that reaches the clip on the calibration data keeps its scale
    (1); another is scaled down at least enough that it stays below CLIP_MARGIN of the clip, so that neither the
    model as given nor the scaled one clips it there."""
    s = s.copy()
    s[held] = 1.0
    free = ~held
    s[free] = np.maximum(s[free], reached[free] / CLIP_MARGIN)
    return s


def _stream_ranges(model, group: Group, x: np.ndarray) -> np.ndarray:
    """The largest |value| of each channel over every tensor of the stream, on inputs `x`."""
    found = values(model, list(group.keys), x)
    return np.max([np.abs(v.reshape(-1, v.shape[-1])).max(axis=0) for v in found], axis=0).astype(np.float64)


def _stream_scales(model, group: Group, ranges: np.ndarray) -> np.ndarray:
    """s_i = sqrt(a_i / r_i): a_i the stream's range of channel i, r_i the largest weight of its readers reading it.
    After it both a_i / s_i and r_i s_i are proportional to sqrt(a_i r_i): the stream's channels, quantized with one
    per-tensor range, and its readers' weights, quantized per output channel, share the imbalance evenly. Scaled
    so the median live channel keeps its scale (a common factor changes nothing quantization sees)."""
    r = np.max([_in_ranges(model, Pair("", reader, None, None, None), len(ranges)) for reader in group.readers],
               axis=0).astype(np.float64)
    s = np.ones_like(ranges)
    live = (ranges > 0) & (r > 0)  # a dead channel keeps its scale
    if live.any():
        s[live] = np.sqrt(ranges[live] / r[live])
        s[live] /= np.median(s[live])
    return s


def _scale_holder(model, name: str, factor: np.ndarray) -> None:
    """Multiply output channel i of layer `name` by factor[i]: a BatchNormalization's gamma and beta, or a Conv /
    Dense layer's kernel and bias."""
    if type(model.get_layer(name)).__name__ == "BatchNormalization":
        _scale_out(model, Pair("", "", name, None, None), factor)
    else:
        _scale_out(model, Pair(name, "", None, None, None), factor)


# -- high-bias absorption and bias correction ---------------------------------------------------------


def _absorb(model, details: Details, x: np.ndarray) -> None:
    pairs = [p for p in details.pairs if p.shift_key is not None]
    for pair in pairs:
        if not _has_bias(model, pair.first, pair.bn):
            pair.shift_key, pair.no_absorb = None, f"'{pair.first}' has no bias"
        elif not model.get_layer(pair.second).use_bias:
            pair.shift_key, pair.no_absorb = None, f"'{pair.second}' has no bias"
    pairs = [p for p in pairs if p.shift_key is not None]
    if not pairs:
        return
    found = values(model, [p.shift_key for p in pairs], x)
    for pair, value in zip(pairs, found, strict=True):
        shift = np.maximum(value.reshape(-1, value.shape[-1]).min(axis=0), 0).astype(np.float32)
        if not shift.any():
            continue
        _add_bias(model, pair.first, pair.bn, -shift)
        second = model.get_layer(pair.second)
        weights = second.get_weights()
        per_position = shift if pair.positions is None else shift[pair.positions]
        if type(second).__name__ == "DepthwiseConv2D":
            weights[1] = weights[1] + (weights[0][..., 0] * per_position).reshape(-1, len(shift)).sum(axis=0)
        else:  # the constant reaches every position of the kernel (no padding): sum the kernel over them
            kernel = weights[0].reshape(-1, weights[0].shape[-2], weights[0].shape[-1])
            weights[1] = weights[1] + np.einsum("kio,i->o", kernel, per_position)
        second.set_weights(weights)
        details.absorbed[pair.first] = float(shift.max())


def _has_bias(model, name: str, bn: str | None) -> bool:
    return model.get_layer(bn).center if bn else model.get_layer(name).use_bias


def _add_bias(model, name: str, bn: str | None, delta: np.ndarray) -> None:
    """Add `delta` to the output of layer `name` before its activation (its bias, or its BatchNormalization's beta)."""
    if bn:
        layer = model.get_layer(bn)
        layer.beta.assign(layer.beta + delta)
        return
    layer = model.get_layer(name)
    layer.bias.assign(layer.bias + delta)


def quantized_per_channel(w: np.ndarray, depthwise: bool = False) -> np.ndarray:
    """A Keras kernel `w` through int8 symmetric quantization per output channel, as the TFLite converter and
    onnxruntime (per_channel) quantize weights: channel c gets the scale max|w_c| / 127 and values in [-127, 127].
    The output channel is the last axis (Conv2D (h, w, in, out), Dense (in, out)), or the last two for a
    DepthwiseConv2D (h, w, in, multiplier)."""
    axes = tuple(range(w.ndim - 2 if depthwise else w.ndim - 1))
    top = np.abs(w).max(axis=axes, keepdims=True)
    scale = np.where(top > 0, top / 127, 1.0)
    return (np.clip(np.round(w / scale), -127, 127) * scale).astype(w.dtype)


def _correct(model, details: Details, x: np.ndarray, skip: set[str] = frozenset()) -> None:
    """Empirical bias correction of every Conv2D, DepthwiseConv2D and Dense layer but those in `skip` (see the module
    docs)."""
    graph = calls(model, step="equalize")
    outputs = graph.outputs
    readers: dict[Key, list] = {}
    for call in graph.calls:
        for key in call.inputs:
            readers.setdefault(key, []).append(call.layer)
    targets = []
    for layer, ins, outs, shared in ((c.layer, c.inputs, c.outputs, c.shared) for c in graph.calls):
        if type(layer).__name__ not in FIRST_OR_SECOND or _weighted(layer, shared) or layer.name in skip:
            continue
        users = readers.get(outs[0], [])
        bn = (users[0].name if len(users) == 1 and outs[0] not in outputs and _linear(layer.activation)
              and type(users[0]).__name__ == "BatchNormalization" and users[0].center else None)
        if bn is None and not layer.use_bias:
            log.info("equalize: '%s' has no bias to correct", layer.name)
            continue
        targets.append((layer, ins[0], bn))
    if not targets:
        return
    inputs = values(model, [t[1] for t in targets], x)
    for (layer, _, bn), value in zip(targets, inputs, strict=True):
        kernel = layer.get_weights()[0]
        depthwise = type(layer).__name__ == "DepthwiseConv2D"
        factor = _bn_factor(model, bn) if bn else np.ones(kernel.shape[-2 if depthwise else -1], np.float32)
        folded = kernel * (factor[:, None] if depthwise else factor)
        error = quantized_per_channel(folded, depthwise) - folded
        config = {**layer.get_config(), "activation": "linear", "use_bias": False, "name": f"{layer.name}_error"}
        probe = type(layer).from_config(config)
        probe.build(value.shape)
        probe.set_weights([error])
        outputs_error = np.asarray(probe(value.astype(np.float32)))
        mean = outputs_error.reshape(-1, outputs_error.shape[-1]).mean(axis=0).astype(np.float32)
        # With a BatchNormalization the error is of the folded kernel, so in the units of its output: beta.
        _add_bias(model, layer.name, bn, -mean)
        details.corrected.append(layer.name)


@register
class Equalize(Step):
    config = EqualizeConfig
    kinds = frozenset({"keras3", "tf_keras"})
    not_after_qat = "after qat every layer is wrapped for quantization-aware training; equalize before qat"
    needs = "it rescales the weights of Keras layers"

    def check(self, model, config, context):
        check_equalizable(model, config)

    def notes(self, model, config):
        return equalize_notes(model, config)

    def run(self, model, x, y, config, context):
        result, details = _equalize(model, x, config)
        for note in details.notes():
            log.info("equalize: %s", note)
        return result, {}
