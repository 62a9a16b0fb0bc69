"""Weight clustering, sparsity-preserving clustering, and the collaborative QAT variants (PQAT, CQAT)."""

import numpy as np
import pytest

from edgepress.compat import keras
from edgepress.compress import ClusterConfig, cluster, prune, qat
from edgepress.compress.cluster import unique_values
from edgepress.errors import EdgepressError
from edgepress.models import training
from edgepress.recipe import Recipe


@pytest.fixture(scope="module")
def small_cnn(digits):
    """A small trained CNN: clustering and CQAT cost grows with the number of filters."""
    k = keras()
    k.utils.set_random_seed(0)
    model = k.Sequential([
        k.layers.Input((28, 28, 1)),
        k.layers.Conv2D(8, 3, activation="relu", name="conv_a"),
        k.layers.MaxPooling2D(),
        k.layers.Conv2D(16, 3, activation="relu", name="conv_b"),
        k.layers.MaxPooling2D(),
        k.layers.Flatten(),
        k.layers.Dense(32, activation="relu", name="dense_a"),
        k.layers.Dense(10, name="logits"),
    ])
    training.fit(model, digits.x_train, digits.y_train, epochs=4)
    return model


@pytest.fixture(scope="module")
def clustered_cnn(small_cnn, digits):
    return cluster(small_cnn, digits.x_train, digits.y_train, number_of_clusters=8, fine_tune_epochs=1)


@pytest.fixture(scope="module")
def pruned_cnn(small_cnn, digits):
    return prune(small_cnn, digits.x_train, digits.y_train, target_sparsity=0.5, schedule="constant",
                 fine_tune_epochs=1)


def _accuracy(model, digits) -> float:
    return training.accuracy(training.predict(model, digits.x_test), digits.y_test)


def _aware_kernels(model) -> dict[str, np.ndarray]:
    """The kernels inside a quantize-aware model's wrappers, by layer name."""
    return {layer.layer.name: w.numpy() for layer in model.layers if hasattr(layer, "layer")
            for w in layer.weights if w.name.endswith("/kernel:0")}


def test_cluster_leaves_at_most_n_values_per_kernel(small_cnn, clustered_cnn, digits):
    assert set(unique_values(clustered_cnn)) == {"conv_a", "conv_b", "dense_a", "logits"}
    assert all(n <= 8 for n in unique_values(clustered_cnn).values()), unique_values(clustered_cnn)
    assert not any("Cluster" in type(layer).__name__ for layer in clustered_cnn.layers)  # stripped
    assert _accuracy(clustered_cnn, digits) >= _accuracy(small_cnn, digits) - 0.05
    assert min(unique_values(small_cnn).values()) > 8  # the input model is left alone


def test_cluster_with_linear_centroids(small_cnn, digits):
    clustered = cluster(small_cnn, digits.x_train, digits.y_train, number_of_clusters=5,
                        centroid_initialization="linear", fine_tune_epochs=1)
    assert all(n <= 5 for n in unique_values(clustered).values()), unique_values(clustered)


def test_sparsity_preserving_clustering_keeps_the_pruned_zeros(pruned_cnn, digits):
    clustered = cluster(pruned_cnn, digits.x_train, digits.y_train, number_of_clusters=8, preserve_sparsity=True,
                        fine_tune_epochs=1)

    for name, n in unique_values(clustered).items():
        before, after = pruned_cnn.get_layer(name).kernel.numpy(), clustered.get_layer(name).kernel.numpy()
        assert n <= 8, (name, n)
        assert np.all(after[before == 0] == 0), f"{name} lost pruned zeros"


def test_pqat_keeps_the_zeros_that_plain_qat_loses(pruned_cnn, digits):
    zeros = {layer.name: layer.kernel.numpy() == 0 for layer in pruned_cnn.layers if hasattr(layer, "kernel")}

    pqat = _aware_kernels(qat(pruned_cnn, digits.x_train, digits.y_train, after=["prune"]))  # auto -> sparsity
    plain = _aware_kernels(qat(pruned_cnn, digits.x_train, digits.y_train, preserve="none"))

    assert all(np.all(pqat[name][mask] == 0) for name, mask in zeros.items())
    assert any(np.any(plain[name][mask] != 0) for name, mask in zeros.items())


def test_cqat_keeps_the_clusters(clustered_cnn, digits):
    # Plain QAT leaves hundreds of values in each kernel here (the PQAT test shows it moves every weight).
    cqat = _aware_kernels(qat(clustered_cnn, digits.x_train, digits.y_train, after=["cluster"]))  # auto -> clusters

    # tfmot keeps a Conv2D's clusters per output channel (int8 quantizes each channel on its own scale anyway)
    # when every channel uses them all, and a Dense kernel's clusters over the whole kernel.
    for name, kernel in cqat.items():
        per_channel = [np.unique(kernel[..., c]).size for c in range(kernel.shape[-1])]
        assert max(per_channel) <= 8, (name, per_channel)
        if name.startswith("dense") or name == "logits":
            assert np.unique(kernel).size <= 8, name


def test_cluster_refuses_a_layer_tfmot_cannot_cluster_and_names_it(prelu_cnn, digits):
    with pytest.raises(EdgepressError, match=r"cannot cluster layer 'prelu' \(PReLU\).*layers: \[conv, logits\]"):
        cluster(prelu_cnn, digits.x_train, digits.y_train)


def test_cluster_named_layers_only(prelu_cnn, digits):
    clustered = cluster(prelu_cnn, digits.x_train, digits.y_train, number_of_clusters=4, fine_tune_epochs=1,
                        layers=["logits"])
    assert np.unique(clustered.get_layer("logits").kernel.numpy()).size <= 4
    assert np.unique(clustered.get_layer("conv").kernel.numpy()).size > 4


def test_cluster_refuses_a_named_layer_without_kernels(digits):
    k = keras()
    model = k.Sequential([k.layers.Input((8,)), k.layers.Dense(4, name="d"), k.layers.BatchNormalization(name="bn")])
    with pytest.raises(EdgepressError, match=r"'bn' \(BatchNormalization\).*layers: \[d\]"):
        cluster(model, np.zeros((4, 8)), np.zeros(4), layers=["d", "bn"])


def test_preserving_qat_refuses_a_layer_its_scheme_cannot_take_before_training():
    k = keras()
    model = k.Sequential([k.layers.Input((8, 8, 1)), k.layers.Conv2DTranspose(2, 3, name="up"), k.layers.Flatten(),
                          k.layers.Dense(10)])
    with pytest.raises(EdgepressError, match=r"sparsity-preserving QAT.*up.*preserve: none"):
        qat(model, np.zeros((4, 8, 8, 1)), np.zeros(4), preserve="sparsity")


def test_config_refuses_too_few_clusters_to_keep_zero():
    with pytest.raises(ValueError, match="at least 3"):
        ClusterConfig(number_of_clusters=2, preserve_sparsity=True)


@pytest.mark.parametrize("steps, preserve", [
    (["prune"], "sparsity"), (["cluster"], "clusters"), (["prune", "cluster"], "clusters"), ([], "none"),
    (["prune", "structured_prune"], "none"),
])
def test_recipe_qat_preserves_what_the_step_before_made(steps, preserve):
    recipe = Recipe.from_dict({"model": {"zoo": "seed_cnn"}, "steps": [{"type": t} for t in steps] + [{"type": "qat"}]})
    assert recipe.steps[-1].preserve == preserve
    assert f"preserve: {preserve}" in recipe.to_yaml()  # the resolved recipe says which QAT ran
