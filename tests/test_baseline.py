"""A stored baseline, `edgepress compare`, JUnit and MLflow output, on real runs of a small recipe.

The baseline is a structurally pruned seed CNN (3/4 of its channels removed); the "deliberately slowed"
run is the same recipe without the pruning step: the same artifact name, a file 10x larger and
several times slower. Every run is real (training, export, measurement on this machine); the only
thing edited by hand is a copy of a baseline file, to make it say what a bad baseline would.
"""

import copy
import json
import socket
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edgepress.cli import app
from edgepress.compare import compare, compare_files, compare_with_baseline, load_results
from edgepress.errors import EdgepressError
from edgepress.specs.baseline import BaselineSpec
from edgepress.specs.measure import MeasureSpec
from edgepress.verdict import add_baseline_gates

cli = CliRunner()
XSD = Path(__file__).parent / "fixtures" / "junit.xsd"

BASE = {
    "name": "gate",
    "model": {"zoo": "seed_cnn", "train_epochs": 1},
    "data": {"dataset": "digits", "train_size": 200, "test_size": 50, "calibration_samples": 20},
    "steps": [{"type": "structured_prune", "ratio": 0.75, "fine_tune_epochs": 1}],
    "exports": [{"format": "tflite", "precision": "fp32"}],
    "measure": {"runs": 20, "warmup": 2, "max_seconds": 3},
    "gates": {"max_accuracy_drop": "50%"},
}
SLOWED = {**BASE, "steps": []}
# This shared 2-core machine swings by tens of percent between two runs: a generous limit where two runs' stored
# p50s are compared (not timed again), still far below the slowed model's slow-down.
LOOSE = {"max_p50_regression": "50%", "max_accuracy_regression": "5 pt"}


def _write(tmp: Path, name: str, recipe: dict) -> str:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The baseline run, the same recipe again, and the slowed model run with --baseline, --junit and --mlflow."""
    tmp = tmp_path_factory.mktemp("baseline")
    out = {}
    for name in ("base", "again"):
        done = cli.invoke(app, ["run", _write(tmp, name, BASE), "-o", str(tmp / name)])
        assert done.exit_code == 0, done.output
        out[name] = tmp / name / "results.json"
    slowed = {**SLOWED, "gates": {**SLOWED["gates"], "baseline": {"path": str(out["base"])}}}  # default limits
    done = cli.invoke(app, ["run", _write(tmp, "slowed", slowed), "-o", str(tmp / "slowed"),
                            "--junit", str(tmp / "slowed.xml"), "--mlflow", str(tmp / "mlruns")])
    out.update(slowed=tmp / "slowed" / "results.json", slowed_exit=done.exit_code, slowed_output=done.output,
               junit=tmp / "slowed.xml", mlruns=tmp / "mlruns", tmp=tmp)
    return out


def test_the_report_shows_each_p50_with_its_interval(runs):
    import re

    from edgepress.report import Report

    report = Report.load(runs["base"].parent)
    (row,) = report.artifacts
    low, high = row["latency"]["p50_ci"]
    (cell,) = [r["p50 ms"] for r in report.table()]
    assert cell == f"{row['latency']['p50']:.3f} [{low:.3f}, {high:.3f}]"
    assert re.search(r"\| \d+\.\d{3} \[\d+\.\d{3}, \d+\.\d{3}\] \|", (runs["base"].parent / "report.md").read_text())


def test_two_runs_of_the_same_recipe_show_no_regression(runs):
    # The default limits: the baseline's file is timed again beside the new one, so the run-to-run drift of
    # this shared machine (tens of percent between the two runs' stored p50s) is not compared.
    done = cli.invoke(app, ["compare", str(runs["base"]), str(runs["again"])])
    assert done.exit_code == 0, done.output
    assert "**No regression.**" in done.stdout and "re-timed now" in done.stdout
    assert "| x86-host | `gate_fp32.tflite` |" in done.stdout and "| ok |" in done.stdout
    comparison = compare_files(runs["base"], runs["again"])
    (row,) = comparison.rows
    # The converter's output can vary by a few bytes between runs (not the model): far below the 5% limit.
    assert row.status == "compared" and abs(row.bytes_change) < 0.01 and row.accuracy_change == 0
    assert row.latency_compared and row.retimed and not comparison.regressed
    stored = json.loads(runs["base"].read_text())["artifacts"][0]["latency"]
    assert row.old["p50"] != stored["p50"]  # timed now, not read back


def test_the_stored_p50s_are_compared_and_flagged_when_the_baseline_files_are_gone(runs, tmp_path):
    def gone(data):
        data["artifacts"][0]["path"] = str(tmp_path / "elsewhere" / "gate_old.tflite")

    comparison = compare_files(_baseline_copy(runs, tmp_path, gone), runs["again"], LOOSE)
    (row,) = comparison.rows
    assert not row.retimed and row.latency_compared
    assert row.old["p50"] == json.loads(runs["base"].read_text())["artifacts"][0]["latency"]["p50"]
    flags = " ".join(comparison.flags)
    assert "gate_fp32.tflite" in flags and "gone or changed" in flags and "stored numbers" in flags


def test_a_baseline_restored_elsewhere_is_timed_from_its_artifacts_folder(runs, tmp_path):
    import shutil

    restored = tmp_path / "cache" / "baseline"
    shutil.copytree(runs["base"].parent, restored)
    data = json.loads((restored / "results.json").read_text())
    data["artifacts"][0]["path"] = "/ci/workspace/runs/base/artifacts/gate_fp32.tflite"  # where CI first ran it
    (restored / "results.json").write_text(json.dumps(data))
    (row,) = compare_files(restored, runs["again"]).rows
    assert row.retimed
    # A file that is not the one the baseline measured (another sha256) is not timed in its place.
    (restored / "artifacts" / "gate_fp32.tflite").write_bytes(b"not the baseline's model")
    comparison = compare_files(restored, runs["again"], LOOSE)
    assert not comparison.rows[0].retimed and any("gone or changed" in f for f in comparison.flags)


def test_the_slowed_model_fails_its_baseline_gates(runs):
    assert runs["slowed_exit"] == 1, runs["slowed_output"]  # a gate failed: the baseline's
    output = " ".join(runs["slowed_output"].split())
    assert "baseline_p50" in output and "baseline_bytes" in output
    results = json.loads(runs["slowed"].read_text())
    (row,) = results["artifacts"]
    (compared,) = results["baseline"]["rows"]  # both files timed again, interleaved, after this run's measuring
    assert compared["retimed"] is True and compared["timed_twice"] is True  # slower: timed once more to confirm
    p50, gates = row["gates"]["baseline_p50"], row["gates"]
    assert p50["passed"] is False and p50["significant"] is True and p50["baseline"] == compared["old"]["p50"]
    assert p50["value"] == pytest.approx(compared["new"]["p50"] / compared["old"]["p50"] - 1) and p50["value"] > 0.5
    assert gates["baseline_bytes"]["passed"] is False and gates["baseline_bytes"]["value"] > 1
    assert row["passed"] is False and results["passed"] is False and results["best"] == {"x86-host": None}
    assert results["baseline"]["regressed"] is True


def test_compare_prints_the_regression_as_markdown_and_exits_1(runs):
    done = cli.invoke(app, ["compare", str(runs["base"]), str(runs["slowed"]), "--max-p50-regression", "50%"])
    assert done.exit_code == 1
    table = done.stdout
    assert table.startswith("### edgepress: changes against the baseline")
    line = next(x for x in table.splitlines() if "`gate_fp32.tflite`" in x)
    assert "❌ p50, bytes" in line and "within noise" not in line and "(timed twice)" in line
    assert "**1 regression(s):** gate_fp32.tflite on x86-host: p50, bytes" in table


def test_the_junit_file_is_valid_and_has_one_case_per_gate(runs):
    import xml.etree.ElementTree as ET

    import xmlschema

    xmlschema.XMLSchema(str(XSD)).validate(str(runs["junit"]))  # raises on any violation
    results = json.loads(runs["slowed"].read_text())
    root = ET.parse(runs["junit"]).getroot()
    cases = root.findall("./testsuite/testcase")
    expected = {(f"edgepress.{a['device']}.{a['name']}", gate, g["passed"]) for a in results["artifacts"]
                for gate, g in a["gates"].items()}
    assert {(c.get("classname"), c.get("name"), c.find("failure") is None) for c in cases} == expected
    names = {c.get("name") for c in cases}
    assert {"baseline_p50", "baseline_bytes", "baseline_accuracy", "max_accuracy_drop"} <= names
    failed = [c for c in cases if c.find("failure") is not None]
    assert root.get("failures") == str(len(failed)) == root.find("testsuite").get("failures")
    assert all(c.find("failure").get("message").startswith(c.get("name")) for c in failed)


def test_the_junit_schema_rejects_what_ci_would_not_read(runs, tmp_path):
    import xmlschema

    schema = xmlschema.XMLSchema(str(XSD))
    broken = runs["junit"].read_text().replace(' classname="', ' class="', 1)  # a testcase without classname
    (tmp_path / "broken.xml").write_text(broken)
    assert not schema.is_valid(str(tmp_path / "broken.xml"))


def test_mlflow_has_the_run_params_metrics_and_files(runs):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{runs['mlruns'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("edgepress-gate")
    (run,) = client.search_runs([experiment.experiment_id])
    results = json.loads(runs["slowed"].read_text())
    (row,) = results["artifacts"]
    assert run.data.params["recipe.name"] == "gate" and run.data.params["recipe.exports.0.precision"] == "fp32"
    assert run.data.params["recipe.gates.baseline.max_p50_regression"] == "0.1"
    prefix = "x86-host/gate_fp32.tflite/"
    assert run.data.metrics[prefix + "p50_ms"] == pytest.approx(row["latency"]["p50"])
    assert run.data.metrics[prefix + "p50_ci_high_ms"] == pytest.approx(row["latency"]["p50_ci"][1])
    assert run.data.metrics[prefix + "bytes"] == row["bytes"] and run.data.metrics["passed"] == 0
    assert run.info.status == "FAILED"
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"results.json", "report.md", "recipe.yaml", "artifacts", "models"} <= files


def test_a_baseline_from_another_cpu_is_flagged_not_compared(runs, tmp_path):
    other = json.loads(runs["base"].read_text())
    other["artifacts"][0]["host"]["cpu"] = "ARM Cortex-A76"  # as if measured on a Raspberry Pi 5
    comparison = compare(other, load_results(runs["slowed"]), LOOSE)
    (row,) = comparison.rows
    assert not row.latency_compared and "p50" not in row.regressions and "bytes" in row.regressions
    cpu_flags = [f for f in comparison.flags if "latency not compared" in f]
    assert len(cpu_flags) == 1 and "ARM Cortex-A76" in cpu_flags[0]
    assert "not compared" in comparison.to_markdown()


def _baseline_copy(runs, tmp_path, change) -> str:
    data = copy.deepcopy(json.loads(runs["base"].read_text()))
    change(data)
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("case, words", [
    ("missing", ["nope.json", "not found"]),
    ("schema", ["schema_version 99", "measure it again with this version"]),
    ("model", ["another model", "'other'", "'gate'"]),
])
def test_compare_refuses_a_bad_baseline_with_exit_2(runs, tmp_path, case, words):
    changes = {"schema": lambda d: d.update(schema_version=99), "model": lambda d: d["recipe"].update(name="other")}
    old = str(tmp_path / "nope.json") if case == "missing" else _baseline_copy(runs, tmp_path, changes[case])
    done = cli.invoke(app, ["compare", old, str(runs["again"])])
    assert done.exit_code == 2 and "Traceback" not in done.output
    message = " ".join(done.output.split())
    assert all(w in message for w in words), message


def test_compare_refuses_a_malformed_limit(runs):
    done = cli.invoke(app, ["compare", str(runs["base"]), str(runs["again"]), "--max-p50-regression", "ten"])
    assert done.exit_code == 2 and "max_p50_regression must be a fraction or a percentage" in done.output


def test_a_malformed_limit_in_a_recipe_is_refused_before_any_work(tmp_path):
    recipe = {**BASE, "gates": {"baseline": {"path": "x.json", "max_accuracy_regression": "a lot"}}}
    done = cli.invoke(app, ["run", _write(tmp_path, "bad", recipe), "-o", str(tmp_path / "run")])
    assert done.exit_code == 2 and "max_accuracy_regression" in " ".join(done.output.split())
    assert not (tmp_path / "run").exists()


def test_compare_with_baseline_records_an_unusable_baseline(runs, tmp_path):
    results = json.loads(runs["again"].read_text())
    message = compare_with_baseline(results, BaselineSpec(path=str(tmp_path / "gone.json")), runs["again"].parent,
                                    [], MeasureSpec())
    assert "gone.json" in message and results["baseline"]["error"] == message
    row = results["artifacts"][0]
    gates = dict(row["gates"])
    add_baseline_gates(row, results["baseline"])
    assert row["gates"] == gates  # no comparison, no gate
    with pytest.raises(EdgepressError, match="gone.json"):
        load_results(tmp_path / "gone.json")


def test_the_baseline_gates_survive_the_verdict_being_computed_again(runs):
    from edgepress.report import Report

    report = Report.load(runs["slowed"].parent)
    with pytest.raises(Exception, match="baseline_p50"):  # GateFailed: check() judges the rows again
        report.check()
    assert report.artifacts[0]["gates"]["baseline_p50"]["passed"] is False


def test_run_with_a_missing_baseline_exits_2_and_keeps_its_results(runs):
    tmp = runs["tmp"]
    done = cli.invoke(app, ["run", _write(tmp, "first", BASE), "-o", str(tmp / "first"),
                            "--baseline", str(tmp / "no-such" / "results.json")])
    assert done.exit_code == 2, done.output
    squeezed = "".join(done.output.split())  # rich wraps long paths anywhere
    assert "no-such/results.json" in squeezed and "notfound" in squeezed and "Traceback" not in done.output
    results = json.loads((tmp / "first" / "results.json").read_text())  # the run's own results are written
    assert results["baseline"]["error"] and results["artifacts"][0]["latency"]["p50_ci"]


def test_run_with_an_mlflow_server_that_does_not_answer_exits_2_and_keeps_its_results(runs):
    tmp = runs["tmp"]
    uri = f"http://127.0.0.1:{_free_port()}"
    done = cli.invoke(app, ["run", _write(tmp, "tracked", BASE), "-o", str(tmp / "tracked"), "--mlflow", uri])
    assert done.exit_code == 2, done.output
    squeezed = "".join(done.output.split())
    assert uri in squeezed and "doesnotanswer" in squeezed and "Traceback" not in done.output
    assert (tmp / "tracked" / "results.json").is_file() and (tmp / "tracked" / "report.md").is_file()
