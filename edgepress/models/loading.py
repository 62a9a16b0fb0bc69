"""Load a model file as the kind it is, without running code from it.

    source = open_model("encoder.keras")                # a Source: keras3, tf_keras, saved_model, onnx or torch
    model = load_model("model.h5")                       # the Keras model itself (Keras 3 or tf_keras, as written)

The file says what it is: a `.pt2` is a torch.export program, an `.onnx` file an ONNX graph, a SavedModel
directory without a Keras model in it a plain SavedModel, and a `.keras` or `.h5` file (or a tf_keras SavedModel)
a Keras model of the Keras that wrote it (its metadata says which). Each kind loads its own files
(edgepress.models.<kind>), after the trust checks of edgepress.models.trust unless the file is trusted: a model file
is data, and a file whose loading would run Python (a Lambda layer, a serialized function, a module outside Keras,
a graph op that calls Python, a pickled weight) is refused before anything in it is deserialized.

TensorFlow and both Kerases are imported inside functions only: the CLI imports this module and must start
instantly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgepress.errors import EdgepressError
from edgepress.limits import MAX_MODEL_BYTES, memory_cap, regular_file
from edgepress.models.keras_files import ACCEPTED, H5_SUFFIXES, KERAS_SUFFIXES, SAVE_HINT
from edgepress.models.source import Source, kinds

_OTHER_SUFFIXES = (".onnx", ".pt2")


def open_model(path: str | os.PathLike, trusted: bool = False) -> Source:
    """The model at `path` as a Source of its kind; EdgepressError naming the file and what to do on any input that
    is not a model edgepress can load (or that would run code, unless `trusted`)."""
    path = Path(path)
    if "\0" in str(path):
        raise EdgepressError(f"The model path {str(path)!r} contains a NUL byte; give the path of the model file.")
    if not path.exists():
        raise EdgepressError(f"Model not found: {path} does not exist. Pass the path of {ACCEPTED}, an .onnx file "
                             "or a .pt2 torch.export program.")
    if not path.is_dir():  # a FIFO would block the first read, /dev/zero never end it: refused before opening
        regular_file(path, "The model file", MAX_MODEL_BYTES)
    for cls in kinds().values():
        if cls.opens(path):
            with memory_cap(f"The model {path}"):  # a few bytes of config can ask for gigabytes of weights
                return cls.load(path, trusted)
    suffix = path.suffix.lower()
    raise EdgepressError(
        f"Cannot load {path}: edgepress does not know the extension {suffix or '(none)'!r}. Pass {ACCEPTED} "
        f"(accepted extensions: {', '.join(KERAS_SUFFIXES + H5_SUFFIXES + _OTHER_SUFFIXES)}); to convert a model "
        f"from elsewhere, {SAVE_HINT}."
    )


def import_custom_objects(modules: list[str] | tuple[str, ...], path: str | os.PathLike, trusted: bool) -> None:
    """Import the modules that define (and register) a model's own layers, before it is loaded: only for a trusted
    model, since importing a module runs its code; refused, naming them, otherwise."""
    import importlib

    if not modules:
        return
    names = ", ".join(modules)
    if not trusted:
        raise EdgepressError(
            f"model.custom_objects asks to import {names} to load {path}, and importing a module runs its code: "
            "edgepress does that only for a trusted model. Pass --trust-model (model.trusted: true) if you trust the "
            "model and these modules, or remove model.custom_objects."
        )
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as error:  # ImportError, or whatever the module raises while it runs
            raise EdgepressError(
                f"model.custom_objects: cannot import {name} ({type(error).__name__}: {error}). Make it importable "
                "where edgepress runs (install its package, or add its folder to PYTHONPATH), then retry."
            ) from None


def load_model(path: str | os.PathLike, trusted: bool = False) -> Any:
    """The Keras model in the file at `path` (a Keras 3 model for a file Keras 3 wrote, a tf_keras model for one
    Keras 2 wrote), loaded as `open_model` does; a file with no Keras model in it is refused, saying what it is."""
    source = open_model(path, trusted)
    if source.kind not in ("keras3", "tf_keras"):
        raise EdgepressError(
            f"Cannot load {path} as a Keras model: it is {source.title}, with no Keras model in it. Load the model in "
            f"the Keras that trained it and {SAVE_HINT}, then pass that file."
        )
    return source.model
