"""char_gpt: a small decoder-only transformer language model in PyTorch, with a KV cache.

    model = build_char_gpt(vocab=97, width=128, layers=2, heads=4, max_len=256)
    train_char_gpt(model, x_train, y_train, epochs=3)   # next-character windows (python_source)
    logits = model(tokens)                              # (B, T) ids -> (B, T, vocab), causal

Pre-norm blocks: RMSNorm -> causal self-attention -> RMSNorm -> gated (SiLU) MLP, learned positions up to
`max_len` (the model's position limit: no cache may be longer). The same weights run three ways:
- `forward(tokens)`: the whole sequence at once (training, the source's scores);
- `step_static(tokens, input_pos, kv)`: against a fixed-length cache (2 * layers, batch, heads, cache, head_dim)
  written at `input_pos`, the layout of LiteRT's generative models (`prefill_N` and `decode` signatures), or
  `step_layers(tokens, input_pos, caches)` with each layer's cache apart (LiteRT-LM's `kv_cache_k_{i}` names);
- `step_growing(tokens, pasts)`: against per-layer past keys and values that grow by the new tokens, the
  past/present layout of onnxruntime-genai.

This module imports torch at the top: only the decoder kind (edgepress.models.decoder) and the exporters of
decoders import it, inside the functions that need it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

# Additive mask value for positions a query may not see (finite: -inf gives NaN on an all-masked row).
MASKED = -1e9


@dataclass(frozen=True)
class GPTConfig:
    vocab: int = 97
    width: int = 128
    layers: int = 2
    heads: int = 4
    max_len: int = 256  # positions the model has: the longest cache it can take
    mlp: int = 0  # hidden units of the gated MLP; 0: 2 * width
    head_size: int = 0  # each head's width; 0: width // heads (a model with pruned heads keeps its heads' width)
    tie: bool = False  # the output head is the token table (one vocab x width matrix: fewer parameters to train)

    @property
    def head_dim(self) -> int:
        return self.head_size or self.width // self.heads

    @property
    def attention(self) -> int:
        """The width of the heads together (queries, keys, values; the output projection's input)."""
        return self.heads * self.head_dim

    @property
    def kv_heads(self) -> int:
        return self.heads

    @property
    def hidden(self) -> int:
        return self.mlp or 2 * self.width

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = config.heads, config.head_dim
        self.norm1 = RMSNorm(config.width)
        self.qkv = nn.Linear(config.width, 3 * config.attention, bias=False)
        self.proj = nn.Linear(config.attention, config.width, bias=False)
        self.norm2 = RMSNorm(config.width)
        self.gate = nn.Linear(config.width, config.hidden, bias=False)
        self.up = nn.Linear(config.width, config.hidden, bias=False)
        self.down = nn.Linear(config.hidden, config.width, bias=False)

    def forward(self, x, mask, merge):
        """`x` (B, T, width); `mask` additive (T, keys); `merge(k, v)` -> every key and value the queries see (the
        new ones with the cache's) and the cache to return."""
        b, t, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(self.heads * self.head_dim, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, self.head_dim).transpose(1, 2) for z in (q, k, v))
        keys, values, cache = merge(k, v)
        scores = q @ keys.transpose(-1, -2) * (1.0 / math.sqrt(self.head_dim)) + mask
        attended = (torch.softmax(scores, dim=-1) @ values).transpose(1, 2).reshape(b, t, -1)
        x = x + self.proj(attended)
        h = self.norm2(x)
        return x + self.down(torch.nn.functional.silu(self.gate(h)) * self.up(h)), cache


class CachedDecoder(nn.Module):
    """The three ways a decoder runs (whole sequence, fixed cache, growing cache), over a subclass's
    `_run(tokens, positions, mask, merges)`: logits and each layer's cache, a block calling `merges[i](k, v)` to get
    the keys and values its queries see. `config` has vocab, layers, kv_heads, head_dim and max_len."""

    def _run(self, tokens, positions, mask, merges):
        raise NotImplementedError

    def forward(self, tokens):
        """Logits (B, T, vocab) of the next token after each of `tokens` (B, T), causal, no cache."""
        t = tokens.shape[1]
        positions = torch.arange(t, device=tokens.device)
        mask = torch.triu(torch.full((t, t), MASKED, device=tokens.device), diagonal=1)
        logits, _ = self._run(tokens, positions, mask, [lambda k, v: (k, v, None)] * self.config.layers)
        return logits

    def step_static(self, tokens, input_pos, kv):
        """`tokens` (1, T) at positions `input_pos` (T,) against the fixed cache `kv` (2 * layers, 1, kv_heads, S,
        head_dim): logits (1, T, vocab) and the cache with these tokens' keys and values written at `input_pos`."""
        layers = range(self.config.layers)
        logits, caches = self.step_layers(tokens, input_pos, [(kv[2 * i], kv[2 * i + 1]) for i in layers])
        return logits, torch.stack([z for pair in caches for z in pair])

    def step_layers(self, tokens, input_pos, caches):
        """`step_static` with each layer's fixed cache apart: `caches` [(k, v) per layer, each (1, kv_heads, S,
        head_dim)] in, logits and the caches with these tokens written at `input_pos` out (the per-layer layout of
        LiteRT-LM's `kv_cache_k_{i}` / `kv_cache_v_{i}`)."""
        size = caches[0][0].shape[2]
        mask = torch.where(torch.arange(size)[None, :] <= input_pos[:, None].long(), 0.0, MASKED)
        index = input_pos.long()

        def merge_at(layer):
            def merge(k, v):
                keys = caches[layer][0].index_copy(2, index, k)
                values = caches[layer][1].index_copy(2, index, v)
                return keys, values, (keys, values)
            return merge

        return self._run(tokens, input_pos, mask, [merge_at(i) for i in range(self.config.layers)])

    def step_growing(self, tokens, pasts):
        """`tokens` (B, T) after the past keys and values `pasts` [(k, v) per layer, each (B, kv_heads, P,
        head_dim)]: logits (B, T, vocab) and the presents [(k, v)], each (B, kv_heads, P + T, head_dim)."""
        t, past = tokens.shape[1], pasts[0][0].shape[2]
        positions = torch.arange(t) + past
        mask = torch.where(torch.arange(past + t)[None, :] <= positions[:, None], 0.0, MASKED)

        def merge_after(layer):
            def merge(k, v):
                keys = torch.cat([pasts[layer][0], k], dim=2)
                values = torch.cat([pasts[layer][1], v], dim=2)
                return keys, values, (keys, values)
            return merge

        return self._run(tokens, positions, mask, [merge_after(i) for i in range(self.config.layers)])


class CharGPT(CachedDecoder):
    """A decoder-only transformer over a character vocabulary; see the module docstring."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab, config.width)
        self.positions = nn.Embedding(config.max_len, config.width)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.norm = RMSNorm(config.width)
        self.head = nn.Linear(config.width, config.vocab, bias=False)
        if config.tie:
            # One table for both ends, at the scale of a linear layer's weights (so the first logits are about unit
            # size, not nn.Embedding's N(0, 1) times sqrt(width)); the positions at the same scale as the tokens.
            for table in (self.embed, self.positions):
                nn.init.normal_(table.weight, std=config.width**-0.5)
            self.head.weight = self.embed.weight

    def tensors(self) -> dict:
        """The weights by name, contiguous, a tied head once (as the token table; safetensors keeps no shared
        tensors): what a model directory's model.safetensors holds."""
        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        if self.config.tie:
            state.pop("head.weight")
        return state

    def load_tensors(self, tensors: dict) -> None:
        """`tensors()` back into the module (a tied head from the token table)."""
        if self.config.tie and "embed.weight" in tensors:
            tensors = {**tensors, "head.weight": tensors["embed.weight"]}
        self.load_state_dict(tensors)

    def _run(self, tokens, positions, mask, merges):
        x = self.embed(tokens.long()) + self.positions(positions.long())
        caches = []
        for block, merge in zip(self.blocks, merges, strict=True):
            x, cache = block(x, mask, merge)
            caches.append(cache)
        return self.head(self.norm(x)), caches


def build_char_gpt(vocab: int = 97, width: int = 128, layers: int = 2, heads: int = 4, max_len: int = 256,
                   mlp: int = 0, seed: int = 0, tie: bool = False) -> CharGPT:
    torch.manual_seed(seed)
    return CharGPT(GPTConfig(vocab, width, layers, heads, max_len, mlp, tie=tie))


def train_char_gpt(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 3, batch_size: int = 64,
                   learning_rate: float = 3e-3, on_epoch=None, seed: int = 0, teacher: nn.Module | None = None,
                   temperature: float = 2.0, alpha: float = 0.5) -> nn.Module:
    """Train `model` (logits (B, T, vocab)) on next-token windows (x ids, y the ids that follow), AdamW with a
    cosine schedule; with a `teacher`, the loss is `alpha` * cross-entropy + (1 - `alpha`) * KL to the teacher's
    softened distribution (logit distillation, Hinton's T^2 scaling). `on_epoch(epoch, epochs, logs)` after each."""
    torch.manual_seed(seed)
    # One thread: a small model's steps are too small to split, and on a shared machine two threads wait on each
    # other (char_gpt_small, a batch of 64 windows: 0.22 s a step at 1 thread, 1.42 s at 2, load 8 on 2 cores).
    torch.set_num_threads(1)
    inputs, labels = torch.from_numpy(np.asarray(x, np.int64)), torch.from_numpy(np.asarray(y, np.int64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    steps = max(1, epochs * math.ceil(len(inputs) / batch_size))
    warmup = max(1, steps // 20)

    def rate(i: int) -> float:  # linear warm-up, then a cosine decay to 10% of the learning rate
        return min(1.0, (i + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(i, steps) / steps)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    generator = torch.Generator().manual_seed(seed)
    if teacher is not None:
        teacher.eval()
    model.train()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(inputs), generator=generator)
        total, correct = 0.0, 0
        for start in range(0, len(inputs), batch_size):
            batch = order[start : start + batch_size]
            logits = model(inputs[batch])
            flat = logits.reshape(-1, logits.shape[-1])
            loss = nn.functional.cross_entropy(flat, labels[batch].reshape(-1))
            if teacher is not None:
                with torch.no_grad():
                    target = teacher(inputs[batch]).reshape(-1, logits.shape[-1])
                soft = nn.functional.kl_div(nn.functional.log_softmax(flat / temperature, -1),
                                            nn.functional.log_softmax(target / temperature, -1),
                                            log_target=True, reduction="batchmean") * temperature**2
                loss = alpha * loss + (1 - alpha) * soft
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
            correct += int((logits.argmax(-1) == labels[batch]).sum())
        if on_epoch is not None:
            on_epoch(epoch, epochs, {"loss": total / len(inputs), "accuracy": correct / labels.numel()})
    model.eval()
    return model
