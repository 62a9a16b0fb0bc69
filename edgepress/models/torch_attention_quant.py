"""int8 for the two matmuls inside scaled_dot_product_attention, in PT2E quantization of a PyTorch program (QAT in
edgepress.compress.qat_torch, post-training int8 in edgepress.deploy.torch_tflite): the one place for that rule.

litert-torch's PT2EQuantizer annotates no attention op, so `aten.scaled_dot_product_attention` stays float: Q*K^T
and softmax(..)*V, about a tenth of a small encoder's MACs. `with_attention(quantizer)` wraps it:

- before annotating, each scaled_dot_product_attention is written as its math (torch's own reference: query scaled,
  matmul with the key transposed, the mask added, softmax, matmul with the value) in plain aten ops;
- after litert-torch's quantizer has annotated the graph, each of those matmuls gets int8 per-tensor fake-quant on
  both inputs and on its output (the quantizer's own activation spec: the same observers as every other
  activation; the second input's range symmetric, zero point 0, which XNNPACK's int8 BATCH_MATMUL needs), and the
  softmax between them the fixed int8 range litert-torch gives a softmax (TFLite's int8 SOFTMAX takes scale 1/256,
  zero point -128 only), shared with the second matmul's input. With a mask, the masked scores (which may hold
  -inf) and the softmax stay float; the matmuls are int8 all the same.

litert-torch then converts the quantize / dequantize pairs around them into int8 BATCH_MATMULs and an int8 SOFTMAX.
A matmul of two activations written out in the model (an attention of its own) is annotated the same way. An
attention that is not plain math (dropout while training, grouped-query heads, causal masking) is left as it is,
float, and named by `undecomposed`.
"""

from __future__ import annotations

import dataclasses
import math

SDPA = "aten.scaled_dot_product_attention.default"
MATMULS = ("aten.matmul.default", "aten.bmm.default")


def undecomposed(graph) -> list[str]:
    """The scaled_dot_product_attention nodes of `graph` that stay float, each with why."""
    return [f"{node.name} ({why})" for node in graph.nodes if (why := _why_not(node))]


def quantized_matmuls(graph) -> int:
    """How many activation-by-activation matmuls of a converted (quantize / dequantize) graph take int8 inputs."""
    def dequantized(arg) -> bool:
        return str(getattr(arg, "target", "")).startswith("quantized_decomposed.dequantize")

    return sum(1 for node in graph.nodes if str(node.target) in MATMULS and all(map(dequantized, node.args[:2])))


def with_attention(base):
    """`base` (litert-torch's PT2EQuantizer) quantizing the attention matmuls too."""
    from torchao.quantization.pt2e.quantizer import Quantizer

    class AttentionQuantizer(Quantizer):
        def transform_for_annotation(self, model):
            return base.transform_for_annotation(decompose_attention(model))

        def annotate(self, model):
            model = base.annotate(model)
            annotate_attention(model, base.global_config)
            return model

        def validate(self, model) -> None:
            base.validate(model)

    return AttentionQuantizer()


def _why_not(node) -> str | None:
    if node.op != "call_function" or str(node.target) != SDPA:
        return None
    _, _, _, _, dropout, causal = _arguments(node)
    if dropout:
        return f"dropout_p {dropout}"
    if causal:
        return "is_causal"
    if node.kwargs.get("enable_gqa"):
        return "enable_gqa"
    return None


def _arguments(node) -> list:
    """query, key, value, attn_mask, dropout_p, is_causal of a scaled_dot_product_attention node, defaults filled in."""
    defaults = {"query": None, "key": None, "value": None, "attn_mask": None, "dropout_p": 0.0, "is_causal": False}
    return [node.args[i] if i < len(node.args) else node.kwargs.get(name, default)
            for i, (name, default) in enumerate(defaults.items())]


def decompose_attention(model):
    """Each plain scaled_dot_product_attention of the FX graph `model` written as its math, in place; `model`."""
    import torch

    aten = torch.ops.aten
    graph = model.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or str(node.target) != SDPA or _why_not(node):
            continue
        query, key, value, mask, _, _ = _arguments(node)
        scale = node.kwargs.get("scale")
        if scale is None:
            scale = 1.0 / math.sqrt(query.meta["val"].shape[-1])
        with graph.inserting_before(node):
            made = _Maker(graph, node)
            scores = made(aten.matmul.default, made(aten.mul.Tensor, query, scale),
                          made(aten.transpose.int, key, -2, -1))
            if mask is not None and mask.meta["val"].dtype == torch.bool:
                scores = made(aten.masked_fill.Scalar, scores, made(aten.logical_not.default, mask), float("-inf"))
            elif mask is not None:
                scores = made(aten.add.Tensor, scores, mask)
            weights = made(aten._softmax.default, scores, -1, False)
            out = made(aten.matmul.default, weights, value)
        node.replace_all_uses_with(out)
        graph.erase_node(node)
    graph.lint()
    model.recompile()
    return model


class _Maker:
    """Makes call_function nodes standing for `node`: its module stack kept (module filters still see them), and
    their value's meta computed on fake tensors, as torch.export's own nodes have it."""

    def __init__(self, graph, node) -> None:
        from torch._guards import detect_fake_mode

        self.graph, self.node = graph, node
        self.fake = detect_fake_mode([node.meta["val"]])

    def __call__(self, op, *args):
        import torch

        made = self.graph.call_function(op, args)
        for key in ("nn_module_stack", "stack_trace"):
            if key in self.node.meta:
                made.meta[key] = self.node.meta[key]
        values = [a.meta["val"] if isinstance(a, torch.fx.Node) else a for a in args]
        with self.fake:
            made.meta["val"] = op(*values)
        return made


def annotate_attention(model, config) -> None:
    """int8 fake-quant (the quantizer's activation spec `config.input_activation`) on the inputs and output of
    each activation-by-activation matmul in `model` that no annotator took, and litert-torch's fixed softmax range
    on a softmax between two of them."""
    import torch
    from litert_torch.quantize.pt2e_quantizer_utils import get_fixed_qparams_qspec
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    if config is None or config.input_activation is None:
        return  # dynamic quantization: activations are float between the weighted ops
    act = config.input_activation
    # XNNPACK runs an int8 BATCH_MATMUL only when its second input's zero point is 0; otherwise LiteRT's builtin
    # kernel does, and the benchmark's ViT took 157 us instead of 51 (float attention: 47, fp32: 70). So the key and
    # the value get a symmetric range.
    symmetric = dataclasses.replace(act, qscheme=torch.per_tensor_symmetric, quant_min=-127, quant_max=127)
    key = "quantization_annotation"

    def shared(producer):
        """An input's spec: the range of its producer's output when that is quantized already, else its own."""
        return SharedQuantizationSpec(producer) if _output_spec(producer) is not None else act

    matmuls = [n for n in model.graph.nodes if n.op == "call_function" and str(n.target) in MATMULS
               and not _annotated(n) and all(_activation(a) for a in n.args[:2])]
    for node in matmuls:
        inputs = {}
        for arg in node.args[:2]:
            if arg.target == torch.ops.aten._softmax.default and not _annotated(arg):
                # Its input in int8 only when it is the first matmul's quantized output: a mask added to the scores
                # may hold -inf, which no int8 range holds, so a masked softmax reads float.
                scores = arg.args[0]
                shares = {scores: SharedQuantizationSpec(scores)} if _output_spec(scores) is not None else {}
                arg.meta[key] = QuantizationAnnotation(input_qspec_map=shares,
                                                       output_qspec=get_fixed_qparams_qspec(config), _annotated=True)
            inputs[arg] = shared(arg)
        first, second = node.args[:2]
        if second is not first:
            inputs[second] = symmetric
        node.meta[key] = QuantizationAnnotation(input_qspec_map=inputs, output_qspec=act, _annotated=True)


def _activation(arg) -> bool:
    """A computed tensor (a weight multiplied by a matmul is a get_attr: weights take a weight spec, not this one)."""
    import torch

    return isinstance(arg, torch.fx.Node) and arg.op != "get_attr"


def _annotated(node) -> bool:
    found = node.meta.get("quantization_annotation")
    return found is not None and found._annotated


def _output_spec(node):
    found = node.meta.get("quantization_annotation")
    return found.output_qspec if found is not None and found._annotated else None
