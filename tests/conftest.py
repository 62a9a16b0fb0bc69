"""Shared fixtures: real data and one trained seed CNN per test session (TensorFlow work is costly)."""

from pathlib import Path

import pytest

import edgepress  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

REPO = Path(__file__).resolve().parents[1]
# The real MNIST test set lives beside the repository (CI has it at the same relative path).
MNIST = REPO.parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits fitted to the seed CNN's 28x28x1 input."""
    from edgepress.models.datasets import load_dataset

    return load_dataset("digits", test_size=300).fit_to((28, 28, 1))


@pytest.fixture(scope="session")
def trained_cnn(digits):
    """The seed CNN trained on digits for a few epochs (about 95% test accuracy)."""
    from edgepress.compat import keras
    from edgepress.models import zoo

    # Keras names unnamed layers from a process-wide counter: restart it, so the layers have the names a fresh
    # run gives them (conv2d, ..., dense, dense_1) whichever test built a model first.
    keras().backend.reset_uids()
    return zoo.train("seed_cnn", digits, epochs=4, seed=0)


@pytest.fixture(scope="session")
def prelu_cnn(digits):
    """A small trained CNN with a PReLU layer, which tfmot can neither prune nor quantize."""
    from edgepress.compat import keras
    from edgepress.models import training

    k = keras()
    k.utils.set_random_seed(0)
    model = k.Sequential(
        [
            k.layers.Input((28, 28, 1)),
            k.layers.Conv2D(8, 3, name="conv"),
            k.layers.PReLU(name="prelu"),
            k.layers.MaxPooling2D(),
            k.layers.Flatten(),
            k.layers.Dense(10, name="logits"),
        ]
    )
    training.fit(model, digits.x_train, digits.y_train, epochs=2)
    return model
