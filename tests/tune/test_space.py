"""The search space from device profiles and the tune: section of a recipe (no TensorFlow work)."""

from types import SimpleNamespace

import pytest

from edgepress.devices import load_device
from edgepress.errors import EdgepressError
from edgepress.recipe import Recipe
from edgepress.specs.tune import TuneSpec
from edgepress.tune.space import Space, export_choices, exports_for, key_of, round_to_choices, steps_for


def test_each_device_offers_its_profile_precisions_and_accuracy_aware_int8():
    rpi4 = load_device("rpi4")
    assert export_choices(rpi4, None, True) == ["tflite:fp32", "tflite:dynamic", "tflite:int8", "onnx:int8_static",
                                                "tflite:int8-aware", "onnx:int8-aware"]
    assert "tflite:int8-aware" not in export_choices(rpi4, None, False)


def test_a_listed_precision_is_offered_only_where_its_format_runs():
    android = load_device("android-arm64")  # benchmark_model: TFLite only
    assert export_choices(android, ["tflite:int8", "onnx:fp32"], True) == ["tflite:int8"]
    with pytest.raises(EdgepressError, match="No export to try on android-arm64"):
        Space.of(TuneSpec(space={"precisions": ["onnx:fp32"]}), [android], None)


def test_round_to_comes_from_the_devices_channel_multiple_once_structured_prune_rounds():
    from edgepress.compress.structured_prune import StructuredPruneConfig

    devices = [SimpleNamespace(channel_multiple=8), SimpleNamespace(channel_multiple=None), SimpleNamespace()]
    expected = [1, 8] if "round_to" in StructuredPruneConfig.model_fields else []
    assert round_to_choices(devices, TuneSpec()) == expected
    assert round_to_choices([SimpleNamespace()], TuneSpec()) == []


def test_steps_and_exports_of_a_trial():
    params = {"ratio": 0.5, "fine_tune_epochs": 4, "distill": True}
    assert steps_for(params) == [{"type": "structured_prune", "ratio": 0.5, "fine_tune_epochs": 4},
                                 {"type": "distill", "teacher": "source", "epochs": 4}]
    assert steps_for({"ratio": 0.0}) == []
    # Every choice of every device once; accuracy-aware int8 writes the plain int8 artifact first, so plain
    # tflite int8 is not exported twice.
    choices = {"a": ["tflite:int8", "tflite:int8-aware"], "b": ["tflite:int8", "onnx:fp32"], "c": ["onnx:fp32"]}
    assert exports_for(choices, 0.01) == [{"format": "tflite", "quantize": {"precision": "int8",
                                                                            "max_accuracy_drop": 0.01}},
                                          {"format": "onnx", "precision": "fp32"}]
    assert exports_for(choices, 0.01, devices=["c"]) == [{"format": "onnx", "precision": "fp32"}]


def test_the_cache_key_is_steps_and_exports_not_the_name():
    a = {"name": "t001", "steps": [{"type": "structured_prune", "ratio": 0.5}], "exports": [{"format": "tflite"}]}
    assert key_of(a) == key_of({**a, "name": "t007"})
    assert key_of(a) != key_of({**a, "exports": [{"format": "onnx"}]})


def test_a_recipe_tune_section_validates_and_reads_durations():
    recipe = Recipe.from_dict({"model": {"zoo": "seed_cnn"}, "tune": {"trials": 5, "time_budget": "30m",
                                                                      "space": {"ratio": [0.2, 0.8]}}})
    assert recipe.tune.trials == 5 and recipe.tune.time_budget == 1800
    assert TuneSpec(time_budget="1.5h").time_budget == 5400 and TuneSpec(time_budget=90).time_budget == 90
    with pytest.raises(EdgepressError, match="tune.space: ratio must be"):
        Recipe.from_dict({"model": {"zoo": "seed_cnn"}, "tune": {"space": {"ratio": [0.8, 0.2]}}})
    with pytest.raises(EdgepressError, match="unknown key 'tune.trails'"):
        Recipe.from_dict({"model": {"zoo": "seed_cnn"}, "tune": {"trails": 5}})
    with pytest.raises(EdgepressError, match="not a duration"):
        Recipe.from_dict({"model": {"zoo": "seed_cnn"}, "tune": {"time_budget": "soon"}})


def test_guided_ratios_prune_sensitive_layer_groups_less():
    from edgepress.tune.sensitivity import guided_ratios

    sensitivity = {"groups": [{"layers": ["conv"], "drop": 0.30, "min_width": 32},
                              {"layers": ["a", "b"], "drop": 0.10, "min_width": 16},  # tied: one ratio
                              {"layers": ["dense"], "drop": 0.02, "min_width": 4}]}
    layers = guided_ratios(0.5, 1.0, sensitivity)
    # below the mean drop (0.14) more is pruned, above it less; tied layers share one ratio
    assert layers["conv"] < 0.5 < layers["a"] == layers["b"] < layers["dense"] <= 0.75  # dense keeps 1 of 4
    assert guided_ratios(0.5, 0.0, sensitivity) is None
    assert guided_ratios(0.5, 1.0, {"groups": sensitivity["groups"][:1]}) is None
    steps = steps_for({"ratio": 0.5, "fine_tune_epochs": 1, "layer_guidance": 1.0}, sensitivity)
    assert steps[0]["layers"] == layers


def test_sensitivity_is_measured_on_a_real_model(trained_cnn, tmp_path):
    from edgepress.tune.sensitivity import measure_sensitivity

    trained_cnn.save(tmp_path / "cnn.keras")
    result = measure_sensitivity(str(tmp_path / "cnn.keras"), {"dataset": "digits", "test_size": 300})
    names = [g["layers"] for g in result["groups"]]
    assert names == [["conv2d"], ["conv2d_1"], ["conv2d_2"], ["dense"]]  # every hidden layer; never the classifier
    assert all(-1 <= g["drop"] <= 1 for g in result["groups"]) and len({g["drop"] for g in result["groups"]}) > 1


def test_a_trial_stands_for_its_fastest_artifact_within_the_budgets_else_its_closest():
    from edgepress.tune.study import trial_pick

    def row(name, p50, size, passed, drop=0.0, role=None):
        return {"name": name, "device": "d", "format": "tflite", "precision": "int8", "bytes": size,
                "gzip_bytes": size, "passed": passed, "metrics": {"accuracy": 0.9 - drop, "accuracy_drop": drop},
                "latency": {"p50": p50, "p50_ci": [p50 * 0.95, p50 * 1.05]},
                "accuracy_aware": {"role": role} if role else None}

    budgets = {"max_accuracy_drop": 0.01, "max_p50_ms": None, "max_bytes": 1500}
    rows = [row("slow", 0.10, 1000, True), row("fast", 0.05, 1200, True), row("too big", 0.01, 9000, False),
            row("search step", 0.001, 100, True, role="tried"), row("elsewhere", 0.001, 100, True) | {"device": "e"}]
    assert trial_pick(rows, "d", budgets)["name"] == "fast"
    # Nothing within the budgets: the closest (least over them, relative), not the fastest.
    over = [row("far over", 0.01, 9000, False), row("just over", 0.2, 1600, False, drop=0.012)]
    assert trial_pick(over, "d", budgets)["name"] == "just over"
    assert trial_pick(rows, "nowhere", budgets) is None


def test_every_budget_miss_is_on_one_relative_scale():
    from edgepress.verdict import over_budget

    assert over_budget("max_bytes", 17600, 16000) == pytest.approx(0.1)
    assert over_budget("max_p50_ms", 1.0, 2.0) == pytest.approx(-0.5)  # within: negative
    # 3.3 pt over a 0.5 pt budget is a far bigger miss than a file 10% too large
    assert over_budget("max_accuracy_drop", 0.038, 0.005) > 10 * over_budget("max_bytes", 17600, 16000)
    assert over_budget("max_accuracy_drop", 0.01, 0.0) == pytest.approx(1.0)  # a zero budget: scaled by 1 pt


def test_random_start_is_a_third_of_the_trials_that_fit_in_the_time_left():
    from edgepress.tune.study import startup_trials

    assert startup_trials(200) == 10 and startup_trials(12) == 4 and startup_trials(3) == 2
    # 25 minutes left at 4 minutes a trial, after 1: about 7 trials, so 2 random ones, not 10 of --trials 200
    assert startup_trials(200, done=1, time_left=1500, durations=[240]) == 2
    # 20 minutes at 20 s a trial: 60 trials fit, so --trials 9 is what limits
    assert startup_trials(9, done=1, time_left=1200, durations=[25, 15]) == 3
    assert startup_trials(200, done=3, time_left=1200, durations=[25, 15]) == 10


def test_losing_exports_needs_two_trials_and_a_loss_beyond_the_noise_in_each():
    from edgepress.tune.space import losing_exports

    def row(precision, p50, low, high, fmt="tflite"):
        return {"device": "d", "format": fmt, "precision": precision, "latency": {"p50": p50, "p50_ci": [low, high]}}

    slow = [row("fp32", 1.0, 0.9, 1.1), row("int16x8", 30.0, 29.0, 31.0), row("int8", 1.05, 1.0, 1.1)]
    assert losing_exports([slow], ["d"]) == {}  # one trial is not enough
    losing = losing_exports([slow, slow], ["d"])
    assert list(losing["d"]) == ["tflite:int16x8"]  # int8 ties fp32 (intervals overlap): kept
    faster_once = [row("fp32", 1.0, 0.9, 1.1), row("int16x8", 0.5, 0.4, 0.6)]
    assert losing_exports([slow, faster_once], ["d"]) == {}  # it won once: kept
