"""Measure an artifact on a device: the on-device runner, run there, its JSON brought back.

On this machine the runner runs in its own process, which keeps TensorFlow's threads and memory
out of the numbers and makes the host measurement the very code that runs on a device.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgepress.artifact import Artifact
from edgepress.deploy import runner
from edgepress.deploy.transports import run_benchmark
from edgepress.devices import Device, load_device
from edgepress.errors import EdgepressError
from edgepress.models.datasets import Dataset, fit_to_input


def measure(
    artifact: Artifact | str | Path,
    data: Dataset | tuple[np.ndarray, np.ndarray] | None = None,
    runs: int = 100,
    warmup: int = 10,
    threads: int | None = None,
    reference: np.ndarray | None = None,
    device: Device | str = "x86-host",
) -> dict:
    """Latency, load time, peak memory and (with data) accuracy of `artifact` on `device`.

    `data` is a Dataset (its test split is used, fitted to the artifact's input) or an (x, y) pair
    already fitted (images in the layout of the model the artifact came from: an NHWC artifact of an NCHW
    PyTorch model gets them moved channels last), or None for latency only. `threads` defaults to the device profile's.
    `reference` holds the source model's top-1 predictions on the same samples; when given, the
    result has `agreement`, the fraction of samples where the artifact predicts the same.
    Returns the runner's JSON (see edgepress/deploy/runner.py) plus `agreement` and `device`.
    Raises DeviceError (an EdgepressError) when the device cannot be reached or cannot run it.
    """
    device = load_device(device) if isinstance(device, str) else device
    path = Path(artifact.path if isinstance(artifact, Artifact) else artifact)
    if not path.is_file():
        raise EdgepressError(f"Artifact {path} not found.")
    if not device.runs(path.suffix.lstrip(".")):
        raise EdgepressError(f"Device '{device.name}' has no runtime for {path.suffix} files (runtimes: "
                             f"{', '.join(device.runtimes)}).")
    if isinstance(data, Dataset):
        shape = runner.open_model(str(path)).input_shape[1:]
        data = fit_to_input(data.x_test, tuple(shape), data.name), data.y_test
    elif data is not None and isinstance(artifact, Artifact):
        data = _in_artifact_layout(data[0], artifact), data[1]
    with tempfile.TemporaryDirectory() as work:
        eval_npz = None
        if data is not None and device.reach.kind != "adb":  # benchmark_model times, it does not score
            eval_npz = Path(work) / "eval.npz"
            np.savez(eval_npz, x=data[0].astype(np.float32), y=data[1])
        result = run_benchmark(device, path, eval_npz, runs, warmup, threads or device.threads)
    result["device"] = device.name
    if reference is not None and result.get("predictions") is not None:
        result["agreement"] = float(np.mean(np.asarray(result["predictions"]) == reference))
    return result


def _in_artifact_layout(x: np.ndarray, artifact: Artifact) -> np.ndarray:
    """NCHW images moved channels last for an NHWC artifact that takes them so (from a PyTorch model)."""
    sample = tuple(artifact.inputs[0].shape[1:]) if artifact.inputs else ()
    if artifact.layout != "NHWC" or x.ndim != 4 or tuple(x.shape[1:]) == sample:
        return x
    moved = x.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(moved) if tuple(moved.shape[1:]) == sample else x
