"""The inputs and outputs of an exported file, read from the file: what an artifact's manifest records.

    inputs, outputs = signature(Path("m_int8.tflite"))   # TensorInfo lists; dynamic dimensions are -1
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepress.artifact import TensorInfo


def signature(path: Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Inputs and outputs of a .tflite or .onnx file (by its suffix)."""
    return _onnx(path) if Path(path).suffix == ".onnx" else _tflite(path)


def _tflite(path: Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """With (scale, zero_point) for quantized tensors."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))

    def info(d) -> TensorInfo:
        scale, zero_point = d["quantization"]
        return TensorInfo(
            name=d["name"],
            shape=[int(s) for s in d["shape_signature"]],
            dtype=np.dtype(d["dtype"]).name,
            quantization=(float(scale), int(zero_point)) if scale else None,
        )

    return [info(d) for d in interpreter.get_input_details()], [info(d) for d in interpreter.get_output_details()]


def _onnx(path: Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def info(value) -> TensorInfo:
        t = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return TensorInfo(name=value.name, shape=shape, dtype=onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name)

    initializers = {i.name for i in graph.initializer}
    return [info(v) for v in graph.input if v.name not in initializers], [info(v) for v in graph.output]
