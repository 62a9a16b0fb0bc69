"""The model zoo: small reference architectures with a documented train function.

`seed_cnn` and `seed_mlp` are the design brief's seed models. `mobilenet_v2` is keras.applications'
MobileNetV2 (width 0.35, 32x32x3, untrained). `seed_lstm` reads an image row by row,
`char_gru` is a character language model, `raw_mlp` is a raw tf.Module (no Keras) and `torch_cnn` a
PyTorch CNN that comes in as a torch.export program. All output logits. `train(name, data)` trains any of them;
`raw_mlp` and `torch_cnn` come back as the native model (a tf.Module, a torch module), which the run
saves as a SavedModel or a .pt2 file with the entry's `save`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgepress.errors import EdgepressError
from edgepress.models import training
from edgepress.models.datasets import Dataset


def seed_cnn(input_shape: tuple[int, ...] = (28, 28, 1), num_classes: int = 10):
    """Conv2D 32 -> MaxPool -> Conv2D 64 -> MaxPool -> Conv2D 64 -> Flatten -> Dense 64 -> Dense (logits)."""
    layers = _keras().layers
    return _keras().Sequential(
        [
            layers.Input(input_shape),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, activation="relu"),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dense(num_classes),
        ],
        name="seed_cnn",
    )


def seed_mlp(input_shape: tuple[int, ...] = (784,), num_classes: int = 10):
    """Dense 64 -> Dense 64 -> Dense (logits) on flattened 28x28 images."""
    layers = _keras().layers
    return _keras().Sequential(
        [
            layers.Input(input_shape),
            layers.Dense(64, activation="relu"),
            layers.Dense(64, activation="relu"),
            layers.Dense(num_classes),
        ],
        name="seed_mlp",
    )


def seed_lstm(input_shape: tuple[int, ...] = (28, 28), num_classes: int = 10):
    """LSTM 64 over the rows of an image (28 steps of 28 features) -> Dense (logits) on its last output.

    TFLite converts the Keras LSTM to its fused UNIDIRECTIONAL_SEQUENCE_LSTM op only with a fixed batch
    size: export it with `batch_size: 1` (recipes/mnist_lstm.yaml).
    """
    layers = _keras().layers
    return _keras().Sequential(
        [layers.Input(input_shape), layers.LSTM(64), layers.Dense(num_classes)],
        name="seed_lstm",
    )


def char_gru(input_shape: tuple[int, ...] = (64,), num_classes: int = 97):
    """Character language model: Embedding 32 -> GRU 128 (every step) -> Dense over the vocabulary (logits).

    Input: int32 character ids, (batch, 64); output: (batch, 64, vocabulary), the next character's
    logits at each step. Train it on the `python_source` dataset; its metrics are next-character
    accuracy and perplexity. Export TFLite with `batch_size: 1` (the GRU loop needs a fixed batch).
    """
    layers = _keras().layers
    return _keras().Sequential(
        [
            layers.Input(input_shape, dtype="int32"),
            layers.Embedding(num_classes, 32),
            layers.GRU(128, return_sequences=True),
            layers.Dense(num_classes),
        ],
        name="char_gru",
    )


def mobilenet_v2(input_shape: tuple[int, ...] = (32, 32, 3), num_classes: int = 10):
    """keras.applications MobileNetV2, width 0.35, untrained (weights=None: nothing is downloaded), logits.

    Depthwise convolutions, BatchNormalization, ReLU6 and residual Adds: the zoo's model for structured
    pruning with channel rounding and for equalization on a real architecture. Gray images are resized and
    repeated to its 32x32x3 input.
    """
    keras = _keras()
    model = keras.applications.MobileNetV2(
        input_shape=input_shape, alpha=0.35, weights=None, classes=num_classes, classifier_activation=None
    )
    # keras.applications' BatchNormalization momentum (0.999) is for ImageNet-long training: after the few hundred
    # steps a zoo model trains here, its moving statistics are still the initial ones and inference scores chance.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    return model


def raw_mlp(input_shape: tuple[int, ...] = (784,), num_classes: int = 10):
    """784-64-64-10 MLP as a raw tf.Module (tf.Variables, a tf.function forward pass); see models/raw_module.py."""
    from edgepress.models.raw_module import build_raw_mlp

    return build_raw_mlp(input_shape, num_classes)


def _train_raw_mlp(model, x, y, epochs, batch_size, learning_rate, on_epoch, seed):
    from edgepress.models.raw_module import train_raw_mlp

    return train_raw_mlp(model, x, y, epochs, batch_size, learning_rate, on_epoch, seed)


def _save_raw_mlp(model, path) -> None:
    from edgepress.models.raw_module import save_raw_module

    save_raw_module(model, path)


def torch_cnn(input_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10):
    """PyTorch CNN, 3x32x32 channels first: 2x (conv + pool), 2 linear; see models/torch_cnn.py. Needs torch."""
    from edgepress.models.torch_cnn import build_torch_cnn

    return build_torch_cnn(input_shape, num_classes)


def _train_torch_cnn(model, x, y, epochs, batch_size, learning_rate, on_epoch, seed):
    from edgepress.models.torch_cnn import train_torch_cnn

    return train_torch_cnn(model, x, y, epochs, batch_size, learning_rate, on_epoch, seed)


def _save_torch_cnn(model, path) -> None:
    from edgepress.models.torch_cnn import export_torch_program

    export_torch_program(model, path, ZOO["torch_cnn"].input_shape)


def char_gpt(input_shape: tuple[int, ...] = (64,), num_classes: int = 97):
    """Decoder-only transformer LM: 2 pre-norm blocks of width 128 (4 heads, gated MLP 256), learned positions up to
    256, next-character logits; runs against a KV cache (models/char_gpt.py). Needs torch."""
    from edgepress.models.char_gpt import build_char_gpt

    return build_char_gpt(vocab=num_classes, width=128, layers=2, heads=4, max_len=256)


def char_gpt_small(input_shape: tuple[int, ...] = (64,), num_classes: int = 97):
    """char_gpt sized so its int4 files are no larger than char_gru's smallest (benchmarks/lm.py): 1 block of width
    96 (4 heads, gated MLP 288), the output head tied to the token table, positions up to 128. Needs torch."""
    from edgepress.models.char_gpt import build_char_gpt

    return build_char_gpt(vocab=num_classes, width=96, layers=1, heads=4, max_len=128, mlp=288, tie=True)


def char_gpt_tiny(input_shape: tuple[int, ...] = (64,), num_classes: int = 97):
    """char_gpt at test size: 1 block of width 32 (2 heads), positions up to 128. Needs torch."""
    from edgepress.models.char_gpt import build_char_gpt

    return build_char_gpt(vocab=num_classes, width=32, layers=1, heads=2, max_len=128)


def _train_char_gpt(model, x, y, epochs, batch_size, learning_rate, on_epoch, seed):
    from edgepress.models.char_gpt import train_char_gpt

    return train_char_gpt(model, x, y, epochs, batch_size, learning_rate, on_epoch, seed)


def _save_decoder(model, path) -> None:
    from edgepress.models.decoder import DecoderSource

    DecoderSource(model, window=ZOO["char_gpt"].input_shape[0]).write(path)


@dataclass(frozen=True)
class ZooEntry:
    build: Callable
    input_shape: tuple[int, ...]
    description: str
    # Models of other frameworks: train(model, x, y, epochs, batch_size, learning_rate, on_epoch, seed)
    # replaces Keras's fit, and save(model, path) writes the file edgepress runs, a `saved_as` kind of
    # model ("saved_model" directory, "onnx" file or "torch" .pt2 program). None for Keras models.
    train: Callable | None = None
    save: Callable | None = None
    saved_as: str | None = None


ZOO: dict[str, ZooEntry] = {
    "seed_cnn": ZooEntry(seed_cnn, (28, 28, 1), "3-conv CNN for 28x28 digits (~93k parameters)"),
    "seed_mlp": ZooEntry(seed_mlp, (784,), "784-64-64-10 MLP for flattened 28x28 digits (~55k parameters)"),
    "seed_lstm": ZooEntry(seed_lstm, (28, 28), "LSTM 64 reading 28x28 digits row by row (~24k parameters)"),
    "char_gru": ZooEntry(
        char_gru, (64,), "character language model, Embedding-GRU 128-Dense, 64 characters (~78k parameters)"
    ),
    "mobilenet_v2": ZooEntry(
        mobilenet_v2, (32, 32, 3), "keras.applications MobileNetV2, alpha 0.35, for 32x32x3 images; gray digits are "
        "resized and repeated to RGB (~0.4M parameters)"
    ),
    "raw_mlp": ZooEntry(
        raw_mlp, (784,), "784-64-64-10 MLP as a raw tf.Module, saved as a SavedModel (no Keras; ~55k parameters)",
        _train_raw_mlp, _save_raw_mlp, "saved_model",
    ),
    "torch_cnn": ZooEntry(
        torch_cnn, (3, 32, 32), "PyTorch CNN for 3x32x32 images, as a torch.export program (needs torch; ~137k "
        "parameters)", _train_torch_cnn, _save_torch_cnn, "torch",
    ),
    "char_gpt": ZooEntry(
        char_gpt, (64,), "decoder-only transformer LM with a KV cache, 2 blocks of width 128, 64-character windows "
        "(needs torch; ~0.4M parameters)", _train_char_gpt, _save_decoder, "decoder",
    ),
    "char_gpt_small": ZooEntry(
        char_gpt_small, (64,), "char_gpt with 1 block of width 96, a tied head, positions up to 128: int4 files "
        "under 133 KB (needs torch; ~0.14M parameters)", _train_char_gpt, _save_decoder, "decoder",
    ),
    "char_gpt_tiny": ZooEntry(
        char_gpt_tiny, (64,), "char_gpt at test size: 1 block of width 32 (needs torch; ~15k parameters)",
        _train_char_gpt, _save_decoder, "decoder",
    ),
}


def build(name: str, num_classes: int = 10):
    """A fresh, untrained zoo model."""
    if name not in ZOO:
        raise EdgepressError(f"Unknown zoo model '{name}'. Available: {', '.join(ZOO)} (see `edgepress models`).")
    return ZOO[name].build(ZOO[name].input_shape, num_classes)


def train(
    name: str,
    data: Dataset,
    epochs: int = 5,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    seed: int = 0,
    on_epoch: training.EpochCallback | None = None,
):
    """Build zoo model `name` and train it on `data` (fitted to its input) from a fixed seed.

    Returns the trained Keras model (for `raw_mlp` a tf.Module, for `torch_cnn` a torch module: save
    them with the entry's `save`). On 8,000 MNIST images, 5 epochs give the seed CNN ~97-98%.
    """
    if len(data.x_train) == 0:
        raise EdgepressError(f"Zoo model '{name}' is trained here, but the data has no training samples: "
                             "raise data.train_size, or give a trained model with model.path.")
    _keras().utils.set_random_seed(seed)
    model = build(name, data.num_classes)
    data = data.fit_to(ZOO[name].input_shape)
    if ZOO[name].train is not None:
        return ZOO[name].train(model, data.x_train, data.y_train, epochs, batch_size, learning_rate, on_epoch, seed)
    training.fit(model, data.x_train, data.y_train, epochs, batch_size, learning_rate, on_epoch=on_epoch, seed=seed)
    return model


def _keras():
    from edgepress.compat import keras

    return keras()
