"""The search space: from the model's recipe and each device profile to a trial's plain recipe.

A trial chooses a structured_prune ratio (0: none, the post-training candidates), its fine-tune epochs, whether
to recover with distillation from the source, and a channel multiple to round to (once structured_prune has
`round_to` and a device profile names a `channel_multiple`). Every trial exports its model in every precision
its devices support, accuracy-aware int8 included: training is what a trial costs, an export a few seconds, and
a sampler that had to find the right precision as one more choice spent its trials on slow ones (an int16x8
that fits the size budget, 6x slower than int8, held a TPE search on the seed CNN for most of 20 minutes).
A precision that turns out slower than its format's fp32 on a device in every trial so far (`losing_exports`) is
no longer exported for that device.

An attention model (a Keras model with LayerNormalization or MultiHeadAttention layers, asked the way a `float_ops`
export asks) also gets TFLite int8 with those ops in float (`float_ops`), at a dynamic batch and at a fixed batch of 1
(`tflite:int8-float-ops`, `tflite:int8-float-ops-b1`; tune.space.float_ops: false leaves them out): XNNPACK has no
int8 LayerNorm, softmax or activation-by-activation matmul, so plain int8 runs them on LiteRT's builtin kernels. On
the small ViT of benchmarks/transformers.py plain int8 was 0.37x fp32's speed, int8 with them float 1.27x and, at
batch 1, 1.57x. Both are exported in every trial and the pick takes whichever is faster (a file with a fixed batch of
1 serves one sample at a time, which is what the tune measures).

`recipe_for` turns those choices into a plain recipe dict that `edgepress run` runs as it is: the tune depends on
the recipe schema, not on the run's internals.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

from edgepress.specs.tune import TuneSpec

AWARE = "int8-aware"  # a choice's precision part for accuracy-aware int8 (exports[].quantize)
_AWARE_FORMATS = {"tflite": "int8", "onnx": "int8_static"}  # the plain precision accuracy-aware int8 starts from
# The choices of TFLite int8 with the model's attention / LayerNorm ops in float (exports[].float_ops), at a dynamic
# batch and at a fixed batch of 1, by their batch size.
FLOAT_OPS_CHOICES = {"tflite:int8-float-ops": None, "tflite:int8-float-ops-b1": 1}


def export_choices(device, space_precisions: list[str] | None, accuracy_aware: bool,
                   float_ops: list[str] | None = None) -> list[str]:
    """The exports a trial may pick for `device`, as 'format:precision' strings, in the profile's order; with
    `float_ops` (the kinds of ops the model has that an int8 file can keep float), TFLite int8 with them float too,
    where the device runs TFLite int8."""
    if space_precisions is not None:
        return [c for c in space_precisions if device.runs(c.split(":")[0])]
    choices = [f"{c.format}:{c.precision}" for c in device.precisions if device.runs(c.format)]
    if accuracy_aware:
        choices += [f"{f}:{AWARE}" for f, p in _AWARE_FORMATS.items() if f"{f}:{p}" in choices]
    if float_ops and "tflite:int8" in choices:
        choices += list(FLOAT_OPS_CHOICES)
    return choices


def round_to_choices(devices: list, spec: TuneSpec) -> list[int]:
    """Channel multiples to try: 1 (no rounding) and each device's `channel_multiple`, when structured_prune can
    round (its config has `round_to`); [] when it cannot, so the parameter is left out of the space."""
    from edgepress.compress.structured_prune import StructuredPruneConfig

    if "round_to" not in StructuredPruneConfig.model_fields:
        return []
    if spec.space.round_to is not None:
        return sorted(set(spec.space.round_to))
    multiples = {getattr(d, "channel_multiple", None) for d in devices} - {None, 0, 1}
    return sorted({1, *multiples}) if multiples else []


# A decoder LM's weight-only exports by weight bits (format, precision): onnxruntime has int4 MatMulNBits for a
# decoder and no int8 weight-only kernel, so an 8-bit trial is TFLite only.
LM_PRECISIONS = {8: [("tflite", "int8_weight")], 4: [("tflite", "int4_weight"), ("onnx", "int4_weight")]}


def lm_export_choices(device, bits: list[int]) -> list[str]:
    """The weight-only exports of a decoder LM `device` runs, as 'format:precision' strings."""
    return [f"{f}:{p}" for b in bits for f, p in LM_PRECISIONS[b] if device.runs(f)]


@dataclass
class Space:
    """The choices of one tune, fixed when the study is made (Optuna needs the same choices for every trial)."""

    ratio: tuple[float, float]
    ratio_step: float
    epochs: list[int]
    distill: list[bool]
    round_to: list[int]
    exports: dict[str, list[str]]  # device name -> its export choices
    aware_drop: float
    hopeless_margin: float | None = None
    guidance: list[float] = field(default_factory=lambda: [0.0])
    sensitivity: dict | None = None  # set once measured (tune/sensitivity.py)
    lm: dict | None = None  # a decoder LM's choices: weight_bits, block_size, cache_len, student (else None)
    float_ops: list[str] = field(default_factory=list)  # the kinds of ops FLOAT_OPS_CHOICES keep float

    @classmethod
    def of(cls, spec: TuneSpec, devices: list, max_accuracy_drop: float | None, lm_cache: int | None = None,
           float_ops: list[str] | None = None) -> Space:
        """The space of a tune; `lm_cache`, the recipe's lm.cache_len, makes it a decoder LM's (`lm_suggest`);
        `float_ops`, the kinds of ops of deploy.layers.FLOAT_OPS the model has layers of (FLOAT_OPS_CHOICES)."""
        from edgepress.errors import EdgepressError

        if lm_cache is not None:
            return cls.of_lm(spec, devices, lm_cache)
        kinds = list(float_ops or []) if spec.space.float_ops else []
        listed = [c for c in spec.space.precisions or [] if c in FLOAT_OPS_CHOICES]
        if listed and not float_ops:
            raise EdgepressError(f"tune.space.precisions lists {', '.join(listed)}, which keeps a model's LayerNorm "
                                 "and attention ops float in an int8 file, and this model has no LayerNormalization "
                                 "or MultiHeadAttention layer (or is not a Keras model): remove it.")
        exports = {d.name: export_choices(d, spec.space.precisions, spec.space.accuracy_aware, kinds)
                   for d in devices}
        empty = [name for name, choices in exports.items() if not choices]
        if empty:
            raise EdgepressError(f"No export to try on {', '.join(empty)}: tune.space.precisions has none of the "
                                 "formats these devices run; add one (e.g. tflite:fp32) or remove the list.")
        aware = spec.aware_drop if spec.aware_drop is not None else (
            max_accuracy_drop / 2 if max_accuracy_drop is not None else 0.01)
        return cls(tuple(spec.space.ratio), spec.space.ratio_step, sorted(set(spec.space.fine_tune_epochs)),
                   list(dict.fromkeys(spec.space.distill)), round_to_choices(devices, spec), exports, aware,
                   spec.hopeless_margin, sorted(set(spec.space.layer_guidance)),
                   float_ops=list(float_ops or []) if (kinds or listed) else [])

    @classmethod
    def of_lm(cls, spec: TuneSpec, devices: list, cache_len: int) -> Space:
        """A decoder LM's space: a structured_prune ratio of its heads and MLP units (with its fine-tune epochs and
        channel multiple), distillation or not, weight bits, int4 block size, cache length. The ratio range is
        fitted to the decoder once its heads are known (`fit_decoder_ratio`)."""
        from edgepress.errors import EdgepressError

        space = spec.space
        bits = sorted(set(space.weight_bits), reverse=True)
        exports = {d.name: lm_export_choices(d, bits) for d in devices}
        empty = [name for name, choices in exports.items() if not choices]
        if empty:
            raise EdgepressError(f"No weight-only export of a decoder LM runs on {', '.join(empty)} with "
                                 f"tune.space.weight_bits {bits}: 8 bits is TFLite only; add 4 or a TFLite device.")
        lm = {"weight_bits": bits, "block_size": space.block_size if 4 in bits else [None],
              "cache_len": sorted(set(space.cache_len or [cache_len])), "student": space.student}
        return cls(tuple(space.ratio), space.ratio_step, sorted(set(space.fine_tune_epochs)),
                   list(dict.fromkeys(space.distill)), round_to_choices(devices, spec), exports, 0.0, None, [0.0],
                   lm=lm)

    def fit_decoder_ratio(self, model, given: bool) -> str | None:
        """Fit the ratio range to the decoder `model` (a ratio above the highest it takes removes every head or MLP
        unit of its blocks): a range the recipe gave (`given`) that goes past it is refused, naming the limit; the
        default range is narrowed to it. Returns a line saying so, or None when the range fits."""
        from edgepress.compress.structured_prune import decoder_highest_ratio
        from edgepress.errors import EdgepressError

        low, high = self.ratio
        highest, has = decoder_highest_ratio(model)
        if high <= highest:
            return None
        if given:
            fix = (f"give tune.space.ratio [{min(low, highest):g}, {highest:g}]" if highest > 0 else
                   "it cannot be pruned: give tune.space.ratio [0, 0] (the tune then searches the other choices)")
            raise EdgepressError(f"tune.space.ratio [{low:g}, {high:g}] goes past what this decoder can lose: each "
                                 f"of its blocks has {has}, and a ratio above {highest:g} removes all of one of "
                                 f"them; {fix}.")
        steps = math.floor((highest - low) / self.ratio_step + 1e-9)  # the range stays whole steps from `low`
        self.ratio = (low, round(low + steps * self.ratio_step, 6))
        if self.ratio[1] <= 0:
            self.ratio = (0.0, 0.0)
            return f"the decoder has {has} per block, too few to prune: the tune does not prune it"
        return (f"the decoder has {has} per block: the tune prunes it at ratios up to {self.ratio[1]:g} (above "
                f"{highest:g} a block would lose all of one)")

    def to_dict(self) -> dict:
        if self.lm is not None:
            return {"lm": {k: v for k, v in self.lm.items()}, "ratio": list(self.ratio), "ratio_step": self.ratio_step,
                    "fine_tune_epochs": self.epochs, "round_to": self.round_to, "distill": self.distill,
                    "exports": self.exports}
        return {"ratio": list(self.ratio), "ratio_step": self.ratio_step, "fine_tune_epochs": self.epochs,
                "distill": self.distill, "round_to": self.round_to, "exports": self.exports,
                "aware_drop": self.aware_drop, "layer_guidance": self.guidance if self.guided() else [0.0],
                **({"float_ops": self.float_ops} if self.float_ops else {})}

    def guided(self) -> bool:
        """True when per-layer ratios are part of the space: a measured sensitivity that tells layers apart."""
        return any(self.guidance) and len((self.sensitivity or {}).get("groups") or []) >= 2

    def steps(self, params: dict) -> list[dict]:
        """The compression steps of a trial's choices (per-layer ratios from the measured sensitivity)."""
        if self.lm is not None:
            return lm_steps(params, self.lm["student"])
        return steps_for(params, self.sensitivity)

    def lm_exports(self, params: dict, devices: list[str] | None = None) -> list[dict]:
        """A decoder LM trial's exports: its weight bits (and int4 block size) in every format its devices run."""
        chosen = {c for d, cs in self.exports.items() if devices is None or d in devices for c in cs}
        exports = []
        for fmt, precision in LM_PRECISIONS[params["weight_bits"]]:
            if f"{fmt}:{precision}" in chosen:
                block = params.get("block_size")
                exports.append({"format": fmt, "precision": precision, **({"block_size": block} if block else {})})
        return exports

    def suggest(self, trial) -> dict:
        """The trial's choices, asked of Optuna (define-by-run: epochs and distillation only with pruning; a block
        size only with 4-bit weights; a decoder LM's distillation with or without pruning)."""
        if self.lm is not None:
            params = {}
            if self.ratio != (0.0, 0.0):  # a space without pruning asks what it asked before pruning was in it
                low, high = self.ratio
                ratio = low if low == high else trial.suggest_float("ratio", low, high, step=self.ratio_step)
                params["ratio"] = round(ratio, 6)
                if ratio > 0:
                    params["fine_tune_epochs"] = _categorical(trial, "fine_tune_epochs", self.epochs)
                    if self.round_to:
                        params["round_to"] = _categorical(trial, "round_to", self.round_to)
            params.update(distill=_categorical(trial, "distill", self.distill),
                          weight_bits=_categorical(trial, "weight_bits", self.lm["weight_bits"]))
            if params["weight_bits"] == 4:
                params["block_size"] = _categorical(trial, "block_size", self.lm["block_size"])
            params["cache_len"] = _categorical(trial, "cache_len", self.lm["cache_len"])
            return params
        low, high = self.ratio
        ratio = low if low == high else trial.suggest_float("ratio", low, high, step=self.ratio_step)
        params = {"ratio": round(ratio, 6)}
        if ratio > 0:
            params["fine_tune_epochs"] = _categorical(trial, "fine_tune_epochs", self.epochs)
            params["distill"] = _categorical(trial, "distill", self.distill)
            if self.round_to:
                params["round_to"] = _categorical(trial, "round_to", self.round_to)
            if self.guided():
                params["layer_guidance"] = _categorical(trial, "layer_guidance", self.guidance)
        return params


def _categorical(trial, name: str, choices: list):
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, choices)


# How a tune ranks a decoder's heads and MLP units: taylor, measured on the training windows, kept a pruned char_gpt
# (width 64, ratio 0.5) at perplexity 15.72 before fine-tuning where l1 gave 16.18, and 14.31 vs 14.42 after an epoch.
LM_PRUNE_CRITERION = "taylor"


def lm_steps(params: dict, student: dict) -> list[dict]:
    """A decoder LM trial's steps: lm_distill into the `student` when it distills; then, with a ratio, structured_prune
    of the heads and MLP units of that model (the source or the student), fine-tuned for the trial's epochs, by logit
    distillation from the unpruned model when the trial distills."""
    steps = [{"type": "lm_distill", **student}] if params.get("distill") else []
    if params.get("ratio"):
        prune = {"type": "structured_prune", "ratio": params["ratio"], "criterion": LM_PRUNE_CRITERION,
                 "fine_tune_epochs": params["fine_tune_epochs"], "distill": bool(params.get("distill"))}
        if params.get("round_to", 1) != 1:
            prune["round_to"] = params["round_to"]
        steps.append(prune)
    return steps


def steps_for(params: dict, sensitivity: dict | None = None) -> list[dict]:
    """The compression steps of a trial's choices; with `layer_guidance` and a measured sensitivity, each layer
    group gets its own ratio around the global one."""
    from edgepress.tune.sensitivity import guided_ratios

    if not params.get("ratio"):
        return []
    prune = {"type": "structured_prune", "ratio": params["ratio"], "fine_tune_epochs": params["fine_tune_epochs"]}
    layers = guided_ratios(params["ratio"], params.get("layer_guidance", 0.0), sensitivity)
    if layers:
        prune["layers"] = layers
    if params.get("round_to", 1) != 1:
        prune["round_to"] = params["round_to"]
    steps = [prune]
    if params.get("distill"):
        steps.append({"type": "distill", "teacher": "source", "epochs": params["fine_tune_epochs"]})
    return steps


def losing_exports(trial_rows: list[list[dict]], devices: list[str], at_least: int = 2) -> dict[str, dict[str, str]]:
    """Per device, the export choices slower than their format's fp32 beyond the noise (p50 intervals apart) in
    every trial that measured both, `at_least` trials of them: a tune stops exporting those for that device (the
    trials' reports say per op why they lose). `trial_rows`: each completed trial's report rows. fp32 itself, sparse
    and accuracy-aware rows are never dropped."""
    from edgepress.stats import faster

    tallies: dict[tuple[str, str], list[int]] = {}
    for rows in trial_rows:
        for device in devices:
            mine = [r for r in rows if r["device"] == device]
            fp32 = {r["format"]: r for r in mine if r["precision"] == "fp32"
                    and not (r.get("quantization") or {}).get("sparse")}
            for row in mine:
                base = fp32.get(row["format"])
                if base is None or row is base or row.get("accuracy_aware") or row["precision"] == "fp32":
                    continue
                tally = tallies.setdefault((device, choice_of_row(row)), [0, 0])
                tally[0] += 1
                tally[1] += faster(base, row)
    losing: dict[str, dict[str, str]] = {}
    for (device, choice), (measured, lost) in tallies.items():
        if measured >= at_least and lost == measured:
            fmt = choice.split(":")[0]
            losing.setdefault(device, {})[choice] = f"slower than {fmt} fp32 beyond the noise in all {measured} trials"
    return losing


def export_for(choice: str, aware_drop: float, float_ops: list[str] | None = None) -> dict:
    """The recipe export of a 'format:precision' choice (`float_ops`: the kinds a FLOAT_OPS_CHOICES one keeps
    float)."""
    fmt, precision = choice.split(":", 1)
    if precision == AWARE:
        return {"format": fmt, "quantize": {"precision": "int8", "max_accuracy_drop": aware_drop}}
    if choice in FLOAT_OPS_CHOICES:
        batch = FLOAT_OPS_CHOICES[choice]
        return {"format": fmt, "precision": "int8", "float_ops": list(float_ops or []),
                **({"batch_size": batch} if batch else {})}
    return {"format": fmt, "precision": precision}


def exports_for(choices: dict[str, list[str]], aware_drop: float, devices: list[str] | None = None,
                float_ops: list[str] | None = None) -> list[dict]:
    """Every export choice of every device (of `devices` only, when given) once. An accuracy-aware int8 export
    writes the fully quantized artifact first, under the plain int8 file name, so it stands for plain int8 too."""
    chosen = list(dict.fromkeys(c for d, cs in choices.items() if devices is None or d in devices for c in cs))
    covered = {f"{c.split(':')[0]}:{_AWARE_FORMATS[c.split(':')[0]]}" for c in chosen if c.endswith(f":{AWARE}")}
    return [export_for(c, aware_drop, float_ops) for c in chosen if c not in covered]


def choice_of_row(row: dict) -> str:
    """The export choice that made the artifact of a trial's report row: its 'format:precision', or a
    FLOAT_OPS_CHOICES one for an int8 file with float ops (`float_ops`, kept from its manifest by run_trial), told
    apart by the batch in its file name (formats.artifact_filename)."""
    from edgepress.formats import artifact_filename

    kinds = row.get("float_ops")
    if not kinds:
        return f"{row['format']}:{row['precision']}"
    return next(c for c, batch in sorted(FLOAT_OPS_CHOICES.items(), key=lambda item: item[1] is None)
                if batch is None or row["name"].endswith(artifact_filename("", row["format"], "int8", batch,
                                                                           float_ops=kinds)))


def export_of_row(row: dict, aware_drop: float) -> dict:
    """The recipe export that makes the artifact of a report row (an accuracy-aware int8 one re-runs its search,
    which is deterministic, so it ends at the same artifact)."""
    aware = row.get("accuracy_aware")
    if aware and aware["role"] == "final" and row.get("float_layers"):
        return export_for(f"{row['format']}:{AWARE}", aware_drop)
    if row.get("float_ops"):
        return export_for(choice_of_row(row), aware_drop, row["float_ops"])
    return {"format": row["format"], "precision": row["precision"]}


def recipe_for(base: dict, name: str, steps: list[dict], exports: list[dict], targets: list[dict],
               params: dict | None = None) -> dict:
    """A plain recipe (dict): the base recipe's model, data, measure and gates with these steps, exports, targets
    (and a decoder LM trial's cache length, from its `params`)."""
    recipe = {"name": name, **base, "steps": steps, "exports": exports, "targets": targets}
    if params and params.get("cache_len") and recipe.get("lm") is not None:
        recipe["lm"] = {**recipe["lm"], "cache_len": params["cache_len"]}
    return recipe


def key_of(recipe: dict) -> str:
    """The cache key of a trial: what makes its artifacts (steps, exports, a decoder's cache), not its name."""
    made_of = [recipe["steps"], recipe["exports"]] + ([recipe["lm"]] if recipe.get("lm") else [])
    return hashlib.sha256(json.dumps(made_of, sort_keys=True).encode()).hexdigest()
