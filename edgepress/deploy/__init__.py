"""Deployment: exporters (Keras model -> Artifact) and measurement of artifacts.

    artifact = edgepress.deploy.export_tflite(model, "model_int8.tflite", precision="int8", calibration=x[:200])
    result = edgepress.deploy.measure(artifact, (x_test, y_test))
"""

from edgepress.deploy.accuracy_aware import QuantizeConfig, quantize_to_budget
from edgepress.deploy.measure import measure
from edgepress.deploy.onnx import ONNX_PRECISIONS, export_onnx
from edgepress.deploy.tflite import TFLITE_PRECISIONS, export_tflite

__all__ = [
    "ONNX_PRECISIONS", "TFLITE_PRECISIONS", "QuantizeConfig", "export_onnx", "export_tflite", "measure",
    "quantize_to_budget",
]
