"""Where trials run: in this process, or as Ray tasks on a cluster.

A trial is a plain recipe run with `edgepress.run`; `run_trial` turns its report into a small dict (the
trial's measurements), the same whichever executor ran it, so a Ray tune's tune.json has the shape of a
local one.

Why Optuna ask/tell in the driver, not Ray Tune: the study (its SQLite file in the run directory) is the one
record of a tune, written only by the driver, so a killed tune resumes from it and a finished one extends, the
same with or without Ray; Ray only runs `run_trial` where there are CPUs (and devices). Ray Tune would add a
second record (its experiment directory and checkpoints) to keep consistent with the study, its own resume
rules, and a dependency the local tune does not need. Measurements happen inside the task, so a device reached
over ssh from a worker is measured from that worker.
"""

from __future__ import annotations

import os
import socket
import time

from edgepress.errors import EdgepressError, Hopeless, Refused, first_line

# Keys of a report row a tune keeps (results.json's artifact rows, without the bulky check and runtime details).
_ROW_KEYS = ("name", "device", "format", "precision", "path", "bytes", "gzip_bytes", "steps", "metrics", "latency",
             "gates", "passed", "accuracy_aware")


def run_trial(recipe: dict, run_dir: str, floor: float | None = None, progress=None) -> dict:
    """Run one trial's recipe into `run_dir` and return its measurements.

    `floor`: a trial whose test accuracy after its first fine-tune epoch is below it is stopped there, before
    any export (status pruned; see `edgepress.run`'s first_epoch_floor).
    Bad input and errors inside a run become status failed with the reason: one trial never stops a tune.
    """
    import edgepress
    from edgepress.recipe import Recipe

    started = time.perf_counter()
    result: dict = {"status": "complete", "reason": None, "run_dir": str(run_dir),
                    "worker": f"{socket.gethostname()}:{os.getpid()}"}
    try:
        report = edgepress.run(Recipe.from_dict(recipe), run_dir, progress, first_epoch_floor=floor)
    except Hopeless as e:
        return {**result, "status": "pruned", "first_epoch_accuracy": e.accuracy,
                "duration_s": round(time.perf_counter() - started, 1),
                "reason": f"{e} (the accuracy budget less the hopeless margin)"}
    except Refused as e:  # the plan refused these choices (a ratio that removes every head): told as infeasible
        return {**result, "status": "refused", "reason": str(e), "duration_s": round(time.perf_counter() - started, 1)}
    except EdgepressError as e:
        return {**result, "status": "failed", "reason": str(e), "duration_s": round(time.perf_counter() - started, 1)}
    except Exception as e:  # a library failing on one candidate (a converter crash) fails that trial only
        return {**result, "status": "failed", "reason": f"{type(e).__name__}: {first_line(e)}",
                "duration_s": round(time.perf_counter() - started, 1)}
    results = report.results
    rows = [{k: a[k] for k in _ROW_KEYS if k in a} for a in results["artifacts"]]
    for row, a in zip(rows, results["artifacts"], strict=True):
        if a.get("lm"):  # a decoder LM's measures, without the raw times and the greedy tokens
            lm = a["lm"]
            row["lm"] = {"decode_tokens_per_s": lm["decode_tokens_per_s"], "ttft_ms": lm["ttft_ms"]["p50"],
                         "cache_len": lm["cache_len"], "prompt_len": lm["prompt_len"]}
        if (a.get("quantization") or {}).get("float_ops"):  # which export choice made it (space.choice_of_row)
            row["float_ops"] = a["quantization"]["float_ops"]
        if a.get("float_layers"):
            row["float_layers"] = [f["layer"] if isinstance(f, dict) and "layer" in f else f for f in a["float_layers"]]
    return {**result, "duration_s": round(time.perf_counter() - started, 1), "rows": rows,
            "models": [{k: m.get(k) for k in ("stage", "accuracy", "params", "macs")}
                       | {k: m[k] for k in ("perplexity", "file") if m.get(k) is not None} for m in results["models"]],
            "source": results["source"], "devices": results["devices"]}


class _Done:
    """A local trial's handle: it ran when it was submitted."""

    def __init__(self, result: dict) -> None:
        self.result = result


class _Labelled:
    """The run's progress, each message prefixed with the trial it belongs to."""

    def __init__(self, progress, label: str) -> None:
        self.progress, self.label = progress, label

    def update(self, message: str) -> None:
        if self.progress is not None:
            self.progress.update(f"{self.label}: {message}")

    def done(self, message: str) -> None:
        if self.progress is not None:
            self.progress.done(f"{self.label}: {message}")


class LocalExecutor:
    """Runs each trial in this process when it is submitted (one at a time: latency is measured on the host)."""

    kind = "local"
    parallel = 1

    def __init__(self, progress=None) -> None:
        self.progress = progress

    def submit(self, recipe: dict, run_dir: str, floor: float | None = None, label: str = ""):
        return _Done(run_trial(recipe, run_dir, floor, _Labelled(self.progress, label)))

    def wait(self, handles: list, timeout: float | None = None) -> list:
        """The handles that are done (here: all of them), with their results."""
        return [(h, h.result) for h in handles]

    def close(self) -> None:
        pass


class RayExecutor:
    """Runs each trial as a Ray task (1 CPU each) on the cluster at `address` ('auto' or HOST:PORT)."""

    kind = "ray"

    def __init__(self, address: str, parallel: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise EdgepressError("--ray needs Ray: pip install 'edgepress[ray]'.") from None
        if address != "auto":
            _check_reachable(address)
        try:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, logging_level="ERROR")
        except Exception as e:  # ConnectionError, or Ray's own errors for a head that is not a Ray head
            raise EdgepressError(f"Could not connect to the Ray cluster at {address}: {first_line(e)}. Start one with "
                                 "`ray start --head` and pass --ray HOST:PORT (its GCS address).") from None
        self.ray = ray
        self.parallel = parallel or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._task = ray.remote(num_cpus=1, max_retries=0)(run_trial)

    def submit(self, recipe: dict, run_dir: str, floor: float | None = None, label: str = ""):
        return self._task.remote(recipe, run_dir, floor)

    def wait(self, handles: list, timeout: float | None = None) -> list:
        ready, _ = self.ray.wait(handles, num_returns=1, timeout=timeout)
        done = []
        for ref in ready:
            try:
                done.append((ref, self.ray.get(ref)))
            except Exception as e:  # the worker died (node lost, out of memory): that trial failed
                done.append((ref, {"status": "failed", "reason": f"Ray task failed: {first_line(e)}", "rows": []}))
        return done

    def close(self) -> None:
        self.ray.shutdown()


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast, with a clear message, when nothing answers at HOST:PORT (ray.init would wait a minute)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise EdgepressError(f"--ray {address}: give 'auto' or the head's HOST:PORT (e.g. 127.0.0.1:6379).")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise EdgepressError(f"No Ray head answers at {address} ({e.strerror or e}). Start one there with "
                             f"`ray start --head --port={port}`, or check the address.") from None


def executor_for(ray_address: str | None, parallel: int | None, progress=None):
    return RayExecutor(ray_address, parallel) if ray_address else LocalExecutor(progress)
