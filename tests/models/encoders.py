"""Tiny attention encoders on the 8x8 digits (8 rows as 8 tokens of 8 features), one per framework, written by the
tests as a user would save them: a Keras 3 `.keras` file, a tf_keras `.keras` file, a PyTorch `.pt2` program
exported with `torch.export` at batch 1 (its batch fixed, as `torch.export.export(model, (x[:1],))` gives).

Each has 2 heads of width 8 over a residual width of 16, LayerNorm before attention and MLP, an exact-GELU MLP of 32
units, and a mean over tokens into 10 classes; each is trained for a few epochs so that it predicts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

WIDTH, HEADS, HEAD_DIM, MLP = 16, 2, 8, 32


def digits_rows(train: int = 300):
    """(x_train, y_train) of the digits as (n, 8, 8) rows, scaled to [0, 1] as edgepress's digits are."""
    from edgepress.models.datasets import load_dataset

    data = load_dataset("digits", test_size=60).fit_to((8, 8))
    return data.x_train[:train], data.y_train[:train]


def _keras_encoder(keras, name: str):
    inputs = keras.Input((8, 8))
    x = keras.layers.Dense(WIDTH, name="embed")(inputs)
    h = keras.layers.LayerNormalization(name="ln1")(x)
    h = keras.layers.MultiHeadAttention(HEADS, HEAD_DIM, name="mha")(h, h)
    x = keras.layers.Add(name="res1")([x, h])
    h = keras.layers.LayerNormalization(name="ln2")(x)
    h = keras.layers.Dense(MLP, activation="gelu", name="mlp_up")(h)
    h = keras.layers.Dense(WIDTH, name="mlp_down")(h)
    x = keras.layers.Add(name="res2")([x, h])
    outputs = keras.layers.Dense(10, name="head")(keras.layers.GlobalAveragePooling1D(name="pool")(x))
    return keras.Model(inputs, outputs, name=name)


def _fit(keras, model, x, y, epochs: int) -> None:
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)


def keras3_encoder(path: Path, epochs: int = 15):
    """The encoder in Keras 3 (`import keras`), saved as a Keras 3 .keras file."""
    import keras

    keras.utils.set_random_seed(0)
    model = _keras_encoder(keras, "k3_encoder")
    _fit(keras, model, *digits_rows(), epochs)
    model.save(path)
    return model


def tf_keras_encoder(path: Path, epochs: int = 15):
    """The same encoder in tf_keras (Keras 2), saved as a tf_keras .keras file."""
    from edgepress.compat import keras

    tf_keras = keras()
    tf_keras.utils.set_random_seed(0)
    model = _keras_encoder(tf_keras, "tfk_encoder")
    _fit(tf_keras, model, *digits_rows(), epochs)
    model.save(path)
    return model


def torch_encoder_module(epochs: int = 15, blocks: int = 1):
    """nn.TransformerEncoder (GELU, norm_first, batch_first; `blocks` layers) between a token embedding and a
    mean-pooled head, trained on the digits rows."""
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(8, WIDTH)
            layer = nn.TransformerEncoderLayer(WIDTH, HEADS, MLP, dropout=0.0, activation="gelu", batch_first=True,
                                               norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
            self.head = nn.Linear(WIDTH, 10)

        def forward(self, x):
            return self.head(self.encoder(self.embed(x)).mean(dim=1))

    module = Encoder()
    x, y = digits_rows()
    xt, yt = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(np.asarray(y, np.int64))
    optimizer = torch.optim.Adam(module.parameters(), 3e-3)
    for _ in range(epochs):
        for start in range(0, len(xt), 32):
            optimizer.zero_grad()
            nn.functional.cross_entropy(module(xt[start:start + 32]), yt[start:start + 32]).backward()
            optimizer.step()
    return module.eval()


def torch_encoder(path: Path, epochs: int = 15):
    """The PyTorch encoder saved with torch.export at batch 1 (a fixed batch), as users often export it."""
    import torch

    module = torch_encoder_module(epochs)
    program = torch.export.export(module, (torch.zeros(1, 8, 8),))
    torch.export.save(program, str(path))
    return module
