"""Reaching a device: run the benchmark there and bring back its JSON result.

- local: the runner in a subprocess of this machine.
- ssh: copy the runner, the artifact and the evaluation data to a fresh folder on the device
  (sha256 checked there before running), run, fetch the JSON, remove the folder. The system's
  `ssh`/`scp` are used with BatchMode (never prompt), host keys checked against known_hosts by
  default, every remote argument quoted, and a timeout on every step.
- adb: push the artifact to the phone and drive LiteRT's `benchmark_model` there; its output is
  parsed (init time, warm-up and steady-state timings, memory footprint). It measures speed and
  memory only: benchmark_model does not score accuracy.

Every failure is a `DeviceError` naming the device and what went wrong, so a run can record it
and go on with the other devices.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from edgepress.deploy import runner
from edgepress.devices import Device
from edgepress.errors import EdgepressError


class DeviceError(EdgepressError):
    """A device could not be reached or could not run the benchmark."""


class RunnerRefused(DeviceError):
    """The device was reached but its runner refused the job (e.g. its runtime cannot load an artifact: an op, op
    version or schema it lacks; no runtime for the format). A fault of that artifact there, not of the device."""


def run_benchmark(
    device: Device, artifact: Path | list[Path], eval_npz: Path | None, runs: int, warmup: int, threads: int,
    adaptive: dict | None = None,
) -> dict:
    """Benchmark `artifact` on `device`; return the runner's JSON (or its adb equivalent).

    A list of artifacts is timed interleaved in one runner process (its JSON has `artifacts`, see
    runner.benchmark_many); adb runs one artifact at a time. `adaptive` holds the runner's max_runs,
    target_ci_width and max_seconds (None: exactly `runs` runs).
    """
    artifacts = list(artifact) if isinstance(artifact, list | tuple) else [artifact]
    if device.reach.kind == "adb":
        if len(artifacts) != 1:
            raise DeviceError(f"Device '{device.name}' is reached over adb, which times one artifact at a time.")
        return _adb(device, artifacts[0], runs, warmup, threads)
    options = ["--runs", str(runs), "--warmup", str(warmup), "--threads", str(threads), "--json", "--predictions"]
    for flag, value in (adaptive or {}).items():
        if value is not None:
            options += [f"--{flag.replace('_', '-')}", str(value)]
    options += _runtime_options(device, artifacts)
    return _run_runner(device, artifacts, eval_npz, options)


def run_profile(device: Device, artifacts: list[Path], op_files: list[list[Path]], runs: int, warmup: int,
                threads: int) -> dict:
    """Time each of `artifacts` op by op on `device`, in one runner process (its --profile; a .tflite file's ops as
    the files of its `op_files` list, edgepress/deploy/op_models.py); return the runner's JSON."""
    if device.reach.kind == "adb":
        raise DeviceError(f"Device '{device.name}' is reached over adb, where edgepress drives LiteRT's "
                          "benchmark_model, which edgepress does not yet ask for its op profile.")
    options = ["--profile", "--runs", str(runs), "--warmup", str(warmup), "--threads", str(threads), "--json"]
    options += _runtime_options(device, artifacts)
    tagged = [(i, file) for i, files in enumerate(op_files) for file in files]
    return _run_runner(device, artifacts, None, options, tagged)


def _runtime_options(device: Device, artifacts: list[Path]) -> list[str]:
    """The runner options that make it run files as the device profile says: ONNX execution providers, and for
    TFLite the builtin kernels alone when the profile says `delegate: none` (LiteRT applies XNNPACK otherwise)."""
    options = []
    if any(a.suffix == ".onnx" for a in artifacts):
        options += ["--providers", ",".join(device.execution_providers)]
    if device.delegate == "none" and any(a.suffix == ".tflite" for a in artifacts):
        options += ["--delegate", "none"]
    return options


def _run_runner(device: Device, artifacts: list[Path], eval_npz: Path | None, options: list[str],
                op_files: Sequence[tuple[int, Path]] = ()) -> dict:
    """The runner on `device` with these artifacts, data and options; `op_files` are (artifact index, op model)."""
    if device.reach.kind == "ssh":
        return _ssh(device, artifacts, eval_npz, options, list(op_files))
    command = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), runner.__file__, *map(str, artifacts),
               *options]
    for index, file in op_files:
        command += ["--op-model", f"{index}:{file}"]
    if eval_npz is not None:
        command += ["--data", str(eval_npz)]
    return _result(device, _call(device, command, "run the benchmark", device.reach.timeout_s))


# The local runner must die with edgepress, even with a SIGKILL that no handler sees (a killed run would leave it
# measuring). On Linux the kernel kills it when its parent dies (PR_SET_PDEATHSIG), armed here, after exec: a
# preexec_fn would run Python between fork and exec, which is unsafe in a process with TensorFlow's threads.
# (The signal follows the parent *thread* that started the child: that thread waits in subprocess.run, so it
# outlives the child.) Elsewhere a thread polls for the parent. Then runner.py runs as a script would (its folder
# first on sys.path).
_DIE_WITH_PARENT = """\
import os, runpy, sys
parent = int(sys.argv.pop(1))
if sys.platform.startswith("linux"):
    import ctypes, signal
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
else:
    import threading, time
    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()
if os.getppid() != parent:  # the parent died before it was armed
    os._exit(1)
del sys.argv[0]
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


# -- ssh --------------------------------------------------------------------------------------------


def _ssh(device: Device, artifacts: list[Path], eval_npz: Path | None, options: list[str],
         op_files: Sequence[tuple[int, Path]] = ()) -> dict:
    if not device.reach.host:
        raise DeviceError(f"Device '{device.name}' is reached over ssh but its profile has no reach.host.")
    # The work folder on the device is flat: files of the same name (one recipe's artifact in two runs, timed
    # together by `compare`) go there under names that differ.
    with _distinct_names([*artifacts, *(file for _, file in op_files)]) as staged:
        named = staged[: len(artifacts)]
        return _ssh_run(device, named, eval_npz, options,
                        [(index, file) for (index, _), file in zip(op_files, staged[len(artifacts):], strict=True)])


@contextmanager
def _distinct_names(paths: list[Path]) -> Iterator[list[Path]]:
    """`paths` themselves when their file names differ; else links to them (copies where a link cannot be made)
    named <i>-<name> in a temporary folder, removed after the block."""
    if len({p.name for p in paths}) == len(paths):
        yield paths
        return
    with tempfile.TemporaryDirectory(prefix="edgepress-ssh-") as folder:
        staged = []
        for i, path in enumerate(paths):
            link = Path(folder) / f"{i}-{path.name}"
            try:
                os.link(path, link)
            except OSError:  # another file system, or links not allowed
                shutil.copyfile(path, link)
            staged.append(link)
        yield staged


def _ssh_run(device: Device, artifacts: list[Path], eval_npz: Path | None, options: list[str],
             op_files: Sequence[tuple[int, Path]]) -> dict:
    reach = device.reach
    folder = f"{reach.workdir.rstrip('/')}/edgepress-{uuid.uuid4().hex[:12]}"
    files = [Path(runner.__file__), *artifacts, *(file for _, file in op_files)] + ([eval_npz] if eval_npz else [])
    remote = [*shlex.split(reach.python), "runner.py", *(a.name for a in artifacts), *options]
    for index, file in op_files:
        remote += ["--op-model", f"{index}:{file.name}"]
    for a in artifacts:
        remote += ["--expect-sha256", _sha256(a)]
    if eval_npz is not None:
        remote += ["--data", eval_npz.name, "--expect-data-sha256", _sha256(eval_npz)]
    _call(device, _ssh_command(device, f"mkdir -p -- {shlex.quote(folder)}"), "make a work folder", reach.timeout_s)
    try:
        host = f"[{reach.host}]" if ":" in reach.host else reach.host  # scp reads host:path, so an IPv6 address
        target = f"{reach.user}@{host}:{folder}/" if reach.user else f"{host}:{folder}/"
        # `--` ends the options: no file name or destination is ever read as one.
        _call(device, ["scp", "-q", *_ssh_options(device), "-P", str(reach.port), "--", *map(str, files), target],
              "copy the runner, artifact and data", reach.timeout_s)
        command = f"cd {shlex.quote(folder)} && " + " ".join(shlex.quote(a) for a in remote)
        return _result(device, _call(device, _ssh_command(device, command), "run the benchmark", reach.timeout_s))
    finally:
        try:
            _call(device, _ssh_command(device, f"rm -rf -- {shlex.quote(folder)}"), "clean up", reach.timeout_s)
        except DeviceError:
            pass  # the result (or the first error) matters more than a leftover temporary folder


def _ssh_options(device: Device) -> list[str]:
    reach = device.reach
    options = [
        "-o", "BatchMode=yes",  # never wait for a password prompt
        "-o", f"ConnectTimeout={max(1, int(reach.connect_timeout_s))}",
        "-o", f"StrictHostKeyChecking={'yes' if reach.check_host_key else 'no'}",
        "-o", "LogLevel=ERROR",
    ]
    if reach.known_hosts:
        options += ["-o", f"UserKnownHostsFile={reach.known_hosts}"]
    if reach.key:
        options += ["-i", reach.key, "-o", "IdentitiesOnly=yes"]
    return options


def _destination(device: Device) -> str:
    reach = device.reach
    return f"{reach.user}@{reach.host}" if reach.user else reach.host


def _ssh_command(device: Device, remote: str) -> list[str]:
    # `--` ends the options: the destination is never read as one (the profile's check of host and user is the
    # first guard; this one holds for a Device built without it).
    return ["ssh", *_ssh_options(device), "-p", str(device.reach.port), "--", _destination(device), remote]


# -- adb --------------------------------------------------------------------------------------------


def _adb(device: Device, artifact: Path, runs: int, warmup: int, threads: int) -> dict:
    reach = device.reach
    adb = ["adb"] + (["-s", reach.serial] if reach.serial else [])
    folder = f"/data/local/tmp/edgepress-{uuid.uuid4().hex[:12]}"
    graph = f"{folder}/{artifact.name}"
    flags = [f"--graph={graph}", f"--num_threads={threads}", f"--num_runs={runs}", f"--warmup_runs={warmup}"]
    if device.delegate == "gpu":
        flags.append("--use_gpu=true")
    else:
        flags.append(f"--use_xnnpack={'true' if device.delegate == 'xnnpack' else 'false'}")
    _call(device, [*adb, "shell", f"mkdir -p {shlex.quote(folder)}"], "make a work folder", reach.timeout_s)
    try:
        _call(device, [*adb, "push", str(artifact), graph], "push the artifact", reach.timeout_s)
        command = " ".join(shlex.quote(a) for a in [reach.benchmark_model, *flags])
        output = _call(device, [*adb, "shell", command], "run benchmark_model", reach.timeout_s)
    finally:
        try:
            _call(device, [*adb, "shell", f"rm -rf {shlex.quote(folder)}"], "clean up", reach.timeout_s)
        except DeviceError:
            pass
    result = parse_benchmark_model(output)
    result["artifact"] = {"path": str(artifact), "sha256": _sha256(artifact), "bytes": artifact.stat().st_size}
    result["threads"], result["batch"] = threads, 1
    return result


def parse_benchmark_model(output: str) -> dict:
    """The numbers in LiteRT benchmark_model's log, in the runner's JSON shape (milliseconds).

    Steady-state statistics come from the last `count=` line; newer versions add p5/median/p95.
    """
    def number(pattern: str) -> float | None:
        found = re.search(pattern, output)
        return float(found.group(1)) if found else None

    stats = re.findall(r"count=(\d+)(.*)", output)
    if not stats or number(r"Inference \(avg\): ([\d.e+]+)") is None:
        last = output.strip().splitlines()[-1:] or ["(no output)"]
        raise EdgepressError(f"benchmark_model did not print its timings; its last line was: {last[0]}")
    count, fields = stats[-1]
    values = dict(re.findall(r"(\w+)=([\d.e+]+)", fields))

    def ms(key: str) -> float | None:
        return float(values[key]) / 1000 if key in values else None

    init_mb, overall_mb = number(r"init=([\d.e+]+)"), number(r"overall=([\d.e+]+)")
    init_us = number(r"Init: ([\d.e+]+)")
    if init_us is None:
        raise EdgepressError("benchmark_model printed its timings but no 'Init:' line (the model's load time): "
                             "this version's output is not one edgepress reads. Use LiteRT's benchmark_model "
                             "(2.x), or give reach.benchmark_model the path of one.")
    return {
        "runtime": {"name": "benchmark_model", "version": None, "providers": [], "warnings": []},
        "load_ms": init_us / 1000,
        "first_inference_ms": (number(r"First inference: ([\d.e+]+)") or 0) / 1000,
        "latency_ms": {
            "runs": int(count), "warmup": None, "mean": ms("avg"), "std": ms("std"), "min": ms("min"),
            "max": ms("max"), "p50": ms("median"), "p90": None, "p95": ms("p95"), "p99": None,
            "p50_ci": _median_interval(ms("median"), ms("std"), int(count)), "p90_ci": None,
            "confidence": 0.95, "stopped": "runs", "times_ms": [],
        },
        "memory": {
            "init_mb": init_mb, "overall_mb": overall_mb,
            "peak_rss_bytes": int(overall_mb * 1024 * 1024) if overall_mb is not None else None,
        },
        "samples": 0, "accuracy": None, "per_class": {},
    }


def _median_interval(median: float | None, std: float | None, count: int) -> list[float] | None:
    """An approximate 95% interval of the median from benchmark_model's summary (it prints no per-run times):
    the normal approximation, standard error 1.2533 * std / sqrt(n)."""
    if median is None or std is None or count < 2:
        return None
    half = 1.96 * 1.2533 * std / count**0.5
    return [max(0.0, median - half), median + half]


# -- shared -----------------------------------------------------------------------------------------

# What ssh and adb say when the device, not the model, is the problem.
_DIAGNOSES = [
    (r"Permission denied|Authentication failed|Too many authentication failures", "authentication was refused"),
    (r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED",
     "its host key is not in known_hosts (or changed); add it with ssh-keyscan after checking it"),
    (r"Connection refused|timed out|No route to host|Could not resolve hostname|Network is unreachable",
     "it is unreachable"),
    (r"Connection closed|Connection reset|Broken pipe|closed by remote host|lost connection",
     "the connection dropped"),
    (r"device '.*' not found|no devices/emulators found|device offline|device unauthorized",
     "adb cannot see the device"),
]


def _call(device: Device, command: list[str], what: str, timeout_s: float) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise DeviceError(f"Device '{device.name}': could not {what} within {timeout_s:.0f} s "
                          "(reach.timeout_s in its profile).") from None
    except FileNotFoundError:
        raise DeviceError(f"Device '{device.name}': '{command[0]}' is not installed on this machine.") from None
    if done.returncode != 0:
        text = (done.stderr or done.stdout).strip()
        runner_error = re.search(r"runner\.py: error: (.*)", text)
        if runner_error:
            raise RunnerRefused(f"Device '{device.name}': the runner refused: {runner_error.group(1)}")
        for pattern, diagnosis in _DIAGNOSES:
            if re.search(pattern, text):
                raise DeviceError(f"Device '{device.name}' ({_where(device)}): could not {what}: {diagnosis}. "
                                  f"{text.splitlines()[-1]}")
        last = text.splitlines()[-1] if text else f"exit code {done.returncode}"
        raise DeviceError(f"Device '{device.name}' ({_where(device)}): could not {what}: {last}")
    return done.stdout


def _result(device: Device, stdout: str) -> dict:
    """The runner's JSON; anything else means the run was cut short."""
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        raise DeviceError(
            f"Device '{device.name}' ({_where(device)}) returned no result: the connection dropped or the "
            "runner was killed mid-run (out of memory?)."
        ) from None


def _where(device: Device) -> str:
    reach = device.reach
    if reach.kind == "ssh":
        return f"ssh {_destination(device)}:{reach.port}"
    if reach.kind == "adb":
        return f"adb {reach.serial or 'default device'}"
    return "this machine"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
