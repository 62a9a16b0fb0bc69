"""structured_prune on decoder LMs: whole attention heads (kv groups with grouped-query attention) and MLP units go,
the same number in every block, ranked by a measured importance; removal equals zeroing; the smaller model is written
back as a decoder directory (char_gpt's config.json, or a Llama's that transformers reads)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgepress.compress.structured_prune import (  # noqa: E402
    StructuredPruneConfig,
    check_decoder,
    decoder_counts,
    prune_decoder,
)
from edgepress.errors import EdgepressError  # noqa: E402
from edgepress.models.char_gpt import build_char_gpt  # noqa: E402
from edgepress.models.decoder import DecoderSource  # noqa: E402
from edgepress.models.decoder_prune import Keep, choose, pruned, zeroed  # noqa: E402
from edgepress.models.loading import open_model  # noqa: E402

TOKENS = np.random.default_rng(0).integers(0, 97, (8, 24))


def _windows(n=64, t=24, vocab=97):
    x = np.random.default_rng(1).integers(0, vocab, (n, t + 1))
    return x[:, :-1].astype(np.float32), x[:, 1:]


def _logits(module, tokens=TOKENS):
    with torch.no_grad():
        return module(torch.from_numpy(tokens)).numpy()


def _llama(path, **overrides):
    transformers = pytest.importorskip("transformers")
    settings = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**settings, **overrides})).save_pretrained(path)
    return open_model(path)


@pytest.mark.parametrize("criterion", ["l1", "l2", "taylor"])
def test_removing_heads_and_units_of_char_gpt_equals_zeroing_them(criterion):
    gpt = build_char_gpt(width=32, layers=2, heads=4, max_len=64, mlp=40, seed=2)
    x, y = _windows()
    keep = choose(gpt, *decoder_counts(gpt, StructuredPruneConfig(layers={"attention": 0.5, "mlp": 0.25})), criterion,
                  x=x, y=y)
    smaller = pruned(gpt, keep)
    assert smaller.config.heads == 2 and smaller.config.head_dim == 8 and smaller.config.hidden == 30
    assert smaller.blocks[0].qkv.weight.shape == (48, 32) and smaller.blocks[1].down.weight.shape == (32, 30)
    np.testing.assert_allclose(_logits(smaller), _logits(zeroed(gpt, keep)), atol=1e-5)
    assert np.abs(_logits(smaller) - _logits(gpt)).max() > 1e-3  # something was removed
    # The KV-cache forms follow: a prefill then a decode against the fixed cache give the whole sequence's logits.
    kv = torch.zeros((4, 1, 2, 32, 8))
    tokens = torch.from_numpy(TOKENS[:1])
    with torch.no_grad():
        first, kv = smaller.step_static(tokens[:, :20], torch.arange(20), kv)
        last, _ = smaller.step_static(tokens[:, 20:21], torch.tensor([20]), kv)
    np.testing.assert_allclose(last.numpy()[0, 0], _logits(smaller, TOKENS[:1, :21])[0, 20], atol=1e-5)


def test_removing_kv_groups_of_a_llama_equals_zeroing_them_and_transformers_reads_the_result(tmp_path):
    transformers = pytest.importorskip("transformers")
    source = _llama(tmp_path / "llama")
    x, y = _windows()
    keep = choose(source.module, *decoder_counts(source.module, StructuredPruneConfig(ratio=0.5)), "taylor", x=x, y=y)
    assert all(len(g) == 1 for g in keep.groups) and all(len(u) == 24 for u in keep.units)
    smaller = pruned(source.module, keep)
    assert (smaller.config.heads, smaller.config.kv_heads, smaller.config.head_dim) == (2, 1, 8)
    np.testing.assert_allclose(_logits(smaller), _logits(zeroed(source.module, keep)), atol=1e-5)
    DecoderSource(smaller, window=24).write(tmp_path / "pruned")
    settings = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert (settings["num_attention_heads"], settings["num_key_value_heads"], settings["head_dim"],
            settings["intermediate_size"]) == (2, 1, 8, 24)
    reference = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    with torch.no_grad():
        expected = reference(torch.from_numpy(TOKENS)).logits.numpy()
    np.testing.assert_allclose(_logits(open_model(tmp_path / "pruned").module), expected, atol=1e-4)


def test_taylor_ranks_by_what_the_loss_measures():
    gpt = build_char_gpt(width=32, layers=1, heads=4, max_len=64, mlp=16, seed=0)
    with torch.no_grad():  # head 2 and units 3, 5 contribute nothing: the loss cannot miss them
        gpt.blocks[0].proj.weight[:, 16:24] = 0
        gpt.blocks[0].down.weight[:, [3, 5]] = 0
        gpt.blocks[0].proj.weight[:, 0:8] *= 0.01  # small but alive
    x, y = _windows()
    keep = choose(gpt, keep_groups=3, keep_units=14, criterion="taylor", x=x, y=y)
    assert keep == Keep(groups=((0, 1, 3),), units=(tuple(u for u in range(16) if u not in (3, 5)),))


def test_round_to_counts_a_head_as_its_width():
    gpt = build_char_gpt(width=64, layers=1, heads=8, max_len=64, mlp=100)

    def counts(heads, mlp, round_to=None):
        return decoder_counts(gpt, StructuredPruneConfig(layers={"attention": heads, "mlp": mlp}, round_to=round_to))

    assert counts(0.5, 0.5) == (4, 50)
    assert counts(0.5, 0.5, round_to=16) == (4, 64)  # heads of 8: 4 x 8 = 32 columns already a multiple
    assert counts(0.7, 0.1, round_to=24) == (3, 96)  # 2 heads (16 columns) rounded up to 3 (24)
    assert counts(0.3, 0.0, round_to=32) == (8, 100)  # kept whole: not above the original


def test_the_decoder_prune_step_fine_tunes_and_distills():
    gpt = build_char_gpt(width=32, layers=1, heads=4, max_len=64, seed=1)
    x, y = _windows(n=32)
    before = _logits(gpt)
    for distill in (False, True):
        config = StructuredPruneConfig(ratio=0.5, criterion="taylor", fine_tune_epochs=1, batch_size=16,
                                       distill=distill)
        check_decoder(gpt, config)
        smaller = prune_decoder(gpt, x, y, config)
        assert smaller.config.heads == 2 and smaller.config.hidden == 32
        assert np.abs(_logits(smaller) - _logits(zeroed(gpt, choose(gpt, 2, 32, "taylor", x=x, y=y)))).max() > 0
    np.testing.assert_array_equal(_logits(gpt), before)  # the unpruned model is left as it was


@pytest.mark.parametrize("options, message", [
    (dict(ratio=1.0), "removes all 4 attention heads"),
    (dict(layers={"blocks.0": 0.5}), "layers: {attention: r, mlp: r}"),
    (dict(schedule="gradual", rounds=2, fine_tune_epochs=2), "pruned oneshot"),
])
def test_requests_a_decoder_cannot_have_are_refused(options, message):
    gpt = build_char_gpt(width=32, layers=1, heads=4, max_len=64)
    with pytest.raises(EdgepressError, match=message.replace("{", r"\{").replace("}", r"\}")):
        check_decoder(gpt, StructuredPruneConfig(**options))
