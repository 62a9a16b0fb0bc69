"""`TuneSpec`: the `tune:` section of a recipe (how many trials, how long, which search space).

The budgets are the recipe's `gates` (max_accuracy_drop, max_p50_ms, max_bytes): a tune looks for the fastest
artifact per device that meets them. Pure schema: pydantic only, no TensorFlow or Optuna import.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from edgepress.specs.section import Section

_UNITS = {"s": 1, "m": 60, "h": 3600}
DEFAULT_TRIALS = 20
# The trial count a time budget stands for when no count is given: the budget, not a count, ends such a tune.
MAX_TRIALS = 10_000


def parse_duration(value) -> float | None:
    """Seconds from 90, '90s', '30m' or '1.5h' (None stays None)."""
    if value is None or isinstance(value, int | float):
        return None if value is None else float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(value))
    if not match:
        raise ValueError(f"'{value}' is not a duration: give seconds (90) or a number with s, m or h (30m, 1.5h)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


class SpaceSpec(Section):
    """What a trial may choose. Each device's precisions come from its profile unless `precisions` lists some."""

    model_config = ConfigDict(extra="forbid")

    ratio: tuple[float, float] = Field(
        (0.0, 0.9), description="structured_prune ratio range (0 = no structured pruning: post-training only); "
        "for a decoder LM, of its heads and MLP units (the default range narrowed to what the decoder takes)."
    )
    ratio_step: float = Field(0.05, gt=0, le=0.5)
    fine_tune_epochs: list[int] = Field([1, 2, 4, 8, 12], min_length=1, description="Epochs after pruning.")
    distill: list[bool] = Field(
        [False, True], min_length=1,
        description="Recover from the source with `distill: {teacher: source}` after pruning (its epochs are the "
        "trial's fine_tune_epochs, so distillation doubles a trial's training).",
    )
    layer_guidance: list[float] = Field(
        [0.0, 0.5, 1.0], min_length=1, description="How far each layer group's ratio moves from the global one by "
        "its measured sensitivity (0: one ratio everywhere; 1: up to the ratio itself, less where pruning hurts more)."
    )
    round_to: list[int] | None = Field(
        None, description="Channel multiples to round pruned layers to; default: 1 and each device's "
        "channel_multiple (only once structured_prune has round_to).",
    )
    precisions: list[str] | None = Field(
        None, description="Exports to choose from, as 'format:precision' (e.g. tflite:int8); default: each device's "
        "profile precisions. 'tflite:int8-aware' / 'onnx:int8-aware' is accuracy-aware int8.",
    )
    accuracy_aware: bool = Field(True, description="Add accuracy-aware int8 to each device's precisions.")
    float_ops: bool = Field(
        True, description="For a Keras model with LayerNormalization or MultiHeadAttention layers, add TFLite int8 "
        "with those ops in float (exports[].float_ops) to each device that runs TFLite int8, at a dynamic batch and "
        "at a fixed batch of 1 (tflite:int8-float-ops, tflite:int8-float-ops-b1): XNNPACK has no int8 kernel for "
        "them, and on a small ViT these were the fastest int8 files.")
    # A decoder language model (a recipe with an lm: section) is searched over these too, beside the ratio of heads
    # and MLP units to prune and its fine-tune epochs: perplexity is its accuracy objective (lower is better) and
    # decode tokens/s its latency (higher is better).
    weight_bits: list[Literal[8, 4]] = Field(
        [8, 4], min_length=1, description="Decoder LMs: weight bits of the exports (tflite int8_weight; tflite and "
        "onnx int4_weight).")
    block_size: list[int | None] = Field(
        [None, 32, 128], min_length=1, description="Decoder LMs, int4: weights in blocks of this many along the "
        "input (null: one scale per output channel on TFLite, onnx's default block of 32).")
    cache_len: list[int] | None = Field(
        None, description="Decoder LMs: KV cache lengths to try; default: the recipe's lm.cache_len only.")
    student: dict[str, Any] = Field(
        default_factory=dict, description="Decoder LMs: the lm_distill options of a distilled trial's student "
        "(width, layers, heads, epochs, ...; default: lm_distill's own).")

    @model_validator(mode="after")
    def _ratio_range(self) -> SpaceSpec:
        low, high = self.ratio
        if not 0 <= low <= high < 1:
            raise ValueError(f"ratio must be [low, high] with 0 <= low <= high < 1, not {list(self.ratio)}")
        return self

    @field_validator("fine_tune_epochs", "round_to")
    @classmethod
    def _positive(cls, value: list[int] | None, info) -> list[int] | None:
        if value is not None and any(e < 1 for e in value):
            raise ValueError(f"every {info.field_name} choice must be at least 1")
        return value

    @field_validator("cache_len")
    @classmethod
    def _cache(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or any(c < 2 for c in value)):
            raise ValueError("cache_len choices must be a non-empty list of lengths of at least 2 tokens")
        return value

    @field_validator("block_size")
    @classmethod
    def _blocks(cls, value: list[int | None]) -> list[int | None]:
        from edgepress.formats import PRECISIONS

        sizes = sorted(set(PRECISIONS["tflite"]["int4_weight"].block_sizes)
                       & set(PRECISIONS["onnx"]["int4_weight"].block_sizes))
        wrong = [b for b in value if b is not None and b not in sizes]
        if wrong:
            raise ValueError(f"block_size {wrong[0]} is not one both TFLite and ONNX int4 take: use null or one of "
                             f"{', '.join(map(str, sizes))}")
        return list(dict.fromkeys(value))

    @field_validator("student")
    @classmethod
    def _student(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "type" in value and value["type"] != "lm_distill":
            raise ValueError("student holds lm_distill's options; leave out `type`")
        return {k: v for k, v in value.items() if k != "type"}

    @field_validator("layer_guidance")
    @classmethod
    def _guidance(cls, value: list[float]) -> list[float]:
        if any(not 0 <= g <= 1 for g in value):
            raise ValueError("every layer_guidance choice must be between 0 and 1")
        return value


class TuneSpec(Section):
    """A search for the fastest artifact per device within the recipe's gates (`edgepress tune`)."""

    model_config = ConfigDict(extra="forbid")

    trials: int = Field(DEFAULT_TRIALS, ge=1, le=MAX_TRIALS, description="Finished trials the study should hold (a "
                        f"resumed tune counts the ones it has; raise it to extend a finished tune). Default "
                        f"{DEFAULT_TRIALS}, or with a time_budget as many as fit in it (up to {MAX_TRIALS}).")
    time_budget: float | None = Field(
        None, gt=0, description="Wall-time limit of this invocation, seconds or '30m': no trial starts after it "
        "(a trial under way finishes)."
    )
    sampler: Literal["tpe", "nsga2"] = Field("tpe", description="Optuna multi-objective sampler (TPE's random "
                                             "start: a third of the trials that fit, 2 to 10).")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    parallel: int | None = Field(
        None, ge=1, description="Trials at once; default 1 locally (latency is measured on this machine), the "
        "cluster's CPUs with Ray."
    )
    # One epoch after heavy pruning says little: on the seed CNN, 70-80% of the channels removed scored 82-86%
    # after one epoch and 97.7-98.2% after eight, so the margin is wide. Some models recover later still
    # (MobileNetV2 on MNIST: 17-32% after one epoch at ratios 0.5-0.85): for them, null.
    hopeless_margin: float | None = Field(
        0.25, ge=0, le=1, description="Stop a trial whose accuracy after one fine-tune epoch is more than this "
        "below the accuracy budget (a fraction); null: never stop a trial early.",
    )
    aware_drop: float | None = Field(
        None, ge=0, le=1, description="Accuracy-aware int8's budget from the float model it quantizes; default: "
        "half of gates.max_accuracy_drop (1% without one).",
    )
    validation_size: int | None = Field(
        None, ge=1, description="Hold out this many samples from the end of the training data: trials neither train "
        "nor calibrate on them, and are scored and judged against the budgets on them (the source model too), not on "
        "the test split; the pick is then measured once on the test split (tune.json best[device].test_accuracy). "
        "Default: none (trials are judged on the test split, which then also selected the pick).")
    space: SpaceSpec = Field(default_factory=SpaceSpec)

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, value):
        return parse_duration(value)

    @model_validator(mode="after")
    def _budget_lifts_the_trial_count(self) -> TuneSpec:
        # A time budget without a trial count: the tune runs trials until the budget is spent (the default count,
        # 20, stopped a 15-minute tune with a third of its time left).
        if self.time_budget is not None and "trials" not in self.model_fields_set:
            self.trials = MAX_TRIALS
        return self
