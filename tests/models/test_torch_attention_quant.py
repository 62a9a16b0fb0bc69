"""The matmuls inside scaled_dot_product_attention in PT2E int8 (edgepress.models.torch_attention_quant): each plain
attention written as its math computes what torch's kernel computes (with a float or a boolean mask, a given scale),
one that is not plain math is left whole and named, and the wrapped litert-torch quantizer puts int8 on both matmuls,
which litert-torch's quantizer alone leaves float."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional


class Attention(torch.nn.Module):
    """Two heads of self-attention over 6 tokens of 8 features, through F.scaled_dot_product_attention."""

    def __init__(self, mask: str | None = None, scale: float | None = None, causal: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.qkv, self.out = torch.nn.Linear(8, 24), torch.nn.Linear(8, 4)
        self.scale, self.causal = scale, causal
        keep = torch.rand(6, 6) > 0.3
        keep.fill_diagonal_(True)  # every query sees at least itself
        self.register_buffer("mask", None if mask is None else keep if mask == "bool" else torch.randn(6, 6))

    def forward(self, x):
        q, k, v = (t.unflatten(-1, (2, 4)).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        kwargs = {} if self.scale is None else {"scale": self.scale}
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, is_causal=self.causal, **kwargs)
        return self.out(h.transpose(1, 2).flatten(2)).mean(dim=1)


def _exported(module):
    batch = torch.export.Dim("batch", min=1)
    return torch.export.export(module.eval(), (torch.randn(2, 6, 8),), dynamic_shapes=({0: batch},)).module()


def _targets(graph) -> list[str]:
    return [str(n.target) for n in graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("mask, scale", [(None, None), ("float", None), ("bool", 0.2)])
def test_a_plain_attention_is_written_as_its_math_and_computes_the_same(mask, scale):
    from edgepress.models.torch_attention_quant import SDPA, decompose_attention, undecomposed

    module = Attention(mask, scale)
    x = torch.randn(3, 6, 8)  # another batch than the one exported
    expected = module.eval()(x)
    graph = _exported(module)
    assert undecomposed(graph.graph) == []
    decomposed = decompose_attention(graph)
    assert SDPA not in _targets(decomposed.graph)
    assert _targets(decomposed.graph).count("aten.matmul.default") == 2
    torch.testing.assert_close(decomposed(x), expected, rtol=1e-5, atol=1e-5)


def test_an_attention_that_is_not_plain_math_is_left_whole_and_named():
    from edgepress.models.torch_attention_quant import SDPA, decompose_attention, undecomposed

    graph = _exported(Attention(causal=True))
    (why,) = undecomposed(graph.graph)
    assert "is_causal" in why
    assert SDPA in _targets(decompose_attention(graph).graph)


@pytest.mark.parametrize("mask", [None, "float", "bool"])
def test_the_wrapped_quantizer_puts_int8_on_both_attention_matmuls(mask):
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgepress.models.torch_attention_quant import quantized_matmuls, with_attention

    def converted(wrap: bool):
        base = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        module = Attention(mask)
        prepared = prepare_pt2e(_exported(module), with_attention(base) if wrap else base)
        x = torch.randn(16, 6, 8)
        prepared(x)  # calibration
        return convert_pt2e(prepared, fold_quantize=False), module(x), x

    alone, _, _ = converted(wrap=False)
    assert quantized_matmuls(alone.graph) == 0  # litert-torch's quantizer leaves the attention float
    wrapped, expected, x = converted(wrap=True)
    assert quantized_matmuls(wrapped.graph) == 2
    softmax = next(n for n in wrapped.graph.nodes if str(n.target) == "aten._softmax.default")
    (quantize,) = softmax.users  # the fixed range of TFLite's int8 softmax: 1/256, zero point -128
    assert str(quantize.target).startswith("quantized_decomposed.quantize")
    assert quantize.args[1:3] == (1 / 256, -128)
    for matmul in (n for n in wrapped.graph.nodes if str(n.target) == "aten.matmul.default"):
        dequantize = matmul.args[1]  # the key's and the value's zero point is 0 (XNNPACK's int8 BATCH_MATMUL)
        assert str(dequantize.target).startswith("quantized_decomposed.dequantize") and dequantize.args[2] == 0
    # A boolean mask puts -inf in the scores: the softmax reads them float (no int8 range holds -inf).
    assert str(softmax.args[0].target).startswith("quantized_decomposed.dequantize") == (mask is None)
    # int8 moves the output by a few quantization steps, not more
    assert (wrapped(x) - expected).abs().max() < 0.1 * expected.abs().max() + 0.05
