"""A Llama-architecture decoder read from a Hugging Face model directory, as data: config.json + model.safetensors.

    module = load_llama(Path("smollm-dir"))   # what `LlamaForCausalLM.save_pretrained` writes (SmolLM, TinyLlama...)

The same network as transformers' LlamaForCausalLM (RMSNorm, rotary positions, grouped-query attention, SwiGLU
MLP, tied or separate output head), written here with edgepress's KV cache forms (edgepress.models.char_gpt's
CachedDecoder) so it exports with prefill/decode signatures and past/present key-values like char_gpt. Its
parameters keep the Hugging Face names, so `state_dict()` is the directory's tensors again. Nothing from the
directory runs: the settings are JSON, the weights tensors (no `trust_remote_code`, no pickle); transformers is
not needed to load it. Rotary scaling variants (rope_scaling: llama3, yarn, ...) are refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgepress.errors import EdgepressError
from edgepress.models.char_gpt import CachedDecoder, RMSNorm


@dataclass(frozen=True)
class LlamaShape:
    vocab: int
    width: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    max_len: int
    eps: float
    theta: float
    tied: bool

    @classmethod
    def from_settings(cls, settings: dict) -> LlamaShape:
        rope = settings.get("rope_parameters") or {}
        scaling = settings.get("rope_scaling") or {}
        kind = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
        if kind != "default":
            raise EdgepressError(f"rotary scaling '{kind}' is not supported; edgepress reads Llama models with "
                                 "plain rotary positions")
        heads = int(settings["num_attention_heads"])
        return cls(
            vocab=int(settings["vocab_size"]), width=int(settings["hidden_size"]),
            layers=int(settings["num_hidden_layers"]), heads=heads,
            kv_heads=int(settings.get("num_key_value_heads") or heads),
            head_dim=int(settings.get("head_dim") or int(settings["hidden_size"]) // heads),
            hidden=int(settings["intermediate_size"]), max_len=int(settings["max_position_embeddings"]),
            eps=float(settings.get("rms_norm_eps", 1e-6)),
            theta=float(rope.get("rope_theta") or settings.get("rope_theta") or 10000.0),
            tied=bool(settings.get("tie_word_embeddings", False)),
        )


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class _Attention(nn.Module):
    def __init__(self, shape: LlamaShape) -> None:
        super().__init__()
        self.shape = shape
        self.q_proj = nn.Linear(shape.width, shape.heads * shape.head_dim, bias=False)
        self.k_proj = nn.Linear(shape.width, shape.kv_heads * shape.head_dim, bias=False)
        self.v_proj = nn.Linear(shape.width, shape.kv_heads * shape.head_dim, bias=False)
        self.o_proj = nn.Linear(shape.heads * shape.head_dim, shape.width, bias=False)

    def forward(self, x, cos, sin, mask, merge):
        s, (b, t, _) = self.shape, x.shape
        q = self.q_proj(x).reshape(b, t, s.heads, s.head_dim).transpose(1, 2)
        k = self.k_proj(x).reshape(b, t, s.kv_heads, s.head_dim).transpose(1, 2)
        v = self.v_proj(x).reshape(b, t, s.kv_heads, s.head_dim).transpose(1, 2)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        keys, values, cache = merge(k, v)
        groups = s.heads // s.kv_heads
        if groups > 1:  # grouped-query attention: each cached key and value serves `groups` query heads
            keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
        scores = q @ keys.transpose(-1, -2) * (1.0 / math.sqrt(s.head_dim)) + mask
        attended = (torch.softmax(scores, dim=-1) @ values).transpose(1, 2).reshape(b, t, -1)
        return self.o_proj(attended), cache


class _MLP(nn.Module):
    def __init__(self, shape: LlamaShape) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(shape.width, shape.hidden, bias=False)
        self.up_proj = nn.Linear(shape.width, shape.hidden, bias=False)
        self.down_proj = nn.Linear(shape.hidden, shape.width, bias=False)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class _Layer(nn.Module):
    def __init__(self, shape: LlamaShape) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(shape.width, shape.eps)
        self.self_attn = _Attention(shape)
        self.post_attention_layernorm = RMSNorm(shape.width, shape.eps)
        self.mlp = _MLP(shape)

    def forward(self, x, cos, sin, mask, merge):
        attended, cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, merge)
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x)), cache


class LlamaDecoder(CachedDecoder):
    """LlamaForCausalLM's network with edgepress's KV cache forms; `settings` is the directory's config.json."""

    def __init__(self, settings: dict) -> None:
        super().__init__()
        self.settings = settings
        self.config = shape = LlamaShape.from_settings(settings)
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(shape.vocab, shape.width)
        self.model.layers = nn.ModuleList(_Layer(shape) for _ in range(shape.layers))
        self.model.norm = RMSNorm(shape.width, shape.eps)
        self.lm_head = nn.Linear(shape.width, shape.vocab, bias=False)
        if shape.tied:
            self.lm_head.weight = self.model.embed_tokens.weight
        inverse = 1.0 / shape.theta ** (torch.arange(0, shape.head_dim, 2, dtype=torch.float32) / shape.head_dim)
        angles = torch.outer(torch.arange(shape.max_len, dtype=torch.float32), inverse)
        angles = torch.cat([angles, angles], dim=-1)  # (max_len, head_dim), as rotate_half pairs them
        self.register_buffer("rotary_cos", angles.cos(), persistent=False)
        self.register_buffer("rotary_sin", angles.sin(), persistent=False)

    def _run(self, tokens, positions, mask, merges):
        positions = positions.long()
        cos, sin = self.rotary_cos[positions], self.rotary_sin[positions]
        x = self.model.embed_tokens(tokens.long())
        caches = []
        for layer, merge in zip(self.model.layers, merges, strict=True):
            x, cache = layer(x, cos, sin, mask, merge)
            caches.append(cache)
        return self.lm_head(self.model.norm(x)), caches

    def tensors(self) -> dict:
        """The weights under their Hugging Face names (the tied output head once, as the embedding)."""
        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        if self.config.tied:
            state.pop("lm_head.weight")
        return state


def is_llama(settings: dict) -> bool:
    return settings.get("model_type") == "llama" or "LlamaForCausalLM" in (settings.get("architectures") or [])


def load_llama(path: Path, settings: dict) -> LlamaDecoder:
    """The Llama model of the directory `path` (its config.json already read as `settings`)."""
    from safetensors.torch import load_file

    weights = path / "model.safetensors"
    if not weights.is_file():
        shards = sorted(p.name for p in path.glob("*.safetensors"))
        raise EdgepressError(f"{path} has {'the shards ' + ', '.join(shards) if shards else 'no model.safetensors'}; "
                             "edgepress reads one model.safetensors file: save the model with "
                             "`save_pretrained(dir, max_shard_size='100GB')`.")
    try:
        module = LlamaDecoder(settings)
        state = load_file(str(weights))
    except EdgepressError as e:
        raise EdgepressError(f"Cannot read the Llama model in {path}: {e}.") from None
    except (KeyError, ValueError, TypeError) as e:
        raise EdgepressError(f"Cannot read the Llama model in {path}: config.json lacks or misstates {e}.") from None
    expected = set(module.tensors())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise EdgepressError(
            f"The weights in {weights} do not fit its config.json (a Llama model): "
            + (f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}. " if missing else "")
            + (f"unexpected {', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''}. " if unexpected else "")
            + "Give the directory save_pretrained wrote for a LlamaForCausalLM."
        )
    try:
        module.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    except RuntimeError as e:  # a tensor of another shape than config.json says
        raise EdgepressError(f"The weights in {weights} do not fit its config.json: {str(e).splitlines()[-1].strip()}"
                             ) from None
    return module.eval()
