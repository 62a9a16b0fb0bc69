"""A PyTorch CNN, trained in PyTorch and exported with torch.export: how PyTorch models come into edgepress.

    model = build_torch_cnn()                          # 3x32x32 -> conv+pool, conv+pool -> 2 linear, logits
    train_torch_cnn(model, x_train, y_train, epochs=3) # x: (N, 3, 32, 32) float32, channels first
    export_torch_program(model, "cnn.pt2")             # torch.export.save, batch dimension dynamic
    export_torch_onnx(model, "cnn.onnx")               # or torch.onnx.export, for an ONNX-only run

This is the zoo's `torch_cnn` (the design brief's CNN with its size mistake fixed: after two 2x2
poolings a 32x32 input is 8x8, so the first linear layer takes 32*8*8 values). edgepress takes the
.pt2 program as model input (`edgepress.models.torch_program.TorchSource`): TFLite through litert-torch
(`edgepress.deploy.torch_tflite`), ONNX through torch.onnx, post-training quantization and measurement
apply; the compression steps do not (they need Keras).

PyTorch is not a dependency of edgepress: `pip install 'edgepress[torch]'` (torch and litert-torch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepress.errors import EdgepressError


def _torch():
    try:
        import torch
    except ImportError:
        raise EdgepressError(
            "The zoo model 'torch_cnn' is trained with PyTorch, which is not installed: `pip install torch` "
            "(CPU build), or export your own PyTorch model to .onnx and pass it as model.path."
        ) from None
    return torch


def build_torch_cnn(input_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10, seed: int = 0):
    """Conv 16 -> ReLU -> MaxPool -> Conv 32 -> ReLU -> MaxPool -> Linear 64 -> ReLU -> Linear (logits)."""
    torch = _torch()
    nn = torch.nn
    channels, height, width = input_shape
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (height // 4) * (width // 4), 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


def train_torch_cnn(
    model,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int = 3,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    on_epoch=None,
    seed: int = 0,
):
    """Train `model` on (x, y) with Adam and cross-entropy; `on_epoch(epoch, epochs, logs)` after each epoch."""
    torch = _torch()
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))  # this is small work; leave cores to others
    inputs, labels = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(np.asarray(y, np.int64))
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(inputs), generator=generator)
        total, correct = 0.0, 0
        for start in range(0, len(inputs), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            logits = model(inputs[batch])
            loss = loss_fn(logits, labels[batch])
            loss.backward()
            optimizer.step()
            total += float(loss) * len(batch)
            correct += int((logits.argmax(-1) == labels[batch]).sum())
        if on_epoch is not None:
            on_epoch(epoch, epochs, {"loss": total / len(inputs), "accuracy": correct / len(inputs)})
    model.eval()
    return model


def export_torch_program(model, path: str | Path, input_shape: tuple[int, ...] = (3, 32, 32)) -> Path:
    """Export `model` with torch.export (batch dimension dynamic) and save the program as a .pt2 file."""
    from edgepress.models.torch_program import save_torch_program

    return save_torch_program(model, _torch().zeros((2, *input_shape)), path)


def export_torch_onnx(model, path: str | Path, input_shape: tuple[int, ...] = (3, 32, 32)) -> Path:
    """Export `model` to an .onnx file with input `input` (batch dimension dynamic) and output `logits`.

    Uses the TorchScript-based exporter (`dynamo=False`): the newer torch.export-based one needs the
    onnxscript package, and this small CNN has no control flow that would need it.
    """
    import warnings

    torch = _torch()
    path = Path(path)
    model.eval()
    example = torch.zeros((1, *input_shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice is for its own users, not ours
        torch.onnx.export(
            model, (example,), str(path), input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
        )
    return path
