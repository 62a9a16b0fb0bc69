"""structured_prune for a PyTorch program (a torch.export `.pt2`): whole attention heads, MLP hidden units and conv
channels removed from the program's own graph, which is then exported again at the batch it takes.

    smaller = prune_program(program, x, y, config)

Why not torch-pruning: it follows `nn.Linear` / `nn.Conv2d` / `nn.MultiheadAttention` modules, and a loaded `.pt2`
has none: its module (`ExportedProgram.module()`, or `torch.export.unflatten`'s InterpreterModules) is a graph of
aten ops reading flat parameters, so torch-pruning finds nothing it can prune. This walks that graph itself:

- A unit is an output channel of an `aten.linear` or `aten.conv2d` (groups 1) whose weight is a parameter. Its output
  is followed through ops that map 0 to 0 channel by channel (ReLU, GELU, SiLU, tanh, dropout, pooling, batch norm,
  a mean over other axes, NCHW flattening) to the `linear` / `conv2d` layers that read it, whose input columns go with
  it. Anything else it reaches (an add, a layer norm, a reshape, the program's output) pins it: residual widths and
  the classes stay whole.
- A head of an `nn.MultiheadAttention` (self-attention without a mask: the nodes its `nn_module_stack` names, around
  one `scaled_dot_product_attention`) is one unit: its query, key and value rows of `in_proj_weight` and its columns
  of `out_proj.weight` go together. The attention's nodes are replaced by `PrunedMultiheadAttention` (same parameter
  names, fewer heads), checked while planning to compute what those nodes computed.

Ranking as for Keras (`criterion`): l1 / l2 norms of a unit's weight row (a head: its value rows and output
columns), or taylor, (sum of weight x loss gradient over what removing it zeroes)^2 measured on training batches.
Removal is exact: the smaller program equals the original with the removed units' weights zeroed (a head's output
columns; a unit's weight row and bias, and the batch norm weight and bias after it). The gradual schedule holds
exactly those at zero while fine-tuning, more each round, then removes them.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np

from edgepress.errors import EdgepressError

ATTENTION = "MultiheadAttention"  # the end of the module type an attention's nodes name in their nn_module_stack
# Ops that map 0 to 0 channel by channel, and keep the channel where it is.
ELEMENTWISE = {"relu", "relu_", "gelu", "silu", "tanh", "hardtanh", "hardswish", "leaky_relu", "elu", "dropout",
               "clone", "contiguous", "alias", "detach", "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d",
               "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool2d"}
BATCH_NORMS = {"batch_norm", "_native_batch_norm_legit_no_training"}
FLATTENS = {"flatten", "view", "reshape", "_unsafe_view"}


def op(node) -> str:
    """The aten op a call node runs, without namespace and overload ('linear' for aten.linear.default)."""
    if node.op != "call_function":
        return node.op
    name = getattr(node.target, "__name__", str(node.target))
    return "getitem" if name == "getitem" else name.split(".")[0]


@dataclass
class Layer:
    """A prunable layer of the program: its units, and where removing one reaches."""

    name: str  # the module path ('encoder.layers.0.linear1'), what `layers:` names
    kind: str  # linear | conv | attention
    units: int  # output channels, or heads
    width: int = 1  # columns per unit: a head's width (round_to counts a head as its width)
    weight: str = ""  # parameter names
    bias: str | None = None
    # Parameters that read the units: (name, dim, repeat): unit u is positions u*repeat ... (u+1)*repeat-1 of dim.
    readers: list[tuple[str, int, int]] = field(default_factory=list)
    batch_first: bool = True  # attention: the layout of its input


@dataclass
class ProgramPlan:
    """Which units go: what `remove_units` applies and what `notes()` reports."""

    layers: dict[str, Layer]
    removed: dict[str, list[int]]  # layer -> removed units (channels or heads)
    widths: dict[str, tuple[int, int]]  # layer -> (units before, units after)
    left_whole: dict[str, str]  # layer that keeps every unit -> why

    def notes(self) -> list[str]:
        changed = [f"{name} {a} -> {b}" for name, (a, b) in self.widths.items() if a != b]
        lines = [f"{name} left whole: {why}" for name, why in self.left_whole.items()]
        return ([f"channels and heads: {', '.join(changed)}"] if changed else []) + lines


def check_program_prunable(program, config) -> None:
    """Raise EdgepressError before any work if `config` cannot be applied to `program` (names the layer)."""
    plan_program(program, config)


def plan_program(program, config, data: tuple[np.ndarray, np.ndarray] | None = None,
                 fraction: float = 1.0) -> ProgramPlan:
    """Decide which units of `program` (a TorchSource) to remove under `config` (scaled by `fraction`, for gradual
    rounds); `data` (x, y) is what taylor measures on (without it, the plan's check, which decides only how many go,
    ranks by the l1 norm)."""
    from edgepress.compress.counts import group_ratio, rounded

    layers, left_whole = _walk(program.module)
    _check_requested(program, config, layers, left_whole)
    criterion = "l1" if config.criterion == "taylor" and data is None else config.criterion
    scores = _taylor(program, layers, *data) if criterion == "taylor" else _norms(program.module, layers, criterion)
    removed, widths = {}, {}
    for name, layer in layers.items():
        ratio = group_ratio([name], config)
        count = rounded(layer.units, round(ratio * fraction * layer.units), config.round_to, layer.width)
        if count >= layer.units:
            what = "heads" if layer.kind == "attention" else "channels"
            highest = math.floor(100 * (layer.units - 1) / layer.units) / 100
            raise EdgepressError(
                f"structured_prune: ratio {ratio:g} removes all {layer.units} {what} of layer '{name}', which would "
                f"leave it with zero {what}. Give it a ratio of at most {highest:g} with `layers: {{{name}: ...}}` "
                "in the step, or lower `ratio`."
            )
        ranked = sorted(range(layer.units), key=lambda u: (scores[name][u], u))
        widths[name] = (layer.units, layer.units - count)
        if count:
            removed[name] = sorted(ranked[:count])
    return ProgramPlan(layers, removed, widths, left_whole)


def prune_program(program, x: np.ndarray, y: np.ndarray, config, on_epoch=None):
    """The program with the planned units removed, fine-tuned on (x, y) for `config.fine_tune_epochs`, written again
    as a .pt2 at the batch it takes (a new TorchSource)."""
    if config.schedule == "oneshot":
        chosen = plan_program(program, config, data=(x, y))
        module = remove_units(program.module, chosen)
        if config.fine_tune_epochs:
            fine_tune_program(module, program, x, y, config, on_epoch)
        return exported_program(module, program, x)
    # Gradual: round r holds the lowest r/rounds of the target at zero while training (a head's out_proj columns, a
    # unit's weight row, bias and batch norm), so the rest learns to do without them; then they are removed.
    working = copy.copy(program)
    working.module = copy.deepcopy(program.module)
    done = 0
    for r in range(1, config.rounds + 1):
        current = plan_program(working, config, data=(x, y), fraction=r / config.rounds)
        epochs = config.fine_tune_epochs // config.rounds + (config.fine_tune_epochs % config.rounds
                                                             if r == config.rounds else 0)
        zero = _zeroing(working.module, current)
        zero()
        shifted = None if on_epoch is None else (
            lambda epoch, _, logs, model=None, d=done: on_epoch(d + epoch, config.fine_tune_epochs, logs))
        fine_tune_program(working.module, program, x, y, config.model_copy(update={"fine_tune_epochs": epochs}),
                          shifted, after_step=zero)
        done += epochs
    return exported_program(remove_units(working.module, current), program, x)


def _zeroing(module, plan: ProgramPlan):
    """A function that sets the parameters of the units `plan` removes to zero in `module` (what removal drops)."""
    import torch

    targets = []  # (tensor, dim, positions)
    for name, gone in plan.removed.items():
        layer = plan.layers[name]
        if layer.kind == "attention":
            columns = [h * layer.width + i for h in gone for i in range(layer.width)]
            targets.append((_get(module, f"{name}.out_proj.weight"), 1, columns))
            continue
        targets += [(_get(module, p), 0, gone) for p in (layer.weight, layer.bias) if p]
        targets += [(_get(module, p), 0, [u * r + i for u in gone for i in range(r)])
                    for p, dim, r in layer.readers if dim == 0]  # a batch norm after a conv
    indexed = [(t, dim, torch.tensor(positions, dtype=torch.long)) for t, dim, positions in targets]

    def zero() -> None:
        with torch.no_grad():
            for tensor, dim, positions in indexed:
                tensor.index_fill_(dim, positions, 0.0)

    return zero


def remove_units(module, plan: ProgramPlan):
    """A copy of the program's graph module with the units of `plan` removed: smaller weights, fewer heads. No training:
    it computes what `module` computes with those units' weights zeroed."""
    import torch

    module = copy.deepcopy(module)
    cuts: dict[str, list[tuple[int, list[int]]]] = {}  # parameter -> (dim, kept positions), applied in turn
    for name, gone in plan.removed.items():
        layer = plan.layers[name]
        if layer.kind == "attention":
            kept = [h for h in range(layer.units) if h not in gone]
            _replace_attention(module, layer, kept)
            continue
        kept = [u for u in range(layer.units) if u not in gone]
        cuts.setdefault(layer.weight, []).append((0, kept))
        if layer.bias:
            cuts.setdefault(layer.bias, []).append((0, kept))
        for parameter, dim, repeat in layer.readers:
            cuts.setdefault(parameter, []).append((dim, [u * repeat + r for u in kept for r in range(repeat)]))
    for parameter, slices in cuts.items():
        tensor = _get(module, parameter)
        for dim, kept in slices:
            tensor = tensor.index_select(dim, torch.tensor(kept, dtype=torch.long))
        _set(module, parameter, tensor.contiguous())
    module.recompile()
    return module


# -- the graph walk ----------------------------------------------------------------------------------------------

def _walk(module) -> tuple[dict[str, Layer], dict[str, str]]:
    """The prunable layers of a program's graph module, and the layers left whole with the reason."""
    graph = module.graph
    layers: dict[str, Layer] = {}
    left_whole: dict[str, str] = {}
    attention = _attention_nodes(graph)
    inside = {n for nodes in attention.values() for n in nodes}
    for path, nodes in attention.items():
        layer, why = _attention(module, path, nodes)
        if layer is None:
            left_whole[path] = why
        else:
            layers[path] = layer
    for node in graph.nodes:
        if node in inside or op(node) not in ("linear", "conv2d", "conv1d"):
            continue
        weight = node.args[1]
        if weight.op != "get_attr":
            continue
        name = weight.target.rsplit(".", 1)[0]
        bias = node.args[2] if len(node.args) > 2 and node.args[2] is not None else None
        kind = "linear" if op(node) == "linear" else "conv"
        if kind == "conv" and (node.args[6] if len(node.args) > 6 else 1) != 1:
            left_whole[name] = "it is a grouped (depthwise) convolution"
            continue
        if len(weight.users) > 1 or (bias is not None and (bias.op != "get_attr" or len(bias.users) > 1)):
            left_whole[name] = "its weight is shared with another layer"
            continue
        readers, why = _follow(module, node, -1 if kind == "linear" else 1)
        if why:
            left_whole[name] = why
            continue
        units = int(_get(module, weight.target).shape[0])
        layers[name] = Layer(name, kind, units, 1, weight.target, bias.target if bias is not None else None, readers)
    return layers, left_whole


def _follow(module, producer, dim: int) -> tuple[list[tuple[str, int, int]], str | None]:
    """Where `producer`'s output channels (axis `dim`) go: the parameters reading them, or why they cannot go."""
    readers: list[tuple[str, int, int]] = []
    todo = [(producer, dim, 1)]
    while todo:
        node, axis, repeat = todo.pop()
        for user in node.users:
            kind = op(user)
            if kind == "output":
                return [], "its units are the program's outputs (the classes of a classifier are never pruned)"
            if kind in ("linear", "conv2d", "conv1d") and user.args[0] is node and user.args[1].op == "get_attr":
                groups = user.args[6] if kind != "linear" and len(user.args) > 6 else 1
                if groups != 1 or len(user.args[1].users) > 1 or (axis != 1 and kind != "linear"):
                    return [], f"it feeds '{_where(user)}', a {kind} it cannot slice"
                readers.append((user.args[1].target, 1, repeat))
            elif kind in ELEMENTWISE or (kind == "getitem" and user.args[1] == 0):
                if kind.startswith(("max_pool", "avg_pool", "adaptive")) and axis != 1:
                    return [], f"it feeds '{_where(user)}' ({kind}), which pools across its channels"
                todo.append((user, axis, repeat))
            elif kind in BATCH_NORMS and user.args[0] is node and axis == 1:
                for parameter in user.args[1:5]:
                    if parameter is None or parameter.op != "get_attr":
                        return [], f"it feeds '{_where(user)}', a batch norm it cannot slice"
                    readers.append((parameter.target, 0, repeat))
                todo.append((user, axis, repeat))
            elif kind == "mean" and _channel_kept(node, user.args[1], axis):
                todo.append((user, -1 if axis == -1 else axis, repeat))
            elif kind in FLATTENS and axis == 1 and _flattens_channels(node, user):
                shape = _shape(node)
                todo.append((user, -1, repeat * math.prod(shape[2:])))
            elif kind in ("add", "sub", "mul", "cat", "layer_norm", "rms_norm", "group_norm"):
                return [], f"it feeds '{_where(user)}' ({kind}): a residual or normalized width, kept whole"
            else:
                return [], f"it feeds '{_where(user)}' ({kind}), which does not map each channel to itself"
    return readers, None


def _channel_kept(node, dims, axis: int) -> bool:
    rank = len(_shape(node))
    return (axis % rank) not in {d % rank for d in dims}


def _flattens_channels(node, user) -> bool:
    """`user` flattens (N, C, ...) to (N, C x ...): channel c then covers positions c x S ... (c + 1) x S - 1."""
    before, after = _shape(node), _shape(user)
    return len(after) == 2 and after[0] == before[0] and after[1] == math.prod(before[1:])


def _shape(node) -> list[int]:
    def size(d) -> int:
        if isinstance(d, int):
            return d
        expr = d.node.expr
        return int(expr.subs({s: 1 for s in expr.free_symbols}))

    return [size(d) for d in node.meta["val"].shape]


def _where(node) -> str:
    """The module path a node belongs to (its innermost nn_module_stack entry), else the node's name."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else node.name


def _attention_nodes(graph) -> dict[str, list]:
    """The call nodes of each nn.MultiheadAttention call, by module path."""
    found: dict[str, list] = {}
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        paths = [path for path, kind in (node.meta.get("nn_module_stack") or {}).values()
                 if str(kind).endswith(ATTENTION)]
        if paths:
            found.setdefault(paths[-1], []).append(node)
    return found


def _attention(module, path: str, nodes: list) -> tuple[Layer | None, str]:
    """The attention at `path` as a prunable layer, or why it is left whole."""
    import torch

    params = {n.target for node in nodes for n in node.all_input_nodes if n.op == "get_attr"}
    needed = {f"{path}.in_proj_weight", f"{path}.out_proj.weight"}
    if not needed <= params:
        return None, ("its query, key and value are not one packed in_proj_weight (kdim / vdim differ from "
                      "embed_dim); only packed self-attention heads can be removed")
    inputs = _tensor_inputs(nodes)
    outputs = _tensor_outputs(nodes)
    sdpa = [node for node in nodes if op(node) == "scaled_dot_product_attention"]
    if len(inputs) != 1 or len(outputs) != 1 or len(sdpa) != 1:
        return None, ("it is not a self-attention without a mask (one input, one output, one "
                      "scaled_dot_product_attention): only those heads can be removed")
    heads, head_dim = _shape(sdpa[0].args[0])[1], _shape(sdpa[0].args[0])[-1]
    bias = f"{path}.in_proj_bias" if f"{path}.in_proj_bias" in params else None
    layer = Layer(path, "attention", heads, head_dim, f"{path}.in_proj_weight", bias)
    # Which layout its input has cannot be read from the nodes reliably: the one whose rebuild computes what the
    # original computes is it (and if neither does, the attention is not one this can rebuild).
    graph_input = next(n for n in module.graph.nodes if n.op == "placeholder")
    torch.manual_seed(0)
    sample = torch.randn(_shape(graph_input))
    expected = _value_of(module, outputs[0], sample)
    for batch_first in (True, False):
        layer.batch_first = batch_first
        trial = copy.deepcopy(module)
        _replace_attention(trial, layer, list(range(heads)))
        call = next(n for n in trial.graph.nodes if n.op == "call_module" and n.target == path)
        got = _value_of(trial, call, sample)
        if got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5):
            return layer, ""
    return None, "its nodes do not compute a plain multi-head self-attention edgepress can rebuild with fewer heads"


def _tensor_inputs(nodes: list) -> set:
    """The tensors from outside `nodes` they read (not parameters, not sizes: a dynamic batch's sym_size)."""
    import torch

    members = set(nodes)
    return {n for node in nodes for n in node.all_input_nodes
            if n not in members and n.op != "get_attr" and isinstance(n.meta.get("val"), torch.Tensor)}


def _tensor_outputs(nodes: list) -> list:
    """The tensors of `nodes` read outside them. Sizes a dynamic batch computes inside the first attention
    (sym_size products) are read by later layers too: they are not outputs of the attention."""
    import torch

    members = set(nodes)
    return [node for node in nodes if any(u not in members for u in node.users)
            and isinstance(node.meta.get("val"), torch.Tensor)]


def _value_of(module, target, sample):
    """The value node `target` of `module`'s graph holds when the program runs on `sample`."""
    import torch
    from torch.fx import Interpreter

    values = {}

    class Probe(Interpreter):
        def run_node(self, n):
            value = super().run_node(n)
            if n is target:
                values["result"] = value
            return value

    with torch.no_grad():
        Probe(module).run(sample)
    return values["result"]


def _replace_attention(module, layer: Layer, kept: list[int]) -> None:
    """Replace the attention's nodes in `module`'s graph by a PrunedMultiheadAttention of heads `kept`."""
    import torch

    path = layer.name
    members = _attention_nodes(module.graph)[path]
    member_set = set(members)
    (source,) = _tensor_inputs(members)
    (output,) = _tensor_outputs(members)
    width = layer.units * layer.width
    rows = [h * layer.width + i for h in kept for i in range(layer.width)]
    in_rows = torch.tensor([block * width + r for block in range(3) for r in rows])
    in_weight = _get(module, f"{path}.in_proj_weight")[in_rows]
    in_bias = _get(module, layer.bias)[in_rows] if layer.bias else None
    out_weight = _get(module, f"{path}.out_proj.weight")[:, rows]
    try:
        out_bias = _get(module, f"{path}.out_proj.bias")
    except AttributeError:
        out_bias = None
    replacement = _attention_class()(in_weight, in_bias, out_weight, out_bias, len(kept), layer.width,
                                     layer.batch_first)
    parent, _, attr = path.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, attr, replacement)
    with module.graph.inserting_after(output):
        call = module.graph.call_module(path, (source,))
    output.replace_all_uses_with(call, delete_user_cb=lambda user: user not in member_set)
    for node in reversed(members):
        if not node.users:  # a size later layers read stays
            module.graph.erase_node(node)
    for node in list(module.graph.nodes):
        if node.op == "get_attr" and not node.users and node.target.startswith(f"{path}."):
            module.graph.erase_node(node)
    module.recompile()


_ATTENTION_CLASS = None


def _attention_class():
    """PrunedMultiheadAttention, made on first use (torch is imported only when needed)."""
    global _ATTENTION_CLASS
    if _ATTENTION_CLASS is not None:
        return _ATTENTION_CLASS
    import torch
    from torch import nn

    class PrunedMultiheadAttention(nn.Module):
        """Self-attention of `heads` heads of `head_dim` over a residual width `out_weight.shape[0]`, with the
        parameter names of nn.MultiheadAttention (packed in_proj_weight, out_proj), no mask."""

        def __init__(self, in_weight, in_bias, out_weight, out_bias, heads: int, head_dim: int, batch_first: bool):
            super().__init__()
            self.in_proj_weight = nn.Parameter(in_weight.detach().clone(), requires_grad=False)
            self.in_proj_bias = None if in_bias is None else nn.Parameter(in_bias.detach().clone(),
                                                                          requires_grad=False)
            self.out_proj = nn.Linear(out_weight.shape[1], out_weight.shape[0], bias=out_bias is not None)
            self.out_proj.weight = nn.Parameter(out_weight.detach().clone(), requires_grad=False)
            if out_bias is not None:
                self.out_proj.bias = nn.Parameter(out_bias.detach().clone(), requires_grad=False)
            self.heads, self.head_dim, self.batch_first = heads, head_dim, batch_first

        def forward(self, x):
            if not self.batch_first:
                x = x.transpose(0, 1)
            batch, tokens = x.shape[0], x.shape[1]
            q, k, v = nn.functional.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
            q, k, v = (t.reshape(batch, tokens, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
            out = nn.functional.scaled_dot_product_attention(q, k, v)
            out = self.out_proj(out.transpose(1, 2).reshape(batch, tokens, self.heads * self.head_dim))
            return out if self.batch_first else out.transpose(0, 1)

    del torch
    _ATTENTION_CLASS = PrunedMultiheadAttention
    return _ATTENTION_CLASS


def _get(module, name: str):
    parent, _, attr = name.rpartition(".")
    return getattr(module.get_submodule(parent) if parent else module, attr)


def _set(module, name: str, tensor) -> None:
    import torch

    parent, _, attr = name.rpartition(".")
    owner = module.get_submodule(parent) if parent else module
    if attr in owner._parameters:
        owner._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=False)
    else:
        owner._buffers[attr] = tensor


# -- importance ---------------------------------------------------------------------------------------------------

def _norms(module, layers: dict[str, Layer], criterion: str) -> dict[str, list[float]]:
    """Each unit's l1 or l2 norm: its weight row (a head: its value rows of in_proj_weight and out_proj columns)."""
    scores = {}
    for name, layer in layers.items():
        weight = _get(module, layer.weight).detach()
        if layer.kind == "attention":
            width = layer.units * layer.width
            value = weight[2 * width:].reshape(layer.units, -1)
            out = _get(module, f"{name}.out_proj.weight").detach()
            out = out.reshape(out.shape[0], layer.units, layer.width).transpose(0, 1).reshape(layer.units, -1)
            filters = np.concatenate([value.numpy(), out.numpy()], axis=1)
        else:
            filters = weight.reshape(layer.units, -1).numpy()
        norms = np.abs(filters).sum(1) if criterion == "l1" else np.sqrt((filters ** 2).sum(1))
        scores[name] = [float(v) for v in norms]
    return scores


def _taylor(program, layers: dict[str, Layer], x: np.ndarray, y: np.ndarray, samples: int = 512,
            ) -> dict[str, list[float]]:
    """Each unit's measured importance: (sum of weight x loss gradient over what removing it zeroes)^2, averaged
    over training batches (a head: its out_proj columns; a unit: its weight row and bias)."""
    import torch

    module = copy.deepcopy(program.module)
    tracked = {}
    for name, layer in layers.items():
        if layer.kind == "attention":
            tracked[name] = [f"{name}.out_proj.weight"]
        else:
            tracked[name] = [layer.weight] + ([layer.bias] if layer.bias else [])
    parameters = {p: _get(module, p) for names in tracked.values() for p in names}
    for tensor in parameters.values():
        tensor.requires_grad_(True)
    totals = {name: np.zeros(layer.units) for name, layer in layers.items()}
    batch = program.fixed_batch or 64
    count = min(samples, len(x)) // batch * batch
    starts = range(0, count, batch)
    for start in starts:
        xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch], dtype=program.input_dtype))
        loss = torch.nn.functional.cross_entropy(_logits(module(xb)), torch.from_numpy(
            np.asarray(y[start : start + batch], np.int64)))
        grads = dict(zip(parameters, torch.autograd.grad(loss, list(parameters.values()), allow_unused=True),
                         strict=True))
        for name, layer in layers.items():
            change = np.zeros(layer.units)
            for p in tracked[name]:
                if grads[p] is None:
                    continue
                product = (parameters[p] * grads[p]).detach()
                if layer.kind == "attention":  # (out, heads x width): sum each head's columns
                    product = product.reshape(product.shape[0], layer.units, layer.width).sum(dim=(0, 2))
                else:
                    product = product.reshape(layer.units, -1).sum(dim=1)
                change += product.numpy()
            totals[name] += change ** 2 / len(starts)
    return {name: [float(v) for v in values] for name, values in totals.items()}


def _logits(out):
    """Outputs as logits: a program that ends in a softmax gives probabilities, whose log serves."""
    import torch

    probabilities = bool(torch.all(out >= 0) and torch.allclose(out.sum(-1), torch.ones(1), atol=1e-3))
    return torch.log(out.clamp_min(1e-9)) if probabilities else out


def _check_requested(program, config, layers: dict[str, Layer], left_whole: dict[str, str]) -> None:
    """Refuse per-layer ratios for layers that do not exist or cannot be pruned, and a program with nothing to prune."""
    requested = config.layers or {}
    prunable = ", ".join(layers) or "none"
    for name, ratio in requested.items():
        if ratio == 0 or name in layers:
            continue
        why = left_whole.get(name, "it is not a Linear, Conv2d or MultiheadAttention of this program")
        raise EdgepressError(
            f"structured_prune cannot prune layer '{name}' of {program.name}: {why}. Remove it from `layers` (the "
            f"layers it can prune: {prunable})."
        )
    if not layers and (config.ratio > 0 or any(requested.values())):
        blocked = "; ".join(f"'{n}' {why}" for n, why in left_whole.items())
        raise EdgepressError(
            f"structured_prune cannot follow the channels or heads of any layer of {program.name}"
            + (f": {blocked}" if blocked else " (it has no Linear, Conv2d or MultiheadAttention besides the outputs)")
            + ". Leave out this step, or prune the model in PyTorch before exporting it."
        )


# -- fine-tuning and writing ---------------------------------------------------------------------------------------

def fine_tune_program(module, program, x: np.ndarray, y: np.ndarray, config, on_epoch=None, after_step=None) -> None:
    """Adam on cross-entropy, at the program's own batch when it is fixed (the last partial batch left out);
    `after_step()` after each optimizer step (magnitude pruning puts its zeros back there)."""
    import torch

    torch.manual_seed(0)
    parameters = list(module.parameters())
    for parameter in parameters:
        parameter.requires_grad_(True)
    xs = torch.from_numpy(np.ascontiguousarray(x, dtype=program.input_dtype))
    ys = torch.from_numpy(np.asarray(y, np.int64))
    batch = program.fixed_batch or config.batch_size
    optimizer = torch.optim.Adam(parameters, config.learning_rate)
    end = len(xs) - (len(xs) % batch if program.fixed_batch else 0)
    for epoch in range(1, config.fine_tune_epochs + 1):
        order = torch.randperm(len(xs))
        total = 0.0
        for start in range(0, end, batch):
            index = order[start : start + batch]
            loss = torch.nn.functional.cross_entropy(_logits(module(xs[index])), ys[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
            total += loss.item() * len(index)
        if on_epoch is not None:
            on_epoch(epoch, config.fine_tune_epochs, {"loss": total / max(end, 1)})
    for parameter in parameters:
        parameter.requires_grad_(False)


def exported_program(module, program, x: np.ndarray):
    """`module` exported again with torch.export at the batch `program` takes, as a new TorchSource."""
    import torch

    from edgepress.compress.distill_torch import save_fixed
    from edgepress.models.torch_program import TorchSource, save_torch_program

    # A dynamic batch is exported from a sample of 2: torch.export specializes a batch of 1 to a constant.
    sample = torch.from_numpy(np.ascontiguousarray(x[: program.fixed_batch or 2], dtype=program.input_dtype))
    if program.fixed_batch:
        return TorchSource.from_trained(module, lambda m, path: save_fixed(m, sample, path))
    return TorchSource.from_trained(module, lambda m, path: save_torch_program(m, sample, path))
