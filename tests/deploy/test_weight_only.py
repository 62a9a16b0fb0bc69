"""Weight-only precisions: TFLite int8_weight / int4_weight (LiteRT's quantizer), ONNX int4_weight (MatMulNBits)."""

import numpy as np
import onnx
import pytest

from edgepress.deploy import export_onnx, export_tflite
from edgepress.deploy.coverage import int8_macs
from edgepress.deploy.runner import open_model
from edgepress.deploy.weight_only import onnx_int4_weight, tflite_weight_only
from edgepress.errors import EdgepressError
from edgepress.models import training


@pytest.fixture(scope="module")
def mlp(digits):
    """A trained MLP on the 28x28 digits: Flatten (784) -> Dense 128 (relu) -> Dense 64 (relu) -> Dense 10."""
    from edgepress.compat import keras

    k = keras()
    k.utils.set_random_seed(0)
    model = k.Sequential([k.layers.Input((28, 28, 1)), k.layers.Flatten(name="flatten"),
                          k.layers.Dense(128, activation="relu", name="fc1"),
                          k.layers.Dense(64, activation="relu", name="fc2"), k.layers.Dense(10, name="logits")],
                         name="mlp")
    training.fit(model, digits.x_train, digits.y_train, epochs=3)
    return model


@pytest.fixture(scope="module")
def fp32(mlp, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp32")
    return {"tflite": export_tflite(mlp, out / "mlp.tflite"), "onnx": export_onnx(mlp, out / "mlp.onnx"), "model": mlp}


def outputs(path, x):
    return open_model(path).predict(x)


def assert_close_to_float(path, reference_path, x, max_relative: float, agreement: float):
    got, expected = outputs(path, x), outputs(reference_path, x)
    assert np.abs(got - expected).max() <= max_relative * np.abs(expected).max()
    assert np.mean(got.argmax(1) == expected.argmax(1)) >= agreement


@pytest.mark.parametrize("bits, block_size, size_ratio, max_relative", [
    (8, None, 0.30, 0.02),   # int8: a quarter of fp32, plus scales
    (4, None, 0.17, 0.15),   # int4: an eighth
    (4, 32, 0.20, 0.15),     # int4 in blocks of 32: an eighth, plus one scale per 32 weights
])
def test_tflite_weight_only_loads_runs_close_to_float_and_is_smaller(fp32, digits, tmp_path, bits, block_size,
                                                                     size_ratio, max_relative):
    out = tmp_path / f"w{bits}.tflite"
    facts = tflite_weight_only(fp32["tflite"].path, out, bits, block_size)

    assert facts["weights"] == f"int{bits}"
    assert out.stat().st_size < size_ratio * fp32["tflite"].bytes
    assert_close_to_float(out, fp32["tflite"].path, digits.x_test[:100], max_relative, agreement=0.95)
    coverage = int8_macs(out)
    if block_size is None:  # weights dequantized, then float ops
        assert coverage["float_macs"] == coverage["macs"] and coverage["hybrid_macs"] == 0
    else:
        # Blocks of 32 split the 128 and 64 inputs of fc2 and logits, not the 784 of fc1 (784 = 32 * 24.5),
        # which keeps one int4 scale per channel.
        blockwise = facts["blockwise_ops"]  # output tensors: "mlp/fc2/MatMul;...", "StatefulPartitionedCall:0"
        assert len(blockwise) == 2 and not any("fc1" in name for name in blockwise)
        kinds = [op["kind"] for op in coverage["ops"]]
        # LiteRT's blockwise int4 is a dynamic-range kernel: it quantizes the activations to int8 at run time.
        assert kinds == ["float", "hybrid", "hybrid"] and coverage["int8_macs"] == 0.0


@pytest.mark.parametrize("block_size", [32, 128])
def test_onnx_int4_weight_loads_runs_close_to_float_and_is_smaller(fp32, digits, tmp_path, block_size):
    out = tmp_path / "mlp_int4.onnx"
    facts = onnx_int4_weight(fp32["onnx"].path, out, block_size)

    assert len(facts["matmul_nbits"]) == 3 and facts["gemm_rewritten"] == []  # tf2onnx writes MatMul + Add
    assert {n.op_type for n in onnx.load(str(out)).graph.node} >= {"MatMulNBits"}
    assert out.stat().st_size < 0.2 * fp32["onnx"].bytes
    assert_close_to_float(out, fp32["onnx"].path, digits.x_test[:100], 0.15, agreement=0.95)
    coverage = int8_macs(out)  # MatMulNBits at its default accuracy level multiplies in float
    assert coverage["float_macs"] == coverage["macs"] > 0 and {op["op"] for op in coverage["ops"]} == {"MatMulNBits"}


def test_onnx_int4_weight_at_accuracy_level_4_quantizes_activations_at_run_time(fp32, digits, tmp_path):
    out = tmp_path / "mlp_int4_level4.onnx"
    onnx_int4_weight(fp32["onnx"].path, out, 32, accuracy_level=4)
    assert_close_to_float(out, fp32["onnx"].path, digits.x_test[:100], 0.15, agreement=0.95)
    assert int8_macs(out)["hybrid_macs"] == int8_macs(out)["macs"]


def test_onnx_gemm_is_rewritten_as_matmul_before_int4(fp32, digits, tmp_path):
    from edgepress.deploy.coverage import optimized_graph

    # onnxruntime's basic optimizations fuse each MatMul + Add into a Gemm: what torch.onnx writes for Linear.
    gemm = tmp_path / "gemm.onnx"
    optimized_graph(fp32["onnx"].path, gemm, "ORT_ENABLE_BASIC")
    assert [n.op_type for n in onnx.load(str(gemm)).graph.node].count("Gemm") == 3

    out = tmp_path / "gemm_int4.onnx"
    facts = onnx_int4_weight(gemm, out, 32)
    assert len(facts["gemm_rewritten"]) == 3 and len(facts["matmul_nbits"]) == 3
    assert_close_to_float(out, fp32["onnx"].path, digits.x_test[:100], 0.15, agreement=0.95)


def test_onnx_int4_weight_refuses_a_model_without_matmul(tmp_path):
    from edgepress.compat import keras

    k = keras()
    model = k.Sequential([k.layers.Input((8, 8, 1)), k.layers.Conv2D(4, 3), k.layers.GlobalAveragePooling2D()],
                         name="convs")
    fp32 = export_onnx(model, tmp_path / "convs.onnx")
    with pytest.raises(EdgepressError, match="no MatMul.*no Conv"):
        onnx_int4_weight(fp32.path, tmp_path / "convs_int4.onnx")
    assert not (tmp_path / "convs_int4.onnx").exists()


@pytest.mark.parametrize("format, precision, block_size", [
    ("tflite", "int8_weight", None), ("tflite", "int4_weight", 32), ("onnx", "int4_weight", 64),
])
def test_export_weight_only_records_a_checked_smaller_artifact(mlp, fp32, digits, tmp_path, format, precision,
                                                               block_size):
    exporter = export_tflite if format == "tflite" else export_onnx
    artifact = exporter(mlp, tmp_path / f"mlp_{precision}.{format}", precision, check_data=digits.x_test[:100],
                        steps=["prune"], block_size=block_size)

    assert artifact.precision == precision and artifact.steps == ["prune"]
    assert artifact.check["top1_agreement"] >= 0.95
    assert artifact.bytes < 0.3 * fp32[format].bytes
    assert artifact.quantization["weights"] == precision.split("_")[0]
    assert artifact.quantization["int8_macs"] == 0.0 and artifact.quantization["macs"] > 0  # recorded by record()
    assert artifact.inputs[0].dtype == "float32"  # float in, float out: no quantization parameters to apply
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([artifact.name, artifact.manifest_path.name])


@pytest.mark.parametrize("call, message", [
    (lambda p, o: tflite_weight_only(p["tflite"].path, o / "x.tflite", 8, 32), "blockwise weights for int4 only"),
    (lambda p, o: tflite_weight_only(p["tflite"].path, o / "x.tflite", 4, 48), "in blocks of 32, 64, 128, 256"),
    (lambda p, o: tflite_weight_only(p["tflite"].path, o / "x.tflite", 2), "8 or 4 bits"),
    (lambda p, o: onnx_int4_weight(p["onnx"].path, o / "x.onnx", 8), "block_size must be one of 16"),
    (lambda p, o: export_onnx(p["model"], o / "x.onnx", "int8_weight"), "Unknown ONNX precision 'int8_weight'"),
])
def test_bad_weight_only_options_are_refused_by_name(fp32, tmp_path, call, message):
    with pytest.raises(EdgepressError, match=message):
        call(fp32, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_litert_computes_blockwise_int4_right_only_under_xnnpack(fp32, digits, tmp_path):
    """A runtime limit, measured: LiteRT 2.3's built-in FULLY_CONNECTED kernels run a blockwise int4 file but
    get it wrong; only the XNNPACK delegate (applied by default on CPU) computes it. If this starts failing,
    LiteRT fixed its kernels: drop the `kernels` note from tflite_weight_only."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    out = tmp_path / "w4b32.tflite"
    assert "XNNPACK only" in tflite_weight_only(fp32["tflite"].path, out, 4, 32)["kernels"]
    x = digits.x_test[:100]
    expected = outputs(fp32["tflite"].path, x)

    def run(resolver) -> np.ndarray:
        interpreter = Interpreter(model_path=str(out), experimental_op_resolver_type=resolver)
        index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(index, list(x.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, x)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    def agreement(got) -> float:
        return float(np.mean(got.argmax(1) == expected.argmax(1)))

    assert agreement(run(OpResolverType.AUTO)) >= 0.95  # XNNPACK
    assert agreement(run(OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)) < 0.95


def test_a_recipe_makes_weight_only_exports_and_reports_their_int8_macs(tmp_path):
    import edgepress

    recipe = edgepress.Recipe.from_dict({
        "name": "wo", "model": {"zoo": "seed_mlp", "train_epochs": 1},
        "data": {"dataset": "digits", "train_size": 300, "test_size": 60, "calibration_samples": 20},
        "exports": [{"format": "tflite", "precision": "fp32"}, {"format": "tflite", "precision": "int8_weight"},
                    {"format": "tflite", "precision": "int4_weight", "block_size": 32},
                    {"format": "onnx", "precision": "fp32"}, {"format": "onnx", "precision": "int4_weight"}],
        "measure": {"runs": 3, "warmup": 1},
    })
    report = edgepress.run(recipe, tmp_path / "run")
    rows = {(a["format"], a["precision"]): a for a in report.artifacts}
    assert set(rows) == {("tflite", "fp32"), ("tflite", "int8_weight"), ("tflite", "int4_weight"),
                         ("onnx", "fp32"), ("onnx", "int4_weight")}
    assert rows[("tflite", "int4_weight")]["name"] == "wo_int4_weight_block32.tflite"
    for format in ("tflite", "onnx"):
        assert rows[(format, "int4_weight")]["bytes"] < 0.5 * rows[(format, "fp32")]["bytes"]
        assert rows[(format, "int4_weight")]["metrics"]["agreement"] >= 0.9
    assert rows[("tflite", "fp32")]["quantization"]["int8_macs"] == 0
    assert "| int8 MACs |" in (tmp_path / "run" / "report.md").read_text()


def test_block_size_is_refused_where_it_does_not_apply():
    from edgepress.recipe import Recipe

    for export, message in (({"format": "tflite", "precision": "int8", "block_size": 32}, "does not apply"),
                            ({"format": "tflite", "precision": "int4_weight", "block_size": 48}, "does not apply")):
        with pytest.raises(EdgepressError, match=message):
            Recipe.from_dict({"model": {"zoo": "seed_mlp"}, "exports": [export]})
