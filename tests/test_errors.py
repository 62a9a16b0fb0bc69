"""The CLI's one error boundary (cli._guard): Ctrl-C, and a bug in edgepress, never end in a traceback.

Bad input (exit 2) and failed gates (exit 1) are covered by test_cli.py. Here: a real SIGINT sent to a real
`edgepress run` while it trains (exit 130, one line), and an internal error forced inside an in-process run by
replacing one of edgepress's own functions with one that raises (exit 70, the traceback saved to a file).
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edgepress import files
from edgepress.cli import EXIT_BUG, EXIT_INTERRUPTED, app, main

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()

TINY = {
    "name": "tiny",
    "model": {"zoo": "seed_mlp", "train_epochs": 1},
    "data": {"dataset": "digits", "train_size": 300, "test_size": 60, "calibration_samples": 20},
    "exports": [{"format": "tflite", "precision": "fp32"}],
    "measure": {"runs": 3, "warmup": 1},
}


def _recipe(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended (exit {process.returncode}) before {path.name} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.02)


def test_ctrl_c_during_training_ends_the_run_with_one_line_and_exit_130(tmp_path):
    # A prune step with many epochs: the run trains it from when models/0-source.keras is written.
    recipe = _recipe(tmp_path, steps=[{"type": "prune", "target_sparsity": 0.5, "fine_tune_epochs": 200}])
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "edgepress.cli", "run", str(recipe), "-o", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        _wait_for(out / "models" / "0-source.keras", process)
        time.sleep(0.5)  # into the prune step's training
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert "Traceback" not in stdout + stderr and "KeyboardInterrupt" not in stdout + stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted (Ctrl-C)"), stderr
    assert not (out / "models" / "1-prune.keras").exists()  # stopped during the step, as meant
    assert not (out / "results.json").exists()
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]  # the interrupted write cleaned up after itself


def _bug(*args, **kwargs):
    raise ZeroDivisionError("a bug planted by the test")


def _assert_reported(output: str, folder: Path) -> Path:
    text = " ".join(output.split())
    assert "Traceback" not in output
    assert "internal error: ZeroDivisionError: a bug planted by the test" in text
    assert "This is a bug in edgepress, not in your input" in text and "Please report it" in text
    (saved,) = folder.glob("edgepress-error-*.txt")
    assert str(saved) in output  # whole, on one line
    content = saved.read_text()
    assert "Traceback (most recent call last)" in content and "a bug planted by the test" in content
    assert "command:" in content
    return saved


def test_a_bug_during_a_run_is_reported_with_its_traceback_in_the_run_directory(tmp_path, monkeypatch):
    from edgepress.artifact import Artifact

    # The run directory exists by then: an export records its artifact well after the directory is made.
    monkeypatch.setattr(Artifact, "record", classmethod(_bug))
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(_recipe(tmp_path)), "-o", str(out)])
    assert result.exit_code == EXIT_BUG, result.output
    _assert_reported(result.output, out)


def test_a_bug_before_the_run_directory_exists_is_reported_in_the_temp_dir(tmp_path, monkeypatch):
    import edgepress.models.datasets

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setattr(edgepress.models.datasets, "load_dataset", _bug)  # the run's first step
    files.prepare_run_dir(tmp_path / "an earlier run")  # this process has a run directory from before...
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(_recipe(tmp_path)), "-o", str(out)])
    assert result.exit_code == EXIT_BUG, result.output
    _assert_reported(result.output, temp)
    assert not list((tmp_path / "an earlier run").glob("edgepress-error-*"))  # ...which is not this run's


def test_a_bug_outside_a_guarded_command_is_still_no_traceback(tmp_path, monkeypatch, capsys):
    import edgepress.models.zoo

    class Broken(dict):
        items = _bug

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setattr(edgepress.models.zoo, "ZOO", Broken())
    monkeypatch.setattr(sys, "argv", ["edgepress", "models"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == EXIT_BUG
    captured = capsys.readouterr()
    _assert_reported(captured.out + captured.err, temp)
