"""int8_macs: the share of MACs each runtime runs in integer kernels, read from what it executes."""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from edgepress.artifact import Artifact
from edgepress.deploy import export_onnx, export_tflite
from edgepress.deploy.coverage import HYBRID, INTEGER, ONNX_MAC_OPS, int8_macs, onnx_kind, optimized_graph
from edgepress.errors import EdgepressError


@pytest.fixture(scope="module")
def small_cnn():
    """Conv 3x3x8 -> MaxPool -> DepthwiseConv 3x3 -> Flatten -> Dense 32 -> Dense 10; untrained (MACs need none)."""
    from edgepress.compat import keras

    k = keras()
    k.utils.set_random_seed(0)
    return k.Sequential([
        k.layers.Input((28, 28, 1)),
        k.layers.Conv2D(8, 3, activation="relu", name="conv"),
        k.layers.MaxPooling2D(name="pool"),
        k.layers.DepthwiseConv2D(3, name="dw"),
        k.layers.Flatten(name="flatten"),
        k.layers.Dense(32, activation="relu", name="fc"),
        k.layers.Dense(10, name="logits"),
    ], name="small_cnn")


def keras_macs(model) -> int:
    """The model's MACs per sample, from the Keras layers' own shapes and weights."""
    total = 0
    for layer in model.layers:
        out = layer.output_shape[1:]
        kernel = layer.get_weights()[0] if layer.get_weights() else None
        if type(layer).__name__ == "Conv2D":  # kernel (kh, kw, in, out)
            total += int(np.prod(out)) * int(np.prod(kernel.shape[:3]))
        elif type(layer).__name__ == "DepthwiseConv2D":  # kernel (kh, kw, in, 1)
            total += int(np.prod(out)) * int(np.prod(kernel.shape[:2]))
        elif type(layer).__name__ == "Dense":
            total += kernel.size
    return total


@pytest.fixture(scope="module")
def exported(small_cnn, digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("coverage")
    calibration = digits.calibration(20)
    files = {}
    for precision in ("fp32", "dynamic", "int8", "int16x8"):
        files["tflite", precision] = export_tflite(small_cnn, out / f"m_{precision}.tflite", precision, calibration)
    for precision in ("fp32", "int8_static", "int8_dynamic"):
        files["onnx", precision] = export_onnx(small_cnn, out / f"m_{precision}.onnx", precision, calibration)
    return files


def test_fp32_tflite_runs_nothing_in_integer_and_counts_the_keras_macs(exported, small_cnn):
    c = int8_macs(exported["tflite", "fp32"].path)
    assert c["int8_macs"] == 0.0 and c["integer_macs"] == 0 and c["hybrid_macs"] == 0
    assert c["macs"] == keras_macs(small_cnn)
    assert [op["op"] for op in c["ops"]] == ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "FULLY_CONNECTED"]
    assert len(c["float_ops"]) == 4


def test_full_integer_tflite_runs_every_mac_in_integer(exported, small_cnn):
    c = int8_macs(exported["tflite", "int8"].path)
    assert c["int8_macs"] == 1.0 and c["int16_macs"] == 0.0
    assert c["macs"] == keras_macs(small_cnn) and c["float_ops"] == []


def test_int16_activations_are_their_own_column_not_int8(exported, small_cnn):
    c = int8_macs(exported["tflite", "int16x8"].path)
    assert c["int16_macs"] == 1.0 and c["int8_macs"] == 0.0 and c["integer_macs"] == 0
    assert c["integer16_macs"] == c["macs"] == keras_macs(small_cnn) and c["float_ops"] == []


def test_dynamic_range_tflite_is_hybrid_not_int8(exported):
    c = int8_macs(exported["tflite", "dynamic"].path)
    assert c["int8_macs"] == 0.0 and c["integer_macs"] == 0
    # The converter quantizes only weights of 1024 values or more: the Dense 968x32, not the small convolutions.
    hybrid = [op for op in c["ops"] if op["kind"] == HYBRID]
    assert [op["op"] for op in hybrid] == ["FULLY_CONNECTED"] and c["hybrid_macs"] == 968 * 32


def test_onnx_fp32_runs_nothing_in_integer_and_counts_the_same_macs_as_tflite(exported, small_cnn):
    c = int8_macs(exported["onnx", "fp32"].path)
    assert c["int8_macs"] == 0.0 and c["macs"] == keras_macs(small_cnn)
    # onnxruntime's fusions are what runs: the Conv with its ReLU, the Dense layers as (Fused)Gemm.
    assert {op["op"] for op in c["ops"]} <= {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul"}


def test_onnx_static_qdq_runs_in_integer_kernels(exported, small_cnn):
    c = int8_macs(exported["onnx", "int8_static"].path)
    assert c["int8_macs"] >= 0.99 and c["macs"] == keras_macs(small_cnn)
    assert {op["op"] for op in c["ops"]} <= {"QLinearConv", "QGemm", "QLinearMatMul"}


def test_onnx_int8_dynamic_quantizes_activations_at_run_time_so_it_is_hybrid(exported):
    c = int8_macs(exported["onnx", "int8_dynamic"].path)
    assert c["int8_macs"] == 0.0 and c["hybrid_macs"] == c["macs"] > 0


def _weights_dequantized(fp32: str, out) -> None:
    """`fp32` with each MatMul weight stored int8 per channel behind a DequantizeLinear; activations left float.

    The file holds int8 weights and QDQ nodes (what a quantizer that leaves activations in float writes), but
    onnxruntime runs the MatMuls in float: DequantizeLinear, then a float (Fused)Gemm.
    """
    model = onnx.load(fp32)
    initializers = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in initializers:
            w = numpy_helper.to_array(initializers[node.input[1]])
            scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
            name = node.input[1]
            model.graph.initializer.extend([
                numpy_helper.from_array(np.round(w / scale).astype(np.int8), f"{name}_q"),
                numpy_helper.from_array(scale, f"{name}_scale"),
                numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{name}_zero_point"),
            ])
            nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_scale", f"{name}_zero_point"],
                                          [f"{name}_dq"], axis=1))
            node.input[1] = f"{name}_dq"
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(out))


def test_onnx_qdq_weights_with_float_activations_run_in_float(exported, tmp_path):
    path = tmp_path / "dq_weights.onnx"
    _weights_dequantized(str(exported["onnx", "fp32"].path), path)
    assert any(t.data_type == onnx.TensorProto.INT8 for t in onnx.load(str(path)).graph.initializer)

    c = int8_macs(path)
    assert c["int8_macs"] == 0.0 and c["macs"] == int8_macs(exported["onnx", "fp32"].path)["macs"]
    assert any(op["op"] in ("Gemm", "FusedGemm", "MatMul") for op in c["ops"] if op["name"] in c["float_ops"])


@pytest.mark.parametrize("precision", ["fp32", "int8_static", "int8_dynamic"])
def test_the_runners_optimization_level_runs_the_same_kinds_of_kernel(exported, tmp_path, precision):
    """The runner's sessions optimize at ORT_ENABLE_ALL; int8_macs counts on ORT_ENABLE_EXTENDED's graph."""

    def kinds(level: str) -> list[str]:
        out = tmp_path / f"{level}.onnx"
        optimized_graph(exported["onnx", precision].path, out, level)
        graph = onnx.load(str(out)).graph
        producers = {o: n for n in graph.node for o in n.output}
        return sorted(onnx_kind(n, producers) for n in graph.node if n.op_type in ONNX_MAC_OPS)

    assert kinds("ORT_ENABLE_ALL") == kinds("ORT_ENABLE_EXTENDED")
    assert (INTEGER in kinds("ORT_ENABLE_ALL")) == (precision == "int8_static")


def test_every_exported_artifact_records_int8_macs_in_its_manifest(exported):
    for (fmt, precision), artifact in exported.items():
        saved = Artifact.load(artifact.path).quantization
        expected = int8_macs(artifact.path)
        assert saved["int8_macs"] == pytest.approx(expected["int8_macs"], abs=1e-4), (fmt, precision)
        assert saved["macs"] == expected["macs"] > 0 and saved["float_mac_ops"] == expected["float_ops"]
    assert Artifact.load(exported["tflite", "int8"].path).quantization["int8_macs"] == 1.0
    assert Artifact.load(exported["tflite", "dynamic"].path).quantization["hybrid_macs"] > 0


def test_int8_macs_refuses_what_is_not_a_model(tmp_path):
    with pytest.raises(EdgepressError, match="does not exist"):
        int8_macs(tmp_path / "missing.tflite")
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(EdgepressError, match="neither a .tflite nor an .onnx"):
        int8_macs(tmp_path / "model.pt")
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(EdgepressError, match="onnxruntime could not load"):
        int8_macs(tmp_path / "broken.onnx")
