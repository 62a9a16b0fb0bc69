"""Deployment: exporters (model -> Artifact) and measurement of artifacts.

    artifact = edgepress.deploy.export_tflite(model, "model_int8.tflite", precision="int8", calibration=x[:200])
    artifact = edgepress.deploy.exporter("onnx")(model, "model.onnx", "fp32")   # the same call for every format
    result = edgepress.deploy.measure(artifact, (x_test, y_test))

Every exporter takes (model, path, precision, calibration=None, check_data=None, steps=(), batch_size=None,
**format options) and returns the Artifact it wrote; the formats and precisions are `edgepress.formats`.
"""

from collections.abc import Callable

from edgepress.deploy.accuracy_aware import QuantizeConfig, quantize_to_budget
from edgepress.deploy.measure import measure
from edgepress.deploy.onnx import ONNX_PRECISIONS, export_onnx
from edgepress.deploy.tflite import TFLITE_PRECISIONS, export_tflite
from edgepress.errors import EdgepressError

# The exporter of each format (edgepress.formats.FORMATS).
EXPORTERS: dict[str, Callable] = {"tflite": export_tflite, "onnx": export_onnx}


def exporter(format: str) -> Callable:
    """The export function for `format`."""
    if format not in EXPORTERS:
        raise EdgepressError(f"No exporter for format '{format}'; use one of: {', '.join(EXPORTERS)}.")
    return EXPORTERS[format]


__all__ = [
    "EXPORTERS", "ONNX_PRECISIONS", "TFLITE_PRECISIONS", "QuantizeConfig", "export_onnx", "export_tflite", "exporter",
    "measure", "quantize_to_budget",
]
