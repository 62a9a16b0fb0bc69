"""The demo recipe measured on an emulated 64-bit Raspberry Pi next to this machine: a real aarch64 userland (Debian
bookworm arm64 under qemu-user, its own Python and the aarch64 wheels pip gets for it: numpy, ai-edge-litert,
onnxruntime) reached over SSH by its own sshd, brought up by tests/deploy/arm_board.py (cached in
~/.cache/edgepress/arm64-board, built when missing: see README, "An emulated Raspberry Pi").

Not skipped where the board cannot be brought up: the test fails and says why (run setup.sh as root first).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy import arm_board

DEMO = Path(__file__).parents[2] / "edgepress" / "demo.yaml"
EDGEPRESS = Path(sys.executable).parent / "edgepress"


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    try:
        root = arm_board.build()
        with arm_board.Board(root, tmp_path_factory.mktemp("board")) as up:
            yield up
    except arm_board.BoardError as e:
        pytest.fail(f"The emulated arm64 board could not be brought up: {e}")


def test_the_board_is_aarch64_with_the_runner_wheels_a_pi_user_gets(board):
    code = ("import platform, numpy, onnxruntime, ai_edge_litert; "
            "print(platform.machine(), ai_edge_litert.__version__, onnxruntime.__version__)")
    done = subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={board.folder / 'known_hosts'}",
                           "-i", str(board.folder / "user_key"), "-p", str(board.port), "root@127.0.0.1",
                           f"/opt/edgepress-runner/bin/python -c '{code}'"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    machine, litert, onnxruntime = done.stdout.split()
    assert machine == "aarch64" and litert and onnxruntime


def test_the_demo_recipe_is_measured_on_the_board_and_here(board, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([str(EDGEPRESS), "run", str(DEMO), "-o", str(out), "--device", "x86-host",
                           "--device", str(board.profile)], capture_output=True, text=True, timeout=2400)
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]  # 1: a gate failed, not a crash
    results = json.loads((out / "results.json").read_text())
    assert results["devices"]["rpi5-emulated"] == {"reach": "ssh", "error": None, "memory_budget_mb": None,
                                                   "emulated": True}
    rows = {(a["device"], a["name"]): a for a in results["artifacts"]}
    names = {name for _, name in rows}
    assert len(names) == 8  # every precision both profiles list: tflite fp32 fp16 dynamic int8 int16x8, onnx three
    for name in names:
        for device in ("x86-host", "rpi5-emulated"):
            row = rows[(device, name)]
            assert row.get("error") is None, row.get("error")
            assert 0.5 < row["metrics"]["accuracy"] <= 1 and 0.5 < row["metrics"]["agreement"] <= 1
        arm = rows[("rpi5-emulated", name)]
        assert arm["host"]["machine"] == "aarch64" and arm["latency"]["emulated"] is True
        assert arm["latency"]["p50"] > 0 and "max_p50_ms" not in arm["gates"]  # recorded, never judged
        assert arm["runtime"]["name"] == {"tflite": "ai_edge_litert", "onnx": "onnxruntime"}[arm["format"]]
    across = {entry["artifact"]: entry for entry in results["across_devices"]}
    assert set(across) == names
    for name, entry in across.items():
        assert (entry["reference"], entry["device"]) == ("x86-host", "rpi5-emulated")
        assert 0 <= entry["agreement"] <= 1 and entry["same_outputs"] in (True, False)
        x86, arm = rows[("x86-host", name)], rows[("rpi5-emulated", name)]
        assert entry["accuracy_change"] == pytest.approx(arm["metrics"]["accuracy"] - x86["metrics"]["accuracy"])
        assert entry["flagged"] == (abs(entry["accuracy_change"]) > 0.02 + 1e-9)  # the demo's max_accuracy_drop
    assert results["best"]["rpi5-emulated"] is None  # emulated latency is never recommended on
    report = (out / "report.md").read_text()
    assert "rpi5-emulated vs x86-host" in report and "none (emulated latency)" in report


def test_older_runtimes_on_the_board_run_what_they_can_and_name_what_they_cannot(board, tmp_path):
    """Version skew: the same files on the board's LiteRT 1.x and on tflite-runtime 2.14 (its last wheels, numpy 1.x),
    installed beside the current LiteRT by arm_board.sh. tflite-runtime has no int4 DEQUANTIZE: that artifact is
    reported on that device with the reason, every other row is measured."""
    import edgepress

    def older(label: str, venv: str, **more) -> dict:
        return {"name": str(board.profile), "label": label, "reach": {"python": f"/opt/{venv}/bin/python"}, **more}

    known = [{"format": "tflite", "precision": "int4_weight", "reason": "tflite-runtime 2.14 has no int4 DEQUANTIZE"}]
    recipe = edgepress.Recipe.from_dict({
        "name": "skew",
        "model": {"zoo": "seed_cnn", "train_epochs": 1},
        "data": {"dataset": "digits", "train_size": 300, "test_size": 60, "calibration_samples": 20},
        "exports": [{"format": "tflite", "precision": p} for p in ("fp32", "int8", "int4_weight")],
        "targets": ["x86-host", older("rpi5-litert1", "litert1"),
                    older("rpi5-tflite-runtime", "tflite-runtime", known_failures=known)],
        "measure": {"runs": 5, "warmup": 1, "target_ci_width": None, "profile": False},
    })

    report = edgepress.run(recipe, tmp_path / "run")

    rows = {(a["device"], a["precision"]): a for a in report.artifacts}
    assert len(rows) == 9 and all(d["error"] is None for d in report.results["devices"].values())
    for precision in ("fp32", "int8", "int4_weight"):
        litert1 = rows[("rpi5-litert1", precision)]
        assert litert1["runtime"]["name"] == "ai_edge_litert" and litert1["runtime"]["version"].startswith("1.")
        assert litert1["metrics"]["agreement"] is not None
    for precision in ("fp32", "int8"):
        assert rows[("rpi5-tflite-runtime", precision)]["runtime"]["name"] == "tflite_runtime"
        assert rows[("rpi5-tflite-runtime", precision)]["metrics"]["accuracy"] is not None
    refused = rows[("rpi5-tflite-runtime", "int4_weight")]
    assert "tflite_runtime 2.14" in refused["error"] and "lacks an op" in refused["error"]
    assert refused["metrics"]["accuracy"] is None and not refused["passed"]
    assert any("known not to run" in n and "rpi5-tflite-runtime" in n for n in report.results["notes"])
    skew = next(e for e in report.results["across_devices"]
                if e["device"] == "rpi5-tflite-runtime" and e["artifact"] == refused["name"])
    assert skew["error"] == refused["error"]
    assert "was not measured" in (report.run_dir / "report.md").read_text()
