"""ONNX exports of attention models: a Keras LayerNormalization becomes one ONNX LayerNormalization op (tf2onnx writes
its arithmetic, a dozen elementwise ops that onnxruntime runs one by one and, quantized, as QLinearAdd / QLinearMul
between QuantizeLinear and DequantizeLinear nodes); `float_ops` on onnx int8_static keeps LayerNorm and the
attention's score and context matmuls and softmax float, its projections int8, in the graph onnxruntime really runs
(written by SessionOptions.optimized_model_filepath); the why-line of a slower ONNX int8 file says what it runs that
its fp32 file does not. The real Keras 3 encoder of tests/models/encoders.py (one epoch: shapes and ranges matter
here, not accuracy), tf2onnx and onnxruntime."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import yaml
from typer.testing import CliRunner

from edgepress.cli import app
from edgepress.deploy import export_onnx
from tests.models import encoders


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    from edgepress.models.loading import open_model

    out = tmp_path_factory.mktemp("onnx_float_ops")
    encoders.keras3_encoder(out / "enc.keras", epochs=1)
    x, _ = encoders.digits_rows(40)
    return open_model(out / "enc.keras"), x, out


def loaded(path, tmp_path) -> list[onnx.NodeProto]:
    """The nodes of the graph onnxruntime runs for the file at `path` (after its optimizers)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / f"{path.stem}.loaded.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return list(onnx.load(options.optimized_model_filepath).graph.node)


def test_a_keras_layernorm_is_one_onnx_layernormalization_op(encoder):
    source, x, out = encoder
    artifact = export_onnx(source, out / "fp32.onnx", check_data=x[:10])
    nodes = onnx.load(str(artifact.path)).graph.node
    norms = [n for n in nodes if n.op_type == "LayerNormalization"]
    assert sorted(n.name.split("/")[-2] for n in norms) == ["ln1_1", "ln2_1"]  # named in the layer's scope
    assert all(onnx.helper.get_attribute_value(a) == -1 for n in norms for a in n.attribute if a.name == "axis")
    assert not [n for n in nodes if "/ln1_1/" in n.name and n.op_type != "LayerNormalization"]  # its arithmetic gone
    assert artifact.check["max_abs_diff"] < 1e-4  # the export's check against the Keras model


def test_float_ops_keeps_layernorm_and_the_attention_float_in_the_graph_onnxruntime_runs(encoder, tmp_path):
    source, x, out = encoder
    plain = export_onnx(source, out / "int8.onnx", "int8_static", calibration=x[:20], check_data=x[:20])
    kept = export_onnx(source, out / "int8_fops.onnx", "int8_static", calibration=x[:20], check_data=x[:20],
                       float_ops=["layernorm", "attention"])
    before, after = loaded(plain.path, tmp_path), loaded(kept.path, tmp_path)

    def attention_matmuls(nodes):  # tf2onnx names the einsum's score and context matmuls after no layer
        return sorted(n.op_type for n in nodes if "MatMul" in n.op_type and "/" not in n.name)

    assert attention_matmuls(before) == ["QLinearMatMul", "QLinearMatMul"]
    assert "QLinearSoftmax" in [n.op_type for n in before]
    # Kept float: the softmax, and the context matmul that reads it. The score matmul reads the query and key as
    # their projections quantized them, so onnxruntime may run it on those integers (MatMulIntegerToFloat); its
    # float output is not quantized again, so it adds no rounding.
    assert attention_matmuls(after) == ["MatMul", "MatMulIntegerToFloat"]
    fused = [n.op_type for n in after]
    assert "Softmax" in fused and "QLinearSoftmax" not in fused and fused.count("LayerNormalization") == 2
    projections = [n.op_type for n in after if "/mha_1/" in n.name and "MatMul" in n.op_type]
    assert projections == ["QLinearMatMul"] * 4, projections
    q = kept.quantization
    assert q["float_ops"] == ["layernorm", "attention"] and 0.5 < q["int8_macs"] < 1.0 and plain.quantization[
        "int8_macs"] == 1.0
    assert kept.check["top1_agreement"] >= 0.9  # matches the model


def test_float_ops_elementwise_leaves_only_the_matmuls_inputs_quantized(encoder, tmp_path):
    source, x, out = encoder
    artifact = export_onnx(source, out / "int8_elementwise.onnx", "int8_static", calibration=x[:20],
                           check_data=x[:20], float_ops=["layernorm", "attention", "elementwise"])
    nodes = loaded(artifact.path, tmp_path)
    types = {n.op_type for n in nodes}
    # No requantizing op: the bias adds, residual adds and GELU run in float, and so do the MAC ops' outputs.
    assert not {t for t in types if t.startswith("QLinear")} and "DequantizeLinear" not in types, types
    projections = [n.op_type for n in nodes if "/mha_1/" in n.name and "MatMul" in n.op_type]
    assert projections == ["MatMulIntegerToFloat"] * 4, projections
    own = [n.op_type for n in nodes if "MatMul" in n.op_type and "/" not in n.name.split("/MatmulTrans")[0]]
    assert len(own) == 2 and set(own) <= {"MatMul", "FusedMatMul"}, own  # the attention's own matmuls, float
    q = artifact.quantization
    assert q["float_ops"] == ["layernorm", "attention", "elementwise"] and 0.8 < q["int8_macs"] < 1.0
    assert artifact.check["top1_agreement"] >= 0.9


def test_float_ops_elementwise_goes_by_op_type_so_an_onnx_model_takes_it_too(encoder, tmp_path):
    from edgepress.errors import EdgepressError
    from edgepress.models.loading import open_model

    keras_source, x, out = encoder
    onnx_source = open_model(export_onnx(keras_source, tmp_path / "given.onnx", check_data=x[:5]).path)
    artifact = export_onnx(onnx_source, tmp_path / "int8.onnx", "int8_static", calibration=x[:20], check_data=x[:20],
                           float_ops=["elementwise"])
    types = {n.op_type for n in loaded(artifact.path, tmp_path)}
    assert "MatMulIntegerToFloat" in types and not {"QLinearAdd", "QLinearMul", "QLinearSoftmax"} & types, types
    with pytest.raises(EdgepressError, match="'attention' finds its ops by their Keras layers"):
        export_onnx(onnx_source, tmp_path / "no.onnx", "int8_static", calibration=x[:20],
                    float_ops=["elementwise", "attention"])
    assert not (tmp_path / "no.onnx").exists()


def test_float_ops_on_onnx_is_refused_in_the_plan_with_exit_2(tmp_path):
    base = {"name": "fo", "model": {"zoo": "seed_mlp", "train_epochs": 1},
            "data": {"dataset": "digits", "train_size": 100, "test_size": 20, "calibration_samples": 10,
                     "check_samples": 10}, "measure": {"runs": 3, "warmup": 1, "target_ci_width": None}}
    for export, words in (({"format": "onnx", "precision": "fp16", "float_ops": ["layernorm"]}, "not onnx fp16"),
                          ({"format": "onnx", "precision": "int8_static", "float_ops": ["layernorm"]},
                           "has no LayerNormalization layer"),
                          ({"format": "tflite", "precision": "int8", "float_ops": ["elementwise"]},
                           "It is for onnx int8_static")):
        (tmp_path / "r.yaml").write_text(yaml.safe_dump({**base, "exports": [export]}))
        result = CliRunner().invoke(app, ["run", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "run")])
        assert result.exit_code == 2 and words in " ".join(result.output.split()), result.output
        assert "Traceback" not in result.output and not (tmp_path / "run").exists()


def test_why_an_onnx_int8_file_is_slower_says_the_nodes_it_adds_and_what_its_int8_matmuls_save():
    from edgepress.deploy.profile import why_slower

    def op(kind, us, how=None):
        return {"op": kind, "us": us, "kind": how, "runs_on": "CPUExecutionProvider", "offloaded": True}

    fp32 = {"ops": [op("MatMul", 5.0, "float"), op("MatMul", 5.0, "float"), op("Softmax", 2.0), op("Add", 1.0)]}
    int8 = {"ops": [op("QLinearMatMul", 4.0, "integer"), op("QLinearMatMul", 4.5, "integer"),
                    op("QLinearSoftmax", 6.0), op("QLinearAdd", 3.0), op("QuantizeLinear", 1.5),
                    op("DequantizeLinear", 1.0)]}
    text = why_slower(int8, fp32)
    # Each integer op against the float op it stands for: the int8 matmuls gained, the softmax and add lost.
    assert text.startswith("QLinearSoftmax 6.0 us (CPUExecutionProvider) against Softmax 2.0 us "
                           "(CPUExecutionProvider); QLinearAdd 3.0 us (CPUExecutionProvider) against Add 1.0 us")
    assert ("onnxruntime runs 6 nodes for it against 4 for its fp32 file: 2 QuantizeLinear / DequantizeLinear "
            "(2.5 us) and 2 requantizing elementwise ops (QLinearSoftmax x1, QLinearAdd x1: 9.0 us); its 2 integer "
            "MAC ops take 8.5 us against 10.0 us for the fp32 file's 2 float ones") in text
    assert "`float_ops: [layernorm, attention, elementwise]`" in text
    # With the softmax and the add float, nothing float_ops would change is left to name.
    int8["ops"][2:4] = [op("Softmax", 2.0), op("Add", 1.0)]
    assert "float_ops" not in why_slower(int8, fp32) and "requantizing" not in why_slower(int8, fp32)
