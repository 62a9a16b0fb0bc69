"""Hostile input, round two, the last pieces: a valid `.pt2` that reshapes by its dynamic batch exports to ONNX with
that batch kept; a TFLite call that never returns is stopped (export check and runner); a load that allocates
past its limit is refused naming the file. Real torch, onnxruntime, TensorFlow Lite and LiteRT on tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

HANG_S = 300  # far above these runs' minute on a loaded 2-core machine: reaching it means a hang


def run_cli(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "from edgepress.cli import main; main()", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=HANG_S,
                          env={**os.environ, "COLUMNS": "300", **(env or {})})


# -- a .pt2 whose forward reshapes by x.shape[0] -----------------------------------------------------------------


def _batch_reshaping_program(path: Path) -> Path:
    """A program with a dynamic batch whose forward does `h.reshape(h.shape[0], -1)` then a Linear: a tracer folds
    that size into the sample's batch, and the ONNX file then fails at any other batch (GEMM: Dimension mismatch)."""
    import torch

    from edgepress.models.torch_program import save_torch_program

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rows = torch.nn.Linear(8, 4)
            self.head = torch.nn.Linear(32, 10)

        def forward(self, x):
            h = torch.relu(self.rows(x))
            return self.head(h.reshape(h.shape[0], -1))

    torch.manual_seed(0)
    return save_torch_program(Flat(), torch.zeros(2, 8, 8), path)


def test_a_pt2_that_reshapes_by_its_dynamic_batch_exports_to_onnx_with_the_batch_kept(tmp_path):
    pytest.importorskip("torch")
    import onnxruntime as ort

    from edgepress.models.torch_program import TorchSource

    program = _batch_reshaping_program(tmp_path / "flat.pt2")
    source = TorchSource(program)
    assert source.fixed_batch is None and source.reads_its_shape
    recipe = {
        "name": "flat",
        "model": {"path": str(program)},
        "data": {"dataset": "digits", "train_size": 100, "test_size": 30, "calibration_samples": 10,
                 "check_samples": 12},
        "exports": [{"format": "onnx", "precision": "fp32"}, {"format": "onnx", "precision": "int8_dynamic"}],
        "measure": {"runs": 2, "warmup": 0},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = run_cli(["run", str(tmp_path / "recipe.yaml"), "-o", str(tmp_path / "run")], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    rows = {a["precision"]: a for a in results["artifacts"]}
    assert rows["fp32"]["check"]["top1_agreement"] == 1.0  # checked on 12 samples in one call
    assert rows["fp32"]["metrics"]["accuracy"] == results["source"]["metrics"]["accuracy"]
    fp32 = tmp_path / "run" / "artifacts" / rows["fp32"]["name"]
    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    assert not isinstance(session.get_inputs()[0].shape[0], int)  # the batch is symbolic in the file
    rng = np.random.default_rng(0)
    for batch in (1, 7):
        x = rng.normal(size=(batch, 8, 8)).astype(np.float32)
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, source.predict(x), atol=1e-5)
    quantized = ort.InferenceSession(str(tmp_path / "run" / "artifacts" / rows["int8_dynamic"]["name"]),
                                     providers=["CPUExecutionProvider"])
    assert quantized.run(None, {quantized.get_inputs()[0].name: np.zeros((5, 8, 8), np.float32)})[0].shape == (5, 10)


# -- a TFLite call that never returns -----------------------------------------------------------------------------


def _endless_while_tflite(path: Path) -> Path:
    """A .tflite file whose WHILE loop's condition never turns false (a tf.while_loop on a tensor condition that
    stays true): one invoke never returns, and LiteRT's Python interpreter cannot cancel it."""
    import tensorflow as tf

    class Endless(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def serve(self, x):
            def cond(i, y):
                return tf.reduce_sum(y) > -1.0 + i * 0.0  # |x| summed is never below -1

            _, y = tf.while_loop(cond, lambda i, y: (i + 1.0, y * 1.0), [tf.constant(0.0), tf.abs(x)])
            return y

    module = Endless()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
    path.write_bytes(converter.convert())
    return path


def _plain_tflite(path: Path) -> Path:
    import tensorflow as tf

    class Plain(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def serve(self, x):
            return tf.nn.softmax(x * 2.0)

    module = Plain()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
    path.write_bytes(converter.convert())
    return path


RUNNER = Path(__file__).resolve().parents[1] / "edgepress" / "deploy" / "runner.py"


def test_the_runner_reports_a_tflite_call_that_never_returns_for_its_artifact(tmp_path):
    # The on-device runner (numpy and LiteRT only, no TensorFlow): the untimed first call is watched; the runner
    # says which file did not return, and ends (exit 2) instead of waiting for it.
    path = _endless_while_tflite(tmp_path / "endless.tflite")
    result = subprocess.run([sys.executable, str(RUNNER), str(path), "--runs", "1", "--warmup", "1", "--json"],
                            capture_output=True, text=True, timeout=HANG_S,
                            env={**os.environ, "EDGEPRESS_INVOKE_LIMIT_S": "2"})
    message = " ".join(result.stderr.split())
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{path}: one call of the model did not return within 2 s (a WHILE loop that never ends?)" in message
    assert "Traceback" not in result.stderr and result.stdout == ""


def _in_child(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`code` run by a fresh Python: a TFLite call that never returns keeps running in its thread until the process
    ends, so these tests end theirs (and check that a process with such a thread still ends cleanly)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_S,
                          env={**os.environ, **(env or {})})


def test_open_model_stops_waiting_for_a_tflite_call_at_its_limit_and_refuses_the_next(tmp_path):
    endless, plain = _endless_while_tflite(tmp_path / "endless.tflite"), _plain_tflite(tmp_path / "plain.tflite")
    result = _in_child(f"""
import numpy as np
from edgepress.deploy.runner import RunnerError, open_model
endless = open_model({str(endless)!r}, invoke_limit_s=0.5)
for _ in range(2):
    try:
        endless.predict(np.ones((1, 4), np.float32))
    except RunnerError as e:
        print(e)
# A file that returns is watched the same way and computes as before.
print(open_model({str(plain)!r}, invoke_limit_s=0.5).predict(np.zeros((3, 4), np.float32)).tolist())
""")
    assert result.returncode == 0, result.stderr[-2000:]
    first, second, out = result.stdout.strip().splitlines()[-3:]
    assert first == (f"{endless}: one call of the model did not return within 0.5 s (a WHILE loop that never ends?). "
                     "LiteRT cannot stop a call, so this artifact is not run further.")
    assert second == f"{endless}: an earlier call of the model has not returned; it cannot be called again."
    np.testing.assert_allclose(json.loads(out), 0.25, rtol=1e-6)


def test_bench_measures_the_good_artifact_and_names_the_one_that_never_returns(tmp_path):
    endless = _endless_while_tflite(tmp_path / "endless.tflite")
    plain = _plain_tflite(tmp_path / "plain.tflite")
    result = run_cli(["bench", str(plain), str(endless), "--runs", "2", "--warmup", "1", "--json",
                      str(tmp_path / "bench.json")], tmp_path, {"EDGEPRESS_INVOKE_LIMIT_S": "2"})
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2, output[-3000:]
    assert "could not measure endless.tflite:" in output
    assert "one call of the model did not return within 2 s" in output and "Traceback" not in output
    measured = json.loads((tmp_path / "bench.json").read_text())
    assert [Path(r["artifact"]["path"]).name for r in measured] == ["plain.tflite"]


def test_the_export_check_stops_a_tflite_call_at_edgepress_limit(tmp_path):
    # edgepress's own check of an exported file (deploy/check.py) uses edgepress.limits' limit (60 s by default,
    # EDGEPRESS_INVOKE_LIMIT_S here), not the device runner's 300 s.
    from edgepress.limits import INVOKE_LIMIT_S

    assert INVOKE_LIMIT_S == 60.0
    path = _endless_while_tflite(tmp_path / "endless.tflite")
    result = _in_child(f"""
import numpy as np
from edgepress.deploy.check import compare
from edgepress.errors import EdgepressError

class Identity:  # the model the file is checked against: its outputs do not matter, the file never returns
    def predict(self, x):
        return x

try:
    compare(Identity(), {str(path)!r}, np.ones((2, 4), np.float32))
except EdgepressError as e:
    print(e)
""", {"EDGEPRESS_INVOKE_LIMIT_S": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{path}: one call of the model did not return within 1 s" in result.stdout


# -- a load that allocates more than its limit ----------------------------------------------------------------------


def _constant_bomb(path: Path, values: int) -> Path:
    """A 3 KB ONNX model whose output adds the sum of a ConstantOfShape of `values` floats to its input: it
    allocates 4 * values bytes when the session folds constants or at the first call."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = numpy_helper.from_array(np.array([values // 1000, 1000], np.int64), "shape")
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])),
             helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
             helper.make_node("Flatten", ["x"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w"], ["logits"]),
             helper.make_node("Add", ["logits", "total"], ["y"])]
    w = numpy_helper.from_array(np.full((64, 10), 0.01, np.float32), "w")
    graph = helper.make_graph(nodes, "bomb", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 10])], [shape, w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _run_recipe(tmp_path: Path, model_path: Path, env: dict, data: dict | None = None) -> subprocess.CompletedProcess:
    recipe = {"name": "capped", "model": {"path": str(model_path)},
              "data": data or {"dataset": "digits", "train_size": 100, "test_size": 20, "calibration_samples": 10,
                               "check_samples": 10},
              "exports": [{"format": "onnx", "precision": "fp32"}], "measure": {"runs": 2, "warmup": 0}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return run_cli(["run", str(tmp_path / "recipe.yaml"), "-o", str(tmp_path / "run")], tmp_path, env)


def test_an_onnx_model_that_allocates_past_the_load_limit_is_refused_naming_it(tmp_path):
    bomb = _constant_bomb(tmp_path / "bomb.onnx", 400_000_000)  # 1.6 GB of zeros from a 3 KB file
    assert bomb.stat().st_size < 4000
    result = _run_recipe(tmp_path, bomb, {"EDGEPRESS_MAX_LOAD_MB": "256"})
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2, output[-3000:]
    assert (f"The ONNX model {bomb} needs more memory than edgepress lets one model load or call allocate "
            "(256 MiB; EDGEPRESS_MAX_LOAD_MB sets another)") in output
    assert "Traceback" not in output
    run = tmp_path / "run"
    assert not run.exists() or not [p for p in run.rglob("*") if p.is_file()]


def test_a_model_within_the_load_limit_runs_under_it(tmp_path):
    # The same graph asking for 4 MB: the cap does not get in the way of a model that fits it.
    small = _constant_bomb(tmp_path / "small.onnx", 1_000_000)
    result = _run_recipe(tmp_path, small, {"EDGEPRESS_MAX_LOAD_MB": "256"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


def test_a_data_file_whose_arrays_inflate_past_the_load_limit_is_refused_naming_it(tmp_path, monkeypatch):
    # Headers within the declared-size limit (0.5 GB of zeros compresses to half a megabyte), the load itself capped.
    import resource

    from edgepress.errors import EdgepressError
    from edgepress.limits import memory_cap
    from edgepress.models.datasets import read_npz

    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, x=np.zeros((2_000_000, 8, 8), np.float32), y=np.zeros(2_000_000, np.int64))
    assert path.stat().st_size < 5_000_000
    before = resource.getrlimit(resource.RLIMIT_DATA)
    monkeypatch.setenv("EDGEPRESS_MAX_LOAD_MB", "64")
    with pytest.raises(EdgepressError, match=rf"The data file {path} needs more memory than edgepress lets one model "
                       r"load or call allocate \(64 MiB"):
        read_npz(path)
    assert resource.getrlimit(resource.RLIMIT_DATA) == before  # the cap is lifted after
    with memory_cap("nothing", 64 << 20):
        assert np.ones(1000).sum() == 1000
