"""One tiny model per layer family, in Keras 3, tf_keras and PyTorch, trained a few epochs on the 8x8 digits and saved
as a user would save it: a `.keras` file (Keras 3 or tf_keras) or a `.pt2` program (`torch.export` at batch 1).

The layer coverage table (tests/coverage_table.py) takes each through every step and every export. Each model holds
its family's layers and as little else as a classifier needs (a head of 10 logits), so that a refusal or a failure
names the family. The attention model is the encoder block of tests/models/encoders.py without its LayerNorm and GELU
(those have rows of their own).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FRAMEWORKS = ("keras3", "tf_keras", "torch")
# family -> (what its row says, the input one sample has)
FAMILIES: dict[str, tuple[str, tuple[int, ...]]] = {
    "conv1d": ("Conv1D", (8, 8)),
    "conv2d": ("Conv2D", (8, 8, 1)),
    "depthwise": ("DepthwiseConv2D", (8, 8, 1)),
    "separable": ("SeparableConv2D (depthwise + pointwise in PyTorch)", (8, 8, 1)),
    "dense": ("Dense / Linear", (64,)),
    "embedding": ("Embedding", (64,)),
    "lstm": ("LSTM", (8, 8)),
    "gru": ("GRU", (8, 8)),
    "attention": ("MultiHeadAttention", (8, 8)),
    "layernorm": ("LayerNormalization", (8, 8)),
    "activations": ("GELU, Swish, HardSwish", (64,)),
    "resize": ("UpSampling2D, Resizing (bilinear)", (8, 8, 1)),
    "concatenate": ("Concatenate", (64,)),
    "reshape": ("Reshape, Permute (transpose)", (64,)),
    "pooling": ("MaxPooling2D, AveragePooling2D", (8, 8, 1)),
    "batchnorm": ("BatchNormalization", (8, 8, 1)),
}
TOKENS = 17  # the embedding model reads each digits pixel (0..16) as a token


def input_shape(framework: str, family: str) -> tuple[int, ...]:
    """One sample's input: images are NCHW (1, 8, 8) in PyTorch, NHWC (8, 8, 1) in Keras."""
    shape = FAMILIES[family][1]
    return (1, 8, 8) if framework == "torch" and len(shape) == 3 else shape


def digits(framework: str, family: str, train: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) to train `family`'s model on: the digits as edgepress fits them to its input ([0, 1] floats), or, for
    the embedding model, the pixel values 0..16 as token ids."""
    from edgepress.models.datasets import load_dataset

    data = load_dataset("digits", test_size=60)
    shape = input_shape(framework, family)
    x = data.fit_to(shape).x_train[:train]
    if family == "embedding":
        x = np.rint(x * 16)
    return x.astype(np.float32), data.y_train[:train]


def token_data(path: Path) -> Path:
    """An npz of the digits as token ids (what the embedding model reads), for a recipe's `data: {dataset: npz}`."""
    from edgepress.models.datasets import load_dataset

    data = load_dataset("digits", test_size=60)
    x = np.concatenate([data.x_train, data.x_test]).reshape(-1, 64)
    np.savez(path, x=np.rint(x * 16).astype(np.float32), y=np.concatenate([data.y_train, data.y_test]))
    return path


# -- Keras 3 and tf_keras: the same layers through either module -----------------------------------------------


def _keras_model(k, family: str):
    layers = k.layers
    shape = FAMILIES[family][1]
    inputs = k.Input(shape, dtype="int32" if family == "embedding" else "float32", name="input")
    x = inputs
    if family == "conv1d":
        x = layers.Conv1D(16, 3, padding="same", activation="relu", name="conv")(x)
        x = layers.GlobalAveragePooling1D(name="pool")(x)
    elif family == "conv2d":
        x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv")(x)
        x = layers.GlobalAveragePooling2D(name="pool")(x)
    elif family == "depthwise":
        x = layers.Conv2D(8, 1, activation="relu", name="expand")(x)
        x = layers.DepthwiseConv2D(3, padding="same", activation="relu", name="depthwise")(x)
        x = layers.GlobalAveragePooling2D(name="pool")(x)
    elif family == "separable":
        x = layers.Conv2D(8, 1, activation="relu", name="expand")(x)
        x = layers.SeparableConv2D(16, 3, padding="same", activation="relu", name="separable")(x)
        x = layers.GlobalAveragePooling2D(name="pool")(x)
    elif family == "dense":
        x = layers.Dense(32, activation="relu", name="hidden")(x)
    elif family == "embedding":
        x = layers.GlobalAveragePooling1D(name="pool")(layers.Embedding(TOKENS, 8, name="embedding")(x))
    elif family == "lstm":
        x = layers.LSTM(16, name="lstm")(x)
    elif family == "gru":
        x = layers.GRU(16, name="gru")(x)
    elif family == "attention":
        x = layers.Dense(16, name="embed")(x)
        x = layers.Add(name="residual")([x, layers.MultiHeadAttention(2, 8, name="mha")(x, x)])
        x = layers.GlobalAveragePooling1D(name="pool")(x)
    elif family == "layernorm":
        x = layers.LayerNormalization(name="norm")(layers.Dense(16, name="embed")(x))
        x = layers.GlobalAveragePooling1D(name="pool")(x)
    elif family == "activations":
        x = layers.Dense(32, activation="gelu", name="gelu")(x)
        x = layers.Dense(32, activation="swish", name="swish")(x)
        if hasattr(k.activations, "hard_swish"):
            x = layers.Dense(32, activation="hard_swish", name="hard_swish")(x)
        else:  # tf_keras has no hard_swish: x * relu6(x + 3) / 6, in layers
            x = layers.Dense(32, name="hard_swish")(x)
            gate = layers.ReLU(max_value=1.0, name="hard_sigmoid")(layers.Rescaling(1 / 6, offset=0.5, name="scale")(x))
            x = layers.Multiply(name="gated")([x, gate])
    elif family == "resize":
        x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(x)
        x = layers.UpSampling2D(2, name="upsample")(x)
        x = layers.Resizing(12, 12, interpolation="bilinear", name="resize")(x)
        x = layers.GlobalAveragePooling2D(name="pool")(x)
    elif family == "concatenate":
        a = layers.Dense(16, activation="relu", name="left")(x)
        b = layers.Dense(16, activation="relu", name="right")(x)
        x = layers.Concatenate(name="concat")([a, b])
    elif family == "reshape":
        x = layers.Reshape((8, 8), name="reshape")(layers.Dense(64, activation="relu", name="hidden")(x))
        x = layers.Flatten(name="flatten")(layers.Permute((2, 1), name="transpose")(x))
    elif family == "pooling":
        x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(x)
        x = layers.AveragePooling2D(2, name="avgpool")(layers.MaxPooling2D(2, name="maxpool")(x))
        x = layers.Flatten(name="flatten")(x)
    elif family == "batchnorm":
        x = layers.Conv2D(8, 3, padding="same", name="conv")(x)
        x = layers.ReLU(name="relu")(layers.BatchNormalization(name="bn")(x))
        x = layers.GlobalAveragePooling2D(name="pool")(x)
    else:
        raise KeyError(family)
    return k.Model(inputs, layers.Dense(10, name="head")(x), name="model")


def keras_model(framework: str, family: str, path: Path, epochs: int = 3):
    """`family`'s model in Keras 3 (`framework` keras3) or tf_keras, trained and saved as the .keras file `path`."""
    if framework == "keras3":
        import keras as k
    else:
        from edgepress.compat import keras

        k = keras()
    k.utils.set_random_seed(0)
    model = _keras_model(k, family)
    model.compile(k.optimizers.Adam(3e-3), k.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(*digits(framework, family), epochs=epochs, batch_size=32, verbose=0)
    model.save(path)
    return model


# -- PyTorch ---------------------------------------------------------------------------------------------------


def torch_module(family: str):
    """`family`'s model as an nn.Module (untrained), taking what `digits(family)` gives: NCHW images (1, 8, 8),
    rows (8, 8), vectors (64,) or token ids (64,) (`input_shape`)."""
    import torch
    from torch import nn

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(16, 10)
            if family == "conv1d":
                self.conv = nn.Conv1d(8, 16, 3, padding=1)  # the 8 rows as 8 channels of 8 steps
            elif family == "conv2d":
                self.conv = nn.Conv2d(1, 16, 3, padding=1)
            elif family in ("depthwise", "separable"):
                self.expand = nn.Conv2d(1, 16 if family == "depthwise" else 8, 1)
                width = 16 if family == "depthwise" else 8
                self.depthwise = nn.Conv2d(width, width, 3, padding=1, groups=width)
                self.pointwise = nn.Conv2d(8, 16, 1) if family == "separable" else None
            elif family in ("dense", "reshape"):
                self.hidden = nn.Linear(64, 64 if family == "reshape" else 16)
                if family == "reshape":
                    self.head = nn.Linear(64, 10)
            elif family == "embedding":
                self.embedding = nn.Embedding(TOKENS, 16)
            elif family in ("lstm", "gru"):
                self.rnn = (nn.LSTM if family == "lstm" else nn.GRU)(8, 16, batch_first=True)
            elif family in ("attention", "layernorm"):
                self.embed = nn.Linear(8, 16)
                self.inner = (nn.MultiheadAttention(16, 2, batch_first=True) if family == "attention"
                              else nn.LayerNorm(16))
            elif family == "activations":
                self.layers = nn.ModuleList([nn.Linear(64, 16), nn.Linear(16, 16), nn.Linear(16, 16)])
                self.activations = [nn.GELU(), nn.SiLU(), nn.Hardswish()]
            elif family in ("resize", "pooling", "batchnorm"):
                self.conv = nn.Conv2d(1, 16, 3, padding=1)
                self.bn = nn.BatchNorm2d(16) if family == "batchnorm" else None
                if family == "pooling":
                    self.head = nn.Linear(16 * 2 * 2, 10)
            elif family == "concatenate":
                self.left, self.right = nn.Linear(64, 8), nn.Linear(64, 8)
            else:
                raise KeyError(family)

        def forward(self, x):
            relu = torch.relu
            if family == "conv1d":
                x = relu(self.conv(x)).mean(dim=2)
            elif family == "conv2d":
                x = relu(self.conv(x)).mean(dim=(2, 3))
            elif family in ("depthwise", "separable"):
                x = relu(self.depthwise(relu(self.expand(x))))
                x = (relu(self.pointwise(x)) if self.pointwise is not None else x).mean(dim=(2, 3))
            elif family == "dense":
                x = relu(self.hidden(x))
            elif family == "reshape":
                x = relu(self.hidden(x)).reshape(-1, 8, 8).transpose(1, 2).flatten(1)
            elif family == "embedding":
                x = self.embedding(x).mean(dim=1)
            elif family in ("lstm", "gru"):
                x = self.rnn(x)[0][:, -1]
            elif family == "attention":
                x = self.embed(x)
                x = (x + self.inner(x, x, x, need_weights=False)[0]).mean(dim=1)
            elif family == "layernorm":
                x = self.inner(self.embed(x)).mean(dim=1)
            elif family == "activations":
                for layer, activation in zip(self.layers, self.activations, strict=True):
                    x = activation(layer(x))
            elif family == "resize":
                x = nn.functional.interpolate(relu(self.conv(x)), scale_factor=2, mode="nearest")
                x = nn.functional.interpolate(x, size=(12, 12), mode="bilinear", align_corners=False).mean(dim=(2, 3))
            elif family == "pooling":
                x = nn.functional.avg_pool2d(nn.functional.max_pool2d(relu(self.conv(x)), 2), 2).flatten(1)
            elif family == "batchnorm":
                x = relu(self.bn(self.conv(x))).mean(dim=(2, 3))
            elif family == "concatenate":
                x = torch.cat([relu(self.left(x)), relu(self.right(x))], dim=1)
            return self.head(x)

    return Model()


def torch_model(family: str, path: Path, epochs: int = 3):
    """`family`'s PyTorch model, trained and saved with torch.export at batch 1 as the .pt2 file `path`."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    module = torch_module(family)
    x, y = digits("torch", family)
    xt = torch.from_numpy(x.astype(np.int64) if family == "embedding" else x)
    yt = torch.from_numpy(np.asarray(y, np.int64))
    optimizer = torch.optim.Adam(module.parameters(), 3e-3)
    module.train()
    for _ in range(epochs):
        for start in range(0, len(xt), 32):
            optimizer.zero_grad()
            nn.functional.cross_entropy(module(xt[start:start + 32]), yt[start:start + 32]).backward()
            optimizer.step()
    module.eval()
    torch.export.save(torch.export.export(module, (xt[:1],)), str(path))
    return module


def save_model(framework: str, family: str, folder: Path) -> Path:
    """`family`'s model in `framework`, trained and saved in `folder`; its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"model.{'pt2' if framework == 'torch' else 'keras'}"
    if framework == "torch":
        torch_model(family, path)
    else:
        keras_model(framework, family, path)
    return path
