"""A trial whose choices the plan refuses is `refused`, not `failed`: the study is told it as infeasible (as a
hopeless trial is), so the sampler keeps away from those choices instead of asking for them again."""

from __future__ import annotations

from edgepress.tune.execute import run_trial
from tests.tune.test_tune import tiny_recipe


def _recipe(steps: list[dict]) -> dict:
    raw = tiny_recipe(1, targets=["x86-host"])
    del raw["tune"]
    raw["model"]["train_epochs"] = 1
    return {**raw, "steps": steps, "exports": [{"format": "tflite", "precision": "fp32"}]}


def test_choices_the_plan_refuses_make_a_refused_trial_and_nothing_is_written(tmp_path):
    # A layer the model does not have: refused while planning, before the run directory exists.
    result = run_trial(_recipe([{"type": "structured_prune", "ratio": 0.5, "layers": {"no_such_layer": 0.5}}]),
                       str(tmp_path / "t000"))
    assert result["status"] == "refused" and "no_such_layer" in result["reason"], result
    assert not (tmp_path / "t000").exists()


def test_a_recipe_that_is_not_valid_is_a_failed_trial(tmp_path):
    # Not the plan's refusal of a choice but a recipe the schema rejects (the tune wrote it wrong): failed.
    result = run_trial(_recipe([{"type": "structured_prune", "ratio": "half"}]), str(tmp_path / "t001"))
    assert result["status"] == "failed", result
