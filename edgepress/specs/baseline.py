"""`BaselineSpec`: gates.baseline, a previous run's results.json and how far a run may fall behind it.

Pure schema (pydantic only); `edgepress.compare` does the comparison.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field, field_validator

from edgepress.specs.section import Section


def _fraction(value, name: str, points: bool = False):
    """0.1 or '10%' -> 0.1; for points, also '0.2 pt' -> 0.002 (accuracy is a fraction, a point is 1%). A limit is
    0 or more and finite (a negative one would call every run a regression)."""
    example = "0.002 or '0.2 pt'" if points else "0.1 or '10%'"
    given = value
    if isinstance(value, str):
        text = value.strip().lower()
        for unit in (("pt", "%") if points else ("%",)):
            if text.endswith(unit):
                try:
                    value = float(text[: -len(unit)]) / 100
                except ValueError:
                    pass
                break
        if isinstance(value, str):
            raise ValueError(f"{name} must be a fraction or a percentage ({example}), got {given!r}")
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a fraction or a percentage ({example}), got {given!r}")
    if not 0 <= float(value) < float("inf"):
        raise ValueError(f"{name} must be 0 or more (and finite), got {given!r}")
    return value


class BaselineSpec(Section):
    """gates.baseline: a previous run's results.json and how far this run may fall behind it."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="A previous run's results.json (relative to the recipe's folder).")
    max_p50_regression: float = Field(
        0.10, description="Largest p50 slow-down, relative (0.1 or '10%'); counts only when significant."
    )
    max_accuracy_regression: float = Field(0.002, description="Largest accuracy drop, in points (0.002 or '0.2 pt').")
    max_bytes_regression: float = Field(0.05, description="Largest growth of the file, relative (0.05 or '5%').")
    retime: bool = Field(
        True, description="Time the baseline's artifacts again, interleaved with this run's, and compare those "
        "p50s (needs the baseline's run directory with its artifacts); false: compare the stored p50s."
    )

    @field_validator("max_p50_regression", "max_bytes_regression", mode="before")
    @classmethod
    def _relative(cls, value, info):
        return _fraction(value, info.field_name)

    @field_validator("max_accuracy_regression", mode="before")
    @classmethod
    def _points(cls, value, info):
        return _fraction(value, info.field_name, points=True)
