"""structured_prune on attention encoders (Keras 3 and tf_keras): whole heads go (their query, key and value columns
and the output projection's rows together), MLP hidden units go, residual widths stay whole, the removal is exact,
the taylor criterion ranks by measured importance, and round_to counts a head as its width."""

from __future__ import annotations

import numpy as np
import pytest

from edgepress.compress.structured_prune import StructuredPruneConfig, plan, remove_channels
from edgepress.models.keras_graph import attention_sizes
from tests.models import encoders


def _encoder(kind: str):
    if kind == "keras3":
        import keras

        keras.utils.set_random_seed(0)
        return encoders._keras_encoder(keras, "k3_encoder")
    from edgepress.compat import keras

    keras().utils.set_random_seed(0)
    return encoders._keras_encoder(keras(), "tfk_encoder")


def _zeroed(model, heads: list[int], units: list[int]):
    """The weights of `model` with the output-projection rows of `heads` and the `units` of mlp_up zeroed."""
    mha = model.get_layer("mha")
    kernel, *bias = mha._output_dense.get_weights()
    kernel[heads] = 0
    mha._output_dense.set_weights([kernel, *bias])
    up = model.get_layer("mlp_up")
    k, b = up.get_weights()
    k[:, units], b[units] = 0, 0
    up.set_weights([k, b])


@pytest.mark.parametrize("kind", ["keras3", "tf_keras"])
def test_heads_and_mlp_units_are_removed_exactly_and_residual_widths_stay(kind):
    model = _encoder(kind)
    config = StructuredPruneConfig(ratio=0.5)
    chosen = plan(model, config)
    assert chosen.widths["mha"] == (2, 1) and chosen.widths["mlp_up"] == (32, 16)
    for residual in ("embed", "mlp_down"):  # the residual stream: tied by the Adds, read by LayerNormalization
        assert chosen.widths[residual] == (16, 16) and residual in chosen.left_whole
    assert chosen.widths["head"] == (10, 10) and "mha" not in chosen.left_whole  # the classes stay
    smaller = remove_channels(model, chosen)
    mha = smaller.get_layer("mha")
    assert attention_sizes(mha)[0] == 1 and smaller.get_layer("mlp_up").get_weights()[0].shape == (16, 16)
    assert mha._query_dense.get_weights()[0].shape == (16, 1, 8)
    assert mha._output_dense.get_weights()[0].shape == (1, 8, 16)
    assert smaller.count_params() < model.count_params()
    x = np.random.default_rng(0).random((8, 8, 8)).astype("float32")
    _zeroed(model, chosen.removed["mha"], chosen.removed["mlp_up"])
    np.testing.assert_allclose(smaller.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


@pytest.mark.parametrize("kind", ["keras3", "tf_keras"])
def test_taylor_removes_the_head_that_matters_least_measured_on_data(kind):
    x, y = encoders.digits_rows(128)
    for quiet in (0, 1):  # whichever head is made nearly silent is the one measured as unimportant
        fresh = _encoder(kind)
        out = fresh.get_layer("mha")._output_dense
        kernel, *bias = out.get_weights()
        kernel[quiet] *= 1e-3
        out.set_weights([kernel, *bias])
        chosen = plan(fresh, StructuredPruneConfig(ratio=0, layers={"mha": 0.5}, criterion="taylor"), data=(x, y))
        assert chosen.removed == {"mha": [quiet]}


@pytest.mark.parametrize("kind", ["keras3", "tf_keras"])
def test_round_to_counts_a_head_as_its_width(kind):
    model = _encoder(kind)
    # Heads are 8 wide: round_to 16 keeps a multiple of 2 heads (both), round_to 8 lets one go.
    assert plan(model, StructuredPruneConfig(ratio=0.5, round_to=16)).widths["mha"] == (2, 2)
    assert plan(model, StructuredPruneConfig(ratio=0.5, round_to=8)).widths["mha"] == (2, 1)
    assert plan(model, StructuredPruneConfig(ratio=0.3, round_to=8)).widths["mlp_up"] == (32, 24)


def test_macs_count_attention():
    from edgepress.models.stats import macs

    model = _encoder("keras3")
    smaller = remove_channels(model, plan(model, StructuredPruneConfig(ratio=0, layers={"mha": 0.5})))
    # One head of 8 over 8 tokens of 16: q, k, v and output projections, scores and the weighted sum.
    per_head = 4 * 8 * 16 * 8 + 8 * 8 * (8 + 8)
    assert macs(model) - macs(smaller) == per_head


def test_the_gradual_schedule_silences_heads_while_training_then_removes_them():
    from edgepress.compress.structured_prune import structured_prune

    model = _encoder("keras3")
    x, y = encoders.digits_rows(128)
    smaller = structured_prune(model, x, y, ratio=0, layers={"mha": 0.5}, schedule="gradual", rounds=2,
                               fine_tune_epochs=2, criterion="taylor", batch_size=64)
    assert attention_sizes(smaller.get_layer("mha"))[0] == 1
    assert smaller.count_params() < model.count_params()


@pytest.mark.parametrize("kind", ["keras3", "tf_keras"])
def test_a_distill_student_of_half_width_has_half_the_heads_and_units(kind):
    from edgepress.compress.distill import StudentSpec, make_student

    model = _encoder(kind)
    student = make_student(model, StudentSpec(width=0.5))
    assert attention_sizes(student.get_layer("mha")) == (1, 8, 8)  # fewer heads, each as wide
    assert student.get_layer("mlp_up").get_config()["units"] == 16 and student.get_layer("embed").units == 8
    assert student.predict(np.zeros((2, 8, 8), np.float32), verbose=0).shape == (2, 10)
