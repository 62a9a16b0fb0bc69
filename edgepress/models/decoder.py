"""A decoder-only language model (PyTorch) with a KV cache: the zoo's char_gpt, or a model directory (char_gpt's, or
a Hugging Face Llama's: edgepress.models.llama).

    source = DecoderSource(build_char_gpt(), window=64)   # a module with step_static / step_growing
    source = DecoderSource.load(Path("runs/x/models/0-source"), trusted=False)   # config.json + model.safetensors

Its outputs are next-token logits (batch, T, vocabulary) for token windows (batch, T), so it is scored like any
sequence model (per-token accuracy, perplexity). Its exports keep the cache outside the model: TFLite with
`prefill_N` and `decode` signatures, ONNX with past/present key-values (edgepress.deploy.decoder). A model
directory is what `save` writes: config.json (the architecture's settings, `edgepress_decoder: char_gpt`) and the
weights in model.safetensors (tensors only: loading runs no code from the file). torch is imported only here
inside the methods, and the architecture in edgepress.models.char_gpt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np

from edgepress.errors import EdgepressError, first_line
from edgepress.models.graph import Graph, temporary
from edgepress.models.source import register

ARCHITECTURE_KEY = "edgepress_decoder"
# The token window the model is scored on (the data's), kept in config.json and on the module (a step's result).
WINDOW_KEY = "edgepress_window"


@register
class DecoderSource(Graph):
    """A decoder LM held as a torch module (`module`) that has `config` (vocab, layers, heads, head_dim, max_len),
    `forward(tokens)`, `step_static(tokens, input_pos, kv)` and `step_growing(tokens, pasts)`."""

    kind: ClassVar[str] = "decoder"
    title = "a decoder language model"
    suffix = ""  # a directory: config.json + model.safetensors
    why_no_steps = (
        "it is a PyTorch decoder language model: its steps are lm_distill and structured_prune (whole heads and MLP "
        "units); quantize its weights with its exports (tflite dynamic, int8_weight, int4_weight; onnx int4_weight)"
    )

    def __init__(self, module, window: int | None = None, path: Path | None = None, name: str = "char_gpt") -> None:
        self.module = module.eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.config = module.config
        self.path = path
        self.name = path.name if path is not None else name
        self.input_name = "tokens"
        self.input_dtype = np.dtype("float32")  # token ids as float, like every edgepress input
        window = window if window is not None else getattr(module, WINDOW_KEY, None)
        self.input_shape = (None, window)
        setattr(module, WINDOW_KEY, window)

    def with_input_shape(self, sample_shape) -> DecoderSource:
        super().with_input_shape(sample_shape)
        setattr(self.module, WINDOW_KEY, self.input_shape[1])
        return self

    @property
    def model(self):
        return self.module

    @property
    def max_len(self) -> int:
        """The model's position limit: the longest cache it can take."""
        return int(self.config.max_len)

    @property
    def layout(self) -> str | None:
        return None

    @classmethod
    def wraps(cls, model) -> bool:
        return hasattr(model, "step_static") and hasattr(model, "step_growing") and hasattr(model, "config")

    @classmethod
    def opens(cls, path: Path) -> bool:
        """A directory with config.json (edgepress's char_gpt, or a Hugging Face Llama) and safetensors weights."""
        if not (path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors"))):
            return False
        try:
            settings = json.loads((path / "config.json").read_text())
        except (ValueError, OSError):
            return False
        from edgepress.models.llama import is_llama

        return isinstance(settings, dict) and (ARCHITECTURE_KEY in settings or is_llama(settings))

    @classmethod
    def load(cls, path: Path, trusted: bool = False) -> DecoderSource:
        """The decoder in `path`, read as data (JSON settings, safetensors tensors) whether or not `trusted`."""
        from edgepress.models.llama import is_llama, load_llama

        settings = json.loads((path / "config.json").read_text())
        window = settings.pop(WINDOW_KEY, None)
        if is_llama(settings):
            return cls(load_llama(path, settings), window, path)
        from safetensors.torch import load_file

        from edgepress.models.char_gpt import CharGPT, GPTConfig

        try:
            architecture = settings.pop(ARCHITECTURE_KEY)
            if architecture != "char_gpt":
                raise EdgepressError(f"{path}/config.json names the architecture {architecture!r}; edgepress builds "
                                     "char_gpt decoders from a config.json.")
            module = CharGPT(GPTConfig(**settings))
            module.load_tensors(load_file(str(path / "model.safetensors")))
        except EdgepressError:
            raise
        except Exception as e:  # unknown settings, missing or misshapen tensors
            raise EdgepressError(
                f"Cannot load the decoder in {path}: {first_line(e)}. A decoder directory is what edgepress writes "
                "into a run's models/ folder (config.json + model.safetensors)."
            ) from None
        return cls(module, window, path)

    @classmethod
    def from_trained(cls, module, save) -> DecoderSource:
        """A decoder trained here, written as a model directory by `save(module, path)` and read back from it: the
        run starts from what a user would bring."""
        keep, path = temporary("edgepress-decoder-", "model")
        save(module, path)
        source = cls.load(path)
        source._keep = keep
        return source

    def count_params(self) -> int:
        return int(sum(p.numel() for p in self.module.parameters()))

    def stats(self) -> dict:
        """Parameters; MACs per window: every linear layer once per token, attention over the window."""
        window = self.input_shape[1]
        if window is None:
            return super().stats()
        import torch

        linear = sum(m.weight.numel() for m in self.module.modules() if isinstance(m, torch.nn.Linear))
        heads = getattr(self.config, "heads", 1)
        attention = self.config.layers * heads * self.config.head_dim * window * (window + 1)
        return {"params": self.count_params(), "macs": int(linear * window + attention), "sparsity": None}

    def write(self, path: Path) -> None:
        from safetensors.torch import save_file

        path.mkdir(parents=True)
        if hasattr(self.module, "settings"):  # a Hugging Face model: its own config.json and tensor names
            settings = dict(self.module.settings)
        else:
            settings = {ARCHITECTURE_KEY: "char_gpt", **self.config.to_dict()}
        tensors = self.module.tensors()  # a tied output head once
        if self.input_shape[1] is not None:
            settings[WINDOW_KEY] = self.input_shape[1]
        (path / "config.json").write_text(json.dumps(settings, indent=2) + "\n")
        save_file(tensors, str(path / "model.safetensors"))

    def _run(self, x: np.ndarray) -> np.ndarray:
        import torch

        if x.shape[-1] > self.max_len:
            raise EdgepressError(f"{self.name} takes at most {self.max_len} tokens (its position limit), got "
                                 f"windows of {x.shape[-1]}.")
        with torch.no_grad():
            return self.module(torch.from_numpy(np.asarray(x).astype(np.int64))).numpy()
