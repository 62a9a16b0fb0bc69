"""structured_prune on PyTorch programs (`.pt2`, torch.export): the encoder written by tests/models/encoders.py loses
whole heads (query, key and value rows and the output projection's columns together) and MLP units, its residual
widths and classes stay whole, the removal is exact, taylor ranks by measured importance and round_to counts a head
as its width; the zoo's CNN program loses conv channels through ReLU, pooling and the flatten; what cannot be pruned
is refused naming the layer."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from edgepress.compress.structured_prune import StructuredPruneConfig
from edgepress.compress.structured_prune_torch import plan_program, prune_program, remove_units
from edgepress.errors import EdgepressError
from edgepress.models.torch_program import TorchSource
from tests.models import encoders

ATTENTION, UP, DOWN = "encoder.layers.0.self_attn", "encoder.layers.0.linear1", "encoder.layers.0.linear2"


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> TorchSource:
    path = tmp_path_factory.mktemp("encoder") / "enc.pt2"
    encoders.torch_encoder(path, epochs=2)
    return TorchSource(path)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> TorchSource:
    from edgepress.models.torch_cnn import build_torch_cnn, export_torch_program

    path = tmp_path_factory.mktemp("cnn") / "cnn.pt2"
    export_torch_program(build_torch_cnn((1, 8, 8)).eval(), path, (1, 8, 8))
    return TorchSource(path)


def _zeroed(module, zero: dict[str, tuple[int, list[int]]]):
    """A copy of `module` with positions of dim `dim` of the named parameters set to zero."""
    import torch

    module = copy.deepcopy(module)
    for name, (dim, positions) in zero.items():
        owner, _, attr = name.rpartition(".")
        tensor = getattr(module.get_submodule(owner), attr)
        tensor.data.index_fill_(dim, torch.tensor(positions, dtype=torch.long), 0.0)
    return module


def _outputs(module, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate([module(torch.from_numpy(x[i : i + 1])).numpy() for i in range(len(x))])


def test_heads_and_mlp_units_are_removed_exactly_and_residual_widths_stay(encoder):
    chosen = plan_program(encoder, StructuredPruneConfig(ratio=0.5))
    assert chosen.widths == {ATTENTION: (2, 1), UP: (32, 16)}
    for whole in ("embed", DOWN):  # the residual stream: the adds tie it, layer norms read it
        assert "residual" in chosen.left_whole[whole]
    assert "outputs" in chosen.left_whole["head"]  # the classes stay
    smaller = remove_units(encoder.module, chosen)
    state = dict(smaller.named_parameters())
    assert tuple(state[f"{ATTENTION}.in_proj_weight"].shape) == (24, 16)  # q, k, v of one head of 8
    assert tuple(state[f"{ATTENTION}.out_proj.weight"].shape) == (16, 8)  # the residual width stays 16
    assert tuple(state[f"{UP}.weight"].shape) == (16, 16) and tuple(state[f"{DOWN}.weight"].shape) == (16, 16)
    (head,) = chosen.removed[ATTENTION]
    zeroed = _zeroed(encoder.module, {f"{ATTENTION}.out_proj.weight": (1, list(range(8 * head, 8 * head + 8))),
                                      f"{UP}.weight": (0, chosen.removed[UP]), f"{UP}.bias": (0, chosen.removed[UP])})
    x = np.random.default_rng(0).random((6, 8, 8)).astype("float32")
    np.testing.assert_allclose(_outputs(smaller, x), _outputs(zeroed, x), atol=1e-5)
    assert not np.allclose(_outputs(zeroed, x), _outputs(encoder.module, x), atol=1e-3)  # the test can fail


def test_the_pruned_program_is_written_at_its_batch_with_fewer_macs_and_parameters(encoder):
    x, y = encoders.digits_rows(64)
    pruned = prune_program(encoder, x, y, StructuredPruneConfig(ratio=0.5, fine_tune_epochs=1, batch_size=32))
    assert pruned.path.suffix == ".pt2" and pruned.fixed_batch == 1  # exported again at the program's own batch
    before, after = encoder.stats(), pruned.stats()
    # One head of 8 over 8 tokens of 16 (q, k, v and output projections, both attention products) and 16 MLP units.
    assert before["macs"] - after["macs"] == (4 * 8 * 16 * 8 + 8 * 8 * (8 + 8)) + 2 * 8 * 16 * 16
    assert before["params"] - after["params"] == (4 * 16 * 8 + 3 * 8) + (2 * 16 * 16 + 16)
    assert pruned.predict(x[:5]).shape == (5, 10)


def test_taylor_removes_the_head_that_matters_least_measured_on_data(encoder):
    x, y = encoders.digits_rows(128)
    for quiet in (0, 1):  # whichever head is made nearly silent is the one measured as unimportant
        program = copy.copy(encoder)
        program.module = copy.deepcopy(encoder.module)
        out = program.module.get_submodule(f"{ATTENTION}.out_proj").weight
        out.data[:, 8 * quiet : 8 * quiet + 8] *= 1e-3
        chosen = plan_program(program, StructuredPruneConfig(ratio=0, layers={ATTENTION: 0.5}, criterion="taylor"),
                              data=(x, y))
        assert chosen.removed == {ATTENTION: [quiet]}


def test_round_to_counts_a_head_as_its_width(encoder):
    # Heads are 8 wide: round_to 16 keeps a multiple of 2 heads (both), round_to 8 lets one go.
    assert plan_program(encoder, StructuredPruneConfig(ratio=0.5, round_to=16)).widths[ATTENTION] == (2, 2)
    assert plan_program(encoder, StructuredPruneConfig(ratio=0.5, round_to=8)).widths[ATTENTION] == (2, 1)
    assert plan_program(encoder, StructuredPruneConfig(ratio=0.3, round_to=8)).widths[UP] == (32, 24)


def test_conv_channels_go_through_relu_pooling_and_the_flatten_exactly(cnn):
    chosen = plan_program(cnn, StructuredPruneConfig(ratio=0.5))
    assert chosen.widths == {"0": (16, 8), "3": (32, 16), "7": (64, 32)}
    smaller = remove_units(cnn.module, chosen)
    state = dict(smaller.named_parameters())
    assert tuple(state["3.weight"].shape) == (16, 8, 3, 3) and tuple(state["7.weight"].shape) == (32, 16 * 2 * 2)
    zero = {}
    for name in ("0", "3", "7"):
        zero[f"{name}.weight"] = (0, chosen.removed[name])
        zero[f"{name}.bias"] = (0, chosen.removed[name])
    zeroed = _zeroed(cnn.module, zero)
    x = np.random.default_rng(0).random((4, 1, 8, 8)).astype("float32")
    np.testing.assert_allclose(_outputs(smaller, x), _outputs(zeroed, x), atol=1e-5)


def test_what_cannot_be_pruned_is_refused_naming_the_layer(encoder):
    with pytest.raises(EdgepressError, match=f"cannot prune layer '{DOWN}'.*residual.*{ATTENTION}"):
        plan_program(encoder, StructuredPruneConfig(ratio=0, layers={DOWN: 0.5}))
    with pytest.raises(EdgepressError, match="cannot prune layer 'head'.*outputs"):
        plan_program(encoder, StructuredPruneConfig(ratio=0, layers={"head": 0.5}))
    with pytest.raises(EdgepressError, match=f"removes all 2 heads of layer '{ATTENTION}'"):
        plan_program(encoder, StructuredPruneConfig(ratio=0, layers={ATTENTION: 1.0}))


def test_batch_norm_after_a_conv_loses_the_same_channels_exactly(tmp_path):
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 10)).eval()
    with torch.no_grad():  # statistics a trained model would have, so that the batch norm is not the identity
        model[1].running_mean.uniform_(-1, 1), model[1].running_var.uniform_(0.5, 2), model[1].bias.uniform_(-1, 1)
    program = TorchSource.from_module(model, torch.zeros(2, 1, 8, 8))
    chosen = plan_program(program, StructuredPruneConfig(ratio=0.5))
    assert chosen.widths == {"0": (8, 4)}
    smaller = remove_units(program.module, chosen)
    assert tuple(dict(smaller.named_buffers())["1.running_mean"].shape) == (4,)
    gone = chosen.removed["0"]
    zeroed = _zeroed(program.module, {name: (0, gone) for name in ("0.weight", "0.bias", "1.weight", "1.bias")})
    x = np.random.default_rng(0).random((3, 1, 8, 8)).astype("float32")
    np.testing.assert_allclose(_outputs(smaller, x), _outputs(zeroed, x), atol=1e-5)


def test_a_program_with_a_dynamic_batch_loses_heads_exactly_and_keeps_its_dynamic_batch():
    import torch

    program = TorchSource.from_module(encoders.torch_encoder_module(epochs=1), torch.zeros(2, 8, 8))
    assert program.fixed_batch is None  # its attention reads the batch as a size (sym_size), not a constant
    config = StructuredPruneConfig(ratio=0.5, fine_tune_epochs=0)
    chosen = plan_program(program, config)
    assert chosen.widths == {ATTENTION: (2, 1), UP: (32, 16)}
    pruned = prune_program(program, *encoders.digits_rows(8), config)
    assert pruned.fixed_batch is None
    (head,) = chosen.removed[ATTENTION]
    zeroed = _zeroed(program.module, {f"{ATTENTION}.out_proj.weight": (1, list(range(8 * head, 8 * head + 8))),
                                      f"{UP}.weight": (0, chosen.removed[UP]), f"{UP}.bias": (0, chosen.removed[UP])})
    x = np.random.default_rng(0).random((7, 8, 8)).astype("float32")
    with torch.no_grad():
        expected = zeroed(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(pruned.predict(x), expected, atol=1e-5)  # all 7 rows in one call


def test_every_attention_of_a_dynamic_batch_encoder_loses_heads():
    """The first attention computes the batch's sizes (sym_size products) that later layers read again: they are
    not outputs of that attention, which is prunable like the others (it was left whole)."""
    import torch

    program = TorchSource.from_module(encoders.torch_encoder_module(epochs=0, blocks=2), torch.zeros(2, 8, 8))
    assert program.fixed_batch is None
    config = StructuredPruneConfig(ratio=0.5, fine_tune_epochs=0)
    chosen = plan_program(program, config)
    assert {path: chosen.widths.get(path) for path in (ATTENTION, "encoder.layers.1.self_attn")} == {
        ATTENTION: (2, 1), "encoder.layers.1.self_attn": (2, 1)}
    pruned = prune_program(program, *encoders.digits_rows(8), config)
    state = dict(pruned.module.named_parameters())
    assert [tuple(state[f"encoder.layers.{i}.self_attn.in_proj_weight"].shape) for i in (0, 1)] == [(24, 16)] * 2
    assert pruned.fixed_batch is None and pruned.predict(np.zeros((7, 8, 8), "float32")).shape == (7, 10)


def test_the_gradual_schedule_silences_heads_and_units_while_training_then_removes_them(encoder):
    x, y = encoders.digits_rows(64)
    config = StructuredPruneConfig(ratio=0, layers={ATTENTION: 0.5, UP: 0.5}, schedule="gradual", rounds=2,
                                   fine_tune_epochs=2, criterion="taylor", batch_size=32)
    pruned = prune_program(encoder, x, y, config)
    state = dict(pruned.module.named_parameters())
    assert tuple(state[f"{ATTENTION}.in_proj_weight"].shape) == (24, 16) and tuple(state[f"{UP}.weight"].shape) == (
        16, 16)
    assert pruned.fixed_batch == 1 and pruned.count_params() < encoder.count_params()


def test_what_the_gradual_schedule_holds_at_zero_is_what_removal_drops(encoder, cnn):
    from edgepress.compress.structured_prune_torch import _zeroing

    for program, shape in ((encoder, (8, 8)), (cnn, (1, 8, 8))):
        chosen = plan_program(program, StructuredPruneConfig(ratio=0.5))
        held = copy.deepcopy(program.module)
        _zeroing(held, chosen)()
        x = np.random.default_rng(0).random((3, *shape)).astype("float32")
        np.testing.assert_allclose(_outputs(remove_units(held, chosen), x), _outputs(held, x), atol=1e-5)
