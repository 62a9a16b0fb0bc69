"""char_gpt, the zoo's decoder LM: its cached forms compute what the whole-sequence one does, it learns, and its
model directory (config.json + model.safetensors) reads back the same model."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgepress.errors import EdgepressError  # noqa: E402
from edgepress.models.char_gpt import build_char_gpt, train_char_gpt  # noqa: E402
from edgepress.models.decoder import DecoderSource  # noqa: E402
from edgepress.models.loading import open_model  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return build_char_gpt(vocab=97, width=32, layers=2, heads=2, max_len=64).eval()


def test_static_cache_prefill_then_decode_matches_the_whole_sequence(model):
    tokens = torch.randint(0, 97, (1, 24))
    with torch.no_grad():
        full = model(tokens)
        c = model.config
        kv = torch.zeros(2 * c.layers, 1, c.heads, 40, c.head_dim)
        logits, kv = model.step_static(tokens[:, :16].int(), torch.arange(16, dtype=torch.int32), kv)
        steps = [logits]
        for i in range(16, 24):
            logits, kv = model.step_static(tokens[:, i : i + 1].int(), torch.tensor([i], dtype=torch.int32), kv)
            steps.append(logits)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
    assert kv[:, :, :, 24:].abs().max() == 0  # nothing was written past the tokens given


def test_growing_cache_matches_the_whole_sequence(model):
    tokens = torch.randint(0, 97, (1, 20))
    c = model.config
    with torch.no_grad():
        full = model(tokens)
        empty = [(torch.zeros(1, c.heads, 0, c.head_dim),) * 2 for _ in range(c.layers)]
        first, presents = model.step_growing(tokens[:, :12], empty)
        rest = []
        for i in range(12, 20):
            logits, presents = model.step_growing(tokens[:, i : i + 1], presents)
            rest.append(logits)
    assert presents[0][0].shape[2] == 20
    assert torch.allclose(torch.cat([first, *rest], dim=1), full, atol=1e-5)


def test_training_lowers_the_loss_and_distillation_runs():
    rng = np.random.default_rng(0)
    # A text with structure: a repeated phrase, so a few steps must learn something.
    text = np.tile(rng.integers(1, 97, 16), 200)
    x = np.stack([text[i : i + 32] for i in range(0, 3000, 7)]).astype(np.float32)
    y = np.stack([text[i + 1 : i + 33] for i in range(0, 3000, 7)])
    losses = []
    student = build_char_gpt(width=32, layers=1, heads=2, max_len=64)
    train_char_gpt(student, x, y, epochs=2, batch_size=32, learning_rate=1e-2,
                   on_epoch=lambda e, n, logs: losses.append(logs["loss"]))
    assert losses[-1] < losses[0] * 0.5
    distilled = build_char_gpt(width=16, layers=1, heads=2, max_len=64)

    def accuracy() -> float:
        with torch.no_grad():
            return float((distilled(torch.from_numpy(x).long()).argmax(-1) == torch.from_numpy(y)).float().mean())

    untrained = accuracy()
    train_char_gpt(distilled, x, y, epochs=2, batch_size=32, learning_rate=1e-2, teacher=student)
    assert untrained < 0.05 and accuracy() > 0.3


def test_model_directory_round_trip(model, tmp_path):
    source = DecoderSource(model, window=32)
    source.write(tmp_path / "gpt")
    assert json.loads((tmp_path / "gpt" / "config.json").read_text())["edgepress_decoder"] == "char_gpt"
    again = open_model(tmp_path / "gpt")
    assert isinstance(again, DecoderSource) and again.input_shape == (None, 32) and again.max_len == 64
    x = np.random.default_rng(1).integers(0, 97, (3, 32)).astype(np.float32)
    np.testing.assert_allclose(again.predict(x), source.predict(x), atol=1e-6)
    assert again.stats()["params"] == source.stats()["params"] > 0


def test_a_broken_model_directory_is_refused(model, tmp_path):
    DecoderSource(model, window=32).write(tmp_path / "gpt")
    settings = json.loads((tmp_path / "gpt" / "config.json").read_text())
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({**settings, "width": 48}))
    with pytest.raises(EdgepressError, match="Cannot load the decoder"):
        open_model(tmp_path / "gpt")
