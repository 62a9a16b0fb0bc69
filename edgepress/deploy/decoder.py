"""Decoder language models to files that keep their KV cache outside the model, and the check of such a file.

    request = ExportRequest(source, Path("gpt_fp32.tflite"), "tflite", "fp32", cache_len=128, prompt_len=16)
    artifact = export(request)   # edgepress.deploy.registry

- TFLite (litert-torch's multi-signature converter, as its generative API writes LLMs): a `prefill_N` signature
  (N = prompt_len tokens at once) and a `decode` signature (one token), each taking `tokens` (1, T) int32,
  `input_pos` (T,) int32 and each layer's cache `kv_cache_k_{i}` / `kv_cache_v_{i}` (1, kv_heads, cache_len,
  head_dim) and returning `logits` and the updated caches under the same names (LiteRT-LM's names: such a file goes
  into a .litertlm bundle as it is, edgepress.deploy.litertlm). fp32, or `dynamic`: int8 weights with activations
  quantized at run time (litert-torch's `full_dynamic_recipe`, applied by ai-edge-quantizer). int8_weight /
  int4_weight (per channel or blockwise) come from edgepress.deploy.weight_only on the fp32 file.
- ONNX (torch.onnx): onnxruntime-genai's layout, `input_ids` and `past_key_values.{i}.key` / `.value` in,
  `logits` and `present.{i}.key` / `.value` out, sequence and past lengths dynamic; the cache length is
  recorded in the file's metadata (`edgepress.lm.cache_len`). int4_weight (MatMulNBits) comes from weight_only.

Every file is checked against its model (edgepress.deploy.decoder_check): windows of held-out text teacher-forced
through the file's prefill and decode (the runner's own code) against the model's logits: top-1 agreement, max abs
logit difference, the mean per-token log-likelihood difference, and whether a greedy continuation agrees.
"""

from __future__ import annotations

import contextlib
import io
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

from edgepress import files
from edgepress.compat import quiet
from edgepress.deploy.registry import Exporter, ExportRequest, register
from edgepress.errors import EdgepressError, first_line

ONNX_OPSET = 17


def check_lm_request(request: ExportRequest) -> tuple[int, int]:
    """(cache_len, prompt_len) of a decoder export, refused when the model cannot have them."""
    source = request.source
    cache, prompt = request.cache_len, request.prompt_len
    if cache is None or prompt is None:
        raise EdgepressError(f"An export of {source.name}, {source.title}, needs a KV cache length and a prompt "
                             "length: set `lm: {cache_len: 128, prompt_len: 16}` in the recipe.")
    if cache > source.max_len:
        raise EdgepressError(f"lm.cache_len {cache} is above the position limit of {source.name} ({source.max_len} "
                             f"tokens): it cannot attend that far. Set lm.cache_len to at most {source.max_len}.")
    if prompt > cache:
        raise EdgepressError(f"lm.prompt_len {prompt} is longer than the KV cache (lm.cache_len {cache}): a prompt "
                             "must fit in the cache. Shorten the prompt or lengthen the cache.")
    return cache, prompt


class _Static:
    """The module's `step_layers` as a torch module with named inputs and outputs (the TFLite signatures' names):
    `tokens`, `input_pos` and the dict `kv_cache` {k_i, v_i}, which litert-torch names `kv_cache_k_{i}` /
    `kv_cache_v_{i}`: the names LiteRT-LM finds a model's cache by."""

    def __new__(cls, module):
        import torch

        class Static(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lm = module

            def forward(self, tokens, input_pos, kv_cache):
                layers = range(self.lm.config.layers)
                logits, caches = self.lm.step_layers(tokens, input_pos,
                                                     [(kv_cache[f"k_{i}"], kv_cache[f"v_{i}"]) for i in layers])
                named = {f"{kind}_{i}": z for i, pair in zip(layers, caches, strict=True)
                         for kind, z in zip("kv", pair, strict=True)}
                return {"logits": logits, "kv_cache": named}

        return Static()


def _growing(module):
    import torch

    layers = module.config.layers

    class Growing(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm = module

        def forward(self, input_ids, *pasts):
            logits, presents = self.lm.step_growing(input_ids, [(pasts[2 * i], pasts[2 * i + 1])
                                                                for i in range(layers)])
            return (logits, *(z for pair in presents for z in pair))

    return Growing()


def past_names(layers: int) -> list[str]:
    return [f"past_key_values.{i}.{which}" for i in range(layers) for which in ("key", "value")]


@register
class DecoderTflite(Exporter):
    """litert-torch's multi-signature converter: prefill_N and decode, the KV cache an input and an output."""

    format: ClassVar[str] = "tflite"
    kinds: ClassVar[frozenset[str]] = frozenset({"decoder"})
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "dynamic")

    def check(self, request: ExportRequest) -> None:
        check_lm_request(request)
        if request.sparse or request.float_layers or request.layout:
            raise EdgepressError(f"sparse, float_layers and layout are not options of {request.source.title}'s "
                                 "exports; remove them.")
        try:
            import litert_torch  # noqa: F401
        except ImportError:
            raise EdgepressError("TFLite exports of a decoder are made by litert-torch, which is not installed: "
                                 "pip install 'edgepress[torch]', or ask for ONNX exports only.") from None

    def layout(self, request: ExportRequest) -> str | None:
        return None

    def write(self, request: ExportRequest, out: Path) -> dict[str, Any]:
        import litert_torch
        import torch

        cache, prompt = check_lm_request(request)
        config = request.source.config
        wrapper = _Static(request.source.module)
        kv = {f"{kind}_{i}": torch.zeros((1, config.kv_heads, cache, config.head_dim))
              for i in range(config.layers) for kind in "kv"}
        prefill = {"tokens": torch.zeros((1, prompt), dtype=torch.int32),
                   "input_pos": torch.arange(prompt, dtype=torch.int32), "kv_cache": kv}
        decode = {"tokens": torch.zeros((1, 1), dtype=torch.int32), "input_pos": torch.zeros(1, dtype=torch.int32),
                  "kv_cache": kv}
        facts: dict[str, Any] = {"converter": f"litert-torch {metadata.version('litert-torch')}", "cache_len": cache,
                                 "prefill_len": prompt, "signatures": [f"prefill_{prompt}", "decode"]}
        quant_config = None
        if request.precision == "dynamic":
            from litert_torch.generative.quantize import quant_recipes

            quant_config = quant_recipes.full_dynamic_recipe()
            facts.update(weights="int8 per channel", activations="dynamic int8",
                         quantizer="litert-torch full_dynamic_recipe (ai-edge-quantizer)")
        litert_torch.config.show_progress = False
        try:
            with quiet(), contextlib.redirect_stdout(io.StringIO()):  # litert-torch prints its progress
                converted = (litert_torch.signature(f"prefill_{prompt}", wrapper, sample_kwargs=prefill)
                             .signature("decode", wrapper, sample_kwargs=decode).convert(quant_config=quant_config))
        except Exception as e:  # litert-torch raises RuntimeError / ValueError / JAX errors
            raise EdgepressError(f"litert-torch could not convert {request.source.name} to a TFLite decoder "
                                 f"({request.precision}): {first_line(e)}.") from None
        converted.export(str(out))
        saved = short_tensor_names(out)
        if saved:
            facts["tensor_names"] = f"shortened to the module names ({saved:,} bytes fewer)"
        return facts


def short_tensor_names(path: Path) -> int:
    """Rename the inner tensors of the .tflite file at `path` in place to their module path without Python's
    qualified prefixes (`edgepress.deploy.decoder._Static.__new__.<locals>.Static/edgepress.models.char_gpt.Block_0/
    torch.nn.modules.linear.Linear_qkv;2` becomes `Block_0/Linear_qkv;2`, a fused op's name its first part); the
    signatures' inputs and outputs keep theirs. litert-torch writes those long names for every tensor of every
    signature: a sixth of a small int4 decoder's file (43 KB of 341 KB for char_gpt). Returns the bytes saved."""
    from ai_edge_litert.tools import flatbuffer_utils

    before = path.stat().st_size
    model = flatbuffer_utils.read_model(str(path))
    # Unique in the whole file, as the converter wrote them: LiteRT's quantizer keys tensors by name.
    taken = {g.tensors[i].name for g in model.subgraphs for i in (*g.inputs, *g.outputs)}
    for graph in model.subgraphs:
        keep = set(graph.inputs) | set(graph.outputs)
        for index, tensor in enumerate(graph.tensors):
            if index in keep or not tensor.name:
                continue
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
            parts = [part.rsplit(".", 1)[-1] for part in name.split(";;")[0].split("/")]
            short = "/".join(parts[1:] if len(parts) > 1 and parts[0] == "Static" else parts).encode()
            while short in taken:
                short += b"'"
            taken.add(short)
            tensor.name = short
    data = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    files.write_bytes(path, data)
    return before - len(data)


@register
class DecoderOnnx(Exporter):
    """torch.onnx with past/present key-values (onnxruntime-genai's layout)."""

    format: ClassVar[str] = "onnx"
    kinds: ClassVar[frozenset[str]] = frozenset({"decoder"})
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)

    def check(self, request: ExportRequest) -> None:
        check_lm_request(request)

    def layout(self, request: ExportRequest) -> str | None:
        return None

    def write(self, request: ExportRequest, out: Path) -> dict[str, Any]:
        import onnx
        import torch

        cache, prompt = check_lm_request(request)
        source = request.source
        config = source.config
        names = past_names(config.layers)
        # A sample past of 1 token, so the tracer sees the concatenation with a real past.
        pasts = tuple(torch.zeros((1, config.kv_heads, 1, config.head_dim)) for _ in names)
        ids = torch.zeros((1, 2), dtype=torch.int64)
        presents = [n.replace("past_key_values.", "present.") for n in names]
        axes = {"input_ids": {1: "sequence"}, "logits": {1: "sequence"},
                **{n: {2: "past_sequence"} for n in names}, **{n: {2: "total_sequence"} for n in presents}}
        try:
            with quiet(), torch.no_grad():
                torch.onnx.export(_growing(source.module), (ids, *pasts), str(out), input_names=["input_ids", *names],
                                  output_names=["logits", *presents], dynamic_axes=axes, opset_version=ONNX_OPSET,
                                  dynamo=False)
        except Exception as e:
            raise EdgepressError(f"torch.onnx.export could not export {source.name} with past/present key-values: "
                                 f"{first_line(e)}.") from None
        model = onnx.load(str(out))
        for key, value in (("edgepress.lm.cache_len", cache), ("edgepress.lm.max_len", source.max_len),
                           ("edgepress.lm.prompt_len", prompt)):
            entry = model.metadata_props.add()
            entry.key, entry.value = key, str(value)
        saved = short_value_names(model)
        onnx.save(model, str(out))
        facts = {"exporter": f"torch.onnx (opset {ONNX_OPSET})", "cache_len": cache, "layout": "past/present "
                 "key-values (onnxruntime-genai)"}
        if saved:
            facts["value_names"] = f"shortened ({saved:,} bytes fewer)"
        return facts


def short_value_names(model) -> int:
    """Rename the inner values of the ONNX `model` in place (every node output and weight that is not a graph input
    or output) to `v0`, `v1`, ... in the order the graph first uses them; node names stay (profiles name the nodes).
    torch.onnx names each value after its module path, twice per value (made and used): 6.6 KB of a 134 KB int4
    char_gpt_small, 5% of its bytes. Returns the bytes saved; a graph with subgraphs (If, Loop) is left as it is."""
    graph = model.graph
    if any(a.g.node or a.graphs for n in graph.node for a in n.attribute):
        return 0
    before = model.ByteSize()
    keep = {v.name for v in (*graph.input, *graph.output)}
    renamed: dict[str, str] = {}
    for name in [x for n in graph.node for x in (*n.input, *n.output)] + [i.name for i in graph.initializer]:
        if name and name not in keep and name not in renamed:
            short = f"v{len(renamed)}"
            while short in keep:
                short += "_"
            renamed[name] = short
    for node in graph.node:
        node.input[:] = [renamed.get(x, x) for x in node.input]
        node.output[:] = [renamed.get(x, x) for x in node.output]
    for tensor in (*graph.initializer, *graph.value_info):
        tensor.name = renamed.get(tensor.name, tensor.name)
    return before - model.ByteSize()
