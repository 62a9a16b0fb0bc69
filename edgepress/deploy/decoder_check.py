"""A decoder LM file checked against its model: what every decoder export records under `check`.

    check = check_decoder(source, Path("gpt_fp32.tflite"), x_test[:4], prompt=16)

Held-out windows are teacher-forced through the file's prefill and decode (the on-device runner's own code) and
compared with the model's logits: top-1 agreement, max abs logit difference, the per-token log-likelihood
difference (file minus model, nats) and how many tokens of a greedy continuation agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepress.compat import quiet
from edgepress.deploy import runner

# Windows each file is checked on (teacher-forced token by token: a few are enough to catch a wrong cache).
CHECK_WINDOWS = 4
# Tokens of the greedy continuation compared between the file and its model.
GREEDY_TOKENS = 16


def check_decoder(source, path: Path, x: np.ndarray, prompt: int) -> dict:
    """`path` against its model `source` on windows `x` (token ids): teacher-forced logits through the file's
    prefill and decode, and a greedy continuation of the first window's prompt."""
    windows = np.asarray(x)[:CHECK_WINDOWS].astype(np.int64)
    expected = source.predict(windows.astype(np.float32))
    with quiet():
        model = runner.open_decoder(str(path))
        got = np.stack([runner.teacher_forced(model, w, prompt) for w in windows])
        room = min(GREEDY_TOKENS, model.cache_len - prompt)
        from_file = runner.greedy(model, windows[0, :prompt], room)
    from_model = greedy_reference(source, windows[0, :prompt], room)
    agree = next((i for i, (a, b) in enumerate(zip(from_file, from_model, strict=True)) if a != b), room)
    nll_file, nll_model = _log_likelihoods(got, windows), _log_likelihoods(expected, windows)
    return {
        "samples": len(windows),
        "top1_agreement": float(np.mean(np.argmax(got, -1) == np.argmax(expected, -1))),
        "max_abs_diff": float(np.max(np.abs(got - expected))),
        "log_likelihood_diff": float(np.mean(nll_model - nll_file)),  # nats per token, file minus model
        "log_likelihood_abs_diff": float(np.mean(np.abs(nll_model - nll_file))),
        "greedy_tokens": room,
        "greedy_agree_tokens": int(agree),
    }


def greedy_reference(source, prompt_tokens: np.ndarray, count: int) -> list[int]:
    """`count` tokens the model itself generates greedily after `prompt_tokens` (whole sequence each time)."""
    tokens = list(np.asarray(prompt_tokens).astype(int))
    out = []
    for _ in range(count):
        logits = source.predict(np.asarray([tokens], dtype=np.float32))[0, -1]
        out.append(int(np.argmax(logits)))
        tokens.append(out[-1])
    return out


def _log_likelihoods(logits: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """-log p(next token) at every position but the last, per window (the next token is the window's own)."""
    z = logits[:, :-1].astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(log_p, windows[:, 1:, None], axis=-1)[..., 0]


def decoder_signature(path: Path) -> tuple[list, list]:
    """The decode signature's inputs and outputs (TFLite), or the graph's (ONNX), for the manifest."""
    from edgepress.artifact import TensorInfo
    from edgepress.deploy.signature import signature

    if Path(path).suffix == ".onnx":
        return signature(path)
    from ai_edge_litert.interpreter import Interpreter

    decode = Interpreter(model_path=str(path)).get_signature_runner("decode")

    def infos(details: dict) -> list:
        return [TensorInfo(name=f"decode:{name}", shape=[int(s) for s in d["shape"]], dtype=np.dtype(d["dtype"]).name)
                for name, d in details.items()]

    return infos(decode.get_input_details()), infos(decode.get_output_details())
