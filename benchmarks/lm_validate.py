"""One candidate language model scored on a validation split of the TRAINING windows (never the test windows): how
benchmarks/lm.py's char_gpt_small was chosen ("## language models" in RESULTS.md lists the runs).

    .venv/bin/python benchmarks/lm_validate.py gru
    .venv/bin/python benchmarks/lm_validate.py gpt width=96 layers=1 heads=4 mlp=320 max_len=128 tie=1
    TRAIN=6000 EPOCHS=2 .venv/bin/python benchmarks/lm_validate.py gpt width=64 layers=2 mlp=128 max_len=128

The first TRAIN windows of python_source (as the recipes take them) are cut into the first 90% to train on and the
last 10% to score; the models train as the recipes train them (batch 64, learning rate 0.003, EPOCHS epochs). Prints
one RESULT line: the candidate, its parameters and its validation perplexity.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import edgepress  # noqa: E402, F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from edgepress.models.datasets import load_python_source  # noqa: E402


def perplexity(logits: np.ndarray, labels: np.ndarray) -> float:
    logits = logits.astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return math.exp(-np.take_along_axis(log_p, labels[..., None].astype(np.int64), -1).mean())


def main() -> None:
    train, epochs = int(os.environ.get("TRAIN", 20000)), int(os.environ.get("EPOCHS", 10))
    x, y = load_python_source()
    cut = train - train // 10
    x_fit, y_fit, x_val, y_val = x[:cut], y[:cut], x[cut:train], y[cut:train]
    kind, options = sys.argv[1], dict(a.split("=") for a in sys.argv[2:])
    started = time.time()
    if kind == "gru":
        from edgepress.models import training, zoo

        model = zoo.build("char_gru", 97)
        training.fit(model, x_fit, y_fit, epochs, 64, 0.003, seed=0)
        params, logits = model.count_params(), training.predict(model, x_val)
    else:
        import torch

        from edgepress.models.char_gpt import build_char_gpt, train_char_gpt

        model = build_char_gpt(vocab=97, **{k: int(v) for k, v in options.items()})
        train_char_gpt(model, x_fit, y_fit, epochs, 64, 0.003)
        params = sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            logits = model(torch.from_numpy(x_val.astype(np.int64))).numpy()
    print(f"RESULT {kind} {options} train={cut} validation={len(x_val)} epochs={epochs} params={params:,} "
          f"validation_perplexity={perplexity(logits, y_val):.3f} minutes={(time.time() - started) / 60:.1f}",
          flush=True)


if __name__ == "__main__":
    main()
