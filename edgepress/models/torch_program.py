"""A PyTorch model as a `torch.export` program (a `.pt2` file written by `torch.export.save`).

    source = TorchSource(Path("cnn.pt2"))
    source = TorchSource.from_module(module, sample_input)

Its TFLite exports go through litert-torch (`edgepress.deploy.torch_tflite`), its ONNX exports through
`torch.onnx.export`; both are checked against this program's own outputs. torch is the extra `edgepress[torch]`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np

from edgepress import files
from edgepress.compat import quiet
from edgepress.errors import EdgepressError, first_line
from edgepress.models.graph import Graph, temporary
from edgepress.models.source import register
from edgepress.models.trust import check_pt2_is_data


@register
class TorchSource(Graph):
    """A PyTorch model as a `torch.export` program (a `.pt2` file written by `torch.export.save`).

    Its TFLite exports go through litert-torch (`edgepress.deploy.torch_tflite`), its ONNX exports through
    `torch.onnx.export`; both are checked against this program's own outputs. Its input is NCHW for images,
    PyTorch's layout (`layout`). Loading reads the program's graph (JSON) and raw weight tensors only: a file
    with anything `torch.export.load` would unpickle is refused first (`check_pt2_is_data`).
    """

    kind: ClassVar[str] = "torch"
    title = "a PyTorch program"
    suffix = ".pt2"
    why_no_steps = (
        "it is a PyTorch program: clustering wraps Keras layers with tfmot (magnitude prune works on its weights, "
        "qat trains it quantization-aware with PT2E, structured_prune removes its heads, MLP units and conv "
        "channels, and distill with `teacher: source` and no student trains the program itself); compress the model "
        "in PyTorch "
        "before exporting it, or use the post-training quantization of its exports (tflite dynamic / int8, onnx "
        "int8_dynamic / int8_static)"
    )

    def __init__(self, path: str | Path, keep: object | None = None) -> None:
        import torch

        self.path = Path(path)
        self.name = self.path.stem
        self._keep = keep
        check_pt2_is_data(self.path)
        # torch's own quantize / dequantize ops (quantized_decomposed), which a quantization-aware program holds
        # (edgepress.compress.qat_torch): registered by importing their definitions, none of them from the file.
        import torch.ao.quantization.fx._decomposed  # noqa: F401

        try:
            with quiet():
                self.program = torch.export.load(str(self.path))
        except Exception as e:  # a zip error, torch's own deserialization errors
            raise EdgepressError(
                f"Cannot load {self.path} as a PyTorch exported program: {first_line(e)}. A .pt2 model is what "
                "`torch.export.save(torch.export.export(model.eval(), (sample_input,)), 'model.pt2')` writes; "
                "export the model again that way (or pass an nn.Module and a sample input from Python)."
            ) from None
        inputs = [n for n in self.program.graph.nodes
                  if n.op == "placeholder" and n.name in self.program.graph_signature.user_inputs]
        if len(inputs) != 1 or not isinstance(getattr(inputs[0].meta.get("val"), "shape", None), torch.Size):
            raise EdgepressError(
                f"{self.path} takes {len(inputs)} inputs ({', '.join(n.name for n in inputs)}); edgepress handles "
                "PyTorch programs with one input tensor."
            )
        outputs = self.program.graph_signature.user_outputs
        if len(outputs) != 1:
            raise EdgepressError(
                f"{self.path} has {len(outputs)} outputs; edgepress handles PyTorch programs with one output tensor "
                "(a classifier's logits or probabilities). Export the single-output model you deploy."
            )
        value = inputs[0].meta["val"]
        self.input_name = inputs[0].name
        self.input_dtype = np.dtype(str(value.dtype).removeprefix("torch."))
        # A symbolic size (torch.export.Dim, e.g. a dynamic batch) is unknown here.
        self.input_shape = tuple(d if isinstance(d, int) else None for d in value.shape)
        self.module = self.program.module()
        # A program that went through qat (edgepress.compress.qat_torch) holds torch's quantize / dequantize ops with
        # the ranges QAT learned, which its int8 and ONNX exports keep.
        self.quantize_aware = any(str(n.target).startswith("quantized_decomposed.") for n in self.program.graph.nodes)
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)  # inference only; torch.onnx's tracer refuses grad-carrying constants

    @classmethod
    def wraps(cls, model) -> bool:
        return False  # an nn.Module comes in exported (`from_module`, `from_trained`): the program is the model

    @classmethod
    def opens(cls, path: Path) -> bool:
        return path.suffix.lower() == ".pt2"

    @classmethod
    def load(cls, path: Path, trusted: bool) -> TorchSource:
        return cls(path)

    @classmethod
    def from_module(cls, module, sample_input) -> TorchSource:
        """An `nn.Module` and one sample input batch, exported with `torch.export` (dynamic batch) and opened."""
        keep, path = temporary("edgepress-torch-", f"{type(module).__name__.lower()}.pt2")
        save_torch_program(module, sample_input, path)
        return cls(path, keep=keep)

    @classmethod
    def from_trained(cls, module, save: Callable[[object, Path], None]) -> TorchSource:
        """A module trained here, written as a .pt2 program by `save(module, path)` into a temporary directory."""
        keep, path = temporary("edgepress-torch-", "model.pt2")
        save(module, path)
        return cls(path, keep=keep)

    @property
    def layout(self) -> str | None:
        """NCHW for an image input (N, C, H, W), PyTorch's layout; None for any other input."""
        return "NCHW" if len(self.input_shape) == 4 else None

    def count_params(self) -> int:
        return int(sum(p.numel() for p in self.program.parameters()))

    def stats(self) -> dict:
        """Parameters, MACs of one sample (counted on the program's graph) and the sparsity of its weight tensors."""
        return {"params": self.count_params(), "macs": program_macs(self.program), "sparsity": self.sparsity()}

    def sparsity(self) -> float:
        """Fraction of zeros over the weight matrices and filters (parameters of 2 or more dimensions)."""
        zeros = size = 0
        for parameter in self.program.parameters():
            if parameter.dim() >= 2:
                zeros += int((parameter == 0).sum())
                size += parameter.numel()
        return float(zeros / size) if size else 0.0

    def weights(self) -> Iterator[tuple[str, np.ndarray]]:
        for name, tensor in [*self.program.state_dict.items(), *self.program.constants.items()]:
            if hasattr(tensor, "detach"):
                yield name, tensor.detach().float().numpy() if tensor.is_floating_point() else tensor.numpy()

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the program was exported at when torch.export fixed it (no `torch.export.Dim`), else None.
        Such a program runs only at that batch (its reshapes name it): every export keeps it."""
        return self.input_shape[0]

    @property
    def reads_its_shape(self) -> bool:
        """Whether the program computes with a symbolic size of its input (a reshape by x.shape[0] under a
        dynamic batch), which an ONNX export by tracing would fold into a constant."""
        import torch

        return any(isinstance(node.meta.get("val"), torch.SymInt) for node in self.program.graph.nodes)

    def takes_batch_size(self, format: str) -> bool:
        return self.fixed_batch is None

    def to_onnx(self, out: Path, batch_size: int | None, opset: int) -> None:
        """The fp32 ONNX file of this program at `out`, with torch.onnx.export: the batch is dynamic unless
        `batch_size` or the program itself (`fixed_batch`) fixes it."""
        import torch

        batch_size = batch_size or self.fixed_batch

        class _Call(torch.nn.Module):
            """The program's module, its weights registered (so they become ONNX initializers, which onnxruntime's
            quantizers need), without passing on the train() calls of the exporter, which that module refuses."""

            def __init__(self, program_module):
                super().__init__()
                self.program = program_module

            def train(self, mode: bool = True):
                return self

            def forward(self, x):
                return self.program(x)

        sample = torch.zeros((batch_size or 1, *self.input_shape[1:]), dtype=getattr(torch, self.input_dtype.name))
        axes = None if batch_size else {"input": {0: "batch"}, "output": {0: "batch"}}
        try:
            if (batch_size is None and self.reads_its_shape) or self.quantize_aware:
                # The tracer below would fold x.shape[0] into the sample's batch (a reshape to one row, then
                # "GEMM: Dimension mismatch" at any other batch), and has no exporter for quantize / dequantize
                # ops; torch.onnx's torch.export-based exporter translates the program itself, its symbolic sizes
                # kept as ONNX Shape ops and its quantize / dequantize pairs as QuantizeLinear / DequantizeLinear.
                with quiet():
                    torch.onnx.export(self.program, (sample,), str(out), input_names=["input"],
                                      output_names=["output"], opset_version=opset, dynamo=True, verbose=False,
                                      external_data=False)
                return
            with quiet(), torch.no_grad():
                torch.onnx.export(_Call(self.module), (sample,), str(out), input_names=["input"],
                                  output_names=["output"], dynamic_axes=axes, opset_version=opset, dynamo=False)
        except ImportError as e:
            raise EdgepressError(
                f"Exporting {self.path} to ONNX with its dynamic batch needs torch.onnx's torch.export-based "
                f"exporter, which needs onnxscript ({first_line(e)}): pip install 'edgepress[torch]'."
            ) from None
        except Exception as e:
            raise EdgepressError(
                f"torch.onnx.export could not export {self.path} to ONNX: {first_line(e)}. Check that its ops have "
                "ONNX exporters (opset 17)."
            ) from None

    def write(self, path: Path) -> None:
        import torch

        torch.export.save(self.program, str(path))

    def _run(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.module(torch.from_numpy(np.ascontiguousarray(x))).numpy()



def program_macs(program) -> int:
    """Multiply-accumulates of one sample through a torch.export `program`, from the shapes its graph records: linear
    and matrix products, convolutions, and both products of scaled_dot_product_attention. A dynamic (symbolic) batch
    counts as 1; a fixed batch is divided out."""
    import math

    def size(d) -> int:
        if isinstance(d, int):
            return d
        expr = d.node.expr
        return int(expr.subs({s: 1 for s in expr.free_symbols}))

    def shape(node) -> list[int]:
        return [size(d) for d in node.meta["val"].shape]

    total = 0
    batch = None
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in program.graph_signature.user_inputs:
            batch = shape(node)[0] or 1
        if node.op != "call_function" or "val" not in node.meta:
            continue
        name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
        if name in ("linear", "mm", "addmm", "bmm", "matmul", "baddbmm"):
            a = node.args[1] if name in ("addmm", "baddbmm") else node.args[0]
            total += math.prod(shape(node)) * shape(a)[-1]
        elif name in ("conv1d", "conv2d", "conv3d", "convolution"):
            total += math.prod(shape(node)) * math.prod(shape(node.args[1])[1:])
        elif name in ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu"):
            q, k, v = (shape(n) for n in node.args[:3])
            total += math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])
    return int(total // (batch or 1))


def save_torch_program(module, sample_input, path: str | Path) -> Path:
    """`torch.export` `module` (in eval mode) on `sample_input` with a dynamic batch, and save it as .pt2."""
    import torch

    sample = torch.as_tensor(np.asarray(sample_input)) if not isinstance(sample_input, torch.Tensor) else sample_input
    with contextlib.suppress(NotImplementedError):  # a module torch.export made refuses eval(): it is already
        module.eval()
    try:
        with quiet():
            batch = torch.export.Dim("batch", min=1)
            program = torch.export.export(module, (sample,), dynamic_shapes=({0: batch},))
    except Exception:
        try:  # a module whose batch cannot be symbolic (it reshapes by a fixed batch): export it as it is
            with quiet():
                program = torch.export.export(module, (sample,))
        except Exception as e:
            raise EdgepressError(
                f"torch.export could not export {type(module).__name__} on an input of shape {tuple(sample.shape)}: "
                f"{first_line(e)}. edgepress takes PyTorch models that torch.export can capture."
            ) from None
    with files.atomic_path(path) as tmp:
        torch.export.save(program, str(tmp))
    return Path(path)
