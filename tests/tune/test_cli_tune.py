"""`edgepress tune` from the command line: a tune killed mid-trial resumes with the same -o and loses no finished
trial; budgets no candidate meets (exit 1, the closest named); bad input (exit 2, nothing half-written)."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml
from typer.testing import CliRunner

from edgepress.cli import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]

TINY = {
    "name": "tiny",
    "model": {"zoo": "seed_cnn", "train_epochs": 2},
    "data": {"dataset": "digits", "train_size": 600, "test_size": 200, "calibration_samples": 50},
    "measure": {"runs": 20, "warmup": 2, "threads": 1},
    "gates": {"max_accuracy_drop": 0.5},
    "tune": {"trials": 3, "space": {"ratio": [0.3, 0.7], "fine_tune_epochs": [1, 2], "distill": [False],
                                    "precisions": ["tflite:fp32", "tflite:dynamic"]}},
}


def _recipe(tmp_path, **changes) -> Path:
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


def _cli(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "edgepress.cli", "tune", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _trials(run_dir: Path) -> list[dict]:
    path = run_dir / "tune.json"
    return json.loads(path.read_text())["trials"] if path.exists() else []


def test_a_tune_killed_mid_trial_resumes_and_loses_no_finished_trial(tmp_path):
    recipe, out = _recipe(tmp_path), tmp_path / "out"
    process = _cli(recipe, "-o", out)
    deadline = time.monotonic() + 600
    # Wait until one trial has finished and the next one is under way (its run directory exists), then kill -9.
    while time.monotonic() < deadline and process.poll() is None:
        done = [t for t in _trials(out) if t["status"] in ("complete", "cached")]
        if done and (out / "trials" / f"t{done[-1]['number'] + 1:03d}").exists():
            break
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = [t for t in _trials(out) if t["status"] in ("complete", "cached")]
    with sqlite3.connect(out / "study.db") as db:  # the killed trial is still RUNNING in the study
        assert db.execute("select count(*) from trials where state = 'RUNNING'").fetchone()[0] == 1

    resumed = _cli(recipe, "-o", out)
    stdout, stderr = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, stderr
    assert "interrupted by a stopped tune" in stdout
    trials = _trials(out)
    by_number = {t["number"]: t for t in trials}
    for t in before:  # every trial finished before the kill is there, unchanged
        assert by_number[t["number"]] == t
    interrupted = [t for t in trials if t["status"] == "interrupted"]
    assert len(interrupted) == 1
    finished = [t for t in trials if t["status"] in ("complete", "cached", "pruned", "refused", "failed")]
    assert len(finished) == 3
    # the interrupted candidate was asked again
    assert any(t["params"] == interrupted[0]["params"] for t in finished if t["number"] > interrupted[0]["number"])
    assert (out / "best-x86-host.yaml").is_file()
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_budgets_no_candidate_meets_name_the_closest_and_exit_1(tmp_path):
    # A model file and --data (as `edgepress quantize --data` takes it), budgets from the command line.
    from edgepress.models import zoo
    from edgepress.models.datasets import load_dataset

    model = zoo.train("seed_cnn", load_dataset("digits", train_size=400, test_size=100), epochs=1)
    model.save(tmp_path / "cnn.keras")
    out = tmp_path / "out"
    result = runner.invoke(app, ["tune", str(tmp_path / "cnn.keras"), "--data", "digits", "--device", "x86-host",
                                 "--max-bytes", "100", "--max-accuracy-drop", "50%", "--trials", "1",
                                 "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert "closest" in result.output and "max_bytes" in result.output
    data = json.loads((out / "tune.json").read_text())
    assert data["passed"] is False and data["best"]["x86-host"] is None
    assert data["closest"]["x86-host"]["misses"]["max_bytes"] > 0
    assert not list(out.glob("best-*.yaml"))


def test_a_ray_address_that_does_not_answer_exits_2(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    result = runner.invoke(app, ["tune", str(_recipe(tmp_path)), "--ray", f"127.0.0.1:{port}", "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert f"No Ray head answers at 127.0.0.1:{port}" in result.output and "ray start --head" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_a_corrupt_study_file_exits_2_and_is_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "study.db").write_bytes(b"this is not a database" * 100)
    result = runner.invoke(app, ["tune", str(_recipe(tmp_path)), "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "cannot be read as an Optuna study" in result.output and "Traceback" not in result.output
    assert (out / "study.db").read_bytes() == b"this is not a database" * 100
    assert sorted(p.name for p in out.iterdir()) == ["study.db"]


def test_a_recipe_with_steps_is_refused(tmp_path):
    steps = [{"type": "structured_prune", "ratio": 0.5}]
    result = runner.invoke(app, ["tune", str(_recipe(tmp_path, steps=steps)), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "gets its steps from the tune" in result.output
