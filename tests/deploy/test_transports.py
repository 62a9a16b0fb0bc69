"""Benchmarking on other devices: a real SSH server on 127.0.0.1, and adb replayed from captures.

The ssh tests start their own SSH server (asyncssh's, from pip: tests/deploy/ssh_server.py) on a free
loopback port with a throwaway host key and user key; edgepress reaches it with the system's `ssh` and
`scp` clients, as it reaches a real board, and benchmarks through it for real.
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
from tests.deploy import ssh_server

FIXTURES = Path(__file__).parent / "fixtures"
# edgepress drives the system's OpenSSH client. A machine without it fails here (not skips): a green run must mean
# the ssh transport was exercised, and the message says how to get the client.
CLIENT_MISSING = [tool for tool in ("ssh", "scp") if shutil.which(tool) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(d: Path, host: str = "127.0.0.1") -> tuple[subprocess.Popen, int]:
    """The test SSH server on a free port of `host` serving the keys in `d`, once it listens."""
    try:
        return ssh_server.start(d, host)
    except RuntimeError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def ssh_host(tmp_path_factory):
    """A real SSH server on 127.0.0.1 that accepts one throwaway key."""
    if CLIENT_MISSING:
        pytest.fail(f"the OpenSSH client ({', '.join(CLIENT_MISSING)}) is not installed; edgepress uses it to reach "
                    "ssh devices: `apt-get install openssh-client` (Debian, Ubuntu) or your system's equivalent")
    d = tmp_path_factory.mktemp("ssh")
    ssh_server.keys(d)
    server, port = _start_server(d)
    (d / "known_hosts").write_text(ssh_server.known_hosts_line(d, port))
    (d / "empty_known_hosts").write_text("")
    (d / "remote").mkdir()
    yield {"dir": d, "port": port}
    server.kill()
    server.wait(timeout=10)


def _ssh_device(ssh_host, **reach):
    """The x86-host profile, reached over ssh at the test's server (this machine plays the device)."""
    d = ssh_host["dir"]
    defaults = {"kind": "ssh", "host": "127.0.0.1", "port": ssh_host["port"], "user": getpass.getuser(),
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
def test_ssh_benchmark_matches_the_local_one(ssh_host, artifacts, digits, fmt):
    data = (digits.x_test[:100], digits.y_test[:100])

    remote = measure(artifacts[fmt], data, runs=20, warmup=2, device=_ssh_device(ssh_host))
    local = measure(artifacts[fmt], data, runs=20, warmup=2, device="x86-host")

    assert remote["device"] == "loopback-ssh" and local["device"] == "x86-host"
    assert remote["predictions"] == local["predictions"] and remote["accuracy"] == local["accuracy"]
    assert remote["output_checksum"] == local["output_checksum"]
    assert remote["artifact"]["sha256"] == artifacts[fmt].sha256
    assert 0 < remote["latency_ms"]["p50"] <= remote["latency_ms"]["p99"]
    assert list((ssh_host["dir"] / "remote").iterdir()) == []  # the device's work folder was removed


def test_ssh_profiles_every_op_as_the_local_runner_does(ssh_host, artifacts):
    from edgepress.deploy.profile import profile_many

    files = [artifacts["tflite"], artifacts["onnx"]]
    remote = profile_many(files, _ssh_device(ssh_host), runs=5, warmup=1)
    local = profile_many(files, load_device("x86-host"), runs=5, warmup=1)
    for there, here in zip(remote, local, strict=True):
        assert "error" not in there, there
        assert there["device"] == "loopback-ssh" and here["device"] == "x86-host"
        assert [op["name"] for op in there["ops"]] == [op["name"] for op in here["ops"]]
        assert all(op["us"] > 0 for op in there["ops"])
    assert list((ssh_host["dir"] / "remote").iterdir()) == []  # the op models went with the work folder


def _refused(device, artifacts, digits) -> str:
    with pytest.raises(DeviceError) as e:
        measure(artifacts["tflite"], (digits.x_test[:10], digits.y_test[:10]), runs=2, warmup=0, device=device)
    return str(e.value)


def test_unreachable_host(ssh_host, artifacts, digits):
    message = _refused(_ssh_device(ssh_host, port=_free_port(), connect_timeout_s=3), artifacts, digits)
    assert "loopback-ssh" in message and "unreachable" in message


def test_refused_authentication(ssh_host, artifacts, digits):
    message = _refused(_ssh_device(ssh_host, key=str(ssh_host["dir"] / "stranger_key")), artifacts, digits)
    assert "authentication was refused" in message


def test_unknown_host_key_is_refused_by_default(ssh_host, artifacts, digits):
    message = _refused(_ssh_device(ssh_host, known_hosts=str(ssh_host["dir"] / "empty_known_hosts")), artifacts, digits)
    assert "host key" in message


def test_device_without_a_runtime(ssh_host, artifacts, digits, tmp_path):
    # A Python on the "device" that has numpy and nothing else: -S drops site-packages, PYTHONPATH adds numpy only.
    only_numpy = tmp_path / "only_numpy"
    only_numpy.mkdir()
    numpy_dir = Path(np.__file__).parent
    for entry in numpy_dir.parent.iterdir():
        if entry.name == "numpy" or entry.name.startswith("numpy.libs") or entry.name.startswith("numpy-"):
            (only_numpy / entry.name).symlink_to(entry)
    python = f"env PYTHONPATH={only_numpy} {sys.executable} -S"
    message = _refused(_ssh_device(ssh_host, python=python), artifacts, digits)
    assert "the runner refused" in message and "pip install" in message


def test_a_run_that_times_out(ssh_host, artifacts, digits):
    message = _refused(_ssh_device(ssh_host, python="sh -c 'sleep 30'", timeout_s=4), artifacts, digits)
    assert "within 4 s" in message


def test_a_device_that_drops_mid_run(ssh_host, artifacts, digits):
    # A server of its own, which the "runner" kills: the connection drops while the run is under way.
    server, port = _start_server(ssh_host["dir"])
    try:
        known_hosts = ssh_host["dir"] / f"known_hosts_{port}"
        known_hosts.write_text(ssh_server.known_hosts_line(ssh_host["dir"], port))
        device = _ssh_device(ssh_host, port=port, known_hosts=str(known_hosts), python=f"sh -c 'kill -9 {server.pid}'")
        message = _refused(device, artifacts, digits)
    finally:
        server.kill()
        server.wait(timeout=10)
    assert "loopback-ssh" in message and "dropped" in message


# -- host and user are names, never options or shell ----------------------------------------------------

INJECTIONS = ["127.0.0.1; touch {marker}", "$(touch {marker})", "-oProxyCommand=touch {marker}"]


@pytest.mark.parametrize("field", ["host", "user"])
@pytest.mark.parametrize("injection", INJECTIONS)
def test_a_host_or_user_that_is_not_a_name_is_refused(tmp_path, field, injection):
    import yaml

    import edgepress
    from edgepress.errors import EdgepressError
    from edgepress.plan import make_plan

    marker = tmp_path / "marker"
    value = injection.format(marker=marker)
    expected = rf"reach\.{field}: .* is not a (host name|login name)"
    recipe = edgepress.Recipe.from_dict({"model": {"zoo": "seed_mlp"},
                                         "targets": [{"name": "rpi4", "reach": {field: value}}]})
    with pytest.raises(EdgepressError, match=expected):  # a recipe's override of a shipped profile: in the plan
        make_plan(recipe, tmp_path / "run")
    profile = load_device("rpi4").model_dump()
    profile["reach"][field] = value
    (tmp_path / "board.yaml").write_text(yaml.safe_dump(profile))
    with pytest.raises(EdgepressError, match=expected):  # a profile file
        load_device(str(tmp_path / "board.yaml"))
    assert not marker.exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("field", ["host", "user"])
def test_ssh_never_reads_the_destination_as_an_option(ssh_host, artifacts, digits, tmp_path, field):
    from edgepress.deploy import transports

    # A Device changed after validation (pydantic does not check assignments): `--` before the destination still
    # keeps ssh from reading it as -oProxyCommand. The marker folder stays empty (`touch` would also have made
    # "marker@127.0.0.1" from the user's value).
    markers = tmp_path / "markers"
    markers.mkdir()
    device = _ssh_device(ssh_host, user=None) if field == "host" else _ssh_device(ssh_host)
    setattr(device.reach, field, f"-oProxyCommand=touch {markers / 'marker'}")
    _refused(device, artifacts, digits)
    # A one-word remote command, which ssh would otherwise take for the destination (and then run the proxy).
    subprocess.run(transports._ssh_command(device, "true"), capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
    assert list(markers.iterdir()) == []


def test_ssh_to_an_ipv6_address(ssh_host, artifacts, digits):
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("this machine has no IPv6 loopback (::1)")
    server, port = _start_server(ssh_host["dir"], "::1")
    try:
        known_hosts = ssh_host["dir"] / f"known_hosts_{port}"
        known_hosts.write_text(ssh_server.known_hosts_line(ssh_host["dir"], port, "::1"))
        device = _ssh_device(ssh_host, host="::1", port=port, known_hosts=str(known_hosts))
        result = measure(artifacts["tflite"], (digits.x_test[:20], digits.y_test[:20]), runs=2, warmup=0, device=device)
    finally:
        server.kill()
        server.wait(timeout=10)
    assert result["samples"] == 20 and result["accuracy"] is not None


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


# -- local: the runner dies with edgepress -------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has died (this container's init may never reap it)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (the guard itself is portable)")
def test_a_killed_parent_takes_the_local_runner_with_it(artifacts, tmp_path):
    # A parent that measures for a long time (10 million runs); SIGKILL it while its runner is measuring.
    code = ("import sys; from pathlib import Path; from edgepress.deploy.transports import run_benchmark; "
            "from edgepress.devices import load_device; "
            "run_benchmark(load_device('x86-host'), Path(sys.argv[1]), None, 10**7, 0, 1)")
    parent = subprocess.Popen([sys.executable, "-c", code, str(artifacts["tflite"].path)],
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        runner, deadline = None, time.monotonic() + 60
        while runner is None and time.monotonic() < deadline and parent.poll() is None:
            runner = next((c for c in _children(parent.pid)
                           if "runner.py" in Path(f"/proc/{c}/cmdline").read_bytes().decode(errors="replace")), None)
            time.sleep(0.05)
        assert runner is not None, "the runner never started"
        time.sleep(1)  # well into its timed runs
        assert _alive(runner)
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(runner) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(runner), "the runner outlived the killed edgepress process"
    finally:
        parent.kill()
        if runner is not None and _alive(runner):
            os.kill(runner, 9)


# -- a recipe with several targets -------------------------------------------------------------------


def test_recipe_measures_every_target_and_keeps_results_when_one_fails(ssh_host, tmp_path):
    import edgepress
    from edgepress.errors import GateFailed

    d = ssh_host["dir"]
    loopback = {"name": "x86-host", "label": "loopback-ssh", "threads": 2, "reach": {
        "kind": "ssh", "host": "127.0.0.1", "port": ssh_host["port"], "user": getpass.getuser(),
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
