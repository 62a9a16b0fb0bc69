"""Deployment: exporters (model -> Artifact) and measurement of artifacts.

    artifact = edgepress.deploy.export_tflite(model, "model_int8.tflite", precision="int8", calibration=x[:200])
    artifact = edgepress.deploy.export(ExportRequest(source, path, "onnx", "fp32"))   # the one way underneath
    result = edgepress.deploy.measure(artifact, (x_test, y_test))

Every export goes through `edgepress.deploy.registry`: one request type, the exporters registered per format,
model kind and precision; the formats and precisions are `edgepress.formats`. Accuracy-aware int8 is
`edgepress.quantize`, which sits above this package and edgepress.compress.
"""

from edgepress.deploy.measure import measure
from edgepress.deploy.onnx import ONNX_PRECISIONS, export_onnx
from edgepress.deploy.registry import ExportRequest, export, exporter_for
from edgepress.deploy.tflite import TFLITE_PRECISIONS, export_tflite

__all__ = [
    "ONNX_PRECISIONS", "TFLITE_PRECISIONS", "ExportRequest", "export", "export_onnx", "export_tflite", "exporter_for",
    "measure",
]
