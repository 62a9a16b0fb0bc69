"""An edgepress decoder ONNX file as an onnxruntime-genai model folder: the file and the genai_config.json beside it.

    folder = genai_folder(Path("runs/x/artifacts/gpt_int4_weight.onnx"), Path("gpt-genai"))
    model = onnxruntime_genai.Model(str(folder))     # then og.Generator: append_tokens, generate_next_token

Everything the config says is read from the ONNX file itself (its past/present names and shapes, its logits'
vocabulary, the cache length edgepress recorded in its metadata), so any decoder .onnx edgepress wrote becomes a
folder onnxruntime-genai loads, greedy search. A generator takes token ids directly (`append_tokens`); with a
`tokenizer` (a tokenizer.json's content: edgepress.deploy.tokenizer.char_tokenizer() for python_source's character
models, the default when the file's vocabulary is python_source's), genai also encodes and decodes text itself
(`og.Tokenizer(model)`).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from edgepress import files
from edgepress.deploy.tokenizer import UNKNOWN, char_tokenizer, is_python_source
from edgepress.errors import EdgepressError

CONFIG = "genai_config.json"


def genai_config(onnx_path: Path, filename: str = "model.onnx") -> dict:
    """The genai_config.json of the decoder .onnx file at `onnx_path` (greedy search up to its cache length)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inputs = {i.name: i for i in model.graph.input}
    pasts = sorted(int(m.group(1)) for name in inputs if (m := re.fullmatch(r"past_key_values\.(\d+)\.key", name)))
    logits = next((o for o in model.graph.output if o.name == "logits"), None)
    if not pasts or "input_ids" not in inputs or logits is None:
        raise EdgepressError(f"{onnx_path} is not a decoder edgepress exported (input_ids, past_key_values.*.key, "
                             "logits): onnxruntime-genai runs decoders with past/present key-values.")
    dims = [d.dim_value for d in inputs["past_key_values.0.key"].type.tensor_type.shape.dim]
    kv_heads, head_dim = dims[1], dims[3]
    vocab = logits.type.tensor_type.shape.dim[-1].dim_value
    meta = {p.key: p.value for p in model.metadata_props}
    context = int(meta.get("edgepress.lm.cache_len", 0))
    if not (kv_heads and head_dim and vocab and context):
        raise EdgepressError(f"{onnx_path} does not record its cache length, heads and vocabulary; export it again "
                             "with edgepress (onnx, a decoder model).")
    return {
        "model": {
            "type": "llama",  # genai's plain decoder-only loop: input_ids and past/present key-values
            "context_length": context, "vocab_size": vocab,
            # Character ids have no beginning or end of text: 0 (an unknown character) is never emitted greedily
            # by a trained model, and generation stops at max_length.
            "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0,
            "decoder": {
                "filename": filename, "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "head_size": head_dim, "hidden_size": kv_heads * head_dim, "num_attention_heads": kv_heads,
                "num_key_value_heads": kv_heads, "num_hidden_layers": len(pasts),
                "inputs": {"input_ids": "input_ids", "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "num_beams": 1, "num_return_sequences": 1, "max_length": context,
                   "min_length": 0, "past_present_share_buffer": False, "repetition_penalty": 1.0, "temperature": 1.0,
                   "top_k": 1, "top_p": 1.0},
    }


def genai_folder(onnx_path: Path, folder: Path, tokenizer: dict | None = None) -> Path:
    """Write `folder` (made atomically) with a copy of `onnx_path` as model.onnx, its genai_config.json, and the
    tokenizer.json `tokenizer` (default: python_source's characters for a file of that vocabulary; none otherwise)
    with the tokenizer_config.json genai reads beside it."""
    config = genai_config(onnx_path)
    if tokenizer is None and is_python_source(config["model"]["vocab_size"]):
        tokenizer = char_tokenizer()
    with files.atomic_path(folder) as tmp:
        tmp.mkdir()
        shutil.copyfile(onnx_path, tmp / "model.onnx")
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if tokenizer is not None:
            (tmp / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False, indent=1) + "\n")
            # genai's tokenizer reads the class here; a "fast" tokenizer is whatever tokenizer.json describes.
            (tmp / "tokenizer_config.json").write_text(json.dumps(
                {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": UNKNOWN}, indent=2) + "\n")
    return Path(folder)
