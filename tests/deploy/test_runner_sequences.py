"""The runner's scoring of sequence models: per-token accuracy, cross-entropy and perplexity (numpy only)."""

import numpy as np
import pytest

from edgepress.deploy import runner


def test_uniform_logits_have_the_vocabulary_as_perplexity():
    # A model that knows nothing spreads its bets evenly: perplexity is exactly the number of choices.
    outputs = np.zeros((3, 5, 7), np.float32)
    y = np.arange(15).reshape(3, 5) % 7
    scores = runner.score(outputs, y)
    assert scores["perplexity"] == pytest.approx(7.0)
    assert scores["cross_entropy"] == pytest.approx(np.log(7.0))
    assert scores["per_class"] == {}


def test_logits_and_probabilities_give_the_same_scores():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 6, 9)).astype(np.float32) * 3
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    y = rng.integers(0, 9, size=(4, 6))

    from_logits, from_probabilities = runner.score(logits, y), runner.score(probabilities, y)

    expected = -np.mean(np.log(np.take_along_axis(probabilities, y[..., None], -1)))
    assert from_logits["cross_entropy"] == pytest.approx(expected, rel=1e-5)
    assert from_probabilities["cross_entropy"] == pytest.approx(expected, rel=1e-5)
    assert from_logits["accuracy"] == from_probabilities["accuracy"] == np.mean(logits.argmax(-1) == y)


def test_per_token_accuracy_counts_every_step():
    outputs = np.zeros((2, 3, 4), np.float32)
    outputs[0, :, 1] = 5  # sample 0 predicts token 1 at every step
    outputs[1, :, 2] = 5  # sample 1 predicts token 2
    y = np.array([[1, 1, 0], [2, 3, 3]])
    assert runner.score(outputs, y)["accuracy"] == pytest.approx(3 / 6)


def test_classifier_labels_keep_per_class_counts_and_no_perplexity():
    outputs = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], np.float32)
    scores = runner.score(outputs, np.array([1, 1, 1]))
    assert scores["accuracy"] == pytest.approx(2 / 3)
    assert scores["per_class"] == {"1": {"n": 3, "correct": 2}}
    assert "perplexity" not in scores


def test_labels_outside_the_vocabulary_are_refused():
    with pytest.raises(runner.RunnerError, match="index its vocabulary"):
        runner.score(np.zeros((1, 2, 4), np.float32), np.array([[0, 4]]))
