"""Benchmarking on other devices: a real OpenSSH server on 127.0.0.1, and adb replayed from captures.

The ssh tests start their own sshd (from Debian's openssh-server, which .ci/run installs) on a free
loopback port with a throwaway host key and user key, and benchmark through it for real.
No Android phone exists here: the adb tests put a stand-in `adb` on PATH that replays real
benchmark_model output (tests/deploy/fixtures); the device part of the adb path is not exercised.
"""

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgepress.deploy import export_onnx, export_tflite, measure
from edgepress.deploy.transports import DeviceError, parse_benchmark_model
from edgepress.devices import load_device

FIXTURES = Path(__file__).parent / "fixtures"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real OpenSSH server on 127.0.0.1 that accepts one throwaway key, for the current user."""
    if not Path(SSHD).exists():
        pytest.fail("the OpenSSH server is not installed: `apt-get install openssh-server` (.ci/run does this)")
    d = tmp_path_factory.mktemp("sshd")
    _keygen(d / "host_key")
    _keygen(d / "user_key")
    _keygen(d / "stranger_key")
    shutil.copy(d / "user_key.pub", d / "authorized_keys")
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile {d / 'sshd.pid'}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
        "Subsystem sftp internal-sftp\nLogLevel ERROR\n"
    )
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory, when run as root
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert server.poll() is None, server.stderr.read().decode()
            time.sleep(0.1)
    host_key = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    (d / "empty_known_hosts").write_text("")
    (d / "remote").mkdir()
    yield {"dir": d, "port": port}
    server.terminate()
    server.wait(timeout=10)


def _ssh_device(sshd, **reach):
    """The x86-host profile, reached over ssh at the test's server (this machine plays the device)."""
    d = sshd["dir"]
    defaults = {"kind": "ssh", "host": "127.0.0.1", "port": sshd["port"], "user": getpass.getuser(),
                "key": str(d / "user_key"), "known_hosts": str(d / "known_hosts"), "python": sys.executable,
                "workdir": str(d / "remote"), "timeout_s": 60}
    return load_device("x86-host").with_overrides({"name": "loopback-ssh", "reach": {**defaults, **reach}})


@pytest.fixture(scope="module")
def artifacts(trained_cnn, digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts")
    return {
        "tflite": export_tflite(trained_cnn, out / "m.tflite", "int8", calibration=digits.calibration(50)),
        "onnx": export_onnx(trained_cnn, out / "m.onnx", "fp32"),
    }


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_ssh_benchmark_matches_the_local_one(sshd, artifacts, digits, fmt):
    data = (digits.x_test[:100], digits.y_test[:100])

    remote = measure(artifacts[fmt], data, runs=20, warmup=2, device=_ssh_device(sshd))
    local = measure(artifacts[fmt], data, runs=20, warmup=2, device="x86-host")

    assert remote["device"] == "loopback-ssh" and local["device"] == "x86-host"
    assert remote["predictions"] == local["predictions"] and remote["accuracy"] == local["accuracy"]
    assert remote["output_checksum"] == local["output_checksum"]
    assert remote["artifact"]["sha256"] == artifacts[fmt].sha256
    assert 0 < remote["latency_ms"]["p50"] <= remote["latency_ms"]["p99"]
    assert list((sshd["dir"] / "remote").iterdir()) == []  # the device's work folder was removed


def _refused(device, artifacts, digits) -> str:
    with pytest.raises(DeviceError) as e:
        measure(artifacts["tflite"], (digits.x_test[:10], digits.y_test[:10]), runs=2, warmup=0, device=device)
    return str(e.value)


def test_unreachable_host(sshd, artifacts, digits):
    message = _refused(_ssh_device(sshd, port=_free_port(), connect_timeout_s=3), artifacts, digits)
    assert "loopback-ssh" in message and "unreachable" in message


def test_refused_authentication(sshd, artifacts, digits):
    message = _refused(_ssh_device(sshd, key=str(sshd["dir"] / "stranger_key")), artifacts, digits)
    assert "authentication was refused" in message


def test_unknown_host_key_is_refused_by_default(sshd, artifacts, digits):
    message = _refused(_ssh_device(sshd, known_hosts=str(sshd["dir"] / "empty_known_hosts")), artifacts, digits)
    assert "host key" in message


def test_device_without_a_runtime(sshd, artifacts, digits, tmp_path):
    # A Python on the "device" that has numpy and nothing else: -S drops site-packages, PYTHONPATH adds numpy only.
    only_numpy = tmp_path / "only_numpy"
    only_numpy.mkdir()
    numpy_dir = Path(np.__file__).parent
    for entry in numpy_dir.parent.iterdir():
        if entry.name == "numpy" or entry.name.startswith("numpy.libs") or entry.name.startswith("numpy-"):
            (only_numpy / entry.name).symlink_to(entry)
    python = f"env PYTHONPATH={only_numpy} {sys.executable} -S"
    message = _refused(_ssh_device(sshd, python=python), artifacts, digits)
    assert "the runner refused" in message and "pip install" in message


def test_a_run_that_times_out(sshd, artifacts, digits):
    message = _refused(_ssh_device(sshd, python="sh -c 'sleep 30'", timeout_s=4), artifacts, digits)
    assert "within 4 s" in message


def test_a_device_that_drops_mid_run(sshd, artifacts, digits):
    # The "runner" kills the sshd process serving its connection ("sshd: user@notty", found by walking up
    # its ancestors; never the listening sshd): the connection drops while the run is under way.
    python = ("sh -c 'p=$PPID; while [ \"$p\" -gt 1 ]; do case \"$(ps -o args= -p $p)\" in *@notty*) "
              "kill -9 $p; exit;; esac; p=$(ps -o ppid= -p $p | tr -d \" \"); done'")
    message = _refused(_ssh_device(sshd, python=python), artifacts, digits)
    assert "loopback-ssh" in message and "dropped" in message


# -- adb: no phone here; a stand-in adb replays real benchmark_model output ---------------------------


def test_parse_benchmark_model_with_percentiles():
    r = parse_benchmark_model((FIXTURES / "benchmark_model_xnnpack.txt").read_text())
    assert r["load_ms"] == pytest.approx(87.639)
    assert r["latency_ms"]["runs"] == 50 and r["latency_ms"]["mean"] == pytest.approx(105.784)
    assert r["latency_ms"]["p50"] == pytest.approx(105.718) and r["latency_ms"]["p95"] == pytest.approx(106.281)
    assert r["memory"]["overall_mb"] == pytest.approx(14.8164) and r["accuracy"] is None


def test_parse_benchmark_model_without_percentiles():
    r = parse_benchmark_model((FIXTURES / "benchmark_model_no_percentiles.txt").read_text())
    assert r["latency_ms"]["mean"] == pytest.approx(971.535) and r["latency_ms"]["p50"] is None
    assert r["latency_ms"]["min"] == pytest.approx(911.877) and r["first_inference_ms"] == pytest.approx(1041.765)
    assert r["memory"]["init_mb"] == pytest.approx(6.14844)


def test_parse_benchmark_model_output_without_timings():
    with pytest.raises(Exception, match="did not print its timings"):
        parse_benchmark_model("INFO: STARTING!\nERROR: Could not open 'x.tflite'.\n")


@pytest.fixture
def fake_adb(tmp_path, monkeypatch):
    """A stand-in for adb (there is no phone here) that logs its calls and replays a captured output."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "adb.log"
    script = bin_dir / "adb"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nargs = sys.argv[1:]\nopen({str(log)!r}, 'a').write(repr(args) + '\\n')\n"
        "if args[:1] == ['-s']: args = args[2:]\n"
        "if args[0] == 'shell' and 'benchmark_model' in args[1]:\n"
        f"    name = 'benchmark_model_gpu.txt' if '--use_gpu=true' in args[1] else 'benchmark_model_xnnpack.txt'\n"
        f"    sys.stdout.write(open({str(FIXTURES)!r} + '/' + name).read())\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


@pytest.mark.parametrize("delegate, flag", [("xnnpack", "--use_xnnpack=true"), ("gpu", "--use_gpu=true")])
def test_adb_pushes_and_drives_benchmark_model(fake_adb, artifacts, delegate, flag):
    phone = load_device("android-arm64").with_overrides({"delegate": delegate, "reach": {"serial": "R58M"}})

    result = measure(artifacts["tflite"], runs=30, warmup=5, device=phone)

    calls = [eval(line) for line in fake_adb.read_text().splitlines()]  # noqa: S307 (our own log)
    assert all(call[:2] == ["-s", "R58M"] for call in calls)
    push = next(c for c in calls if c[2] == "push")
    assert push[3] == str(artifacts["tflite"].path) and push[4].endswith("/m.tflite")
    bench = next(c for c in calls if "benchmark_model" in c[-1])[-1]
    assert f"--graph={push[4]}" in bench and "--num_threads=4" in bench and "--num_runs=30" in bench
    assert flag in bench
    assert any(c[2] == "shell" and c[3].startswith("rm -rf") for c in calls)  # cleaned up
    assert result["device"] == "android-arm64" and result["accuracy"] is None and result["latency_ms"]["mean"] > 0
    # benchmark_model prints no per-run times: the p50 interval is the normal approximation from its std.
    lat = result["latency_ms"]
    if lat["p50"] is not None:
        half = 1.96 * 1.2533 * lat["std"] / lat["runs"] ** 0.5
        assert lat["p50_ci"] == pytest.approx([lat["p50"] - half, lat["p50"] + half])


def test_adb_without_a_device(tmp_path, monkeypatch, artifacts):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "adb").write_text("#!/bin/sh\necho 'adb: no devices/emulators found' >&2\nexit 1\n")
    (bin_dir / "adb").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(DeviceError, match="adb cannot see the device"):
        measure(artifacts["tflite"], device="android-arm64")


# -- a recipe with several targets -------------------------------------------------------------------


def test_recipe_measures_every_target_and_keeps_results_when_one_fails(sshd, tmp_path):
    import edgepress
    from edgepress.errors import GateFailed

    d = sshd["dir"]
    loopback = {"name": "x86-host", "label": "loopback-ssh", "threads": 2, "reach": {
        "kind": "ssh", "host": "127.0.0.1", "port": sshd["port"], "user": getpass.getuser(),
        "key": str(d / "user_key"), "known_hosts": str(d / "known_hosts"), "python": sys.executable,
        "workdir": str(d / "remote")}}
    recipe = edgepress.Recipe.from_dict({
        "name": "targets",
        "model": {"zoo": "seed_cnn", "train_epochs": 1},
        "data": {"dataset": "digits", "train_size": 300, "test_size": 60, "calibration_samples": 20},
        "exports": [{"format": "tflite", "precision": "fp32"}, {"format": "onnx", "precision": "fp32"}],
        "targets": ["x86-host", loopback, "nvidia-gpu",
                    {"name": "rpi4", "reach": {"host": "127.0.0.1", "port": _free_port(), "connect_timeout_s": 2}}],
        "measure": {"runs": 5, "warmup": 1},
    })

    report = edgepress.run(recipe, tmp_path / "run")

    rows = {(a["device"], a["format"]) for a in report.artifacts}
    assert {("x86-host", "tflite"), ("x86-host", "onnx"), ("loopback-ssh", "tflite"), ("loopback-ssh", "onnx")} <= rows
    ssh_rows = [a for a in report.artifacts if a["device"] == "loopback-ssh"]
    assert all(a["latency"]["threads"] == 2 and a["metrics"]["agreement"] is not None for a in ssh_rows)
    for a in ssh_rows:  # timed interleaved on the device, each with its interval and the device's load
        assert a["latency"]["p50_ci"][0] <= a["latency"]["p50"] <= a["latency"]["p50_ci"][1]
        assert a["host"]["cores"] and a["host"]["load_before"] is not None
    assert ("nvidia-gpu", "onnx") in rows and ("nvidia-gpu", "tflite") not in rows  # no TFLite runtime there
    gpu = next(a for a in report.artifacts if a["device"] == "nvidia-gpu")
    assert gpu["runtime"]["providers"] == ["CPUExecutionProvider"]  # no GPU here: the fallback is recorded
    assert any("CUDAExecutionProvider" in w for w in gpu["runtime"]["warnings"])
    assert report.results["devices"]["rpi4"]["error"] and "unreachable" in report.results["devices"]["rpi4"]["error"]
    md = (report.run_dir / "report.md").read_text()
    assert "Warnings:" in md and "device rpi4 failed" in md
    with pytest.raises(GateFailed, match="device rpi4 failed"):
        report.check()
