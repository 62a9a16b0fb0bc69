"""The whole pipeline on a small real recipe: digits, the seed CNN, pruning, four exports, measurement."""

import json

import pytest

import edgepress
from edgepress.errors import GateFailed
from edgepress.report import Report
from edgepress.verdict import judge

SMALL = {
    "name": "small",
    "model": {"zoo": "seed_cnn", "train_epochs": 3},
    "data": {"dataset": "digits", "test_size": 300, "calibration_samples": 50, "check_samples": 50},
    "steps": [{"type": "prune", "target_sparsity": 0.5, "fine_tune_epochs": 1}],
    "exports": [
        {"format": "tflite", "precision": "fp32"},
        {"format": "tflite", "precision": "int8"},
        {"format": "onnx", "precision": "fp32"},
        {"format": "onnx", "precision": "int8_static"},
    ],
    "measure": {"runs": 10, "warmup": 2},
    # Between the int8 and the fp32 file sizes: only the int8 artifacts can pass.
    "gates": {"max_bytes": 200_000, "max_accuracy_drop": "5%"},
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    return edgepress.run(edgepress.Recipe.from_dict(SMALL), run_dir)


def test_run_writes_every_file(report):
    names = {p.relative_to(report.run_dir).as_posix() for p in report.run_dir.rglob("*") if p.is_file()}
    assert {"recipe.yaml", "results.json", "report.md", "report.html",
            "models/0-source.keras", "models/1-prune.keras"} <= names
    for a in report.artifacts:
        assert a["path"].endswith(a["name"]) and f"artifacts/{a['name']}.json" in names
    assert not [n for n in names if ".tmp-" in n]


def test_results_json_has_the_documented_shape(report):
    results = json.loads((report.run_dir / "results.json").read_text())
    assert results["schema_version"] == 1
    assert results["source"]["model"] == "zoo:seed_cnn" and results["source"]["params"] > 90_000
    assert [m["stage"] for m in results["models"]] == ["source", "prune"]
    assert results["models"][1]["sparsity"] >= 0.45
    for key in ("tensorflow", "tensorflow-model-optimization", "ai-edge-litert", "onnxruntime", "cpu"):
        assert results["environment"][key]
    for a in results["artifacts"]:
        assert {"format", "precision", "path", "bytes", "gzip_bytes", "metrics", "latency"} <= set(a)
        assert {"accuracy", "accuracy_drop", "agreement"} <= set(a["metrics"])
        assert {"p50", "p90", "p99", "mean", "std"} <= set(a["latency"])
        assert a["load_ms"] > 0 and a["memory"]["peak_rss_bytes"] > 0


def test_fp32_artifacts_match_the_pruned_keras_model(report):
    pruned_accuracy = report.results["models"][-1]["accuracy"]
    for a in report.artifacts:
        if a["precision"] == "fp32":
            assert a["metrics"]["accuracy"] == pytest.approx(pruned_accuracy, abs=0.004)
            assert a["check"]["top1_agreement"] == 1.0


def test_gates_pick_the_fastest_passing_artifact(report):
    from edgepress.stats import faster

    passing = [a for a in report.artifacts if a["passed"]]
    assert {a["precision"] for a in passing} <= {"int8", "int8_static"} and passing
    fastest, best = min(passing, key=lambda a: a["latency"]["p50"]), report.best["x86-host"]
    # The fastest, or one that ties with it (overlapping p50 intervals) and is no larger.
    assert best is fastest or (not faster(fastest, best) and best["bytes"] <= fastest["bytes"])
    report.check()  # require: any -> passes
    assert "★ best" in (report.run_dir / "report.md").read_text()


def test_require_all_fails_naming_the_gate_and_the_artifacts(report):
    # The verdict is computed from the rows: the same rows pass with require: any and fail with require: all.
    results = json.loads(json.dumps(report.results))
    assert judge(results)["passed"]
    results["gates"]["require"] = "all"
    assert not judge(results)["passed"]
    with pytest.raises(GateFailed) as e:
        Report(results).check()
    assert "max_bytes" in str(e.value) and "small_fp32.tflite on x86-host" in str(e.value)
    assert "max_accuracy_drop" not in str(e.value)


def test_the_verdict_follows_the_gates_not_a_stored_passed(report):
    results = json.loads(json.dumps(report.results))
    results["gates"]["max_bytes"] = None  # without the size gate every artifact within 5% passes
    verdict = judge(results)
    assert verdict["passed"] and all(a["passed"] for a in results["artifacts"])
    results["gates"].update(max_bytes=1, require="any")  # no file is one byte: no device has a passing artifact
    results["passed"] = True  # a stored verdict is not trusted
    with pytest.raises(GateFailed, match="max_bytes"):
        Report(results).check()
    assert results["best"] == {"x86-host": None}


def test_report_md_has_one_row_per_artifact(report):
    md = (report.run_dir / "report.md").read_text()
    for a in report.artifacts:
        assert sum(line.startswith(f"| x86-host | {a['name']}") for line in md.splitlines()) == 1
    assert "speed-up vs fp32" in md and "gzip bytes" in md
