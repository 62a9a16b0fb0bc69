"""Per-op profiles of attention models: a Keras 3 encoder's TFLite files have a dynamic batch, so the converter
stores a placeholder shape ([1, 1]) for tensors whose size is only known when the model runs, and computes each
RESHAPE's target from the input's SHAPE. Each op cut out of such a file must still be the op the model runs (its
tensors at their batch-1 shapes, its shape arithmetic with it), or XNNPACK refuses it ("failed to reshape") and
the whole profile is lost. The real Keras 3 encoder of tests/models/encoders.py (untrained: only shapes matter), the
real converter and LiteRT."""

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
            "int8": export_tflite(source, out / "enc_int8.tflite", "int8", calibration=x[:20], check_data=x[:5])}


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
    assert matmuls and {op["runs_on"] for op in matmuls} == {"builtin kernels"}
    assert {op["kind"] for op in matmuls} == {"integer"}
