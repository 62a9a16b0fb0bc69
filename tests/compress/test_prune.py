import numpy as np
import pytest

from edgepress.compress import PruneConfig, prune, sparsity
from edgepress.errors import EdgepressError
from edgepress.models import training


def _kernel_sparsities(model):
    return {layer.name: float((layer.kernel.numpy() == 0).mean()) for layer in model.layers if hasattr(layer, "kernel")}


@pytest.mark.parametrize("schedule", ["polynomial_decay", "constant"])
def test_prune_reaches_target_sparsity_and_strips_wrappers(trained_cnn, digits, schedule):
    before = training.accuracy(training.predict(trained_cnn, digits.x_test), digits.y_test)

    pruned = prune(trained_cnn, digits.x_train, digits.y_train, PruneConfig(
        target_sparsity=0.6, schedule=schedule, fine_tune_epochs=2))

    for name, value in _kernel_sparsities(pruned).items():
        assert 0.57 <= value <= 0.63, f"{name} is {value:.2f} sparse"
    assert 0.57 <= sparsity(pruned) <= 0.63
    assert not any("Prune" in type(layer).__name__ for layer in pruned.layers)
    after = training.accuracy(training.predict(pruned, digits.x_test), digits.y_test)
    assert after >= before - 0.05
    assert sparsity(trained_cnn) < 0.01  # the input model is left alone


def test_prune_only_named_layers(trained_cnn, digits):
    pruned = prune(trained_cnn, digits.x_train, digits.y_train, target_sparsity=0.5, fine_tune_epochs=1,
                   layers=["dense"])

    sparsities = _kernel_sparsities(pruned)
    assert sparsities["dense"] >= 0.45
    assert all(v < 0.05 for name, v in sparsities.items() if name != "dense")


def test_prune_refuses_a_layer_tfmot_cannot_prune_and_names_it(prelu_cnn, digits):
    with pytest.raises(EdgepressError, match=r"'prelu' \(PReLU\).*layers: \[conv, logits\]"):
        prune(prelu_cnn, digits.x_train, digits.y_train, target_sparsity=0.5)


def test_prune_with_layers_skips_the_unsupported_one(prelu_cnn, digits):
    pruned = prune(prelu_cnn, digits.x_train, digits.y_train, target_sparsity=0.5, fine_tune_epochs=1,
                   layers=["conv", "logits"])
    assert np.mean(pruned.get_layer("logits").kernel.numpy() == 0) >= 0.45


def test_prune_config_rejects_out_of_range_sparsity():
    with pytest.raises(ValueError):
        PruneConfig(target_sparsity=1.0)
