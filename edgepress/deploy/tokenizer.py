"""A character-level tokenizer.json (Hugging Face tokenizers' format) for edgepress's character LMs.

    Path("tokenizer.json").write_text(json.dumps(char_tokenizer()))

LM runtimes read text through a tokenizer.json beside the model (onnxruntime-genai, LiteRT-LM's bundles). edgepress's
character models (python_source: id 0 an unknown character, ids 1.. the vocabulary's characters in order) become
one: a byte-level BPE model without merges (GPT-2's form, the one onnxruntime-genai's tokenizer implements: each
byte shown as a printable character, a space as 'Ġ', a newline as 'Ċ') splits any text into its bytes and looks each
up; a byte outside the vocabulary is the unknown token, id 0 (a character of several UTF-8 bytes outside it gives
one 0 per byte where python_source gives one 0). The ByteLevel decoder turns tokens back into text.
"""

from __future__ import annotations

UNKNOWN = "<unk>"


def is_python_source(vocab_size: int) -> bool:
    """Whether a model's vocabulary is python_source's characters (its size: the characters and the unknown id)."""
    from edgepress.models.datasets import PYTHON_SOURCE_VOCAB

    return vocab_size == len(PYTHON_SOURCE_VOCAB) + 1


def char_tokenizer(vocab: str | None = None) -> dict:
    """The tokenizer.json of a character vocabulary (default: python_source's), id 0 the unknown character."""
    if vocab is None:
        from edgepress.models.datasets import PYTHON_SOURCE_VOCAB

        vocab = PYTHON_SOURCE_VOCAB
    if any(ord(c) > 127 for c in vocab):
        raise ValueError("a character tokenizer.json is written for ASCII vocabularies (one byte per character)")
    shown = _byte_characters()
    ids = {UNKNOWN: 0, **{shown[ord(c)]: i + 1 for i, c in enumerate(vocab)}}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": 0, "content": UNKNOWN, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": None,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": UNKNOWN, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": ids, "merges": []},
    }


def _byte_characters() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (tokenizers' ByteLevel): printable Latin-1 bytes stand for
    themselves, the others for the characters from U+0100 on, in order."""
    shown = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in shown]
    return {**{b: chr(b) for b in shown}, **{b: chr(256 + i) for i, b in enumerate(others)}}
