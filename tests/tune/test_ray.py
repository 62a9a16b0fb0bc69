"""A tune through a real Ray head on 127.0.0.1 (2 CPUs), started here with `ray start --head` and reached by its
address, as a user reaches a cluster: the trials run as Ray tasks, tune.json has the shape of a local tune."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import edgepress

pytest.importorskip("ray")
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    port = _free_port()
    # A short temp dir of our own (Ray's unix sockets have a path limit; other Ray users keep /tmp/ray).
    temp = Path(f"/tmp/ep-ray-{os.getpid()}")
    ray = Path(sys.executable).with_name("ray")
    # The workers import edgepress from this checkout, as the test process does.
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    log = tmp_path_factory.mktemp("ray") / "head.log"
    with open(log, "w") as out:
        head = subprocess.Popen([str(ray), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                                 "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                                 f"--temp-dir={temp}", "--block"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert head.poll() is None, log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(1)
        time.sleep(3)  # the raylet registers a moment after the GCS port opens
        yield f"127.0.0.1:{port}"
    finally:
        # Stop the head we started: its whole process group (ray start, GCS, raylet, workers), nothing else.
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(2)
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        head.wait()


def test_a_tiny_tune_runs_its_trials_as_ray_tasks(ray_head, tmp_path):
    recipe = edgepress.Recipe.from_dict({
        "name": "tiny",
        "model": {"zoo": "seed_cnn", "train_epochs": 1},
        "data": {"dataset": "digits", "train_size": 400, "test_size": 100, "calibration_samples": 20},
        "measure": {"runs": 10, "warmup": 1, "threads": 1},
        "gates": {"max_accuracy_drop": 0.5},
        "tune": {"trials": 3, "space": {"ratio": [0.3, 0.6], "fine_tune_epochs": [1], "distill": [False],
                                        "precisions": ["tflite:fp32", "tflite:dynamic"]}},
    })
    result = edgepress.tune(recipe, tmp_path / "out", ray=ray_head)
    data = json.loads((tmp_path / "out" / "tune.json").read_text())
    assert data == result.results
    assert len(data["trials"]) == 3
    ran = [t for t in data["trials"] if t["status"] == "complete"]
    assert ran and all(t["rows"] and t["chosen"]["x86-host"]["p50_ms"] > 0 for t in ran)
    # each trial (and the source measurement) ran in a Ray worker process, not in this one
    source = json.loads((tmp_path / "out" / "source" / "tune-source.json").read_text())
    here = f"{socket.gethostname()}:{os.getpid()}"
    assert source["worker"] != here and all(t["worker"] != here for t in ran)
    assert data["best"]["x86-host"] is not None and (tmp_path / "out" / "best-x86-host.yaml").is_file()
    # the same keys as a local tune's trials
    assert set(ran[0]) >= {"number", "status", "params", "models", "rows", "chosen", "params_count", "macs",
                           "devices", "duration_s"}
