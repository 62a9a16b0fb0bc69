import numpy as np
import onnx
import pytest

from edgepress.artifact import Artifact
from edgepress.deploy import export_onnx, export_tflite, measure
from edgepress.deploy.runner import open_model
from edgepress.errors import EdgepressError
from edgepress.models import training


@pytest.fixture(scope="module")
def exported(trained_cnn, digits, tmp_path_factory):
    """Every TFLite and ONNX precision of the trained seed CNN, checked on 100 test samples."""
    out = tmp_path_factory.mktemp("artifacts")
    calibration, check = digits.calibration(100), digits.x_test[:100]
    artifacts = {}
    for precision in ("fp32", "fp16", "dynamic", "int8", "int16x8"):
        artifacts["tflite", precision] = export_tflite(
            trained_cnn, out / f"m_{precision}.tflite", precision, calibration, check, steps=["prune"])
    for precision in ("fp32", "fp16", "int8_dynamic", "int8_static"):
        artifacts["onnx", precision] = export_onnx(
            trained_cnn, out / f"m_{precision}.onnx", precision, calibration, check)
    return artifacts


@pytest.mark.parametrize("key", [("tflite", "fp32"), ("onnx", "fp32")])
def test_fp32_exports_compute_what_keras_computes(exported, key):
    check = exported[key].check
    assert check["samples"] == 100 and check["top1_agreement"] == 1.0 and check["max_abs_diff"] < 1e-3


@pytest.mark.parametrize(
    "key", [("tflite", "fp16"), ("tflite", "dynamic"), ("tflite", "int8"), ("tflite", "int16x8"),
            ("onnx", "fp16"), ("onnx", "int8_dynamic"), ("onnx", "int8_static")])
def test_quantized_exports_agree_with_keras(exported, key):
    assert exported[key].check["top1_agreement"] >= 0.96


def test_quantized_files_are_smaller(exported):
    fp32 = exported["tflite", "fp32"].bytes
    assert exported["tflite", "fp16"].bytes < 0.6 * fp32
    for precision in ("dynamic", "int8", "int16x8"):
        assert exported["tflite", precision].bytes < 0.35 * fp32
    assert exported["onnx", "int8_static"].bytes < 0.35 * exported["onnx", "fp32"].bytes


def test_int8_tflite_has_int8_input_with_quantization_params(exported):
    artifact = exported["tflite", "int8"]
    assert artifact.inputs[0].dtype == "int8" and artifact.outputs[0].dtype == "int8"
    scale, _ = artifact.inputs[0].quantization
    assert scale > 0
    assert artifact.quantization["calibration_samples"] == 100


def test_int8_static_onnx_is_qdq(exported):
    ops = {node.op_type for node in onnx.load(str(exported["onnx", "int8_static"].path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_manifest_round_trips(exported):
    artifact = exported["tflite", "int8"]
    loaded = Artifact.load(artifact.path)
    assert loaded == artifact
    assert loaded.steps == ["prune"] and len(loaded.sha256) == 64
    assert loaded.gzip_bytes < loaded.bytes


def test_measure_reports_accuracy_latency_and_memory(exported, trained_cnn, digits):
    artifact = exported["tflite", "fp32"]
    reference = np.argmax(training.predict(trained_cnn, digits.x_test), -1)

    result = measure(artifact, digits, runs=20, warmup=2, reference=reference)

    expected = training.accuracy(open_model(str(artifact.path)).predict(digits.x_test), digits.y_test)
    assert result["samples"] == len(digits.x_test)
    assert result["accuracy"] == pytest.approx(expected)
    assert result["agreement"] >= 0.99
    lat = result["latency_ms"]
    assert lat["runs"] == 20 and 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert result["memory"]["peak_rss_bytes"] >= result["memory"]["baseline_rss_bytes"] > 0


@pytest.mark.parametrize("exporter, precision", [(export_tflite, "int8"), (export_onnx, "int8_static")])
def test_quantizing_without_calibration_is_refused_and_writes_nothing(trained_cnn, tmp_path, exporter, precision):
    with pytest.raises(EdgepressError, match="needs calibration data"):
        exporter(trained_cnn, tmp_path / f"m.{'tflite' if exporter is export_tflite else 'onnx'}", precision)
    assert list(tmp_path.iterdir()) == []


def test_calibration_of_the_wrong_shape_is_refused(trained_cnn, tmp_path):
    with pytest.raises(EdgepressError, match=r"\(8, 8, 1\).*\(28, 28, 1\)"):
        export_tflite(trained_cnn, tmp_path / "m.tflite", "int8", calibration=np.zeros((4, 8, 8, 1), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_unknown_precision_is_refused(trained_cnn, tmp_path):
    with pytest.raises(EdgepressError, match="int4"):
        export_tflite(trained_cnn, tmp_path / "m.tflite", "int4")
