"""An edgepress decoder .tflite as a LiteRT-LM bundle (.litertlm): the file as it is, a tokenizer.json, LLM metadata.

    bundle = litertlm_bundle(Path("runs/x/artifacts/gpt_fp32.tflite"), Path("gpt.litertlm"))
    engine = litert_lm.Engine(str(bundle))        # then create_session(apply_prompt_template=False), run_prefill

LiteRT-LM finds a model's parts by name: signatures `prefill_*` and `decode`, inputs `tokens` and `input_pos`, the
per-layer caches `kv_cache_k_{i}` / `kv_cache_v_{i}`, the output `logits`: the names of edgepress's TFLite decoder
exports (edgepress.deploy.decoder), so the file goes into the bundle unchanged. litert-lm-builder (the `lm` extra)
writes the bundle: the file as the prefill/decode model, a Hugging Face tokenizer.json (python_source's characters,
edgepress.deploy.tokenizer, for a model of that vocabulary) and LlmMetadata: no start token (a character model has
none, and LiteRT-LM puts the start token before every prompt when one is set), id 0 as the stop token (an unknown
character, which greedy decoding of a trained model does not emit) and the file's cache length as the token limit.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from edgepress import files
from edgepress.deploy.tokenizer import char_tokenizer, is_python_source
from edgepress.errors import EdgepressError, first_line

SUFFIX = ".litertlm"


def decoder_facts(tflite_path: Path) -> dict:
    """The cache length, layers and vocabulary of an edgepress TFLite decoder, refused when LiteRT-LM cannot find its
    parts (no prefill_N / decode signatures, or the single `kv` cache of files edgepress wrote before)."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(tflite_path))
        signatures = interpreter.get_signature_list()
    except (ValueError, RuntimeError) as e:
        raise EdgepressError(f"{tflite_path}: LiteRT could not load it ({first_line(e)}).") from None
    prefills = [name for name in signatures if name.startswith("prefill_")]
    inputs = set(signatures.get("decode", {}).get("inputs", []))
    layers = sorted(name for name in inputs if name.startswith("kv_cache_k_"))
    if not prefills or not layers or not {"tokens", "input_pos"} <= inputs:
        old = " (its single `kv` cache is the layout of an older edgepress: export it again)" if "kv" in inputs else ""
        raise EdgepressError(
            f"{tflite_path} is not a decoder LiteRT-LM can run{old}: it needs prefill_N and decode signatures with "
            "tokens, input_pos and per-layer kv_cache_k_{i} / kv_cache_v_{i} inputs, as edgepress's TFLite decoder "
            "exports have."
        )
    decode = interpreter.get_signature_runner("decode")
    return {"cache_len": int(decode.get_input_details()[layers[0]]["shape"][2]), "layers": len(layers),
            "vocab_size": int(decode.get_output_details()["logits"]["shape"][-1])}


def litertlm_bundle(tflite_path: Path, out: Path, tokenizer: dict | None = None) -> Path:
    """Write the .litertlm bundle `out` (atomically) of the edgepress TFLite decoder at `tflite_path` with the
    tokenizer.json `tokenizer` (default: python_source's characters, for a model of that vocabulary)."""
    try:
        from litert_lm_builder import litertlm_builder, litertlm_core
    except ImportError:
        raise EdgepressError("A .litertlm bundle is written by litert-lm-builder, which is not installed: "
                             "pip install 'edgepress[lm]'.") from None
    facts = decoder_facts(Path(tflite_path))
    if tokenizer is None:
        if not is_python_source(facts["vocab_size"]):
            raise EdgepressError(f"{tflite_path} has a vocabulary of {facts['vocab_size']} tokens, not python_source's "
                                 "characters: give its tokenizer.json (edgepress bundle --tokenizer).")
        tokenizer = char_tokenizer()
    with tempfile.TemporaryDirectory(prefix="edgepress-litertlm-") as work:
        tokenizer_path, metadata_path = Path(work) / "tokenizer.json", Path(work) / "llm_metadata.pbtxt"
        tokenizer_path.write_text(json.dumps(tokenizer, ensure_ascii=False))
        metadata_path.write_text("stop_tokens { token_ids { ids: 0 } }\n"
                                 f"max_num_tokens: {facts['cache_len']}\n"
                                 "llm_model_type { generic_model {} }\n")
        builder = litertlm_builder.LitertLmFileBuilder()
        builder.add_tflite_model(str(tflite_path), litertlm_builder.TfLiteModelType.PREFILL_DECODE)
        builder.add_hf_tokenizer(str(tokenizer_path))
        builder.add_llm_metadata(str(metadata_path))
        with files.atomic_path(out) as tmp, litertlm_core.open_file(str(tmp), "wb") as stream:
            builder.build(stream)
    return Path(out)
