"""Accuracy-aware int8 quantization: meet an accuracy budget by keeping the most sensitive layers in float.

    result = quantize_to_budget(model, "tflite", "out/", x_calibration=x_train[:200], x_eval=x_test, y_eval=y_test,
                                max_accuracy_drop=0.005, calibration={"samples": 100})
    result.chosen.artifact, result.chosen.float_layers, result.budget_met

1. Export the model fully quantized (TFLite int8 / ONNX int8_static) and measure its accuracy.
1b. If it misses the budget, try the cheaper remedy first: the model cross-layer equalized
   (compress/equalize.py: per-channel weight scales moved between consecutive layers, high biases
   absorbed; the float model computes the same), fully quantized. Outlier channels, which are what
   breaks per-tensor int8, are evened out, so every layer can stay int8. Then, for ONNX when the
   recipe chose no calibration method, the other activation-range methods (percentile, entropy), which
   clip outliers instead of spanning them. Then bias correction (compress/equalize.py: each Conv / Dense
   bias minus the mean output error of its int8 weights, per output channel as the exporters quantize,
   on the calibration data) of the most accurate model so far, kept only when its file is more accurate.
   The search below continues from whichever was the most accurate; each trial records its remedy
   ("none", "equalize", "calibration percentile", "bias correction", "equalize, bias correction", ...).
   (Weights are per channel in both formats already: the TFLite converter always, ONNX by default.)
2. Measure each layer's quantization error (sensitivity), even when the budget already holds:
   TFLite with the converter's quantization debugger (each op run in int8 and in float on the same
   inputs), ONNX with onnxruntime's QDQ debugging tools (every activation of the QDQ model against
   the float model's; this error includes the error of the layers before it). A layer's error is the
   RMS difference of its output in units of a typical (median nonzero) float activation, so a layer
   whose few huge outliers wipe out all other values stands out.
3. If the fully quantized model misses the budget, keep the k most sensitive candidates in float. The first
   candidates are outputs, not whole layers: each LayerNormalization layer (its normalization ops), each softmax
   and each GELU op (attention's softmax inside a MultiHeadAttention, a Dense's GELU activation), most sensitive
   first, kept in float by their own ops while the matmuls around them stay int8; then the layers, most sensitive
   first
   (TFLite: the debugger's deny-list; ONNX: nodes_to_exclude), growing k one at a time or by
   bisection, until the budget holds or nothing is left to try; then put back into int8 each kept
   layer the budget does not need (least sensitive first, until putting back any layer left misses
   the budget), so the float set is small and each of its layers is shown to be needed.

The budget is an accuracy drop relative to the Keras model being exported (the float model), on the
evaluation data. Every artifact tried is written and returned, the fully quantized one first.
When no tried artifact meets the budget, `budget_met` is False and `chosen` is the most accurate one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgepress import files
from edgepress.artifact import Artifact
from edgepress.errors import EdgepressError, InternalError
from edgepress.formats import QUANTIZED, artifact_filename
from edgepress.models.source import Source, wrap
from edgepress.specs.quantize import QuantizeConfig, parse_config

QUANTIZED_PRECISION = QUANTIZED
# The model kinds whose layers it can keep in float.
KINDS = frozenset({"keras3", "tf_keras"})
# What the TFLite converter does (it has no options for it), for the report.
_TFLITE_CALIBRATION = {"calibration_method": "minmax", "per_channel": True}
# Float comparisons of accuracies that are fractions of the same sample count.
_TOLERANCE = 1e-9


@dataclass
class LayerSensitivity:
    """One layer's quantization error, from its worst op: `error` is the RMS difference between the float and
    the int8 output in units of a typical (median nonzero) float activation; `relative_error` is
    ||float - int8|| / ||float||, which a few huge values dominate."""

    layer: str  # the Keras layer, or the op/tensor name when it names no layer
    error: float
    relative_error: float
    rmse: float
    max_abs_error: float
    nodes: list[str]  # the ops (TFLite output tensors, ONNX activations) measured
    is_layer: bool = True  # False: an op of no Keras layer, reported but never kept in float by name
    # An output tried in float before whole layers: "layernorm" (a LayerNormalization layer), "softmax" or "gelu"
    # (one op, named by `layer`, its TFLite output tensor or ONNX node); None for a plain layer.
    output: str | None = None


@dataclass
class Trial:
    """One artifact tried: which layers stayed float, and its accuracy on the evaluation data."""

    artifact: Artifact
    float_layers: list[str]
    accuracy: float
    accuracy_drop: float  # from the Keras float model
    meets_budget: bool
    remedy: str = "none"  # "none": the model as given; "equalize": the model cross-layer equalized first


@dataclass
class QuantizeResult:
    """Everything one accuracy-aware quantization tried, and what it chose."""

    format: str
    precision: str
    budget: float
    float_accuracy: float
    eval_samples: int
    options: dict  # the calibration settings used
    sensitivity: list[LayerSensitivity]  # most sensitive first
    trials: list[Trial]  # the fully quantized artifact first, then the search's, in order
    chosen: Trial
    budget_met: bool
    search: str = "linear"
    notes: list[str] = field(default_factory=list)
    equalized: dict | None = None  # what equalization did (compress.equalize.Details.to_dict), when it was tried
    bias_corrected: dict | None = None  # what bias correction did and whether it was kept, when it was tried
    min_int8_macs: float = 0.5  # the least share of MACs in integer kernels the chosen artifact must have

    @property
    def remedy(self) -> str:
        """The remedy of the chosen artifact: "none" or "equalize"."""
        return self.chosen.remedy

    @property
    def full(self) -> Trial:
        """The fully quantized artifact."""
        return self.trials[0]

    def errors(self) -> dict[str, float]:
        return {s.layer: s.error for s in self.sensitivity}

    def row_keys(self, trial: Trial) -> dict:
        """What the report rows of `trial`'s artifact carry besides their measurements."""
        return {
            "float_layers": self.float_layer_rows(trial),
            "accuracy_aware": {"role": self.role(trial), "max_accuracy_drop": self.budget,
                               "budget_met": self.budget_met, "accuracy_drop_from_float": trial.accuracy_drop,
                               "remedy": trial.remedy, "min_int8_macs": self.min_int8_macs},
        }

    def float_layer_rows(self, trial: Trial) -> list[dict]:
        """The layers `trial` left in float, each with its measured error after quantization and, when the
        search tried it, the accuracy with that one layer put back into int8 (why it stays float)."""
        errors, rows = self.errors(), []
        outputs = {s.layer: s.output for s in self.sensitivity}
        for layer in trial.float_layers:
            rest = set(trial.float_layers) - {layer}
            put_back = next((t.accuracy for t in self.trials
                             if set(t.float_layers) == rest and t.remedy == trial.remedy), None)
            rows.append({"layer": layer, "output": outputs.get(layer), "error": _finite(errors.get(layer)),
                         "accuracy_if_int8": put_back})
        return rows

    def role(self, trial: Trial) -> str:
        """full (everything int8), final (the chosen one; also when it is the full one), or tried."""
        if trial is self.chosen:
            return "final"
        return "full" if trial is self.full else "tried"

    def summary(self) -> str:
        """One plain sentence: was the budget met, by which artifact, with which layers in float."""
        chosen, label = self.chosen, f"{self.format} {self.precision}"
        kept = _layers_text(chosen.float_layers, self.errors())
        if self.budget_met and chosen is self.full:
            return (f"{label}: fully quantized {chosen.artifact.name} meets the budget "
                    f"(drop {_pt(chosen.accuracy_drop)} <= {_pt(self.budget)} from the float model).")
        how = {"none": "", "equalize": " after cross-layer equalization",
               "bias correction": " after bias correction"}.get(chosen.remedy, f" ({chosen.remedy})")
        if self.budget_met and not chosen.float_layers:
            return (f"{label}: full int8 drops {_pt(self.full.accuracy_drop)} (budget {_pt(self.budget)}); "
                    f"{chosen.artifact.name}, fully quantized{how}, meets it (drop {_pt(chosen.accuracy_drop)}).")
        if self.budget_met:
            return (f"{label}: full int8 drops {_pt(self.full.accuracy_drop)} (budget {_pt(self.budget)}); "
                    f"{chosen.artifact.name}{how} meets it with {len(chosen.float_layers)} layer(s) in float: {kept} "
                    f"(drop {_pt(chosen.accuracy_drop)}).")
        return (f"{label}: BUDGET NOT MET: no artifact tried keeps the drop within {_pt(self.budget)}; full int8 drops "
                f"{_pt(self.full.accuracy_drop)}, the best found is {chosen.artifact.name} "
                f"(drop {_pt(chosen.accuracy_drop)}, float layers: {kept or 'none'}).")

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "precision": self.precision,
            "max_accuracy_drop": self.budget,
            "budget_met": self.budget_met,
            "float_accuracy": self.float_accuracy,
            "eval_samples": self.eval_samples,
            "search": self.search,
            "calibration": self.options,
            "summary": self.summary(),
            "chosen": self.chosen.artifact.name,
            "remedy": self.remedy,
            "equalized": self.equalized,
            "bias_correction": self.bias_corrected,
            "full": self.full.artifact.name,
            "sensitivity": [{k: _finite(v) for k, v in asdict(s).items()} for s in self.sensitivity],
            "trials": [
                {
                    "artifact": t.artifact.name,
                    "path": str(t.artifact.path),
                    "role": self.role(t),
                    "remedy": t.remedy,
                    "bytes": t.artifact.bytes,
                    "accuracy": t.accuracy,
                    "accuracy_drop": t.accuracy_drop,
                    "meets_budget": t.meets_budget,
                    "float_layers": self.float_layer_rows(t),
                }
                for t in self.trials
            ],
            "notes": self.notes,
        }

    def to_markdown(self) -> str:
        errors, chosen = self.errors(), set(self.chosen.float_layers)
        how = ("the converter's quantization debugger: each op in int8 against the same op in float, same inputs"
               if self.format == "tflite" else
               "onnxruntime's QDQ debugging tools: each quantized activation against the float model's "
               "(includes the error of the layers before it)")
        lines = [
            f"## {self.format} {self.precision}",
            "",
            self.summary(),
            "",
            f"Float model accuracy {self.float_accuracy:.2%} on {self.eval_samples} samples; budget "
            f"{_pt(self.budget)}; search {self.search}; calibration {_options_text(self.options)}.",
            "",
            f"Layer-wise error after quantization, from {how}. error: RMS difference between the float and the "
            "int8 output in units of a typical (median nonzero) float activation; relative error: "
            "||float - int8|| / ||float||.",
            "",
            "| rank | layer | error | relative error | rmse | max abs error | in float in the final artifact |",
            "|---|---|---|---|---|---|---|",
        ]
        for rank, s in enumerate(self.sensitivity, start=1):
            name = s.layer if s.is_layer else f"({s.layer})"
            name += f" [{s.output} output]" if s.output else ""
            lines.append(f"| {rank} | {name} | {s.error:.4g} | {s.relative_error:.4g} | {s.rmse:.4g} | "
                         f"{s.max_abs_error:.4g} | {'yes' if s.layer in chosen else ''} |")
        lines += [
            "",
            "Artifacts tried:",
            "",
            "| artifact | role | remedy | float layers | accuracy | drop | bytes | meets budget |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for t in self.trials:
            meets = "yes" if t.meets_budget else "no"
            lines.append(
                f"| {t.artifact.name} | {self.role(t)} | {t.remedy} | {_layers_text(t.float_layers, errors) or '-'} | "
                f"{t.accuracy:.2%} | {_pt(t.accuracy_drop)} | {t.artifact.bytes:,} | {meets} |"
            )
        put_back = [r for r in self.float_layer_rows(self.chosen) if r["accuracy_if_int8"] is not None]
        if put_back:
            lines += ["", "Why each float layer stays float (accuracy of the final artifact with only that layer "
                      "put back into int8): " + "; ".join(f"{r['layer']} {r['accuracy_if_int8']:.2%}"
                                                          for r in put_back) + "."]
        lines += [
            "",
            "A layer can be needed in float for its neighbour's sake: an int8 layer quantizes its input, so keeping "
            "a layer's output exact also needs the layer that consumes it in float.",
        ]
        lines += [""] + [f"Note: {n}" for n in self.notes] + ([""] if self.notes else [])
        return "\n".join(lines) + "\n"


def quantize_to_budget(
    model: Source | object,
    format: str,
    out_dir: str | Path,
    x_calibration: np.ndarray,
    x_eval: np.ndarray,
    y_eval: np.ndarray,
    config: QuantizeConfig | dict | None = None,
    *,
    name: str | None = None,
    check_data: np.ndarray | None = None,
    steps: Sequence[str] = (),
    on_trial: Callable[[str], None] | None = None,
    **options,
) -> QuantizeResult:
    """Quantize `model` to int8 as `format` (tflite or onnx) within an accuracy budget; see the module docs.

    `model` is a Keras model (Keras 3 or tf_keras) or its Source. `config` (or its fields as keywords, e.g.
    max_accuracy_drop=0.005) sets the budget, the search and
    the calibration. `x_calibration` are inputs for activation ranges and layer errors; (x_eval, y_eval) are
    the inputs and integer labels the accuracy is measured on. Artifacts go to `out_dir` as
    <name>_<precision>.<format> (fully quantized) and <name>_<precision>_try<i>.<format>, each with its
    manifest; `name` defaults to the model's. `on_trial` receives one line per artifact tried, and one saying what
    equalization did (or why not).
    Bad input raises EdgepressError before anything is written.
    """
    from edgepress.models import training

    source = wrap(model)
    config = parse_config(config, **options)
    try:
        config.check_format(format)
    except ValueError as e:
        raise EdgepressError(f"Accuracy-aware quantization: {e}.") from None
    check_quantizable(source)
    if x_eval is None or y_eval is None or len(x_eval) == 0:
        raise EdgepressError(
            "Accuracy-aware quantization needs evaluation data, inputs and integer labels, to measure accuracy "
            "against the budget, and none was given: pass x_eval and y_eval (recipes use the test split)."
        )
    if len(x_eval) != len(y_eval):
        raise EdgepressError(f"Evaluation data has {len(x_eval)} inputs but {len(y_eval)} labels; they must match.")
    calibration = x_calibration
    if calibration is not None and config.calibration.samples is not None:
        calibration = calibration[: config.calibration.samples]
    say = on_trial or (lambda message: None)

    precision = QUANTIZED_PRECISION[format]
    onnx_options = config.calibration.onnx_options() if format == "onnx" else {}
    out_dir, stem = Path(out_dir), name or source.name
    float_accuracy = training.accuracy(source.predict(x_eval), y_eval)
    trials: list[Trial] = []

    models = {"none": source}  # remedy -> the model its artifacts are exported from
    options = {"none": onnx_options}  # remedy -> the ONNX calibration settings its artifacts use
    # remedy -> the model for a trial with float layers, when it depends on them (a float layer keeps its own bias)
    per_trial: dict[str, Callable[[Sequence[str]], Source]] = {}
    remedy = "none"  # the remedy the float-layer search works on

    def attempt(float_layers: Sequence[str], under: str | None = None) -> Trial:
        """Export with `float_layers` in float under a remedy (default: the search's), once per set and remedy;
        measure accuracy and record the trial."""
        kind = under or remedy
        for t in trials:
            if set(t.float_layers) == set(float_layers) and t.remedy == kind:
                return t
        path = out_dir / artifact_filename(stem, format, precision, trial=len(trials))
        made_by = [*steps, *(["equalize"] if kind.startswith("equalize") else []),
                   *(["bias_correction"] if "bias correction" in kind else [])]
        try:
            model = per_trial[kind](float_layers) if kind in per_trial and float_layers else models[kind]
            artifact = _export(model, format, path, calibration, check_data, made_by, float_layers, options[kind])
        except EdgepressError as e:
            if not trials:
                raise  # the model as given, fully quantized: the user's model and settings
            raise _own_failure(f"exporting {path.name} ({_trial_text(float_layers, kind)})", e) from e
        accuracy = _accuracy(artifact, x_eval, y_eval)
        drop = float_accuracy - accuracy
        trial = Trial(artifact, list(float_layers), accuracy, drop, drop <= config.max_accuracy_drop + _TOLERANCE,
                      kind)
        trials.append(trial)
        kept = _trial_text(float_layers, kind)
        say(f"{artifact.name}: {kept}, accuracy {accuracy:.2%}, drop {_pt(drop)} "
            f"({'meets' if trial.meets_budget else 'misses'} the {_pt(config.max_accuracy_drop)} budget)")
        return trial

    full = attempt([])
    sensitivity = _sensitivity(source, format, full.artifact, calibration, onnx_options)
    notes: list[str] = []
    equalized_details = None
    if not full.meets_budget and config.equalize:
        # The cheaper remedy before any float layer: the same function with its channel ranges evened out.
        equalized, equalized_details, why = _equalized(source, calibration)
        if equalized is None:
            notes.append(f"Cross-layer equalization was not tried: {why}")
            say(f"equalization skipped: {why}")
        else:
            left = _left_text(equalized_details)
            say(f"equalization: {_equalized_text(equalized_details)}"
                + (f"; partial, left as they are: {left}" if left else ""))
            models["equalize"], options["equalize"], remedy = equalized, onnx_options, "equalize"
            balanced = attempt([])
            notes.append(f"Cross-layer equalization of {_equalized_text(equalized_details)}: full int8 "
                         f"accuracy {full.accuracy:.2%} -> {balanced.accuracy:.2%}.")
            if not balanced.meets_budget and balanced.accuracy > full.accuracy:
                # Layers of the equalized model are kept in float from here: rank them by their own errors.
                sensitivity = _sensitivity(equalized, format, balanced.artifact, calibration, onnx_options)
            elif not balanced.meets_budget:
                remedy = "none"  # equalizing did not help: keep layers of the model as given in float
    if format == "onnx" and config.calibration.method is None:
        remedy = _other_calibrations(trials, remedy, models, options, attempt)
    bias_corrected = None
    if config.bias_correction and not any(t.meets_budget for t in trials):
        remedy, bias_corrected = _bias_correction(trials, remedy, models, options, per_trial, attempt, calibration,
                                                  say, notes)
    start = next(t for t in trials if t.remedy == remedy and not t.float_layers)
    candidates = search_candidates(sensitivity)
    if not start.meets_budget:
        limit = min(config.max_float_layers or len(candidates) - 1, len(candidates) - 1)
        if limit < 1:
            notes.append(f"'{source.name}' has {len(candidates)} quantized layer(s); keeping it in float would "
                         "leave nothing int8, so there was nothing to try.")
        else:
            kept = _grow(candidates, limit, config.search, attempt)
            if kept is not None:
                _shrink(kept, attempt)
            else:
                notes.append(f"Even the {limit} most sensitive layer(s) in float miss the budget.")
    passing = [t for t in trials if t.meets_budget]
    if passing:
        # Fewest float layers, then the cheaper remedy (the model as given), then the smaller file.
        chosen = min(passing, key=lambda t: (len(t.float_layers), t.remedy != "none", t.artifact.bytes))
    else:
        chosen = max(trials, key=lambda t: (t.accuracy, -len(t.float_layers), -t.artifact.bytes))
    return QuantizeResult(
        format=format, precision=precision, budget=config.max_accuracy_drop, float_accuracy=float_accuracy,
        eval_samples=len(x_eval), options={"samples": len(calibration), **(onnx_options or _TFLITE_CALIBRATION)},
        sensitivity=sensitivity, trials=trials, chosen=chosen, budget_met=bool(passing), search=config.search,
        notes=notes, equalized=equalized_details, min_int8_macs=config.min_int8_macs, bias_corrected=bias_corrected,
    )


def _other_calibrations(trials: list[Trial], remedy: str, models: dict, options: dict,
                        attempt: Callable[..., Trial]) -> str:
    """While full int8 misses the budget, try the ONNX activation-range methods not tried yet (percentile and
    entropy clip outliers; min-max spans them) on the most accurate model so far; return the remedy to go on with."""
    best = max((t for t in trials if not t.float_layers), key=lambda t: t.accuracy)
    if best.meets_budget:
        return remedy
    base = best.remedy
    for method in ("percentile", "entropy"):
        if method == options[base]["calibration_method"]:
            continue
        name = f"calibration {method}" if base == "none" else f"{base}, calibration {method}"
        models[name], options[name] = models[base], {**options[base], "calibration_method": method}
        trial = attempt([], name)
        if trial.meets_budget:
            return name
        if trial.accuracy > best.accuracy:
            best = trial
    # The float-layer search goes on from the most accurate: the search's own remedy when none beat it.
    return best.remedy if best.accuracy > max(t.accuracy for t in trials if t.remedy == remedy) else remedy


def _bias_correction(trials: list[Trial], remedy: str, models: dict, options: dict, per_trial: dict,
                     attempt: Callable[..., Trial], calibration: np.ndarray, say: Callable[[str], None],
                     notes: list[str]) -> tuple[str, dict]:
    """Try the most accurate fully quantized model so far with its biases corrected for its int8 weights; return the
    remedy the float-layer search goes on with (the corrected one only when its file is more accurate: the
    correction changes the float function, so it must earn its place) and what was done, for results.json.
    A layer the search later keeps in float keeps its own bias (its weights are not quantized: nothing to correct)."""
    from edgepress.compress.equalize import bias_correct_for_quantization

    base = max((t for t in trials if not t.float_layers), key=lambda t: t.accuracy)
    try:
        corrected, layers = bias_correct_for_quantization(models[base.remedy].model, calibration)
    except EdgepressError as e:  # a model the walker cannot follow: say so, go on without it
        say(f"bias correction skipped: {e}")
        notes.append(f"Bias correction was not tried: {e}")
        return remedy, {"applied": False, "layers": [], "why_not": str(e)}
    if not layers:
        why = "no Conv2D, DepthwiseConv2D or Dense layer has a bias (or a BatchNormalization after it) to correct"
        say(f"bias correction skipped: {why}")
        notes.append(f"Bias correction was not tried: {why}.")
        return remedy, {"applied": False, "layers": [], "why_not": why}
    name = "bias correction" if base.remedy == "none" else f"{base.remedy}, bias correction"
    models[name], options[name] = wrap(corrected), options[base.remedy]
    given = models[base.remedy].model
    per_trial[name] = lambda float_layers: wrap(bias_correct_for_quantization(given, calibration, float_layers)[0])
    trial = attempt([], name)
    applied = trial.accuracy > base.accuracy + _TOLERANCE
    outcome = "kept" if applied else "not kept: it did not make the int8 file more accurate"
    say(f"bias correction of {len(layers)} layer(s) ({', '.join(layers)}): full int8 accuracy "
        f"{base.accuracy:.2%} -> {trial.accuracy:.2%}, {outcome}")
    notes.append(f"Bias correction of {', '.join(layers)} (per output channel, on {len(calibration)} calibration "
                 f"samples): full int8 accuracy {base.accuracy:.2%} -> {trial.accuracy:.2%}, {outcome}.")
    details = {"applied": applied, "layers": layers, "on": base.remedy, "artifact": trial.artifact.name,
               "accuracy_before": base.accuracy, "accuracy_after": trial.accuracy}
    return (name if applied else remedy), details


def check_quantizable(source: Source) -> None:
    """Refuse a model accuracy-aware int8 cannot work on: not a Keras model (it keeps chosen Keras layers in float),
    or one with nothing to quantize (no layer has weights)."""
    if source.kind not in KINDS:
        raise EdgepressError(
            f"Accuracy-aware quantization (quantize:) keeps chosen Keras layers in float, and {source.name} is "
            f"{source.title}. Export it with a plain int8 precision instead (tflite int8, onnx int8_static)."
        )
    if not source.model.weights:
        raise EdgepressError(
            f"Model '{source.name}' has no layer with weights (Dense, Conv2D, ...), so int8 quantization has "
            "nothing to quantize and no layer to keep in float. Export it at precision fp32 instead."
        )


def write_sensitivity(run_dir: str | Path, results: Sequence[QuantizeResult]) -> None:
    """Write sensitivity.json and sensitivity.md (one section per quantized export) into `run_dir`."""
    run_dir = Path(run_dir)
    payload = {"schema_version": 1, "exports": [r.to_dict() for r in results]}
    files.write_text(run_dir / "sensitivity.json", json.dumps(payload, indent=2) + "\n")
    text = "# Layer-wise quantization sensitivity\n\n" + "\n".join(r.to_markdown() for r in results)
    files.write_text(run_dir / "sensitivity.md", text)


def _grow(candidates: list[str], limit: int, search: str, attempt: Callable[[Sequence[str]], Trial]):
    """The smallest k <= limit whose k most sensitive layers in float meet the budget, as that layer list."""
    if search == "linear":
        for k in range(1, limit + 1):
            if attempt(candidates[:k]).meets_budget:
                return candidates[:k]
        return None
    # bisect: assume more layers in float never hurts; test the largest set first, then halve.
    if not attempt(candidates[:limit]).meets_budget:
        return None
    low, high = 0, limit  # low fails (0 is the fully quantized model), high meets
    while high - low > 1:
        middle = (low + high) // 2
        if attempt(candidates[:middle]).meets_budget:
            high = middle
        else:
            low = middle
    return candidates[:high]


def _shrink(kept: list[str], attempt: Callable[[Sequence[str]], Trial]) -> list[str]:
    """Put back into int8 each kept layer the budget does not need, least sensitive first, until every layer
    left is needed: putting any one of them back misses the budget (each of those trials is recorded)."""
    kept, changed = list(kept), True
    while changed:
        changed = False
        for layer in reversed(list(kept)):
            rest = [k for k in kept if k != layer]
            # An empty rest is the fully quantized model, already tried (and missing the budget).
            if rest and attempt(rest).meets_budget:
                kept, changed = rest, True
    return kept


def _equalized(source: Source, calibration) -> tuple[Source | None, dict | None, str]:
    """(the model cross-layer equalized, what was done, "") or (None, details or None, why not)."""
    from edgepress.compress.equalize import Equalize, equalize_for_quantization

    if source.kind not in Equalize.kinds:
        return None, None, f"'{source.name}' is {source.title}, whose layers equalize cannot rescale."
    try:
        equalized, details = equalize_for_quantization(source.model, calibration)
    except EdgepressError as e:  # a model the walker cannot follow (subclassed, ...): say so, go on
        return None, None, str(e)
    if not details.found:
        why = "; ".join([f"'{n}' {w}" for n, w in details.left.items()]
                        + [f"the residual stream of '{n}' {w}" for n, w in details.ties.items()])
        return None, details.to_dict(), (f"'{source.name}' has no pair of layers and no residual stream to "
                                         f"equalize ({why or 'no Conv / Dense layer'}).")
    return wrap(equalized), details.to_dict(), ""


def _equalized_text(details: dict) -> str:
    """What equalization did, in a few words: its pairs and residual streams."""
    parts = [f"{first} -> {second}" for first, second in details["pairs"]]
    parts += [f"the residual stream of {', '.join(g['adds'])} ({', '.join(g['holders'])} -> "
              f"{', '.join(g['readers'])})" for g in details.get("groups", [])]
    return ", ".join(parts) or "nothing"


def _left_text(details: dict) -> str:
    """Why the layers and residual streams equalization left as they are were left, or "" (the model's output
    layers, with nothing after them to take a scale, are not a shortfall)."""
    from edgepress.compress.equalize import MODEL_OUTPUT

    return "; ".join([f"'{n}' {w}" for n, w in details["left"].items() if w != MODEL_OUTPUT]
                     + [f"the residual stream of '{n}' {w}" for n, w in details.get("ties", {}).items()])


def _export(source: Source, format, path, calibration, check_data, steps, float_layers, onnx_options) -> Artifact:
    from edgepress.deploy.registry import ExportRequest, export

    return export(ExportRequest(source, path, format, QUANTIZED[format], calibration, check_data, tuple(steps),
                                float_layers=tuple(float_layers), onnx_static=dict(onnx_options or {})))


def _accuracy(artifact: Artifact, x: np.ndarray, y: np.ndarray) -> float:
    from edgepress.compat import quiet
    from edgepress.deploy.runner import open_model
    from edgepress.limits import invoke_limit_s
    from edgepress.models import training

    with quiet():
        outputs = open_model(str(artifact.path), invoke_limit_s=invoke_limit_s()).predict(x)
    return training.accuracy(outputs, y)


def _trial_text(float_layers: Sequence[str], remedy: str) -> str:
    """"full int8" or "2 layer(s) in float (a, b)", and the remedy: what one trial is."""
    kept = f"{len(float_layers)} layer(s) in float ({', '.join(float_layers)})" if float_layers else "full int8"
    return kept + {"none": "", "equalize": ", equalized", "bias correction": ", biases corrected"}.get(
        remedy, f", {remedy}")


def _own_failure(doing: str, error: EdgepressError) -> InternalError:
    """A failure in work edgepress chose itself (a remedy, a layer it picked), which no input of the user's can
    cause: a bug, exit 70 with the traceback saved, never exit 2."""
    return InternalError(f"accuracy-aware int8 failed inside its own search, {doing}: {error}")


def _sensitivity(source: Source, format, full: Artifact, calibration, onnx_options) -> list[LayerSensitivity]:
    """Each layer's error in the fully quantized model, most sensitive first (its failure: edgepress's bug)."""
    try:
        return _layer_sensitivity(source, format, full, calibration, onnx_options)
    except EdgepressError as e:
        raise _own_failure(f"measuring the layer errors of {full.name}", e) from e


def _layer_sensitivity(source: Source, format, full: Artifact, calibration, onnx_options) -> list[LayerSensitivity]:
    from edgepress.deploy.layers import layers_of_type

    if format == "tflite":
        from edgepress.deploy.tflite import layer_errors

        rows = layer_errors(source, calibration)
    else:
        import tempfile

        from edgepress.deploy.onnx import export_onnx, layer_errors

        with tempfile.TemporaryDirectory() as work:
            float_model = export_onnx(source, Path(work) / "float.onnx", "fp32")
            qdq = full.path
            if onnx_options.get("quant_format") != "qdq":
                # The QDQ tools read QDQ pairs; a QOperator model's twin in QDQ form has the same numbers.
                qdq = export_onnx(source, Path(work) / "qdq.onnx", "int8_static", calibration,
                                  **{**onnx_options, "quant_format": "qdq"}).path
            rows = layer_errors(source, float_model.path, qdq, calibration)
    normalizing = layers_of_type(source.model, "LayerNormalization")
    by_layer: dict[str, LayerSensitivity] = {}

    def add(key: str, row: dict, is_layer: bool, output: str | None) -> None:
        entry = by_layer.setdefault(key, LayerSensitivity(key, 0.0, 0.0, 0.0, 0.0, [], is_layer, output))
        entry.nodes.append(row["node"])
        if row["error"] >= entry.error:  # a layer is as sensitive as its worst op
            entry.error, entry.relative_error, entry.rmse = row["error"], row["relative_error"], row["rmse"]
        entry.max_abs_error = max(entry.max_abs_error, row["max_abs_error"])

    for row in rows:
        layer = row["layer"]
        add(layer or row["node"], row, layer is not None, "layernorm" if layer in normalizing else None)
        output = OUTPUT_OPS.get(row.get("op") or "")
        if output and layer is not None and layer not in normalizing:
            # The op on its own, by the name float_layers takes for it (TFLite: its output tensor; ONNX: the node).
            add(row.get("op_node") or row["node"], row, False, output)
    return sorted(by_layer.values(), key=lambda s: s.error, reverse=True)


# Ops whose outputs are tried in float before whole layers (TFLite builtins, ONNX op types): int8 softmax and GELU
# are lookup tables over a coarse input grid, and their outputs feed matmuls.
OUTPUT_OPS = {"SOFTMAX": "softmax", "GELU": "gelu", "Softmax": "softmax", "Gelu": "gelu", "FastGelu": "gelu",
              "Erf": "gelu"}


def search_candidates(sensitivity: Sequence[LayerSensitivity]) -> list[str]:
    """What the search keeps in float, in order: the LayerNorm, softmax and GELU outputs (most sensitive first), then
    the other layers (most sensitive first); only those int8 changes at all."""
    outputs = [s.layer for s in sensitivity if s.output and s.error > 0]
    return outputs + [s.layer for s in sensitivity if s.is_layer and not s.output and s.error > 0]


def _finite(value):
    """`value`, or None for an infinite or NaN float (JSON has no Infinity; an all-zero float output has no scale)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _pt(fraction: float) -> str:
    return f"{fraction * 100:.2f} pt"


def _layers_text(layers: Sequence[str], errors: dict[str, float]) -> str:
    return ", ".join(f"{layer} (error {errors[layer]:.3g})" if layer in errors else layer for layer in layers)


def _options_text(options: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in options.items())
