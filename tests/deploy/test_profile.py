"""Per-op profiles: a .tflite file cut into one model per op, each timed by the runner with the device's delegate;
an .onnx file timed by onnxruntime's profiler; both joined with the ops' MACs and kernel kinds, in every report and
in `edgepress profile`. Real files of the seed CNN, the real LiteRT and onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import edgepress
from edgepress.cli import app
from edgepress.deploy import export_onnx, export_tflite
from edgepress.deploy.coverage import int8_macs
from edgepress.deploy.op_models import op_models
from edgepress.deploy.profile import profile_many
from edgepress.devices import load_device

cli = CliRunner()
HOST = load_device("x86-host")


@pytest.fixture(scope="module")
def files(trained_cnn, digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("profile")
    calibration = digits.calibration(50)
    return {
        "fp32": export_tflite(trained_cnn, out / "m_fp32.tflite"),
        "int8": export_tflite(trained_cnn, out / "m_int8.tflite", "int8", calibration=calibration),
        "int4": export_tflite(trained_cnn, out / "m_int4_weight.tflite", "int4_weight"),
        "onnx": export_onnx(trained_cnn, out / "m_int8_static.onnx", "int8_static", calibration=calibration),
    }


def test_every_op_is_cut_out_as_a_model_that_computes_it(files, tmp_path):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    plain = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES  # the file's own ops, no DELEGATE node
    path = files["fp32"].path
    rows = op_models(path, tmp_path)
    whole = Interpreter(model_path=str(path), experimental_op_resolver_type=plain,
                        experimental_preserve_all_tensors=True)
    whole.allocate_tensors()
    assert [r["op"] for r in rows] == [op["op_name"] for op in whole._get_ops_details()]
    x = np.random.default_rng(0).random(whole.get_input_details()[0]["shape"]).astype(np.float32)
    whole.set_tensor(whole.get_input_details()[0]["index"], x)
    whole.invoke()
    values = {t["name"]: whole.get_tensor(t["index"]) for t in whole.get_tensor_details()
              if t["name"] and not t["name"].startswith("arith.constant")}
    conv = next(r for r in rows if r["op"] == "CONV_2D" and r["index"] > 0)  # fed by the op before it
    alone = Interpreter(model_path=str(tmp_path / conv["file"]), experimental_op_resolver_type=plain)
    alone.allocate_tensors()
    (inp,), (out,) = alone.get_input_details(), alone.get_output_details()
    alone.set_tensor(inp["index"], values[inp["name"]])
    alone.invoke()
    np.testing.assert_allclose(alone.get_tensor(out["index"]), values[out["name"]], atol=1e-5)


def test_weights_dequantized_at_run_time_are_timed_with_the_op_that_reads_them(files, tmp_path):
    rows = op_models(files["int4"].path, tmp_path)
    assert "DEQUANTIZE" not in [r["op"] for r in rows]  # never timed alone
    convs = [r for r in rows if r["op"] == "CONV_2D"]
    assert convs and all(r["prep"] == ["DEQUANTIZE"] for r in convs)


def test_a_profile_times_every_op_and_says_where_it_ran(files):
    fp32, int4, onnx = profile_many([files["fp32"], files["int4"], files["onnx"]], HOST, runs=5, warmup=1)
    for profile in (fp32, int4, onnx):
        assert profile["ops"] and all(op["us"] > 0 for op in profile["ops"])
        assert profile["total_us"] == pytest.approx(sum(op["us"] for op in profile["ops"]))
        assert sum(profile["by_type"].values()) == pytest.approx(profile["total_us"])
    assert all(op["runs_on"] == "XNNPACK" for op in fp32["ops"])  # XNNPACK takes every op of the float CNN
    # Blockwise/int4 weights: XNNPACK cannot take a DEQUANTIZE of int4, so those convolutions run on the builtin
    # kernels (the cause of int4_weight's latency, measured).
    assert all(op["runs_on"] == "builtin kernels" for op in int4["ops"] if op["op"] == "CONV_2D")
    assert {op["runs_on"] for op in onnx["ops"]} == {"CPUExecutionProvider"}
    # Every MAC op of each file is in its profile with its MACs and kernel kind (ONNX: joined across onnxruntime's
    # renamed nodes).
    for profile, artifact in ((fp32, files["fp32"]), (onnx, files["onnx"])):
        counted = int8_macs(artifact.path)
        assert sum(op["macs"] or 0 for op in profile["ops"]) == counted["macs"]
    assert {op["kind"] for op in onnx["ops"] if op["macs"]} == {"integer"}


def test_every_run_reports_where_the_time_goes(tmp_path):
    recipe = edgepress.Recipe.from_dict({
        "name": "prof", "model": {"zoo": "seed_mlp", "train_epochs": 1},
        "data": {"dataset": "digits", "train_size": 200, "test_size": 40, "calibration_samples": 20,
                 "check_samples": 20},
        "exports": [{"format": "tflite", "precision": "int8"}, {"format": "onnx", "precision": "fp32"}],
        "measure": {"runs": 3, "warmup": 1, "target_ci_width": None},
    })
    report = edgepress.run(recipe, tmp_path / "run")
    for row in report.artifacts:
        assert row["profile"]["device"] == "x86-host" and row["profile"]["ops"]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert all(r["profile"]["ops"] for r in results["artifacts"])
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert "Where the time goes" in markdown and "FULLY_CONNECTED" in markdown and "Gemm" in markdown
    page = (tmp_path / "run" / "report.html").read_text()
    assert "id='profile'" in page and "time per op type" in page
    off = recipe.model_copy(update={"measure": recipe.measure.model_copy(update={"profile": False})})
    assert all(r["profile"] is None for r in edgepress.run(off, tmp_path / "off").artifacts)


def test_edgepress_profile_prints_the_slowest_ops(files):
    done = cli.invoke(app, ["profile", str(files["int8"].path), "--runs", "5", "--top", "3"])
    assert done.exit_code == 0, done.output
    text = " ".join(done.output.split())
    assert "m_int8.tflite on x86-host" in text and "CONV_2D" in text and "by op type" in text
    missing = cli.invoke(app, ["profile", "nope.tflite"])
    assert missing.exit_code == 2 and "nope.tflite" in missing.output and "Traceback" not in missing.output


def test_an_int8_export_can_keep_named_layers_float_and_its_profile_shows_it(tmp_path):
    base = {"name": "fl", "model": {"zoo": "seed_cnn", "train_epochs": 1},
            "data": {"dataset": "digits", "train_size": 200, "test_size": 40, "calibration_samples": 20,
                     "check_samples": 20}, "measure": {"runs": 3, "warmup": 1, "target_ci_width": None}}
    exports = [{"format": "tflite", "precision": "int8", "float_layers": ["conv2d"]},
               {"format": "onnx", "precision": "int8_static", "float_layers": ["conv2d"]}]
    report = edgepress.run(edgepress.Recipe.from_dict({**base, "exports": exports}), tmp_path / "run")
    for row in report.artifacts:
        assert row["quantization"]["float_layers"] == ["conv2d"] and 0.5 < row["quantization"]["int8_macs"] < 1
        kinds = [op["kind"] for op in row["profile"]["ops"] if op["macs"]]
        assert kinds[0] == "float" and set(kinds[1:]) == {"integer"}  # the first conv float, the rest int8
    for bad, words in (({"format": "tflite", "precision": "int8", "float_layers": ["nope"]}, "'nope', which"),
                       ({"format": "tflite", "precision": "fp32", "float_layers": ["conv2d"]}, "not tflite fp32")):
        with pytest.raises(edgepress.EdgepressError, match=words):
            edgepress.run(edgepress.Recipe.from_dict({**base, "exports": [bad]}), tmp_path / "bad")
        assert not (tmp_path / "bad").exists()


def test_a_device_without_a_delegate_runs_and_profiles_on_the_builtin_kernels(files, digits):
    # LiteRT applies XNNPACK by itself; a profile that says `delegate: none` must get the builtin kernels, in the
    # measurement and in the profile alike (an int8 file runs faster on them on some CPUs).
    from edgepress.deploy.measure import measure_many

    builtin = HOST.with_overrides({"name": "x86-host-builtin", "delegate": "none"})
    artifacts = [files["fp32"], files["int8"]]
    for device, delegate, delegated in ((HOST, "xnnpack", True), (builtin, "none", False)):
        results = measure_many(artifacts, (digits.x_test[:20], digits.y_test[:20]), device, 5, 1, 1)
        assert [r["runtime"]["delegate"] for r in results] == [delegate, delegate]
        for profile in profile_many(artifacts, device, runs=3, warmup=1):
            convs = [op for op in profile["ops"] if op["op"] == "CONV_2D"]
            assert convs and {op["offloaded"] for op in convs} == {delegated}
            assert profile["runtime"]["delegate"] == delegate


def test_why_slower_names_the_op_types_that_grew_and_where_they_ran():
    from edgepress.deploy.profile import why_slower

    def op(kind, us, how, runs_on):
        return {"op": kind, "us": us, "kind": how, "runs_on": runs_on}

    fp32 = {"ops": [op("CONV_2D", 3.5, "float", "XNNPACK"), op("FULLY_CONNECTED", 1.0, "float", "XNNPACK")]}
    int16 = {"ops": [op("CONV_2D", 100.0, "integer", "builtin kernels"),
                     op("CONV_2D", 7.6, "integer", "builtin kernels"), op("QUANTIZE", 2.0, None, "builtin kernels"),
                     op("FULLY_CONNECTED", 0.5, "integer", "XNNPACK")]}
    text = why_slower(int16, fp32)
    assert text == ("CONV_2D 107.6 us (integer, builtin kernels) against 3.5 us (float, XNNPACK); "
                    "QUANTIZE 2.0 us (builtin kernels), an op the fp32 file does not run")
    assert why_slower(fp32, fp32) == ""  # nothing grew


def test_the_report_says_per_op_why_int16x8_is_slower_than_fp32(tmp_path):
    # int16x8 runs on LiteRT's builtin int16 kernels (XNNPACK has none): many times slower than fp32 on any CPU.
    recipe = edgepress.Recipe.from_dict({
        "name": "why", "model": {"zoo": "seed_cnn", "train_epochs": 1},
        "data": {"dataset": "digits", "train_size": 200, "test_size": 40, "calibration_samples": 20,
                 "check_samples": 20},
        "exports": [{"format": "tflite", "precision": "fp32"}, {"format": "tflite", "precision": "int16x8"}],
        "measure": {"runs": 20, "warmup": 2, "target_ci_width": None},
    })
    report = edgepress.run(recipe, tmp_path / "run")
    note = next(n for n in report.profile_notes() if n.startswith("why_int16x8"))
    assert "slower than why_fp32.tflite here: CONV_2D" in note and "builtin kernels" in note
    assert "slower than" in (tmp_path / "run" / "report.html").read_text()
