"""Structured pruning of a decoder LM (char_gpt or a Llama directory): whole attention heads and MLP units go.

    keep = choose(module, keep_groups=2, keep_units=64, criterion="taylor", x=x, y=y)
    smaller = pruned(module, keep)                 # the same architecture with fewer heads and MLP units

What goes together. A *kv group* is one key/value head and the query heads that read it (one query head without
grouped-query attention): removing it removes its query, key and value rows (char_gpt's fused qkv, or Llama's q/k/v
projections) and the output projection's columns that read its query heads. An MLP *unit* is one hidden unit of the
gated MLP: its gate and up rows and the down projection's column. Residual widths (embeddings, norms) stay whole.

Every block keeps the same number of kv groups and of units (the ones it keeps are its own, ranked within it): the
exports hold the cache as one tensor (2 * layers, 1, kv_heads, S, head_dim) for LiteRT's generative signatures,
and onnxruntime-genai's config has one head count, so the blocks must agree. Each head keeps its width.

Removal is exact: a head contributes only through its output-projection columns and a unit through its down column
(attention is computed per head, the MLP per unit), so the smaller model computes what the original computes with
those columns set to zero (`zeroed`).

Importance (`scores`): `l1` / `l2`, the norm of what writes the structure's contribution (its output-projection
columns, its down column); `taylor`, measured on training windows: (sum of weight x loss gradient over those
columns)^2 averaged over batches, the square of the first-order loss change when the structure is removed (Molchanov
et al. 2019, as structured_prune does for Keras heads).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from edgepress.errors import EdgepressError
from edgepress.models.char_gpt import CharGPT
from edgepress.models.llama import LlamaDecoder


@dataclass(frozen=True)
class Keep:
    """What each block keeps: kv groups and MLP units, per layer, in their original order."""

    groups: tuple[tuple[int, ...], ...]
    units: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class _Sizes:
    layers: int
    kv_heads: int
    groups: int  # query heads per kv head
    head_dim: int
    hidden: int


def _sizes(module) -> _Sizes:
    c = module.config
    return _Sizes(c.layers, c.kv_heads, c.heads // c.kv_heads, c.head_dim, c.hidden)


def _writers(module) -> list[tuple[torch.nn.Parameter, torch.nn.Parameter]]:
    """Per block, the weights a head and a unit contribute through: the output projection and the down projection
    (nn.Linear weights, (out, in): a head's and a unit's are columns)."""
    if isinstance(module, CharGPT):
        return [(b.proj.weight, b.down.weight) for b in module.blocks]
    if isinstance(module, LlamaDecoder):
        return [(x.self_attn.o_proj.weight, x.mlp.down_proj.weight) for x in module.model.layers]
    raise EdgepressError(f"structured pruning of decoders knows char_gpt and Llama models, not {type(module).__name__}")


def _columns(s: _Sizes, groups) -> torch.Tensor:
    """The output projection's input columns of kv groups `groups` (each: its query heads' head_dim columns)."""
    width = s.groups * s.head_dim
    return torch.tensor([g * width + i for g in groups for i in range(width)], dtype=torch.long)


def _kv_rows(s: _Sizes, groups) -> torch.Tensor:
    return torch.tensor([g * s.head_dim + i for g in groups for i in range(s.head_dim)], dtype=torch.long)


def _per_structure(s: _Sizes, attention: torch.Tensor, mlp: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Column values (any per-column number, (out, in) summed over out already) gathered per kv group and unit."""
    return (attention.reshape(s.kv_heads, -1).sum(1).numpy(), mlp.numpy())


def scores(module, criterion: str = "l1", x: np.ndarray | None = None, y: np.ndarray | None = None,
           samples: int = 256, batch: int = 32) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per block, the importance of each kv group and each MLP unit (see the module docstring). `taylor` needs the
    training windows `x` and next tokens `y`; it uses the first `samples` of them."""
    s = _sizes(module)
    if criterion != "taylor":
        out = []
        for o, d in _writers(module):
            o, d = o.detach().abs(), d.detach().abs()
            if criterion == "l2":
                o, d = o ** 2, d ** 2
            a, m = _per_structure(s, o.sum(0), d.sum(0))
            out.append((np.sqrt(a), np.sqrt(m)) if criterion == "l2" else (a, m))
        return out
    if x is None or y is None:
        raise ValueError("the taylor criterion measures importance on training windows: give x and y")
    writers = _writers(module)
    params = [p for pair in writers for p in pair]
    was = [p.requires_grad for p in module.parameters()]
    wanted = {id(p) for p in params}
    for p in module.parameters():
        p.requires_grad_(id(p) in wanted)
    totals = [(np.zeros(s.kv_heads), np.zeros(s.hidden)) for _ in writers]
    count = min(samples, len(x))
    starts = range(0, count, batch)
    try:
        for start in starts:
            xb = torch.from_numpy(np.asarray(x[start : start + batch], np.int64))
            yb = torch.from_numpy(np.asarray(y[start : start + batch], np.int64))
            logits = module(xb)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1))
            grads = torch.autograd.grad(loss, params)
            for i, (o, d) in enumerate(writers):
                a, m = _per_structure(s, (o.detach() * grads[2 * i]).sum(0), (d.detach() * grads[2 * i + 1]).sum(0))
                totals[i][0][:] += a ** 2 / len(starts)
                totals[i][1][:] += m ** 2 / len(starts)
    finally:
        for p, w in zip(module.parameters(), was, strict=True):
            p.requires_grad_(w)
    return totals


def choose(module, keep_groups: int, keep_units: int, criterion: str = "l1", x: np.ndarray | None = None,
           y: np.ndarray | None = None) -> Keep:
    """The `keep_groups` kv groups and `keep_units` MLP units each block keeps: its highest-scored ones (ties: the
    lower index goes first)."""
    groups, units = [], []
    for a, m in scores(module, criterion, x, y):
        groups.append(tuple(sorted(np.argsort(-a, kind="stable")[:keep_groups].tolist())))
        units.append(tuple(sorted(np.argsort(-m, kind="stable")[:keep_units].tolist())))
    return Keep(tuple(groups), tuple(units))


def structures(module) -> tuple[int, int, int]:
    """(kv groups, their width in the output projection's columns, MLP units) of each block."""
    s = _sizes(module)
    return s.kv_heads, s.groups * s.head_dim, s.hidden


def zeroed(module, keep: Keep):
    """A copy of `module` with the output-projection columns of the heads and the down columns of the units that
    `keep` drops set to zero: what `pruned(module, keep)` computes."""
    import copy

    s = _sizes(module)
    copied = copy.deepcopy(module)
    with torch.no_grad():
        for (o, d), groups, units in zip(_writers(copied), keep.groups, keep.units, strict=True):
            kept = set(_columns(s, groups).tolist())
            o[:, [c for c in range(o.shape[1]) if c not in kept]] = 0
            d[:, [u for u in range(s.hidden) if u not in units]] = 0
    return copied


def pruned(module, keep: Keep):
    """A new module of `module`'s architecture holding only the kv groups and MLP units `keep` names."""
    s = _sizes(module)
    n_groups, n_units = len(keep.groups[0]), len(keep.units[0])
    state = {k: v.clone() for k, v in module.state_dict().items()}
    if isinstance(module, CharGPT):
        # A char_gpt has one query head per kv head; its fused qkv holds the queries, keys and values one after another.
        config = replace(module.config, heads=n_groups, head_size=s.head_dim, mlp=n_units)
        smaller = CharGPT(config)
        attention = module.config.attention
        for i, (groups, units) in enumerate(zip(keep.groups, keep.units, strict=True)):
            rows = _kv_rows(s, groups)
            p = f"blocks.{i}."
            state[p + "qkv.weight"] = torch.cat([state[p + "qkv.weight"][rows + k * attention] for k in range(3)])
            state[p + "proj.weight"] = state[p + "proj.weight"][:, rows]
            _units(state, units, p + "gate.weight", p + "up.weight", p + "down.weight")
    else:
        settings = dict(module.settings, num_attention_heads=n_groups * s.groups, num_key_value_heads=n_groups,
                        head_dim=s.head_dim, intermediate_size=n_units)
        smaller = LlamaDecoder(settings)
        for i, (groups, units) in enumerate(zip(keep.groups, keep.units, strict=True)):
            p = f"model.layers.{i}."
            queries, kv = _columns(s, groups), _kv_rows(s, groups)
            state[p + "self_attn.q_proj.weight"] = state[p + "self_attn.q_proj.weight"][queries]
            state[p + "self_attn.k_proj.weight"] = state[p + "self_attn.k_proj.weight"][kv]
            state[p + "self_attn.v_proj.weight"] = state[p + "self_attn.v_proj.weight"][kv]
            state[p + "self_attn.o_proj.weight"] = state[p + "self_attn.o_proj.weight"][:, queries]
            _units(state, units, p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight", p + "mlp.down_proj.weight")
    smaller.load_state_dict(state, strict=False)  # a Llama's rotary tables are buffers of its own
    for name in ("edgepress_window",):
        if hasattr(module, name):
            setattr(smaller, name, getattr(module, name))
    return smaller.eval()


def _units(state: dict, units, gate: str, up: str, down: str) -> None:
    index = torch.tensor(units, dtype=torch.long)
    state[gate], state[up] = state[gate][index], state[up][index]
    state[down] = state[down][:, index]


def widths(module) -> str:
    """'4 heads (kv 2) of width 16, 256 MLP units per block', for the run log."""
    c = module.config
    kv = f" (kv {c.kv_heads})" if c.kv_heads != c.heads else ""
    return f"{c.heads} heads{kv} of width {c.head_dim}, {c.hidden} MLP units per block"
