"""`MeasureSpec`: the recipe's measure: section, how each artifact is timed on each target.

Pure schema; `edgepress.deploy.measure` and `edgepress.compare` take it as an argument.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field, field_validator, model_validator

from edgepress.specs.section import Section
from edgepress.values import MAX_RUNS, MAX_THREADS, fraction


class MeasureSpec(Section):
    """How each artifact is timed on each target (batch 1)."""

    model_config = ConfigDict(extra="forbid")

    runs: int = Field(100, ge=1, le=MAX_RUNS,
                      description="Timed runs after warm-up, at least (spread over interleaved rounds).")
    warmup: int = Field(10, ge=0, le=MAX_RUNS)
    threads: int | None = Field(None, ge=1, le=MAX_THREADS,
                                description="Threads on every target; default: each device's own.")
    # Adaptive runs (edgepress/deploy/runner.py, time_interleaved): more rounds until the interval is narrow enough.
    max_runs: int | None = Field(None, ge=1, le=MAX_RUNS,
                                 description="Timed runs at most per artifact; default: 2000 (or runs).")
    target_ci_width: float | None = Field(
        0.05, gt=0, description="Add runs until the 95% interval of the p50 is at most this fraction of the p50 "
        "(0.05 or '5%'); null: exactly `runs` runs."
    )
    max_seconds: float = Field(10, gt=0, le=86_400,
                               description="Stop adding runs after this many seconds of timing per target.")
    profile: bool = Field(
        True, description="Also time every artifact op by op on every target (`runs` runs each; the report's "
        "'Where the time goes'): the ops that take the time, on which delegate or execution provider. false: skip it."
    )

    @field_validator("target_ci_width", mode="before")
    @classmethod
    def _width(cls, value):
        return fraction(value)

    @model_validator(mode="after")
    def _run_range(self) -> MeasureSpec:
        if self.max_runs is not None and self.max_runs < self.runs:
            raise ValueError(f"max_runs ({self.max_runs}) must be at least runs ({self.runs})")
        return self

    @property
    def run_cap(self) -> int:
        """max_runs, or its default: 2000, or `runs` when that is more."""
        return self.max_runs if self.max_runs is not None else max(2000, self.runs)
