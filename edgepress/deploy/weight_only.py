"""Weight-only precisions: int8 or int4 weights, float activations; smaller files, float accuracy nearly kept.

    artifact = export_tflite(model, "m_int4_weight.tflite", "int4_weight", block_size=32)   # or export_onnx

TFLite (Google's LiteRT quantizer, `ai-edge-quantizer`, on the fp32 .tflite file):
- int8_weight: int8 weights per output channel, each dequantized to float by a DEQUANTIZE op before its float
  op (Conv2D, DepthwiseConv2D, TransposeConv, FullyConnected, BatchMatMul).
- int4_weight: int4 weights per output channel, the same way (Conv2D, FullyConnected, BatchMatMul; LiteRT's
  quantizer has no 4-bit DepthwiseConv2D, which stays float). With `block_size` (32, 64, 128 or 256) each
  FullyConnected whose input width the block size divides gets int4 weights with one scale per block instead:
  LiteRT has that only as a dynamic-range kernel, which quantizes the activations to int8 at run time
  (`hybrid` in int8_macs), not as a dequantize-then-float op; the other ops keep per-channel int4.
  Only LiteRT's XNNPACK delegate computes those blockwise ops right (LiteRT 2.3, x86): its built-in
  FULLY_CONNECTED kernels, which run when XNNPACK is not applied (another delegate, a runtime built
  without it), run the file but give wrong outputs (tests/deploy/test_weight_only.py measures it).
ONNX (onnxruntime's MatMulNBitsQuantizer on the fp32 .onnx file):
- int4_weight: MatMul weights int4 in blocks of `block_size` (16 to 256) along the input dimension, in a
  MatMulNBits op (weights dequantized to float in the kernel; `accuracy_level=4` makes it quantize the
  activations to int8 instead). Gemm with a constant weight is rewritten as MatMul + Add first. onnxruntime
  has no int4 convolution: Conv layers stay fp32. A decoder's token and position tables (Gather) get int4
  blocks along each row too (GatherBlockQuantized, onnxruntime >= 1.20).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgepress import files
from edgepress.compat import quiet
from edgepress.deploy.registry import EXPORTERS, Exporter, ExportRequest, exporter_for, register
from edgepress.errors import EdgepressError, first_line
from edgepress.formats import PRECISIONS, weight_only_precisions

TFLITE_BLOCK_SIZES = PRECISIONS["tflite"]["int4_weight"].block_sizes
ONNX_BLOCK_SIZES = PRECISIONS["onnx"]["int4_weight"].block_sizes
_BITS = {"int8_weight": 8, "int4_weight": 4}


class WeightOnly(Exporter):
    """A float export of the model (fp32, by the exporter of its kind), then its weights quantized."""

    def takes(self, source) -> bool:
        """Every model its format's fp32 export takes."""
        return any(e.format == self.format and "fp32" in e.precisions and e.takes(source) for e in EXPORTERS)

    def float_request(self, request: ExportRequest) -> ExportRequest:
        """The fp32 export the weights are quantized from: the same model and options, no check of its own."""
        return dataclasses.replace(request, precision="fp32", check_data=None, block_size=None)

    def check(self, request: ExportRequest) -> None:
        floating = self.float_request(request)
        exporter_for(floating).check(floating)

    def layout(self, request: ExportRequest) -> str | None:
        floating = self.float_request(request)
        return exporter_for(floating).layout(floating)

    def write(self, request: ExportRequest, out: Path) -> dict[str, Any]:
        floating = self.float_request(request)
        with tempfile.TemporaryDirectory() as work:
            fp32 = Path(work) / f"fp32.{request.format}"
            exporter_for(floating).write(dataclasses.replace(floating, path=fp32), fp32)
            return self.quantize(fp32, out, request)

    def quantize(self, fp32: Path, out: Path, request: ExportRequest) -> dict[str, Any]:
        raise NotImplementedError


@register
class TfliteWeightOnly(WeightOnly):
    format: ClassVar[str] = "tflite"
    precisions: ClassVar[tuple[str, ...]] = weight_only_precisions("tflite")

    def check(self, request: ExportRequest) -> None:
        _check_tflite_block(_BITS[request.precision], request.block_size)
        super().check(request)

    def quantize(self, fp32: Path, out: Path, request: ExportRequest) -> dict[str, Any]:
        return tflite_weight_only(fp32, out, _BITS[request.precision], request.block_size)


@register
class OnnxInt4Weight(WeightOnly):
    format: ClassVar[str] = "onnx"
    precisions: ClassVar[tuple[str, ...]] = weight_only_precisions("onnx")

    def check(self, request: ExportRequest) -> None:
        _check_onnx_block(32 if request.block_size is None else request.block_size)
        super().check(request)

    def quantize(self, fp32: Path, out: Path, request: ExportRequest) -> dict[str, Any]:
        # A decoder's token and position tables are a large share of its weights (Gather, not MatMul).
        return onnx_int4_weight(fp32, out, 32 if request.block_size is None else request.block_size,
                                tables=request.source.kind == "decoder")


# --- TFLite: LiteRT's quantizer -----------------------------------------------------------------------------


def tflite_weight_only(float_tflite: Path, out: Path, bits: int, block_size: int | None = None) -> dict[str, Any]:
    """Write `float_tflite` with `bits`-bit (8 or 4) weights to `out`; return the facts for the manifest.

    `block_size` (int4 only) quantizes FullyConnected weights in blocks (see the module docstring).
    """
    _check_tflite_block(bits, block_size)
    try:
        from ai_edge_quantizer import qtyping, quantizer, recipe_manager
    except ImportError as e:
        raise EdgepressError(
            f"TFLite int{bits}_weight needs Google's LiteRT quantizer (`import ai_edge_quantizer` failed: "
            f"{first_line(e)}). Install it with `pip install 'edgepress[weight-only]'`."
        ) from None

    ops, granularity = qtyping.TFLOperationName, qtyping.QuantGranularity
    recipe = recipe_manager.RecipeManager()
    # Every op the quantizer supports at this width: weights per channel, dequantized before a float op.
    recipe.add_weight_only_config(regex=".*", operation_name=ops.ALL_SUPPORTED, num_bits=bits,
                                  granularity=granularity.CHANNELWISE)
    blockwise = []
    if block_size is not None:
        for name, width in _fully_connected(float_tflite):
            if width % block_size == 0:
                # The op scope is its output tensors' names, each followed by ';'. Later configs win.
                recipe.add_dynamic_config(regex=f"^{re.escape(name)};$", operation_name=ops.FULLY_CONNECTED,
                                          num_bits=4, granularity=granularity(f"BLOCKWISE_{block_size}"))
                blockwise.append(name)
    try:
        with quiet(), contextlib.redirect_stdout(sys.stderr):  # it prints a size report
            result = quantizer.Quantizer(str(float_tflite), recipe.get_quantization_recipe()).quantize()
    except Exception as e:  # the quantizer raises ValueError, RuntimeError and flatbuffer errors
        raise EdgepressError(
            f"LiteRT's quantizer could not make int{bits} weights for {float_tflite}: {first_line(e)}. "
            "Export tflite dynamic (int8 weights, converter) instead."
        ) from None
    files.write_bytes(out, bytes(result.quantized_model))
    import ai_edge_quantizer

    facts: dict[str, Any] = {
        "weights": f"int{bits}", "activations": "float32",
        "granularity": "blockwise" if blockwise else "per-channel",
        "quantizer": f"ai-edge-quantizer {getattr(ai_edge_quantizer, '__version__', '')}".strip(),
    }
    if block_size is not None:
        # Only the FullyConnected ops whose input width the block divides; their activations go int8 at run time.
        facts.update(block_size=block_size, blockwise_ops=blockwise)
        if blockwise:
            facts["kernels"] = "XNNPACK only: LiteRT's built-in FULLY_CONNECTED computes blockwise int4 wrongly"
    return facts


def _check_tflite_block(bits: int, block_size: int | None) -> None:
    if bits not in (8, 4):
        raise EdgepressError(f"TFLite weight-only quantization takes 8 or 4 bits, not {bits}.")
    if block_size is not None and (bits != 4 or block_size not in TFLITE_BLOCK_SIZES):
        raise EdgepressError(
            f"block_size {block_size} with {bits}-bit weights: LiteRT's quantizer has blockwise weights for int4 "
            f"only, in blocks of {', '.join(map(str, TFLITE_BLOCK_SIZES))}. Use int4_weight with one of those, "
            "or no block_size (one scale per output channel)."
        )


def _check_onnx_block(block_size: int) -> None:
    if block_size not in ONNX_BLOCK_SIZES:
        raise EdgepressError(
            f"ONNX int4_weight block_size must be one of {', '.join(map(str, ONNX_BLOCK_SIZES))}, not {block_size}."
        )


def _fully_connected(path: Path) -> list[tuple[str, int]]:
    """(output tensor name, input width) of each FULLY_CONNECTED op with a constant weight of its own in a .tflite
    file. A weight another op reads too (a tied output head reads the token table its GATHER looks rows up in) is
    left out: LiteRT's quantizer cannot give one tensor two granularities (it fails inserting the dequantize), so
    that op keeps the per-channel int4 weights of the rest."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with quiet():
        interpreter = Interpreter(model_path=str(path),
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()  # the op list is not public API; every LiteRT interpreter has it
    readers = collections.Counter(i for op in ops for i in op["inputs"])
    found = []
    for op in ops:
        if op["op_name"] == "FULLY_CONNECTED" and len(op["inputs"]) > 1 and readers[op["inputs"][1]] == 1:
            weight = tensors[op["inputs"][1]]
            found.append((tensors[op["outputs"][0]]["name"], int(weight["shape"][-1])))
    return found


# --- ONNX: onnxruntime's MatMulNBits ------------------------------------------------------------------------


def onnx_int4_weight(fp32_onnx: Path, out: Path, block_size: int = 32,
                     accuracy_level: int | None = None, tables: bool = False) -> dict[str, Any]:
    """Write `fp32_onnx` with int4 MatMul weights (MatMulNBits, blocks of `block_size`) to `out`.

    `accuracy_level` is MatMulNBits' own: None or 0-1 multiply in float (weights dequantized in the kernel),
    4 quantizes the activations to int8 at run time. `tables`: also the constant tables a Gather looks rows up in
    (a language model's token and position embeddings), int4 in blocks along each row, in onnxruntime's
    GatherBlockQuantized. Returns the facts for the manifest.
    """
    import onnx

    _check_onnx_block(block_size)
    if accuracy_level not in (None, 0, 1, 2, 3, 4):
        raise EdgepressError(f"MatMulNBits accuracy_level is 0 to 4 (or None), not {accuracy_level}.")
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as e:
        raise EdgepressError(
            f"ONNX int4_weight needs onnxruntime's MatMulNBitsQuantizer, which did not import ({first_line(e)}). "
            "Install what it needs with `pip install 'edgepress[weight-only]'`."
        ) from None
    model = onnx.load(str(fp32_onnx))
    opset = next((e.version for e in model.opset_import if e.domain in ("", "ai.onnx")), None)
    rewritten = _gemm_as_matmul(model)
    ops = ("MatMul", "Gather") if tables else ("MatMul",)
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=False,
                                     accuracy_level=accuracy_level, op_types_to_quantize=ops,
                                     quant_axes=(("MatMul", 0), ("Gather", 1)))
    try:
        with quiet(), contextlib.redirect_stdout(sys.stderr):
            quantizer.process()
    except Exception as e:  # onnxruntime's quantization tools raise plain exceptions
        raise EdgepressError(
            f"onnxruntime's MatMulNBitsQuantizer could not quantize {fp32_onnx}: {first_line(e)}. "
            "Export onnx int8_dynamic or int8_static instead."
        ) from None
    quantized = quantizer.model.model
    # The quantizer raises the standard opset to 21 when it writes int4 tables (GatherBlockQuantized's uint4 data),
    # which the model's own ops (ReduceMean's `axes` attribute at 17) are then invalid in. Int4 tensors need the IR
    # version (10), not the opset, and the new ops are onnxruntime's: the model keeps the opset it was made at.
    for entry in quantized.opset_import:
        if opset is not None and entry.domain in ("", "ai.onnx") and entry.version != opset:
            entry.version = opset
    nodes = [n.name for n in quantized.graph.node if n.op_type == "MatMulNBits"]
    gathers = [n.name for n in quantized.graph.node if n.op_type == "GatherBlockQuantized"]
    if not nodes:
        raise EdgepressError(
            f"{fp32_onnx} has no MatMul (or Gemm) with a constant weight, so int4_weight would change nothing: "
            "onnxruntime has int4 kernels for MatMul only (no Conv). Export onnx int8_static instead."
        )
    files.write_bytes(out, quantized.SerializeToString())
    return {"weights": "int4", "activations": "float32", "granularity": "blockwise", "block_size": block_size,
            "matmul_nbits": nodes, "gemm_rewritten": rewritten, "accuracy_level": accuracy_level,
            "quantizer": "onnxruntime MatMulNBitsQuantizer",
            **({"gather_block_quantized": gathers} if tables else {})}


def _gemm_as_matmul(model) -> list[str]:
    """Rewrite each Gemm with a constant weight as MatMul (+ Add) in place: the int4 quantizer takes MatMul only.

    Y = alpha * A @ op(B) + beta * C becomes MatMul(A, alpha * op(B)) + beta * C; a Gemm with a transposed
    A or a computed weight is left as it is. Returns the names of the rewritten nodes.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    nodes, rewritten = [], []
    for node in graph.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if (node.op_type != "Gemm" or node.input[1] not in initializers or attributes.get("transA", 0)
                or (bias is not None and bias not in initializers)):
            nodes.append(node)
            continue
        name = node.name or node.output[0]
        weight = numpy_helper.to_array(initializers[node.input[1]])
        weight = (weight.T if attributes.get("transB", 0) else weight) * attributes.get("alpha", 1.0)
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight, np.float32), f"{name}_weight"))
        product = node.output[0] if bias is None else f"{name}_product"
        nodes.append(helper.make_node("MatMul", [node.input[0], f"{name}_weight"], [product], name=f"{name}_MatMul"))
        if bias is not None:
            scaled = numpy_helper.to_array(initializers[bias]) * attributes.get("beta", 1.0)
            graph.initializer.append(numpy_helper.from_array(scaled.astype(np.float32), f"{name}_bias"))
            nodes.append(helper.make_node("Add", [product, f"{name}_bias"], [node.output[0]], name=f"{name}_Add"))
        rewritten.append(name)
    del graph.node[:]
    graph.node.extend(nodes)
    return rewritten
