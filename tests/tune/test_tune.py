"""A tiny real tune end to end (digits, the seed CNN, one fine-tune epoch, two devices on this machine):
tune.json, the Pareto front, best-<device>.yaml reproducing its artifact, extending a finished tune, a time
budget too small for one trial, and a device that drops mid-tune."""

import json
import shutil
from pathlib import Path

import pytest

import edgepress
from edgepress.api import Progress
from edgepress.errors import EdgepressError, GateFailed
from edgepress.stats import rank_best

DEVICES = ["x86-host", {"name": "x86-host", "label": "flaky"}]


def tiny_recipe(trials: int, targets=DEVICES, **tune) -> dict:
    return {
        "name": "tiny",
        "model": {"zoo": "seed_cnn", "train_epochs": 3},
        "data": {"dataset": "digits", "train_size": 800, "test_size": 200, "calibration_samples": 50},
        "targets": targets,
        "measure": {"runs": 20, "warmup": 2, "threads": 1},
        "gates": {"max_accuracy_drop": 0.3},
        "tune": {"trials": trials, "space": {"ratio": [0.5, 0.5], "fine_tune_epochs": [1], "distill": [False],
                                             "precisions": ["tflite:fp32", "tflite:dynamic"]}, **tune},
    }


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tune") / "out"
    result = edgepress.tune(edgepress.Recipe.from_dict(tiny_recipe(2)), run_dir)
    return result, run_dir


def test_tune_writes_every_trial_the_front_and_the_best(tuned):
    result, run_dir = tuned
    data = json.loads((run_dir / "tune.json").read_text())
    assert data == result.results
    assert [t["number"] for t in data["trials"]] == [0, 1]
    assert all(t["status"] in ("complete", "cached") for t in data["trials"])
    first = data["trials"][0]
    assert first["params"]["ratio"] == 0.5 and first["models"][-1]["params"] < data["source"]["params"]
    assert first["macs"] < data["source"]["macs"]
    assert {r["device"] for r in first["rows"]} == {"x86-host", "flaky"}
    for device in ("x86-host", "flaky"):
        chosen = first["chosen"][device]
        assert chosen["p50_ms"] > 0 and chosen["bytes"] > 0 and 0 <= chosen["accuracy"] <= 1
        points = [p for t in data["trials"] for p in t["rows"] if p["device"] == device]
        points += [p for p in data["source"]["rows"] if p["device"] == device]
        front = data["pareto"][device]
        assert front and all(p in points for p in front)
        best = data["best"][device]
        assert best is not None and best["passed"]
        # the fastest within the budgets: nothing that passed is faster beyond the noise (a tie goes to the smaller)
        rows = [r for t in data["trials"] if t["status"] == "complete"
                for r in json.loads((Path(t["run_dir"]) / "results.json").read_text())["artifacts"]]
        rows += json.loads((run_dir / "source" / "results.json").read_text())["artifacts"]
        mine = [r for r in rows if r["device"] == device and r["passed"]
                and (r.get("accuracy_aware") or {}).get("role") != "tried"]
        best_row = next(r for r in mine if r["name"] == best["artifact"] and r["latency"]["p50"] == best["p50_ms"])
        assert rank_best(mine) is best_row  # the run's own rule, over every trial's rows and the source's
        assert (run_dir / f"best-{device}.yaml").is_file()
    assert result.passed
    result.check()
    html = (run_dir / "report.html").read_text()
    assert html.count("<svg") == 2 and "x86-host" in html and "flaky" in html
    assert (run_dir / "study.db").is_file() and (run_dir / "source" / "tune-source.json").is_file()


def test_best_recipe_reproduces_its_artifact(tuned, tmp_path):
    result, run_dir = tuned
    best = result.best["x86-host"]
    recipe = edgepress.Recipe.from_yaml(run_dir / "best-x86-host.yaml")
    assert [t.name for t in recipe.targets] == ["x86-host"] and len(recipe.exports) == 1
    report = edgepress.run(recipe, tmp_path / "again")
    (row,) = report.artifacts
    assert row["bytes"] == best["bytes"]
    assert row["metrics"]["accuracy"] == best["accuracy"]


def test_time_budget_too_small_for_one_trial_keeps_the_study(tuned):
    _, run_dir = tuned
    before = (run_dir / "study.db").read_bytes()
    with pytest.raises(EdgepressError, match="too small for one trial"):
        edgepress.tune(edgepress.Recipe.from_dict(tiny_recipe(5, time_budget=1)), run_dir)
    assert (run_dir / "study.db").read_bytes() == before


def test_other_budgets_on_the_same_study_are_refused(tuned):
    _, run_dir = tuned
    raw = {**tiny_recipe(3), "gates": {"max_accuracy_drop": 0.01}}
    with pytest.raises(EdgepressError, match="made with the budgets"):
        edgepress.tune(edgepress.Recipe.from_dict(raw), run_dir)


def test_extending_with_a_device_that_drops_marks_its_trials_and_goes_on(tuned, tmp_path):
    _, original = tuned
    run_dir = tmp_path / "copy"
    shutil.copytree(original, run_dir)
    source_json = (run_dir / "source" / "tune-source.json").read_text()
    before = json.loads((run_dir / "tune.json").read_text())["trials"]
    # The same device, now answering within no time at all: its benchmark times out (a real timeout, a real drop).
    flaky = {"name": "x86-host", "label": "flaky", "reach": {"timeout_s": 0.001}}
    raw = tiny_recipe(4, targets=["x86-host", flaky])
    # A choice the first two trials did not make, so the next trial runs (a repeat is taken from the cache and
    # measures nothing): which choices TPE repeats depends on the machine's floating-point results.
    raw["tune"]["space"].update(layer_guidance=[1.0], round_to=[1])
    with pytest.raises(GateFailed, match="device flaky failed"):
        result = edgepress.tune(edgepress.Recipe.from_dict(raw), run_dir)
        result.check()
    data = json.loads((run_dir / "tune.json").read_text())
    assert (run_dir / "source" / "tune-source.json").read_text() == source_json  # the source was not measured again
    assert data["trials"][:2] == before  # nothing finished was lost or changed
    assert len(data["trials"]) == 4
    new = [t for t in data["trials"][2:] if t["status"] == "complete"]
    assert "flaky" in data["dropped"] and "within" in data["dropped"]["flaky"]
    assert any(t["devices"].get("flaky") for t in new)  # the trial where it dropped names it
    assert new and all(any(p["device"] == "x86-host" for p in t["rows"]) for t in new)  # the other device went on
    assert all(not any(p["device"] == "flaky" for p in t["rows"]) for t in new)


def test_a_trial_above_its_first_epoch_floor_runs_to_the_end(tmp_path):
    # Any accuracy may be lost: the check after one fine-tune epoch passes and the trial goes on to its exports.
    raw = tiny_recipe(1, targets=["x86-host"], hopeless_margin=0.0)
    raw["gates"] = {"max_accuracy_drop": 1.0}
    raw["tune"]["space"].update(ratio=[0.25, 0.25], fine_tune_epochs=[2])
    result = edgepress.tune(edgepress.Recipe.from_dict(raw), tmp_path / "out")
    (trial,) = result.results["trials"]
    assert trial["status"] == "complete", trial
    assert trial["first_epoch_accuracy"] is None and trial["rows"]
    assert (tmp_path / "out" / "trials" / "t000" / "results.json").is_file()


class Recorded(Progress):
    """Every message a tune sends, in order."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def update(self, message: str) -> None:
        self.messages.append(message)

    done = update


def test_a_hopeless_trial_is_stopped_after_one_fine_tune_epoch(tmp_path):
    # No accuracy may be lost and there is no margin: removing 90% of the channels cannot keep the source's
    # accuracy after one epoch, so the trial stops there, before its second epoch, exports and measurements.
    raw = tiny_recipe(1, targets=["x86-host"], hopeless_margin=0.0)
    raw["gates"] = {"max_accuracy_drop": 0.0}
    raw["tune"]["space"].update(ratio=[0.9, 0.9], fine_tune_epochs=[4])
    progress = Recorded()
    result = edgepress.tune(edgepress.Recipe.from_dict(raw), tmp_path / "out", progress=progress)
    (trial,) = result.results["trials"]
    assert trial["status"] == "pruned", trial
    assert trial["first_epoch_accuracy"] < result.results["source"]["accuracy"]
    assert "after one training epoch" in trial["reason"]
    epochs = [m for m in progress.messages if "structured_prune: epoch" in m]
    assert epochs and all("epoch 1/4" in m for m in epochs)  # no second epoch was trained
    run = tmp_path / "out" / "trials" / "t000"
    assert not (run / "results.json").exists() and not list(run.glob("artifacts/*"))  # nothing exported
    # nothing a trial made is within the budget: the best is the source model itself, as float
    assert result.results["best"]["x86-host"]["trial"] is None


def test_a_precision_that_loses_to_fp32_in_every_trial_is_no_longer_exported(tmp_path):
    # int16x8 runs on LiteRT's reference-like int16 kernels (no XNNPACK path): tens of times slower than fp32 on any
    # CPU, so two trials show it and the third is not asked to export it.
    raw = tiny_recipe(3, targets=["x86-host"], hopeless_margin=None)
    raw["tune"]["space"].update(ratio=[0.3, 0.6], precisions=["tflite:fp32", "tflite:int16x8"], layer_guidance=[0.0])
    result = edgepress.tune(edgepress.Recipe.from_dict(raw), tmp_path / "out")
    trials = [t for t in result.results["trials"] if t["status"] == "complete"]
    assert len(trials) == 3
    assert "tflite:int16x8" in result.results["stopped_exports"]["x86-host"]
    assert {r["precision"] for r in trials[0]["rows"]} == {"fp32", "int16x8"}
    assert {r["precision"] for r in trials[2]["rows"]} == {"fp32"}
