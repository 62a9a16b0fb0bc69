"""Measure an artifact on this host: the on-device runner, run here in its own process.

A separate process keeps TensorFlow's threads and memory out of the numbers, and makes the host
measurement the very code that runs on a device.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgepress.artifact import Artifact
from edgepress.deploy import runner
from edgepress.errors import EdgepressError
from edgepress.models.datasets import Dataset, fit_to_input


def measure(
    artifact: Artifact | str | Path,
    data: Dataset | tuple[np.ndarray, np.ndarray],
    runs: int = 100,
    warmup: int = 10,
    threads: int = 1,
    reference: np.ndarray | None = None,
    timeout_s: float = 600.0,
) -> dict:
    """Latency, load time, peak memory and accuracy of `artifact` on the test split of `data`.

    `data` is a Dataset (its test split is used, fitted to the artifact's input) or an (x, y) pair
    already fitted. `reference` holds the source model's top-1 predictions on the same samples; when
    given, the result has `agreement`, the fraction of samples where the artifact predicts the same.
    Returns the runner's JSON (see edgepress/deploy/runner.py) plus `agreement`.
    """
    path = Path(artifact.path if isinstance(artifact, Artifact) else artifact)
    if not path.is_file():
        raise EdgepressError(f"Artifact {path} not found.")
    if isinstance(data, Dataset):
        shape = runner.open_model(str(path)).input_shape[1:]
        x, y = fit_to_input(data.x_test, tuple(shape), data.name), data.y_test
    else:
        x, y = data
    with tempfile.TemporaryDirectory() as work:
        eval_npz = Path(work) / "eval.npz"
        np.savez(eval_npz, x=x.astype(np.float32), y=y)
        command = [
            sys.executable, runner.__file__, str(path), "--data", str(eval_npz), "--runs", str(runs),
            "--warmup", str(warmup), "--threads", str(threads), "--predictions", "--json",
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise EdgepressError(
                f"Measuring {path.name} took longer than {timeout_s:.0f} s; "
                "lower measure.runs or raise measure.timeout_s."
            ) from None
    if done.returncode != 0:
        raise EdgepressError(f"Measuring {path.name} failed: {done.stderr.strip().splitlines()[-1:]}")
    result = json.loads(done.stdout)
    if reference is not None:
        result["agreement"] = float(np.mean(np.asarray(result["predictions"]) == reference))
    return result
