"""Quantization-aware training of a PyTorch program with PT2E (torchao's prepare_qat_pt2e / convert_pt2e) and the
quantizer litert-torch converts from, so its TFLite int8 export is full-integer with the ranges QAT learned.

    tuned, details = qat_program(program, x_train, y_train, QatConfig(fine_tune_epochs=2))

The program's module is exported again and prepared with litert-torch's `PT2EQuantizer` in its QAT configuration
(the one its int8 export uses for post-training quantization, `is_qat=True`): every linear (an attention's q/k/v
and output projections included) and conv layer computes with its weight fake-quantized to int8 per output channel
(symmetric) and its input and output fake-quantized to int8 per tensor, in ranges tracked as moving min/max; adds,
pooling and concatenations are quantized as well. That quantizer annotates no attention op, so it is wrapped
(edgepress.models.torch_attention_quant): each scaled_dot_product_attention is written as its matmuls and softmax,
and both matmuls (Q*K^T and softmax(..)*V) get int8 fake-quant on their inputs and output, the softmax the fixed
int8 range of TFLite's int8 SOFTMAX. It is fine-tuned (Adam on cross-entropy, at the program's own batch when that
is fixed), converted (`convert_pt2e`: quantize / dequantize pairs with the learned scales), and written again as a
`.pt2` at the batch the program takes. That program computes in float what its int8 files compute; the TFLite int8
export hands it to litert-torch as it is (no calibration), and its ONNX export is the QDQ file torch.onnx writes
from it (onnx fp32 and int8_static alike).

What stays float, as in litert-torch's own int8 export: LayerNorm, and an attention that is not plain math (dropout,
causal or grouped-query; the step's report lists them under `attention_float`). `preserve: sparsity` puts a pruned
program's zeros back after every optimizer step (symmetric int8 keeps a zero a zero).
"""

from __future__ import annotations

import copy

import numpy as np

from edgepress.errors import EdgepressError, first_line

# torch's ops the quantizer fake-quantizes weights of (anything else with weights stays float).
WEIGHTED = ("linear", "conv1d", "conv2d", "conv3d", "convolution", "addmm")


def handles(model) -> bool:
    """True for a torch.export program (what `qat_program` trains): the one rule, compress.step.holds_program."""
    from edgepress.compress.step import holds_program

    return holds_program(model)


def quantizer():
    """litert-torch's PT2E quantizer in its QAT configuration (int8 weights per channel, int8 activations), with the
    matmuls inside attention quantized too."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

    from edgepress.models.torch_attention_quant import with_attention

    found = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=True))
    # Its conv + batch-norm QAT patterns fail to build with this torchao (torch.export of a function); a conv is
    # annotated as a plain conv instead, its batch norm (eval statistics) left to the converter to fold.
    found.STATIC_QAT_ONLY_OPS = []
    return with_attention(found)


def check(program, config) -> None:
    """Refuse, naming what is at fault and what works, what PT2E QAT cannot do to `program` (before training).
    Prepares the program once (a few seconds, no training), so a graph the quantizer cannot annotate is refused
    here."""
    if config.layers is not None:
        raise EdgepressError(
            f"qat: `layers` names Keras layers; {program.path} is a PyTorch program, which PT2E quantization-aware "
            "training takes whole (every linear and conv layer, litert-torch's quantizer). Remove `layers` from the "
            "qat step."
        )
    if config.preserve == "clusters":
        raise EdgepressError(
            f"qat: `preserve: clusters` keeps what tfmot's cluster step made, and {program.path} is a PyTorch "
            "program (no cluster step applies to it). Set `preserve: none` (or `sparsity` after prune)."
        )
    if program.quantize_aware:
        raise EdgepressError(
            f"qat: {program.path} is already quantization-aware (it holds quantize / dequantize ops): run the qat "
            "step once."
        )
    weighted = [n for n in program.program.graph.nodes
                if n.op == "call_function" and getattr(n.target, "__name__", "").split(".")[0] in WEIGHTED]
    if not weighted:
        raise EdgepressError(
            f"qat: {program.path} has no linear or conv layer, so quantization-aware training has nothing to "
            "fake-quantize. Drop the qat step (post-training quantization in the exports still applies)."
        )
    if any(str(n.target).startswith("aten.gru") for n in program.program.graph.nodes):
        raise EdgepressError(
            f"qat: litert-torch's PT2E quantizer cannot prepare the GRU (aten.gru) of {program.path} for "
            "quantization-aware training (its GRU annotator fails on it), and its tflite int8 export cannot convert "
            "one either. Drop the qat step: post-training quantization in the exports applies (tflite dynamic, "
            "int8_weight or int16x8, onnx int8_dynamic or int8_static)."
        )
    _prepared(program, x=None)


def result_like(program):
    """A stand-in for the trained program while planning: the program, marked quantization-aware, so that its exports
    are checked as the trained program's will be (tflite int8 and QDQ ONNX only)."""
    like = copy.copy(program)
    like.quantize_aware = True
    return like


def _prepared(program, x: np.ndarray | None):
    """The program's module exported again and prepared for QAT (fake-quant on weights and activations)."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    batch = program.fixed_batch or 2  # torch.export specializes a batch of 1 to a constant
    shape = (batch, *program.input_shape[1:])
    dtype = getattr(torch, program.input_dtype.name)
    sample = torch.zeros(shape, dtype=dtype) if x is None else torch.from_numpy(
        np.ascontiguousarray(x[:batch], dtype=program.input_dtype))
    dynamic = None if program.fixed_batch else ({0: torch.export.Dim("batch", min=1)},)
    try:
        exported = torch.export.export(copy.deepcopy(program.module), (sample,), dynamic_shapes=dynamic)
        return prepare_qat_pt2e(exported.module(), quantizer())
    except Exception as e:  # torch.export's and the quantizer's own errors
        raise EdgepressError(
            f"qat: PT2E quantization-aware training could not prepare {program.path}: {first_line(e)}. Drop the qat "
            "step; post-training quantization in the exports (tflite int8, onnx int8_static) still applies."
        ) from None


def qat_program(program, x: np.ndarray, y: np.ndarray, config, on_epoch=None) -> tuple[object, dict]:
    """The program fine-tuned quantization-aware and converted (quantize / dequantize pairs with the learned ranges),
    as a new TorchSource at the program's batch, and what was quantized (for the step's report row)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    from edgepress.compress.structured_prune_torch import exported_program, fine_tune_program
    from edgepress.models.torch_attention_quant import quantized_matmuls, undecomposed

    check(program, config)
    prepared = _prepared(program, x)
    after_step = _zeros_kept(prepared) if config.preserve == "sparsity" else None
    fine_tune_program(prepared, program, x, y, config, on_epoch, after_step=after_step)
    converted = convert_pt2e(prepared, fold_quantize=False)
    quantized = sum(1 for n in converted.graph.nodes if str(n.target).startswith("quantized_decomposed.quantize"))
    matmuls = quantized_matmuls(converted.graph)
    tuned = exported_program(converted, program, x)
    weighted = sum(1 for n in tuned.program.graph.nodes
                   if str(n.target).startswith("quantized_decomposed.dequantize_per_channel"))
    details = {"how": "PT2E (torchao prepare_qat_pt2e, litert-torch's PT2EQuantizer)", "weights_quantized": weighted,
               "quantize_nodes": quantized, "weights": "int8 per channel, symmetric",
               "activations": "int8 per tensor, moving min/max", "preserve": config.preserve,
               "attention_matmuls": matmuls, "attention_float": undecomposed(program.program.graph)}
    return tuned, details


def _zeros_kept(module):
    """An after-step hook putting back the zeros of each weight matrix or filter (sparsity-preserving QAT)."""
    import torch

    masks = [(p, (p != 0).to(p.dtype)) for p in module.parameters() if p.dim() >= 2 and bool((p == 0).any())]

    def after_step() -> None:
        with torch.no_grad():
            for p, m in masks:
                p.mul_(m)

    return after_step
