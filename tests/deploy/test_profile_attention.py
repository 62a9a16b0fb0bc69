"""Per-op profiles of attention models: a Keras 3 encoder's TFLite files have a dynamic batch, so the converter
stores a placeholder shape ([1, 1]) for tensors whose size is only known when the model runs, and computes each
RESHAPE's target from the input's SHAPE. Each op cut out of such a file must still be the op the model runs (its
tensors at their batch-1 shapes, its shape arithmetic with it), or XNNPACK refuses it ("failed to reshape") and
the whole profile is lost. Then why its int8 file is slower than fp32 (XNNPACK takes no int8 LayerNorm variance,
softmax or batch matmul of two activations with zero points: they run on the builtin kernels), said from the
profiles, and `float_ops`, which keeps those ops in float where XNNPACK runs them. The real Keras 3 encoder of
tests/models/encoders.py (trained one epoch: only shapes and ranges matter here), the real converter and LiteRT."""

from __future__ import annotations

import numpy as np
import pytest

from edgepress.deploy import export_tflite
from edgepress.deploy.op_models import op_models
from edgepress.deploy.profile import profile_many
from edgepress.devices import load_device
from tests.models import encoders

HOST = load_device("x86-host")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from edgepress.models.loading import open_model

    out = tmp_path_factory.mktemp("attention_profile")
    encoders.keras3_encoder(out / "enc.keras", epochs=1)
    source = open_model(out / "enc.keras")
    x, _ = encoders.digits_rows(40)
    return {"fp32": export_tflite(source, out / "enc_fp32.tflite", check_data=x[:5]),
            "int8": export_tflite(source, out / "enc_int8.tflite", "int8", calibration=x[:20], check_data=x[:5]),
            "float_ops": export_tflite(source, out / "enc_int8_fops.tflite", "int8", calibration=x[:20],
                                       check_data=x[:5], float_ops=["layernorm", "attention"])}


def test_each_op_of_a_dynamic_batch_encoder_computes_what_it_computes_in_the_model(files, tmp_path):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    plain = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    path = files["fp32"].path
    whole = Interpreter(model_path=str(path), experimental_op_resolver_type=plain,
                        experimental_preserve_all_tensors=True)
    assert -1 in whole.get_input_details()[0]["shape_signature"]  # the case at hand: a dynamic batch
    whole.allocate_tensors()
    x = np.random.default_rng(0).random(whole.get_input_details()[0]["shape"]).astype(np.float32)
    whole.set_tensor(whole.get_input_details()[0]["index"], x)
    whole.invoke()
    values = {t["name"]: whole.get_tensor(t["index"]) for t in whole.get_tensor_details() if t["name"]}
    rows = op_models(path, tmp_path)
    # The shape arithmetic (SHAPE, then GATHER / REDUCE_PROD / PACK / CONCATENATION of dimensions) goes with the
    # RESHAPE that reads it, never alone: a random shape would be no shape.
    assert "SHAPE" not in [r["op"] for r in rows]
    assert any(r["op"] == "RESHAPE" and r["prep"][:1] == ["SHAPE"] for r in rows)
    checked = 0
    for row in rows:
        alone = Interpreter(model_path=str(tmp_path / row["file"]), experimental_op_resolver_type=plain)
        alone.allocate_tensors()
        for detail in alone.get_input_details():
            alone.set_tensor(detail["index"], values[detail["name"]].reshape(detail["shape"]))
        alone.invoke()
        out = alone.get_output_details()[0]
        np.testing.assert_allclose(alone.get_tensor(out["index"]), values[out["name"]], atol=1e-5,
                                   err_msg=f"{row['op']} {row['name']}")
        checked += 1
    assert checked == len(rows) and {"FULLY_CONNECTED", "BATCH_MATMUL", "SOFTMAX", "GELU"} <= {r["op"] for r in rows}


def test_an_attention_encoder_is_profiled_op_by_op_with_xnnpack(files):
    fp32, int8 = profile_many([files["fp32"], files["int8"]], HOST, runs=5, warmup=1)
    for profile in (fp32, int8):
        assert not profile.get("error"), profile.get("error")
        assert profile["ops"] and all(op["us"] > 0 for op in profile["ops"])
    # XNNPACK takes every float matmul; the int8 attention matmuls it does not take (they run on the builtin
    # kernels): what the profile is for.
    assert {op["runs_on"] for op in fp32["ops"] if op["op"] in ("FULLY_CONNECTED", "BATCH_MATMUL")} == {"XNNPACK"}
    matmuls = [op for op in int8["ops"] if op["op"] == "BATCH_MATMUL"]
    assert "builtin kernels" in {op["runs_on"] for op in matmuls}
    assert {op["kind"] for op in matmuls} == {"integer"}


# The ops of the encoder's int8 file that XNNPACK does not take (LiteRT 2.3): LayerNorm's variance and rsqrt, the
# softmax, the attention's batch matmuls of two activations (XNNPACK's int8 one needs its second input symmetric).
NOT_IN_XNNPACK = {"SQUARED_DIFFERENCE", "RSQRT", "SOFTMAX", "BATCH_MATMUL"}


@pytest.fixture(scope="module")
def profiles(files):
    return dict(zip(files, profile_many(list(files.values()), HOST, runs=5, warmup=1), strict=True))


def test_why_the_int8_encoder_is_slower_names_the_ops_xnnpack_leaves_to_the_builtin_kernels(profiles):
    from edgepress.deploy.profile import why_slower

    int8, fp32 = profiles["int8"], profiles["fp32"]
    left = {op["op"] for op in int8["ops"] if op["offloaded"] is False}
    assert NOT_IN_XNNPACK & left  # measured here: the cause, not an assumption of the test
    text = why_slower(int8, fp32)
    assert "XNNPACK does not take" in text and "builtin kernels" in text
    assert all(f"{op} x" in text for op in NOT_IN_XNNPACK & left)
    assert "float_ops: [layernorm, attention]" in text


def test_float_ops_keeps_layernorm_and_attention_float_and_the_projections_int8(files, profiles):
    q = files["float_ops"].quantization
    assert q["float_ops"] == ["layernorm", "attention"]
    nodes = q["float_nodes"]
    assert any("/ln1" in n for n in nodes) and any("Softmax" in n for n in nodes)
    assert not any(part in n for n in nodes for part in ("/query", "/key", "/value", "/attention_output"))
    assert 0.5 < q["int8_macs"] < 1  # the projections and the MLP int8, the two attention matmuls float
    ops = profiles["float_ops"]["ops"]
    for op in ops:
        if op["op"] in NOT_IN_XNNPACK:
            assert op["runs_on"] == "XNNPACK" and op["in"] == "float32", op
    assert {op["kind"] for op in ops if op["op"] == "FULLY_CONNECTED" and op["runs_on"] == "XNNPACK"} == {"integer"}


def test_float_ops_is_refused_in_the_plan_where_it_cannot_apply(tmp_path):
    import edgepress

    base = {"name": "fo", "model": {"zoo": "seed_mlp", "train_epochs": 1},
            "data": {"dataset": "digits", "train_size": 100, "test_size": 20, "calibration_samples": 10,
                     "check_samples": 10}, "measure": {"runs": 3, "warmup": 1, "target_ci_width": None}}
    for export, words in (({"format": "onnx", "precision": "int8_dynamic", "float_ops": ["attention"]},
                           "not onnx int8_dynamic"),
                          ({"format": "onnx", "precision": "int8_static", "float_ops": ["attention"]},
                           "has no MultiHeadAttention layer"),
                          ({"format": "tflite", "precision": "fp32", "float_ops": ["layernorm"]}, "not tflite fp32"),
                          ({"format": "tflite", "precision": "int8", "float_ops": ["conv"]}, "layernorm"),
                          ({"format": "tflite", "precision": "int8", "float_ops": ["attention"]},
                           "has no MultiHeadAttention layer")):
        with pytest.raises(edgepress.EdgepressError, match=words):
            edgepress.run(edgepress.Recipe.from_dict({**base, "exports": [export]}), tmp_path / "run")
        assert not (tmp_path / "run").exists()


def test_a_run_exports_float_ops_and_its_results_load_again(files, tmp_path):
    import json

    import edgepress
    from edgepress.report import Report

    model = files["fp32"].path.parent / "enc.keras"
    recipe = edgepress.Recipe.from_dict({
        "name": "fo", "model": {"path": str(model)},
        "data": {"dataset": "digits", "train_size": 100, "test_size": 30, "calibration_samples": 20,
                 "check_samples": 10},
        "exports": [{"format": "tflite", "precision": "int8", "float_ops": ["layernorm", "attention"]}],
        "measure": {"runs": 3, "warmup": 1, "target_ci_width": None, "profile": False}})
    report = edgepress.run(recipe, tmp_path / "run")
    (row,) = report.artifacts
    assert row["quantization"]["float_ops"] == ["layernorm", "attention"] and row["check"]["top1_agreement"] >= 0.7
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["artifacts"][0]["quantization"]["float_ops"] == ["layernorm", "attention"]
    assert Report.load(tmp_path / "run").artifacts[0]["quantization"]["float_ops"] == ["layernorm", "attention"]


def test_an_int16x8_encoder_is_profiled_its_rsqrt_fed_positive_values(files, tmp_path):
    # Each op alone is timed on random inputs; int16's RSQRT refuses a negative one ("Rsqrt is only defined for
    # positive values"), which lost the whole profile of an int16x8 LayerNorm model: inputs are positive now.
    from edgepress.models.loading import open_model

    x, _ = encoders.digits_rows(40)
    source = open_model(files["fp32"].path.parent / "enc.keras")
    artifact = export_tflite(source, tmp_path / "enc_int16x8.tflite", "int16x8", calibration=x[:20])
    (profile,) = profile_many([artifact], HOST, runs=3, warmup=1)
    assert not profile.get("error"), profile.get("error")
    rsqrt = [op for op in profile["ops"] if op["op"] == "RSQRT"]
    assert rsqrt and all(op["in"] == "int16" and op["us"] > 0 for op in rsqrt)


def test_float_ops_finds_the_same_ops_in_a_tf_keras_encoder(tmp_path):
    # tf_keras names the ops by the layer names as they are (Keras 3 adds a suffix) and writes LayerNorm as a
    # FusedBatchNorm: the same kinds are kept float, the projections int8.
    from edgepress.models.loading import open_model

    encoders.tf_keras_encoder(tmp_path / "tfk.keras", epochs=1)
    x, _ = encoders.digits_rows(40)
    artifact = export_tflite(open_model(tmp_path / "tfk.keras"), tmp_path / "tfk_int8.tflite", "int8",
                             calibration=x[:20], check_data=x[:5], float_ops=["layernorm", "attention"])
    nodes = artifact.quantization["float_nodes"]
    assert any("/ln2/" in n for n in nodes) and any("Softmax" in n for n in nodes)
    assert any("/mha/einsum" in n for n in nodes)
    assert not any(part in n for n in nodes for part in ("/query", "/key", "/value", "/attention_output"))
    assert 0.5 < artifact.quantization["int8_macs"] < 1
