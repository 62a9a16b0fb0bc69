"""Measure artifacts on a device: the on-device runner, run there, its JSON brought back.

On this machine the runner runs in its own process, which keeps TensorFlow's threads and memory
out of the numbers and makes the host measurement the very code that runs on a device.

Several artifacts on one device (`measure_many`) are each run alone first, for their accuracy,
load time and memory (a process per model, so one model's memory is not another's), then timed
together in one runner process, interleaved in rounds (runner.time_interleaved): a burst of load
from elsewhere on the machine then falls on every artifact alike, and their intervals compare.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgepress.artifact import Artifact
from edgepress.deploy import runner
from edgepress.deploy.transports import RunnerRefused, run_benchmark
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
    max_runs: int | None = None,
    target_ci_width: float | None = None,
    max_seconds: float | None = None,
) -> dict:
    """Latency (with its confidence interval), load time, peak memory and (with data) accuracy of `artifact`.

    `data` is a Dataset (its test split is used, fitted to the artifact's input) or an (x, y) pair
    already fitted, or None for latency only. `threads` defaults to the device profile's.
    `reference` holds the source model's top-1 predictions on the same samples; when given, the
    result has `agreement`, the fraction of samples where the artifact predicts the same.
    At least `runs` timed runs; up to `max_runs` until the p50's 95% interval is at most
    `target_ci_width` of the p50 or `max_seconds` have passed (runner.time_interleaved).
    Returns the runner's JSON (see edgepress/deploy/runner.py) plus `agreement` and `device`.
    Raises DeviceError (an EdgepressError) when the device cannot be reached or cannot run it.
    """
    device = load_device(device) if isinstance(device, str) else device
    if isinstance(data, Dataset):
        path = _checked_path(artifact, device)
        shape = runner.open_model(str(path)).input_shape[1:]
        data = fit_to_input(data.x_test, tuple(shape), data.name), data.y_test
    return measure_many([artifact], data, device, runs, warmup, threads, reference, max_runs, target_ci_width,
                        max_seconds)[0]


def measure_many(
    artifacts: list[Artifact | str | Path],
    data: tuple[np.ndarray, np.ndarray] | None,
    device: Device | str = "x86-host",
    runs: int = 100,
    warmup: int = 10,
    threads: int | None = None,
    reference: np.ndarray | None = None,
    max_runs: int | None = None,
    target_ci_width: float | None = None,
    max_seconds: float | None = None,
    keep_going: bool = False,
    lm_prompt: int | None = None,
) -> list[dict]:
    """`measure` for every artifact of `artifacts` on one device, their latencies timed interleaved.

    `lm_prompt`: the artifacts are decoder LMs (a KV cache): each is scored on the data's token windows through its
    prefill and decode, its `latency_ms` is one decode step's, and its `lm` holds time to first token for a prompt
    of this many tokens and decode tokens/s (runner.lm_benchmark), timed interleaved with the others'.
    `data` is an (x, y) pair already fitted to the artifacts' input, or None. Returns one result
    per artifact, in order. `max_seconds` caps the interleaved timing of all of them together.
    Over adb (LiteRT's benchmark_model, no per-run times) each artifact is timed alone, `runs`
    runs, and its p50 interval is a normal approximation from benchmark_model's standard deviation.
    With `keep_going`, an artifact the device's runner refuses (its runtime lacks an op, an op version or the
    format) gets {"error": why, "device"} and the others are measured; a device that cannot be reached still
    raises DeviceError.
    """
    device = load_device(device) if isinstance(device, str) else device
    paths = [_checked_path(a, device) for a in artifacts]
    threads = threads or device.threads
    adaptive = {"max_runs": max_runs, "target_ci_width": target_ci_width, "max_seconds": max_seconds,
                "lm_prompt": lm_prompt}
    if lm_prompt is not None and device.reach.kind == "adb":
        raise EdgepressError(f"Device '{device.name}' is reached over adb, whose benchmark_model times one signature; "
                             "decoder LMs are measured by the runner (local or ssh).")
    with tempfile.TemporaryDirectory() as work:
        # Each artifact scored on the data in the layout it takes (an NHWC file from a PyTorch model: channels last).
        inputs = [None if data is None else _in_artifact_layout(data[0], a) for a in artifacts]
        evals: list[Path | None] = []
        for i, x in enumerate(inputs):
            if x is None or device.reach.kind == "adb":  # benchmark_model times, it does not score
                evals.append(None)
                continue
            evals.append(Path(work) / f"eval{i}.npz")
            np.savez(evals[-1], x=x.astype(np.float32), y=data[1])
        def alone(path: Path, eval_npz: Path | None, count: int, options: dict | None) -> dict:
            try:
                return run_benchmark(device, path, eval_npz, count, warmup, threads, options)
            except RunnerRefused as e:
                if not keep_going:
                    raise
                return {"error": str(e)}

        if len(paths) == 1 or device.reach.kind == "adb":
            results = [alone(p, e, runs, adaptive) for p, e in zip(paths, evals, strict=True)]
        else:
            # Scored alone (one timed run: the latency comes from the interleaved rounds below).
            results = [alone(p, e, 1, {"lm_prompt": lm_prompt}) for p, e in zip(paths, evals, strict=True)]
            loaded = [i for i, result in enumerate(results) if "error" not in result]
            if lm_prompt is not None and loaded:  # time to first token and a decode step of every file, interleaved
                timed = run_benchmark(device, [paths[i] for i in loaded], None, runs, warmup, threads, adaptive)
                for i, t in zip(loaded, timed["artifacts"], strict=True):
                    results[i]["latency_ms"], results[i]["host"] = t["latency_ms"], timed["host"]
                    results[i]["lm"].update({k: t["lm"][k] for k in ("ttft_ms", "decode_tokens_per_s")})
                return _finish(results, device, reference)
            same_shape = data is not None and len({x.shape for x in inputs}) == 1  # else each times a random input
            if loaded:
                timed = time_together([paths[i] for i in loaded], device, runs, warmup, threads,
                                      inputs[0][:1] if same_shape else None, max_runs=max_runs,
                                      target_ci_width=target_ci_width, max_seconds=max_seconds)
                for i, (latency, host) in zip(loaded, timed, strict=True):
                    results[i]["latency_ms"], results[i]["host"] = latency, host
    return _finish(results, device, reference)


def _finish(results: list[dict], device: Device, reference: np.ndarray | None) -> list[dict]:
    """Each result with its device, and its agreement with the source's predictions when both are known."""
    for result in results:
        result["device"] = device.name
        if reference is not None and result.get("predictions") is not None:
            result["agreement"] = float(np.mean(np.asarray(result["predictions"]) == reference))
    return results


def time_together(
    paths: list[Path],
    device: Device,
    runs: int = 100,
    warmup: int = 10,
    threads: int | None = None,
    x: np.ndarray | None = None,
    max_runs: int | None = None,
    target_ci_width: float | None = None,
    max_seconds: float | None = None,
) -> list[tuple[dict, dict]]:
    """Latency only: the files of `paths` timed interleaved in one runner process on `device` (not over adb).

    `x` is the timed input (one sample, in the files' layout), else each file times a random input.
    Returns (latency_ms, host) per file, in order: the runner's statistics and the machine they were taken on.
    """
    adaptive = {"max_runs": max_runs, "target_ci_width": target_ci_width, "max_seconds": max_seconds}
    with tempfile.TemporaryDirectory() as work:
        latency_npz = None
        if x is not None:
            latency_npz = Path(work) / "latency.npz"
            np.savez(latency_npz, x=np.asarray(x, dtype=np.float32))
        timed = run_benchmark(device, list(paths), latency_npz, runs, warmup, threads or device.threads, adaptive)
    if "artifacts" not in timed:  # one file: the runner's single-artifact JSON
        return [(timed["latency_ms"], timed["host"])]
    return [(t["latency_ms"], timed["host"]) for t in timed["artifacts"]]


def _in_artifact_layout(x: np.ndarray, artifact) -> np.ndarray:
    """NCHW images moved channels last for an NHWC artifact that takes them so (from a PyTorch model)."""
    if not isinstance(artifact, Artifact):
        return x
    sample = tuple(artifact.inputs[0].shape[1:]) if artifact.inputs else ()
    if artifact.layout != "NHWC" or x.ndim != 4 or tuple(x.shape[1:]) == sample:
        return x
    moved = x.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(moved) if tuple(moved.shape[1:]) == sample else x


def _checked_path(artifact: Artifact | str | Path, device: Device) -> Path:
    path = Path(artifact.path if isinstance(artifact, Artifact) else artifact)
    if not path.is_file():
        raise EdgepressError(f"Artifact {path} not found.")
    if not device.runs(path.suffix.lstrip(".")):
        raise EdgepressError(f"Device '{device.name}' has no runtime for {path.suffix} files (runtimes: "
                             f"{', '.join(device.runtimes)}).")
    return path
