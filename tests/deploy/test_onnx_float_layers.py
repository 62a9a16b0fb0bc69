"""An ONNX int8_static layer left in float (`float_layers`, onnxruntime's `nodes_to_exclude`) runs in float where the
file is loaded: onnxruntime's WeightBiasQuantization would quantize a Conv or Gemm whose input is dequantized and
whose weight is float, then fuse it to QLinearConv / QGemm. Checked on the graph onnxruntime really runs, written by
SessionOptions.optimized_model_filepath. Real TensorFlow, tf2onnx and onnxruntime on a small CNN on digits."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgepress.deploy import export_onnx
from edgepress.deploy.runner import open_model
from edgepress.models import training


@pytest.fixture(scope="module")
def digits8():
    from edgepress.models.datasets import load_dataset

    return load_dataset("digits", test_size=100).fit_to((8, 8, 1))


@pytest.fixture(scope="module")
def cnn(digits8):
    from edgepress.compat import keras

    k = keras()
    k.utils.set_random_seed(0)
    model = k.Sequential([k.layers.Input((8, 8, 1)), k.layers.Conv2D(8, 3, activation="relu", name="conv1"),
                          k.layers.Conv2D(8, 3, activation="relu", name="conv2"), k.layers.Conv2D(8, 3, name="conv3"),
                          k.layers.Flatten(name="flatten"), k.layers.Dense(16, activation="relu", name="hidden"),
                          k.layers.Dense(10, name="logits")], name="cnn")
    training.fit(model, digits8.x_train, digits8.y_train, epochs=2)
    return model


def loaded_ops(path, tmp_path) -> dict[str, str]:
    """Node name -> op type of the graph onnxruntime runs for the file at `path` (after its optimizers)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "loaded.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return {node.name: node.op_type for node in onnx.load(str(tmp_path / "loaded.onnx")).graph.node}


def of_layer(ops: dict[str, str], layer: str) -> set[str]:
    return {op for name, op in ops.items() if f"/{layer}/" in name or name.startswith(f"cnn/{layer}/")}


def test_a_float_layer_of_a_qdq_file_runs_in_float_where_it_is_loaded(cnn, digits8, tmp_path):
    artifact = export_onnx(cnn, tmp_path / "m.onnx", "int8_static", calibration=digits8.calibration(50),
                           check_data=digits8.x_test[:50], float_layers=["conv2", "hidden"])
    ops = loaded_ops(artifact.path, tmp_path)
    for layer in ("conv2", "hidden"):  # float kernels: no quantized op of theirs after onnxruntime's optimizers
        assert of_layer(ops, layer) & {"Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm"}, (layer, ops)
        assert not of_layer(ops, layer) & {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger"}, (layer, ops)
    for layer in ("conv1", "conv3"):  # their neighbours stay int8
        assert "QLinearConv" in of_layer(ops, layer), (layer, ops)
    assert "QGemm" in of_layer(ops, "logits")
    assert artifact.quantization["float_nodes"] and artifact.quantization["int8_macs"] < 0.9
    # The rewritten input computes what the DequantizeLinear did: the file agrees with the Keras model as before.
    assert artifact.check["top1_agreement"] >= 0.95
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    unoptimized = ort.InferenceSession(str(artifact.path), plain, providers=["CPUExecutionProvider"])
    x = digits8.x_test[:20].astype(np.float32)
    np.testing.assert_allclose(open_model(str(artifact.path)).predict(x),
                               unoptimized.run(None, {unoptimized.get_inputs()[0].name: x})[0], atol=1e-4)


def test_a_fully_quantized_qdq_file_is_left_as_onnxruntime_quantizes_it(cnn, digits8, tmp_path):
    artifact = export_onnx(cnn, tmp_path / "m.onnx", "int8_static", calibration=digits8.calibration(50))
    ops = loaded_ops(artifact.path, tmp_path)
    assert "Cast" not in ops.values() and list(ops.values()).count("QLinearConv") == 3
