import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgepress.cli import app
from edgepress.devices import load_device, shipped_profiles
from edgepress.errors import EdgepressError

runner = CliRunner()
ISSUE_PROFILES = {"android-arm64", "rpi4", "rpi5", "jetson-orin", "nvidia-gpu", "x86-host"}


def test_shipped_profiles_validate_and_say_how_to_reach_them():
    assert ISSUE_PROFILES <= set(shipped_profiles())
    kinds = {name: load_device(name).reach.kind for name in ISSUE_PROFILES}
    assert kinds == {"android-arm64": "adb", "rpi4": "ssh", "rpi5": "ssh", "jetson-orin": "ssh",
                     "nvidia-gpu": "local", "x86-host": "local"}
    gpu = load_device("jetson-orin")
    assert gpu.execution_providers[:2] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    assert ("onnx", "fp16") in {(c.format, c.precision) for c in gpu.precisions} and not gpu.runs("tflite")


def test_shipped_profiles_name_a_channel_multiple_with_its_reason():
    multiples = {name: load_device(name).channel_multiple for name in ISSUE_PROFILES}
    assert multiples == {"android-arm64": 8, "rpi4": 8, "rpi5": 8, "jetson-orin": 32, "nvidia-gpu": 16, "x86-host": 8}
    for name in ISSUE_PROFILES:  # the hardware reason sits beside the value
        lines = shipped_profiles()[name].read_text().splitlines()
        assert lines[lines.index(f"channel_multiple: {multiples[name]}") - 1].startswith("#")
    mine = load_device("x86-host").model_dump()
    del mine["channel_multiple"]
    assert type(load_device("x86-host")).model_validate(mine).channel_multiple == 1  # a user's profile: no preference
    with pytest.raises(EdgepressError, match="channel_multiple"):
        load_device("x86-host").with_overrides({"channel_multiple": 0})


def test_a_users_profile_file_and_overrides(tmp_path):
    profile = load_device("rpi4").model_dump()
    profile.update(name="my-board", threads=2)
    (tmp_path / "my-board.yaml").write_text(json.dumps(profile))  # JSON is YAML

    board = load_device(str(tmp_path / "my-board.yaml")).with_overrides({"reach": {"host": "10.1.2.3"}})

    assert board.name == "my-board" and board.threads == 2
    assert board.reach.host == "10.1.2.3" and board.reach.user == "pi"  # nested reach fields merge


@pytest.mark.parametrize("bad, message", [
    ({"reach": {"hots": "x"}}, "reach.hots"), ({"threads": 0}, "threads"), ({"delegate": "npu"}, "delegate")])
def test_bad_overrides_are_named(bad, message):
    with pytest.raises(EdgepressError, match=message):
        load_device("rpi4").with_overrides(bad)


def test_unknown_device_lists_the_shipped_ones():
    with pytest.raises(EdgepressError, match="rpi5"):
        load_device("raspberry")


def test_devices_command_lists_profiles():
    result = runner.invoke(app, ["devices"])
    assert result.exit_code == 0 and all(name in result.output for name in ISSUE_PROFILES)


def test_bench_command_measures_an_existing_artifact(trained_cnn, digits, tmp_path):
    from edgepress.deploy import export_tflite

    artifact = export_tflite(trained_cnn, tmp_path / "m.tflite", "fp32")
    np.savez(tmp_path / "eval.npz", x=digits.x_test[:50], y=digits.y_test[:50])

    result = runner.invoke(app, ["bench", str(artifact.path), "--device", "x86-host", "--data",
                                 str(tmp_path / "eval.npz"), "--runs", "5", "--json", str(tmp_path / "r.json")])

    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved[0]["device"] == "x86-host" and saved[0]["samples"] == 50 and saved[0]["accuracy"] > 0.5
    assert "m.tflite" in result.output


def test_bench_on_an_unreachable_device_exits_non_zero(trained_cnn, tmp_path):
    from edgepress.deploy import export_tflite

    artifact = export_tflite(trained_cnn, tmp_path / "m.tflite", "fp32")
    profile = load_device("rpi4").model_dump()
    profile["reach"].update(host="127.0.0.1", port=9, connect_timeout_s=2)
    (tmp_path / "pi.yaml").write_text(json.dumps(profile))
    result = runner.invoke(app, ["bench", str(artifact.path), "--device", str(tmp_path / "pi.yaml")])
    assert result.exit_code == 2 and "unreachable" in result.output and "Traceback" not in result.output


def _closure(names: list[str]) -> set[str]:
    """The distributions `names` need on this platform, and theirs, as installed here."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(names)
    while todo:
        dist = metadata.distribution(todo.pop())
        if dist.metadata["Name"].lower() in seen:
            continue
        seen.add(dist.metadata["Name"].lower())
        for req in map(Requirement, dist.requires or []):
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def test_runner_in_a_fresh_venv_without_tensorflow_matches_the_host_measurement(trained_cnn, digits, tmp_path):
    """The runner's promise: numpy and a runtime are enough. The venv holds only numpy, ai-edge-litert and
    onnxruntime (and what they need), linked from this installation so no download is needed."""
    from edgepress.deploy import export_onnx, export_tflite, measure
    from edgepress.deploy import runner as runner_module

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    python = tmp_path / "venv" / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for name in _closure(["numpy", "ai-edge-litert", "onnxruntime"]):
        for top in {Path(str(f)).parts[0] for f in metadata.distribution(name).files or []}:
            source = Path(metadata.distribution(name).locate_file(top))
            if source.exists() and not (site / top).exists() and top != "..":
                (site / top).symlink_to(source)
    assert subprocess.run([str(python), "-c", "import tensorflow"], capture_output=True).returncode != 0

    x, y = digits.x_test[:100], digits.y_test[:100]
    np.savez(tmp_path / "eval.npz", x=x, y=y)
    for artifact in (export_tflite(trained_cnn, tmp_path / "m.tflite", "int8", calibration=digits.calibration(50)),
                     export_onnx(trained_cnn, tmp_path / "m.onnx", "fp32")):
        done = subprocess.run([str(python), runner_module.__file__, str(artifact.path), "--data",
                               str(tmp_path / "eval.npz"), "--runs", "10", "--json", "--predictions"],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        fresh = json.loads(done.stdout)
        host = measure(artifact, (x, y), runs=10, warmup=2)
        assert fresh["predictions"] == host["predictions"] and fresh["accuracy"] == host["accuracy"]
        assert fresh["output_checksum"] == host["output_checksum"]
