"""Kill safety: `edgepress run` SIGKILLed while it trains, while it writes an export and while it measures leaves
only complete files, and the next run into the same directory works.

Four real runs of one small recipe into one directory: three killed (each phase is seen in the run directory or
in the process tree, not guessed from a sleep), the fourth left to finish. Every file on disk is then checked:
JSON loads, each artifact's sha256 is its manifest's, each artifact opens in its runtime, each .keras file is a
whole zip; the directory holds the last run's files only, the killed runs' under previous/.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from edgepress import files

REPO = Path(__file__).resolve().parents[1]

RECIPE = {
    "name": "kill",
    "model": {"zoo": "seed_mlp", "train_epochs": 1},
    "data": {"dataset": "digits", "train_size": 300, "test_size": 100, "check_samples": 100},
    "steps": [{"type": "prune", "target_sparsity": 0.5, "fine_tune_epochs": 2}],
    # ONNX first: tf2onnx takes seconds, a wide window for the export kill.
    "exports": [{"format": "onnx", "precision": "fp32"}, {"format": "tflite", "precision": "fp32"}],
    "measure": {"runs": 200, "warmup": 5},
}

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the runner through /proc")


def _start(recipe: Path, out: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as stream:  # a file, not a pipe: nothing blocks on output nobody reads
        return subprocess.Popen([sys.executable, "-m", "edgepress.cli", "run", str(recipe), "-o", str(out)],
                                stdout=stream, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})


def _runner_of(pid: int) -> int | None:
    """The pid of the runner.py child measuring for `pid`, if one is running."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid and \
                    b"runner.py" in (stat.parent / "cmdline").read_bytes():
                return int(stat.parent.name)
        except OSError:
            continue
    return None


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill_when(process: subprocess.Popen, log: Path, seen, what: str, timeout: float = 180):
    """SIGKILL `process` as soon as `seen()` returns something; return that."""
    deadline = time.monotonic() + timeout
    while True:
        found = seen()
        if found:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            return found
        if process.poll() is not None:
            pytest.fail(f"the run ended (exit {process.returncode}) before {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.005)


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp-" in p.name]


def _check_complete(folder: Path) -> None:
    """Every file a run left in `folder` (any depth) is whole."""
    from edgepress.deploy.runner import open_model

    for path in folder.rglob("*"):
        if ".tmp-" in path.name or not path.is_file():
            continue
        if path.suffix == ".json" or path.name == files.RUN_MARKER:
            data = json.loads(path.read_text())  # raises on a truncated file
            if path.name.endswith((".onnx.json", ".tflite.json")):
                artifact = path.with_name(path.name.removesuffix(".json"))
                assert hashlib.sha256(artifact.read_bytes()).hexdigest() == data["sha256"], artifact
                assert artifact.stat().st_size == data["bytes"], artifact
        elif path.suffix in (".onnx", ".tflite"):
            open_model(str(path))  # a whole model file, which its runtime loads
        elif path.suffix == ".keras":
            with zipfile.ZipFile(path) as z:
                assert z.testzip() is None, path
        elif path.suffix == ".yaml":
            yaml.safe_load(path.read_text())
    results = folder / "results.json"
    if results.exists():
        for row in json.loads(results.read_text())["artifacts"]:
            artifact = folder / "artifacts" / row["name"]
            assert hashlib.sha256(artifact.read_bytes()).hexdigest() == row["sha256"], artifact


def test_kills_leave_complete_files_and_the_next_run_works(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    out, log = tmp_path / "run", tmp_path / "run.log"
    artifacts = out / "artifacts"

    # 1. While it trains: models/0-source.keras is written, then the prune step fine-tunes.
    process = _start(recipe, out, log)
    _kill_when(process, log, lambda: (out / "models" / "0-source.keras").exists(), "the prune step")
    assert not (out / "models" / "1-prune.keras").exists()  # killed during the step
    _check_complete(out)

    # 2. While it writes an export: its temporary is in artifacts/ (converted, then checked before the rename).
    process = _start(recipe, out, log)
    tmp = _kill_when(process, log, lambda: next((p for p in artifacts.glob(".*.tmp-*")), None)
                     if artifacts.is_dir() else None, "an export being written")
    assert tmp.exists()  # a killed run's leftover, which the next run removes
    _check_complete(out)

    # 3. While it measures: the runner is measuring for it; it dies with the run.
    process = _start(recipe, out, log)
    runner = _kill_when(process, log, lambda: _runner_of(process.pid), "a measurement")
    deadline = time.monotonic() + 10
    while _alive(runner) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(runner), "the measuring runner outlived the killed run"
    assert not (out / "results.json").exists()
    _check_complete(out)

    # 4. The next run into the same directory works, and the directory holds its files only.
    process = _start(recipe, out, log)
    assert process.wait(timeout=300) == 0, log.read_text()
    assert "was moved to" in log.read_text()
    assert not _leftovers(out)  # the temporaries of kill 2 were removed
    _check_complete(out)
    results = json.loads((out / "results.json").read_text())
    made = {p.name for p in artifacts.iterdir() if p.suffix in (".onnx", ".tflite")}
    assert made == {row["name"] for row in results["artifacts"]} == {"kill_fp32.onnx", "kill_fp32.tflite"}
    earlier = sorted((out / files.PREVIOUS).iterdir())
    assert len(earlier) == 3  # the three killed runs, kept aside whole
    assert (earlier[1] / "models" / "1-prune.keras").exists() and not (earlier[0] / "models" / "1-prune.keras").exists()
