"""A model written without Keras: `tf.Variable` weights and a `tf.function` forward pass in a `tf.Module`.

    module = build_raw_mlp()                        # 784 -> 64 -> 64 -> 10, logits
    train_raw_mlp(module, x_train, y_train, epochs=5)
    save_raw_module(module, "raw_mlp")              # a SavedModel with a serving signature

This is the zoo's `raw_mlp` and what the test and recipes/mnist_raw_module.yaml use: the kind of
model a user brings as a SavedModel directory. edgepress exports it (TFLite in every post-training
precision, ONNX) and measures it; pruning, QAT and distillation do not apply (they need Keras).
`python -m edgepress.models.raw_module OUT_DIR --data ../shared/data/mnist` trains one on MNIST and saves it.

This module imports TensorFlow when it is imported: import it only where a raw module is needed.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from edgepress.compat import tensorflow

tf = tensorflow()


class RawMLP(tf.Module):
    """Dense layers as plain variables: relu(x W1 + b1) -> relu(. W2 + b2) -> . W3 + b3 (logits)."""

    def __init__(self, sizes: tuple[int, ...] = (784, 64, 64, 10), seed: int = 0, name: str = "raw_mlp") -> None:
        super().__init__(name=name)
        generator = tf.random.Generator.from_seed(seed)
        self.weights = []
        self.biases = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            # He initialisation, as Keras would use for relu layers.
            scale = math.sqrt(2.0 / fan_in)
            self.weights.append(tf.Variable(generator.normal((fan_in, fan_out)) * scale, name=f"w{i + 1}"))
            self.biases.append(tf.Variable(tf.zeros((fan_out,)), name=f"b{i + 1}"))
        # The serving function: a batch of flattened images, any batch size.
        self.serve = tf.function(self._forward, input_signature=[tf.TensorSpec([None, sizes[0]], tf.float32)])

    def __call__(self, x):
        return self.serve(x)

    def _forward(self, x):
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = tf.matmul(x, w) + b
            if i < len(self.weights) - 1:
                x = tf.nn.relu(x)
        return x


def build_raw_mlp(input_shape: tuple[int, ...] = (784,), num_classes: int = 10, seed: int = 0) -> RawMLP:
    """A fresh RawMLP for inputs of `input_shape` (flattened) and `num_classes` logits."""
    return RawMLP((int(np.prod(input_shape)), 64, 64, num_classes), seed=seed)


def train_raw_mlp(
    module: RawMLP,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int = 5,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    on_epoch=None,
    seed: int = 0,
) -> RawMLP:
    """Train `module` on (x, y) with Adam and softmax cross-entropy, in a hand-written tf.GradientTape loop.

    `on_epoch(epoch, epochs, {"loss", "accuracy"})` is called after each epoch. Returns the module.
    """
    from edgepress.compat import keras

    optimizer = keras().optimizers.Adam(learning_rate)
    variables = module.trainable_variables
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    y = np.asarray(y, np.int64)
    rng = np.random.default_rng(seed)

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            logits = module._forward(xb)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1), yb), tf.float32))
        return loss, correct

    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x))
        losses, correct = [], 0.0
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            loss, right = step(tf.constant(x[batch]), tf.constant(y[batch]))
            losses.append(float(loss) * len(batch))
            correct += float(right)
        if on_epoch is not None:
            on_epoch(epoch, epochs, {"loss": sum(losses) / len(x), "accuracy": correct / len(x)})
    return module


def save_raw_module(module: tf.Module, path: str | Path) -> Path:
    """Save `module` as a SavedModel at `path` with its `serve` function as the serving signature."""
    path = Path(path)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def main(argv: list[str] | None = None) -> int:
    from edgepress import files
    from edgepress.models.datasets import load_dataset

    parser = argparse.ArgumentParser(description="Train the raw tf.Module MLP on MNIST and save it as a SavedModel.")
    parser.add_argument("out", help="the SavedModel directory to write")
    parser.add_argument("--data", required=True, help="MNIST idx directory or mnist.npz")
    parser.add_argument("--train-size", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)
    data = load_dataset("mnist", args.data, train_size=args.train_size, test_size=2000).fit_to((784,))
    module = train_raw_mlp(build_raw_mlp(), data.x_train, data.y_train, epochs=args.epochs)
    with files.atomic_path(args.out) as tmp:
        save_raw_module(module, tmp)
    accuracy = float(np.mean(np.argmax(module(data.x_test).numpy(), -1) == data.y_test))
    print(f"saved {args.out}: test accuracy {accuracy:.2%} on {len(data.x_test)} MNIST images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
