"""The on-device benchmark runner: load one .tflite or .onnx file, time it, and score it.

This one file is copied to a phone or a Raspberry Pi and run there, so it needs only the standard
library, numpy and one runtime; it imports nothing from edgepress and never imports TensorFlow
unless no other TFLite interpreter exists. It runs on Python 3.9+.

    python runner.py model.tflite --data eval.npz --runs 100 --threads 4 --json
    python runner.py a.tflite b.onnx --runs 100 --max-runs 2000 --target-ci-width 0.05 --json

Latency comes with a bootstrap 95% confidence interval of its p50 and p90. With --max-runs above
--runs, more runs are added in rounds until the p50 interval is narrower than --target-ci-width
(a fraction of the p50) or --max-seconds have passed. Several artifacts are timed interleaved:
each round times every artifact for a block of runs, so a burst of load from elsewhere falls on
all of them alike; that mode times only (no scoring: run each artifact alone with --data for that).

eval.npz holds `x` (inputs, preprocessed to the model's input shape, float32) and optionally `y`
(integer labels: one per sample for a classifier, or one per time step, (N, T), for a sequence
model such as a language model, which is then scored per token, with cross-entropy and perplexity).
On the host, edgepress runs this file in a subprocess to measure an artifact, and its exporters
call `open_model(path).predict(x)` to check what an exported file computes.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import numpy as np

RUNNER_VERSION = 1

# Bootstrap resamples for the confidence intervals; the seed is fixed so the same times give the same interval.
BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95
# The minimum runs are spread over at least this many interleaved rounds.
MIN_ROUNDS = 5
# Raw per-run times kept in the result (evenly thinned beyond that), for a distribution plot.
TIMES_KEPT = 2000

# predict() feeds a dynamic-batch model at most this many rows at a time, to bound memory on a device.
PREDICT_CHUNK = 256
MAX_DATA_BYTES = 4 << 30  # what one --data array may declare (as float32): far above any evaluation set
# An untimed call of a model (warm-up, scoring) that has not returned after this many seconds is reported for its
# artifact (an ONNX Loop or a TFLite WHILE that never ends), well before the transport's limit for the whole step
# (600 s by default); EDGEPRESS_INVOKE_LIMIT_S sets another, and so does open_model's `invoke_limit_s` (edgepress's
# own checks on the host pass edgepress.limits' 60 s). Timed calls are not watched: the watch would be timed too.
# onnxruntime stops such a call (RunOptions.terminate); LiteRT's Python interpreter has no way to cancel one, so the
# call is left running in a thread of its own, the artifact is refused, and the runner's process ends (os._exit) as
# soon as it has said so.
INVOKE_LIMIT_S = 300.0

# Names of ONNX tensor element types as numpy dtype names.
_ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


class RunnerError(ValueError):
    """Bad input or a missing runtime: the message names the thing at fault and what to do."""


class Runtime:
    """A loaded model and the runtime that runs it. Made by `open_model`.

    Subclasses implement `_invoke`, one call of the runtime on an input that already has the
    model's dtype and a batch the model accepts. Everything else (quantizing, batching) is here.
    """

    runtime: str
    runtime_version: str
    providers: list[str]
    warnings: list[str]
    load_ms: float
    input_shape: list[int]
    input_dtype: str

    def __init__(self, invoke_limit_s: float | None = None) -> None:
        self.providers = []
        self.warnings = []
        self.invoke_limit_s = _invoke_limit_s() if invoke_limit_s is None else max(0.1, float(invoke_limit_s))
        # (scale, zero_point) of the input and output when they are quantized integers, else None.
        self._input_quant: tuple[float, int] | None = None
        self._output_quant: tuple[float, int] | None = None

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model insists on, or None when its batch dimension is dynamic."""
        if not self.input_shape or self.input_shape[0] == -1:
            return None
        return self.input_shape[0]

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """Float inputs as the model's input dtype: quantized with (scale, zero_point) if it has them."""
        x = np.asarray(x)
        dtype = np.dtype(self.input_dtype)
        if x.dtype == dtype:
            return x
        if dtype.kind in "iu":
            if self._input_quant is not None:
                scale, zero_point = self._input_quant
                x = np.round(x.astype(np.float32) / scale + zero_point)
            info = np.iinfo(dtype)
            return np.clip(np.round(x), info.min, info.max).astype(dtype)
        return x.astype(dtype)

    def to_float(self, out: np.ndarray) -> np.ndarray:
        """A raw model output as float32, dequantized when it is a quantized integer tensor."""
        if self._output_quant is not None and out.dtype.kind in "iu":
            scale, zero_point = self._output_quant
            return ((out.astype(np.float32) - zero_point) * scale).astype(np.float32)
        return out.astype(np.float32)

    def run_batch(self, x: np.ndarray, watched: bool = True) -> np.ndarray:
        """One invocation on an already-batched input; returns the raw first output. Used for timing.

        Give `x` in the model's input dtype (see `prepare`) so the timing holds no conversion;
        float input is converted here. A model with a fixed batch that differs from `len(x)` cannot
        take `x` in one call, so it is run in as many calls as it takes. `watched`: each call under the
        invoke limit (INVOKE_LIMIT_S); timed calls are not watched, the watch would be timed too.
        """
        x = self.prepare(x)
        fixed = self.fixed_batch
        if fixed is None or len(x) == fixed:
            return self._invoke(x, watched)
        outs = []
        for start in range(0, len(x), fixed):
            chunk = x[start : start + fixed]
            real = len(chunk)
            if real < fixed:
                # Pad the last chunk with copies of its final row; the padding's outputs are dropped.
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - real, axis=0)])
            outs.append(self._invoke(chunk, watched)[:real])
        return np.concatenate(outs)

    def timer(self, x: np.ndarray):
        """A no-argument callable that runs the model once on `x`: what the timing loop calls.

        When `x` is already in the model's dtype and batch it goes straight to `_invoke`, so the
        loop times the runtime and not this class's conversions and checks.
        """
        x = self.prepare(x)
        if self.fixed_batch is None or len(x) == self.fixed_batch:
            return self._bound(x)
        return functools.partial(self.run_batch, x, False)

    def _bound(self, x: np.ndarray):
        """`_invoke` on `x` as a no-argument callable; a runtime may bind more of the call ahead of the loop."""
        return functools.partial(self._invoke, x, False)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Float32 first output of the model for a batch `x` of float inputs (any batch size).

        Quantized inputs and outputs (full-int8 TFLite) are quantized and dequantized here.
        """
        x = np.asarray(x)
        if x.ndim == 0 or len(x) == 0:
            raise RunnerError(f"predict needs a batch of at least one sample, got an array of shape {x.shape}")
        step = self.fixed_batch or PREDICT_CHUNK
        outs = [self.to_float(self.run_batch(x[start : start + step])) for start in range(0, len(x), step)]
        return np.concatenate(outs)

    def _invoke(self, x: np.ndarray, watched: bool = True) -> np.ndarray:
        raise NotImplementedError


class TFLiteRuntime(Runtime):
    """A .tflite file in LiteRT, tflite_runtime or, as a last resort, tf.lite."""

    def __init__(self, path: str, threads: int, delegate: str = "xnnpack", invoke_limit_s: float | None = None) -> None:
        super().__init__(invoke_limit_s)
        self.path = path
        self._hung = False
        interpreter_class, self.runtime, self.runtime_version = _tflite_interpreter()
        self.delegate = delegate
        start = time.perf_counter()
        try:
            self._interpreter = _tflite_open(interpreter_class, path, threads, delegate)
        except (ValueError, RuntimeError, SystemError) as e:
            raise RunnerError(f"{path}: {self.runtime} {self.runtime_version} could not load it ({_one_line(e)}). "
                              + _tflite_load_hint(e, self.runtime)) from None
        self.load_ms = (time.perf_counter() - start) * 1000.0

        inputs = self._interpreter.get_input_details()
        if len(inputs) != 1:
            raise RunnerError(f"{path} has {len(inputs)} inputs; the runner handles single-input models only.")
        self._input = inputs[0]
        self._output = self._interpreter.get_output_details()[0]
        self._input_index, self._output_index = self._input["index"], self._output["index"]  # read once: timed path
        # shape_signature keeps -1 for dynamic dims; `shape` shows them as 1.
        self.input_shape = [int(d) for d in self._input.get("shape_signature", self._input["shape"])]
        self.input_dtype = np.dtype(self._input["dtype"]).name
        self._input_quant = _tflite_quant(self._input)
        self._output_quant = _tflite_quant(self._output)
        # The input shape the tensors are planned for; tracked here because asking the interpreter
        # for it on every call would add its cost to the measured latency.
        self._allocated_shape = tuple(int(d) for d in self._input["shape"])
        # Fused recurrent ops keep their state in variable tensors from one invocation to the next;
        # every sample here is independent, so those start from zero on each call.
        self._stateful = _has_stateful_ops(self._interpreter)

    def _invoke(self, x: np.ndarray, watched: bool = True) -> np.ndarray:
        if self._hung:
            raise RunnerError(f"{self.path}: an earlier call of the model has not returned; it cannot be called again.")
        index = self._input_index
        if x.shape != self._allocated_shape:
            # A dynamic dimension changed (usually the batch): resize, then re-plan the tensors.
            self._interpreter.resize_tensor_input(index, list(x.shape))
            self._interpreter.allocate_tensors()
            self._allocated_shape = x.shape
        if self._stateful:
            self._interpreter.reset_all_variables()
        self._interpreter.set_tensor(index, x)
        if watched:
            self._watched_invoke()
        else:
            self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output_index)

    def _watched_invoke(self) -> None:
        """One invoke, given `invoke_limit_s` to return. LiteRT cannot cancel a call (its Python interpreter has no
        cancellation), so the call runs in a thread of its own (invoke releases the GIL) and one that does not return
        in time is left running there: the interpreter is kept alive for it (_UNFINISHED), this runtime refuses
        further calls, and the caller gets a RunnerError naming the artifact."""
        failure: list[BaseException] = []

        def call() -> None:
            try:
                self._interpreter.invoke()
            except BaseException as e:  # re-raised in the caller's thread below
                failure.append(e)

        worker = threading.Thread(target=call, name="tflite-invoke", daemon=True)
        worker.start()
        worker.join(self.invoke_limit_s)
        if worker.is_alive():
            self._hung = True
            _UNFINISHED.append((worker, self._interpreter))
            raise RunnerError(
                f"{self.path}: one call of the model did not return within {self.invoke_limit_s:g} s (a WHILE loop "
                "that never ends?). LiteRT cannot stop a call, so this artifact is not run further."
            )
        if failure:
            raise failure[0]

    def _bound(self, x: np.ndarray):
        if self._stateful or x.shape != self._allocated_shape:
            return super()._bound(x)
        # The interpreter's own three calls, looked up once: the timed call is the runtime's alone.
        interpreter = self._interpreter
        set_tensor, invoke, get_tensor = interpreter.set_tensor, interpreter.invoke, interpreter.get_tensor
        index, output = self._input_index, self._output_index

        def call() -> np.ndarray:
            set_tensor(index, x)
            invoke()
            return get_tensor(output)

        return call


# TFLite ops whose hidden and cell states are variable tensors that outlive an invocation.
_STATEFUL_OPS = {"UNIDIRECTIONAL_SEQUENCE_LSTM", "UNIDIRECTIONAL_SEQUENCE_RNN", "BIDIRECTIONAL_SEQUENCE_LSTM",
                 "BIDIRECTIONAL_SEQUENCE_RNN", "LSTM", "SVDF"}


def _has_stateful_ops(interpreter) -> bool:
    """True if the model has an op that carries state between invocations (see _STATEFUL_OPS)."""
    ops = getattr(interpreter, "_get_ops_details", None)  # every interpreter has it, but it is not public API
    if ops is None:
        return True  # resetting costs little; a state leaking into the next sample costs correctness
    return any(op.get("op_name") in _STATEFUL_OPS for op in ops())


class OnnxRuntime(Runtime):
    """An .onnx file in onnxruntime, on the execution providers asked for when they exist."""

    def __init__(self, path: str, threads: int, providers: list[str] | None,
                 invoke_limit_s: float | None = None) -> None:
        super().__init__(invoke_limit_s)
        ort = _onnxruntime()
        self.path = path
        self.runtime = "onnxruntime"
        self.runtime_version = getattr(ort, "__version__", "unknown")

        requested = list(providers) if providers else ["CPUExecutionProvider"]
        available = ort.get_available_providers()
        usable = [p for p in requested if p in available]
        for p in requested:
            if p not in available:
                self.warnings.append(
                    f"execution provider {p} is not available in this onnxruntime "
                    f"(available: {', '.join(available)}); using {', '.join(usable) or 'CPUExecutionProvider'}"
                )
        if not usable:
            usable = ["CPUExecutionProvider"]

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # One model, one request at a time: parallel branches would only compete for the same cores.
        options.inter_op_num_threads = 1
        # The fallbacks are recorded in `warnings`; onnxruntime's own log lines would only be noise.
        options.log_severity_level = 3
        start = time.perf_counter()
        try:
            self._session = ort.InferenceSession(path, sess_options=options, providers=usable)
        except Exception as e:  # onnxruntime raises its own exception types for a bad file
            raise RunnerError(
                f"{path}: onnxruntime could not load it ({_one_line(e)}). Check that it is a complete .onnx file "
                "with an opset this onnxruntime supports."
            ) from None
        self.load_ms = (time.perf_counter() - start) * 1000.0

        # A provider can be installed yet fail to start (no GPU, missing CUDA libraries): then
        # onnxruntime quietly drops it, so report what the session really uses.
        self.providers = list(self._session.get_providers())
        for p in usable:
            if p not in self.providers:
                self.warnings.append(
                    f"execution provider {p} is installed but could not be used; running on {', '.join(self.providers)}"
                )

        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise RunnerError(f"{path} has {len(inputs)} inputs; the runner handles single-input models only.")
        self._input_name = inputs[0].name
        self._output_name = self._session.get_outputs()[0].name
        # Symbolic or unknown dimensions (e.g. 'unk__13', None) are dynamic.
        self.input_shape = [d if isinstance(d, int) and d > 0 else -1 for d in inputs[0].shape]
        self.input_dtype = _ONNX_DTYPES.get(inputs[0].type, "float32")

    def _invoke(self, x: np.ndarray, watched: bool = True) -> np.ndarray:
        if not watched:
            return self._session.run([self._output_name], {self._input_name: x})[0]
        ort = _onnxruntime()
        options, limit = ort.RunOptions(), self.invoke_limit_s
        timer = threading.Timer(limit, lambda: setattr(options, "terminate", True))
        timer.start()
        try:
            return self._session.run([self._output_name], {self._input_name: x}, options)[0]
        except Exception:
            if options.terminate:
                raise RunnerError(f"{self.path}: one call of the model did not return within {limit:g} s (a Loop "
                                  "that never ends?) and was stopped.") from None
            raise
        finally:
            timer.cancel()

    def _bound(self, x: np.ndarray):
        # session.run itself, its output list and feed built once: the timed call is the runtime's alone.
        return functools.partial(self._session.run, [self._output_name], {self._input_name: x})


def _tflite_interpreter() -> tuple[type, str, str]:
    """The best TFLite Interpreter class that imports here, with its runtime name and version."""
    failures = []
    try:
        import ai_edge_litert
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert", getattr(ai_edge_litert, "__version__", "unknown")
    except ImportError as e:
        failures.append(f"ai_edge_litert: {_one_line(e)}")
    try:
        import tflite_runtime
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite_runtime", getattr(tflite_runtime, "__version__", "unknown")
    except ImportError as e:
        failures.append(f"tflite_runtime: {_one_line(e)}")
    try:
        # Last resort: TensorFlow is heavy to import and large in memory, which skews the memory figures.
        import tensorflow as tf

        return tf.lite.Interpreter, "tf.lite", getattr(tf, "__version__", "unknown")
    except ImportError as e:
        failures.append(f"tensorflow: {_one_line(e)}")
    raise RunnerError(
        "No TFLite runtime found (" + "; ".join(failures) + "). Install one with `pip install ai-edge-litert` "
        "(or `pip install tflite-runtime` on devices LiteRT has no wheel for)."
    )


def _tflite_load_hint(error: Exception, runtime: str) -> str:
    """What to do about a .tflite file the interpreter would not load, from what it said."""
    text = str(error)
    if isinstance(error, SystemError):
        # tflite-runtime (2.14 and older) is built for numpy 1.x; under numpy 2 its wrapper fails this way.
        return (f"{runtime} was probably built for another numpy than this one ({np.__version__}): install "
                "'numpy<2' next to tflite-runtime, or use ai-edge-litert.")
    if any(word in text for word in ("failed to prepare", "Didn't find op", "version", "not supported")):
        return (f"This {runtime} lacks an op, an op version or a tensor type this file needs (an older runtime than "
                "the converter's): install a newer runtime on the device, or export a precision it runs.")
    return "Check that it is a complete .tflite file (copy it again if it was truncated)."


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise RunnerError(
            f"No ONNX runtime found (`import onnxruntime` failed: {_one_line(e)}). "
            "Install it with `pip install onnxruntime` (or onnxruntime-gpu for CUDA)."
        ) from None
    return onnxruntime


# TFLite calls that did not return within their limit, each with its interpreter (kept alive while the call runs).
_UNFINISHED: list[tuple[threading.Thread, object]] = []


def _invoke_limit_s() -> float:
    try:
        return max(0.1, float(os.environ.get("EDGEPRESS_INVOKE_LIMIT_S", INVOKE_LIMIT_S)))
    except ValueError:
        return INVOKE_LIMIT_S


def _tflite_quant(detail: dict) -> tuple[float, int] | None:
    """(scale, zero_point) of a quantized integer TFLite tensor, else None."""
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if np.dtype(detail["dtype"]).kind in "iu" and scale:
        return float(scale), int(zero_point)
    return None


def open_model(path: str, threads: int = 1, providers: list[str] | None = None, delegate: str = "xnnpack",
               invoke_limit_s: float | None = None) -> Runtime:
    """Load a .tflite or .onnx file in the best runtime available; `providers` applies to ONNX only, `delegate` to
    TFLite only (DELEGATES). An untimed call that does not return within `invoke_limit_s` seconds (default
    INVOKE_LIMIT_S, or EDGEPRESS_INVOKE_LIMIT_S) raises RunnerError naming the file."""
    if threads < 1:
        raise RunnerError(f"threads must be 1 or more, got {threads}.")
    path = str(path)
    if _model_format(path) == "tflite":
        return TFLiteRuntime(path, threads, delegate, invoke_limit_s)
    return OnnxRuntime(path, threads, providers, invoke_limit_s)


# TFLite delegates the runner applies: xnnpack, LiteRT's default on CPUs (applied by the interpreter itself), or none:
# the builtin kernels alone (on some CPUs and precisions they beat XNNPACK: a device profile says so with
# `delegate: none`, and the runner must honour it, not run XNNPACK anyway).
DELEGATES = ("xnnpack", "none")


def _tflite_open(interpreter_class, path: str, threads: int, delegate: str):
    """An allocated interpreter of `path` with `delegate` applied (see DELEGATES)."""
    if delegate not in DELEGATES:
        raise RunnerError(f"TFLite delegate {delegate!r} is not one the runner applies; use one of: "
                          f"{', '.join(DELEGATES)}.")
    options = {}
    if delegate == "none":
        resolver = getattr(sys.modules[interpreter_class.__module__], "OpResolverType", None)
        if resolver is None:  # a runtime too old to leave its default delegate out
            raise RunnerError(f"this TFLite runtime ({interpreter_class.__module__}) cannot run without its default "
                              "delegate; use delegate: xnnpack for this device.")
        options["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = interpreter_class(model_path=path, num_threads=threads, **options)
    interpreter.allocate_tensors()
    return interpreter


def _model_format(path: str) -> str:
    """ "tflite" or "onnx" for an existing model file; RunnerError for anything else."""
    if not os.path.isfile(path):
        raise RunnerError(f"Model file {path} does not exist: give the path of a .tflite or .onnx file.")
    extension = os.path.splitext(path)[1].lower()
    if extension in (".tflite", ".onnx"):
        return extension[1:]
    raise RunnerError(
        f"{path}: unknown model format '{extension or '(no extension)'}'. "
        "The runner runs .tflite and .onnx files; rename the file if it is one of those."
    )


def benchmark(
    path: str,
    x: np.ndarray | None = None,
    y: np.ndarray | None = None,
    runs: int = 100,
    warmup: int = 10,
    threads: int = 1,
    batch: int = 1,
    providers: list[str] | None = None,
    delegate: str = "xnnpack",
    with_predictions: bool = False,
    max_runs: int | None = None,
    target_ci_width: float | None = None,
    max_seconds: float | None = None,
) -> dict:
    """Load `path`, time at least `runs` invocations at batch `batch`, and score it on (`x`, `y`) if given.

    More runs, up to `max_runs`, are added until the p50's confidence interval is narrower than
    `target_ci_width` (a fraction of the p50) or `max_seconds` have passed (see `time_interleaved`).
    Returns a JSON-serialisable dict: artifact, runtime, load_ms, latency_ms (see `latency_stats`),
    memory, samples, accuracy, per_class, cross_entropy and perplexity
    (sequence labels only, see `score`), output_checksum, host, and predictions when asked.
    `peak_rss_bytes` is the peak of the whole process, so it means most in a fresh process such as
    the CLI's; `model_rss_bytes` is what the loaded, warmed-up model added.
    """
    _check_counts(runs, warmup, batch, max_runs)
    path = str(path)
    if x is not None:
        x = np.asarray(x)
        if x.dtype.kind not in "f":
            x = x.astype(np.float32)
    if y is not None:
        y = np.asarray(y)
        if x is None:
            raise RunnerError("Labels y were given without inputs x: give both, or neither.")
        if y.ndim not in (1, 2) or y.dtype.kind not in "iub" or len(y) != len(x):
            raise RunnerError(
                f"Labels y must be {len(x)} integer class labels (one per input), or ({len(x)}, steps) labels for "
                f"a sequence model, got an array of shape {y.shape} and dtype {y.dtype}. For one-hot labels pass "
                "y.argmax(-1)."
            )

    # Import the runtime before taking the baseline, so model_rss_bytes is what the model adds and
    # not the runtime library, which every model on the device shares.
    if _model_format(path) == "tflite":
        _tflite_interpreter()
    else:
        _onnxruntime()
    baseline_rss = _current_rss()
    model = open_model(path, threads=threads, providers=providers, delegate=delegate)
    warnings = list(model.warnings)
    if x is not None:
        _check_fits(model, x)

    latency_input = _latency_input(model, x, batch, warnings)
    for _ in range(warmup):
        model.run_batch(latency_input)
    load_before = _load_average()
    times_ms, stopped = time_interleaved([model.timer(latency_input)], runs, max_runs, target_ci_width, max_seconds)
    load_after = _load_average()
    model_rss = max(0, _current_rss() - baseline_rss)

    # Accuracy: every sample of the data, through predict so quantized models get floats back.
    samples, predictions = 0, []
    scores: dict = {"accuracy": None, "per_class": {}}
    if x is not None and len(x) > 0:
        outputs = model.predict(x)
        samples = len(x)
        predicted = np.argmax(outputs, axis=-1)
        if y is not None:
            if predicted.shape != y.shape:
                raise RunnerError(
                    f"{path}: labels of shape {y.shape[1:]} per sample need an output of shape "
                    f"{y.shape[1:] + ('classes',)} per sample, got {outputs.shape[1:]}. "
                    "Run without labels y to time it only."
                )
            scores = score(outputs, y)
        if with_predictions:
            predictions = predicted.tolist()
    else:
        outputs = model.to_float(model.run_batch(latency_input))

    result = {
        "runner_version": RUNNER_VERSION,
        "artifact": {"path": path, "sha256": _sha256_file(path), "bytes": os.path.getsize(path)},
        "runtime": {
            "name": model.runtime,
            "version": model.runtime_version,
            "providers": list(model.providers),
                        "delegate": getattr(model, "delegate", None),
            "warnings": warnings,
        },
        "threads": threads,
        "batch": batch,
        "load_ms": model.load_ms,
        "latency_ms": latency_stats(times_ms[0], warmup, stopped[0]),
        "memory": {
            "baseline_rss_bytes": baseline_rss,
            "peak_rss_bytes": max(_peak_rss(), baseline_rss),
            "model_rss_bytes": model_rss,
        },
        "samples": samples,
        **scores,
        "output_checksum": _checksum(outputs),
        "host": _host(load_before, load_after),
    }
    if with_predictions:
        result["predictions"] = predictions
    return result


def score(outputs: np.ndarray, y: np.ndarray) -> dict:
    """Top-1 accuracy of `outputs` (..., classes) against integer labels `y` (...), and more by label shape.

    Labels (N,): a classifier; `per_class` counts samples and correct ones per label.
    Labels (N, T): a sequence model (a language model's next-token logits, (N, T, vocabulary)):
    `accuracy` is per token, and `cross_entropy` (mean negative log-likelihood per token, in nats)
    and `perplexity` (its exponential) are computed from the outputs, read as probabilities when
    every row is non-negative and sums to 1 (a softmax output), else as logits.
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    y = np.asarray(y)
    correct = np.argmax(outputs, axis=-1) == y
    result: dict = {"accuracy": float(np.mean(correct)), "per_class": {}}
    if y.ndim == 1:
        for label in np.unique(y):
            mask = y == label
            result["per_class"][str(int(label))] = {"n": int(mask.sum()), "correct": int(correct[mask].sum())}
        return result
    if np.any(y < 0) or np.any(y >= outputs.shape[-1]):
        raise RunnerError(
            f"Labels y range over {int(y.min())}..{int(y.max())} but the model has {outputs.shape[-1]} outputs "
            "per step: give labels that index its vocabulary."
        )
    # A quantized softmax's rows sum to 1 only to within its output step, hence the tolerance.
    probabilities = bool(np.all(outputs >= 0) and np.allclose(outputs.sum(axis=-1), 1.0, atol=0.05))
    if probabilities:
        log_p = np.log(np.clip(outputs, 1e-12, None))
    else:
        shifted = outputs - outputs.max(axis=-1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    picked = np.take_along_axis(log_p, y[..., None].astype(np.int64), axis=-1)[..., 0]
    cross_entropy = float(-picked.mean())
    result["cross_entropy"] = cross_entropy
    result["perplexity"] = float(np.exp(cross_entropy))
    return result


def _check_fits(model: Runtime, x: np.ndarray) -> None:
    """Raise unless each sample of `x` has the shape the model takes (-1 matches any size)."""
    expected = model.input_shape[1:]
    got = list(x.shape[1:])
    fits = len(got) == len(expected) and all(e == -1 or e == g for e, g in _pairs(expected, got))
    if not fits:
        shown = "(" + ", ".join("?" if d == -1 else str(d) for d in expected) + ")"
        raise RunnerError(
            f"Data samples have shape {tuple(got)} but the model takes {shown} per sample "
            f"(model input {model.input_shape}). Preprocess x to the model's input shape."
        )


def _pairs(a: list, b: list) -> list[tuple]:
    # zip() without strict= trips the linter, and strict= needs Python 3.10; lengths are checked first.
    return [(a[i], b[i]) for i in range(len(a))]


def _random_input(model: Runtime, batch: int) -> np.ndarray:
    """A deterministic float input of the model's shape, in the range its input dtype can hold."""
    shape = [batch] + [d if d > 0 else 1 for d in model.input_shape[1:]]
    rng = np.random.default_rng(0)
    dtype = np.dtype(model.input_dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if model._input_quant is not None:
            # Floats that quantize onto the whole integer range.
            scale, zero_point = model._input_quant
            low, high = (info.min - zero_point) * scale, (info.max - zero_point) * scale
        else:
            # Unquantized integers are usually ids or indices: small non-negative ones are safe.
            low, high = 0, min(int(info.max), 9)
        return rng.uniform(low, high, size=shape).astype(np.float32)
    # Float models usually take inputs scaled to [0, 1].
    return rng.random(shape, dtype=np.float32)


def benchmark_many(
    paths: list[str],
    x: np.ndarray | None = None,
    runs: int = 100,
    warmup: int = 10,
    threads: int = 1,
    batch: int = 1,
    providers: list[str] | None = None,
    max_runs: int | None = None,
    target_ci_width: float | None = None,
    max_seconds: float | None = None,
    delegate: str = "xnnpack",
) -> dict:
    """Load every file of `paths` and time them interleaved (see `time_interleaved`); no scoring.

    The latency input is the first `batch` rows of `x`, else a random input per model. Returns
    {runner_version, artifacts: [{artifact, runtime, threads, batch, load_ms, latency_ms}], host}.
    """
    _check_counts(runs, warmup, batch, max_runs)
    models, inputs, warnings = [], [], []
    for path in map(str, paths):
        model = open_model(path, threads=threads, providers=providers, delegate=delegate)
        if x is not None:
            _check_fits(model, np.asarray(x))
        notes = list(model.warnings)
        models.append(model)
        warnings.append(notes)
        inputs.append(_latency_input(model, None if x is None else np.asarray(x, dtype=np.float32), batch, notes))
    for i, model in enumerate(models):
        for _ in range(warmup):
            model.run_batch(inputs[i])
    load_before = _load_average()
    calls = [model.timer(inputs[i]) for i, model in enumerate(models)]
    times_ms, stopped = time_interleaved(calls, runs, max_runs, target_ci_width, max_seconds)
    load_after = _load_average()
    artifacts = []
    for i, model in enumerate(models):
        path = str(paths[i])
        artifacts.append({
            "artifact": {"path": path, "sha256": _sha256_file(path), "bytes": os.path.getsize(path)},
            "runtime": {"name": model.runtime, "version": model.runtime_version, "providers": list(model.providers),
                        "delegate": getattr(model, "delegate", None),
                        "warnings": warnings[i]},
            "threads": threads,
            "batch": batch,
            "load_ms": model.load_ms,
            "latency_ms": latency_stats(times_ms[i], warmup, stopped[i]),
        })
    return {"runner_version": RUNNER_VERSION, "artifacts": artifacts, "host": _host(load_before, load_after)}


def profile_many(paths: list[str], op_models: list[str], runs: int = 50, warmup: int = 10, threads: int = 1,
                 providers: list[str] | None = None, delegate: str = "xnnpack") -> dict:
    """`profile_tflite` or `profile_onnx` of each file of `paths`, in one process; `op_models` are "INDEX:FILE"
    entries giving each .tflite file its op models. Returns {runner_version, profiles: [...], host}."""
    by_index: dict = {}
    for entry in op_models:
        index, sep, file = entry.partition(":")
        if not sep or not index.isdigit() or int(index) >= len(paths):
            raise RunnerError(f"--op-model {entry!r}: give INDEX:FILE, INDEX the artifact's place (from 0).")
        by_index.setdefault(int(index), []).append(file)
    profiles = []
    for i, path in enumerate(paths):
        try:  # one file this runtime cannot profile (a new op version) does not cost the others theirs
            if _model_format(path) == "onnx":
                profiles.append(profile_onnx(path, runs, warmup, threads, providers))
            else:
                profiles.append(profile_tflite(path, by_index.get(i, []), runs, warmup, threads, delegate))
        except RunnerError as e:
            profiles.append({"error": str(e)})
    return {"runner_version": RUNNER_VERSION, "profiles": profiles, "host": _host()}


def profile_tflite(path: str, op_files: list[str], runs: int = 50, warmup: int = 10, threads: int = 1,
                   delegate: str = "xnnpack") -> dict:
    """Where a .tflite file's time goes, op by op: each of `op_files` (one operator of `path` each, cut out on the
    host: edgepress/deploy/op_models.py) timed at batch 1 with the same runtime and delegate as the whole file, the
    whole file beside them, interleaved. LiteRT's Python API has no op timer, so each op's time also holds one
    invocation's fixed cost; `floor_us` (the cheapest op's time) estimates it.

    Returns {method, runtime, whole_us (p50 of the whole file), floor_us, ops: [{file, us (p50), delegated (the
    delegate took the op), plan (the ops the runtime runs for it)}]}.
    """
    _check_counts(runs, warmup, 1, None)
    whole = open_model(path, threads=threads, delegate=delegate)
    interpreter_class = _tflite_interpreter()[0]
    models = []
    for file in op_files:  # an op may read several tensors (an ADD): its own interpreter, not the Runtime class
        try:
            models.append(_tflite_open(interpreter_class, file, threads, delegate))
        except (ValueError, RuntimeError) as e:
            raise RunnerError(f"{file}: {whole.runtime} could not load this op of {path} ({_one_line(e)}).") from None
    everything = [whole._interpreter, *models]
    inputs = [[_random_input_for(detail) for detail in m.get_input_details()] for m in everything]
    calls = [_invoke_all(m, x) for m, x in _pairs(everything, inputs)]
    for call in calls:
        for _ in range(warmup):
            call()
    times, _ = time_interleaved(calls, runs)
    medians = [float(np.median(t)) * 1000.0 for t in times]
    ops = []
    for (file, model), us in _pairs(_pairs(op_files, models), medians[1:]):
        plan = [op.get("op_name") for op in model._get_ops_details()]
        ops.append({"file": os.path.basename(file), "us": us, "delegated": "DELEGATE" in plan,
                    "plan": [name for name in plan if name != "DELEGATE"]})
    return {"method": "each op timed alone (a model of that op, cut out of the file)",
            "runtime": {"name": whole.runtime, "version": whole.runtime_version, "delegate": delegate},
            "whole_us": medians[0], "floor_us": min(medians[1:], default=0.0), "ops": ops}


def profile_onnx(path: str, runs: int = 50, warmup: int = 10, threads: int = 1,
                 providers: list[str] | None = None) -> dict:
    """Where an .onnx file's time goes, node by node, from onnxruntime's own profiler (`enable_profiling`): the
    median time of each node of the graph onnxruntime runs (after its fusions) over `runs` runs at batch 1, the
    execution provider that ran it, and the median of whole runs.

    Returns {method, runtime, whole_us, ops: [{name, op, provider, us}]}.
    """
    import tempfile

    _check_counts(runs, warmup, 1, None)
    ort = _onnxruntime()
    model = open_model(path, threads=threads, providers=providers)  # checks the file and the providers
    with tempfile.TemporaryDirectory() as work:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(work, "profile")
        session = ort.InferenceSession(path, sess_options=options, providers=model.providers)
        feed = {session.get_inputs()[0].name: _random_input(model, 1).astype(model.input_dtype)}
        for _ in range(warmup + runs):
            session.run(None, feed)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    runs_us = [e["dur"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"][warmup:]
    nodes: dict = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        args = e.get("args", {})
        name = e["name"][: -len("_kernel_time")]
        entry = nodes.setdefault(name, {"name": name, "op": args.get("op_name", "?"),
                                        "provider": args.get("provider", "?"), "in": _event_dtype(args, "input"),
                                        "out": _event_dtype(args, "output"), "times": []})
        entry["times"].append(e["dur"])
    ops = []
    for entry in nodes.values():
        kept = entry.pop("times")[warmup:] or [0]
        ops.append({**entry, "us": float(np.median(kept))})
    return {"method": "onnxruntime's profiler (per node of the optimized graph)",
            "runtime": {"name": model.runtime, "version": model.runtime_version},
            "whole_us": float(np.median(runs_us)) if runs_us else None, "ops": ops}


def _event_dtype(args: dict, which: str) -> str | None:
    """The element type of the first input or output of a profiled node ({"uint8": [1, 26, 26, 16]} -> "uint8")."""
    shapes = args.get(f"{which}_type_shape") or [{}]
    return next(iter(shapes[0]), None) if isinstance(shapes[0], dict) else None


def _random_input_for(detail: dict) -> np.ndarray:
    """A random tensor for an interpreter input `detail` (its shape, batch 1 where dynamic, and dtype), positive:
    an op cut out of a model may take only positive values (RSQRT of a LayerNorm's variance refuses a negative one
    in int16; a GATHER's indices), and a quantized value is positive above its zero point."""
    shape = [int(d) if d > 0 else 1 for d in detail["shape"]]
    dtype = np.dtype(detail["dtype"])
    rng = np.random.default_rng(0)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        quantization = detail.get("quantization") or (0.0, 0)
        low = min(max(info.min, int(quantization[1]) + 1), info.max)
        return rng.integers(low, min(info.max, low + 100) + 1, size=shape).astype(dtype)
    return rng.random(shape, dtype=np.float32).astype(dtype)


def _invoke_all(interpreter, inputs: list[np.ndarray]):
    """One invocation of `interpreter` on `inputs` (set once, ahead of the timing), as a no-argument callable."""
    for detail, x in _pairs(interpreter.get_input_details(), inputs):
        interpreter.set_tensor(detail["index"], x)
    return interpreter.invoke


def _check_counts(runs: int, warmup: int, batch: int, max_runs: int | None) -> None:
    if runs < 1 or warmup < 0 or batch < 1 or (max_runs is not None and max_runs < runs):
        raise RunnerError(
            f"runs and batch must be 1 or more, warmup 0 or more and max_runs at least runs (got runs={runs}, "
            f"batch={batch}, warmup={warmup}, max_runs={max_runs})."
        )


def _latency_input(model: Runtime, x: np.ndarray | None, batch: int, warnings: list[str]) -> np.ndarray:
    """The input every timed run gets, in the model's dtype: the first `batch` rows of the data (repeated if there
    are fewer), else a random input."""
    if x is not None and len(x) > 0:
        latency_x = x[np.arange(batch) % len(x)]
    else:
        latency_x = _random_input(model, batch)
    if model.fixed_batch is not None and batch != model.fixed_batch:
        calls = -(-batch // model.fixed_batch)
        warnings.append(
            f"the model's batch is fixed at {model.fixed_batch}, so each batch-{batch} run is {calls} invocations"
        )
    return model.prepare(latency_x)


def time_interleaved(
    calls: list,
    runs: int,
    max_runs: int | None = None,
    target_ci_width: float | None = None,
    max_seconds: float | None = None,
    clock=time.perf_counter,
) -> tuple[list[list[float]], list[str]]:
    """Time each no-argument callable of `calls` in interleaved rounds; per-run times in milliseconds.

    Each round gives every callable still being timed a block of runs in turn. The first `runs`
    runs are spread over at least MIN_ROUNDS rounds; after that a callable is timed on (blocks
    growing by a quarter of its runs, so the interval is checked only a few times) until its p50's
    confidence interval is at most `target_ci_width` times its p50, it has `max_runs` runs, or
    `max_seconds` have passed since the first round began. Without `max_runs` above `runs`, exactly
    `runs` runs. Returns the times per callable and why each stopped: "runs", "target", "max_runs"
    or "max_seconds".
    """
    max_runs = max(runs, max_runs or runs)
    block = max(1, -(-runs // MIN_ROUNDS))
    times: list[list[float]] = [[] for _ in calls]
    stopped = ["runs"] * len(calls)
    active = list(range(len(calls)))
    started = clock()
    while active:
        for i in active:
            call, kept = calls[i], times[i]
            done = len(kept)
            count = min(block, runs - done) if done < runs else min(max(block, done // 4), max_runs - done)
            for _ in range(count):
                start = clock()
                call()
                kept.append((clock() - start) * 1000.0)
        over_time = max_seconds is not None and clock() - started >= max_seconds
        still = []
        for i in active:
            why = _stop_reason(times[i], runs, max_runs, target_ci_width, over_time)
            if why is None:
                still.append(i)
            else:
                stopped[i] = why
        active = still
    return times, stopped


def _stop_reason(times: list[float], runs: int, max_runs: int, target: float | None, over_time: bool) -> str | None:
    if len(times) < runs:
        return None
    if max_runs == runs:
        return "runs"
    if target is not None:
        low, high = bootstrap_interval(times, 50)
        if high - low <= target * float(np.median(times)):
            return "target"
    if len(times) >= max_runs:
        return "max_runs"
    if over_time:
        return "max_seconds"
    return None if target is not None else "runs"


def bootstrap_interval(times: list[float], q: float, confidence: float = CONFIDENCE,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the `q`-th percentile of `times`."""
    t = np.asarray(times, dtype=np.float64)
    if len(t) < 2:
        return float(t[0]), float(t[0])
    rng = np.random.default_rng(seed)
    estimates = []
    chunk = max(1, 200_000 // len(t))  # bounds the resample matrix to ~1.6 MB on a small device
    for start in range(0, resamples, chunk):
        picks = rng.integers(0, len(t), size=(min(chunk, resamples - start), len(t)))
        estimates.append(np.percentile(t[picks], q, axis=1))
    estimates = np.concatenate(estimates)
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(estimates, tail)), float(np.percentile(estimates, 100 - tail))


def latency_stats(times_ms: list[float], warmup: int, stopped: str = "runs") -> dict:
    """Statistics of per-run times: p50/p90/p99, mean, std, min, max; p50_ci and p90_ci, bootstrap intervals at
    `confidence`; `stopped`, why the timing stopped; times_ms, the times themselves (at most TIMES_KEPT, evenly
    thinned, in the order they were measured)."""
    t = np.asarray(times_ms, dtype=np.float64)
    kept = t if len(t) <= TIMES_KEPT else t[np.linspace(0, len(t) - 1, TIMES_KEPT).round().astype(int)]
    return {
        "runs": len(t),
        "warmup": warmup,
        "p50": float(np.percentile(t, 50)),
        "p90": float(np.percentile(t, 90)),
        "p99": float(np.percentile(t, 99)),
        "mean": float(t.mean()),
        "std": float(t.std()),
        "min": float(t.min()),
        "max": float(t.max()),
        "p50_ci": list(bootstrap_interval(times_ms, 50)),
        "p90_ci": list(bootstrap_interval(times_ms, 90)),
        "confidence": CONFIDENCE,
        "stopped": stopped,
        "times_ms": [round(float(v), 6) for v in kept],
    }



# --- Decoder language models: prefill and decode against a KV cache -------------------------------------------
#
# A decoder .tflite file has a `prefill_N` signature (N prompt tokens at once) and a `decode` one (one token), each
# taking `tokens` (1, T) int32, `input_pos` (T,) int32 and `kv` (2 * layers, 1, heads, cache, head_dim), the whole
# cache, and returning `logits` (1, T, vocabulary) and the cache with the tokens' keys and values written in.
# A decoder .onnx file has onnxruntime-genai's layout: `input_ids` (1, T) int64 and `past_key_values.{i}.key` /
# `.value` (1, heads, past, head_dim) in, `logits` and `present.{i}.key` / `.value` (past + T) out; its cache
# length is in the file's metadata (edgepress.lm.cache_len).


class Decoder:
    """A decoder LM file with its KV cache: `prefill` a prompt, then `decode` one token at a time."""

    runtime: str
    runtime_version: str
    load_ms: float
    cache_len: int
    prefill_len: int | None  # the prompt length a prefill takes (TFLite: fixed by its signature); None: any

    def __init__(self) -> None:
        self.providers: list[str] = []
        self.warnings: list[str] = []
        self.position = 0

    def reset(self) -> None:
        raise NotImplementedError

    def prefill(self, tokens: np.ndarray) -> np.ndarray:
        """Logits (T, vocabulary) of the token after each of `tokens`, which start an empty cache."""
        tokens = np.asarray(tokens).reshape(-1)
        if self.prefill_len is not None and len(tokens) != self.prefill_len:
            raise RunnerError(f"this file prefills prompts of {self.prefill_len} tokens (its prefill_"
                              f"{self.prefill_len} signature), got {len(tokens)}: export it for that prompt length.")
        self._check_room(len(tokens), fresh=True)
        self.reset()
        return self._run(tokens, keep=True)

    def decode(self, token: int) -> np.ndarray:
        """Logits (vocabulary,) of the token after `token`, which goes into the cache at the next position."""
        self._check_room(1)
        return self._run(np.asarray([token]), keep=True)[0]

    def decode_timer(self):
        """A no-argument callable: one decode step at the current position whose cache is not kept, so every call
        times the same step (what decode tokens/s is measured on)."""
        self._check_room(1)
        token = np.asarray([1])
        return functools.partial(self._run, token, False)

    def _check_room(self, count: int, fresh: bool = False) -> None:
        used = 0 if fresh else self.position
        if used + count > self.cache_len:
            raise RunnerError(f"the KV cache holds {self.cache_len} tokens and {used + count} were asked for "
                              f"({used} in it, {count} more): a longer text needs a file exported with a longer "
                              "cache (cache_len).")

    def _run(self, tokens: np.ndarray, keep: bool) -> np.ndarray:
        raise NotImplementedError


class TFLiteDecoder(Decoder):
    def __init__(self, path: str, threads: int) -> None:
        super().__init__()
        interpreter_class, self.runtime, self.runtime_version = _tflite_interpreter()
        start = time.perf_counter()
        try:
            interpreter = interpreter_class(model_path=path, num_threads=threads)
            signatures = interpreter.get_signature_list()
        except (ValueError, RuntimeError) as e:
            raise RunnerError(f"{path}: {self.runtime} could not load it ({_one_line(e)}).") from None
        prefills = [name for name in signatures if name.startswith("prefill_")]
        if "decode" not in signatures or len(prefills) != 1:
            raise RunnerError(f"{path} is not a decoder LM file: it needs one prefill_N signature and a decode "
                              f"signature, and has {', '.join(signatures) or 'none'}.")
        self._prefill = interpreter.get_signature_runner(prefills[0])
        self._decode = interpreter.get_signature_runner("decode")
        self.load_ms = (time.perf_counter() - start) * 1000.0
        self.prefill_len = int(prefills[0].split("_", 1)[1])
        # The cache: one `kv_cache_k_{i}` / `kv_cache_v_{i}` (1, heads, cache, head_dim) per layer (LiteRT-LM's
        # names), or, in files edgepress wrote before, one `kv` (2 * layers, 1, heads, cache, head_dim).
        inputs = self._decode.get_input_details()
        caches = {name: d for name, d in inputs.items() if name == "kv" or name.startswith("kv_cache_")}
        if not caches:
            raise RunnerError(f"{path} is not a decoder LM file: its decode signature has no KV cache input "
                              f"(kv_cache_k_0, ...), only {', '.join(inputs)}.")
        self._empty = {name: np.zeros(d["shape"], dtype=d["dtype"]) for name, d in caches.items()}
        self.cache_len = int(inputs["kv"]["shape"][3] if "kv" in caches else next(iter(caches.values()))["shape"][2])
        self.vocabulary = int(self._decode.get_output_details()["logits"]["shape"][-1])
        self.reset()

    def reset(self) -> None:
        self._kv = self._empty
        self.position = 0

    def _run(self, tokens: np.ndarray, keep: bool) -> np.ndarray:
        runner = self._decode if len(tokens) == 1 else self._prefill
        positions = np.arange(self.position, self.position + len(tokens), dtype=np.int32)
        out = runner(tokens=tokens.astype(np.int32)[None], input_pos=positions, **self._kv)
        if keep:
            self._kv = {name: out[name] for name in self._kv}
            self.position += len(tokens)
        return out["logits"][0]


class OnnxDecoder(Decoder):
    def __init__(self, path: str, threads: int, providers: list[str] | None) -> None:
        super().__init__()
        ort = _onnxruntime()
        self.runtime, self.runtime_version = "onnxruntime", getattr(ort, "__version__", "unknown")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        start = time.perf_counter()
        try:
            self._session = ort.InferenceSession(path, sess_options=options,
                                                 providers=providers or ["CPUExecutionProvider"])
        except Exception as e:
            raise RunnerError(f"{path}: onnxruntime could not load it ({_one_line(e)}).") from None
        self.load_ms = (time.perf_counter() - start) * 1000.0
        self.providers = list(self._session.get_providers())
        inputs = {i.name: i for i in self._session.get_inputs()}
        self._pasts = [name for name in inputs if name.startswith("past_key_values.")]
        if "input_ids" not in inputs or not self._pasts:
            raise RunnerError(f"{path} is not a decoder LM file: it needs input_ids and past_key_values.* inputs, "
                              f"and has {', '.join(inputs)}.")
        self._outputs = ["logits", *(name.replace("past_key_values.", "present.") for name in self._pasts)]
        shape = inputs[self._pasts[0]].shape  # (batch, heads, past, head_dim)
        self._empty = np.zeros((1, int(shape[1]), 0, int(shape[3])), dtype=np.float32)
        meta = self._session.get_modelmeta().custom_metadata_map
        self.cache_len = int(meta.get("edgepress.lm.cache_len", 0)) or 2**31
        self.prefill_len = None
        self.vocabulary = None
        self.reset()

    def reset(self) -> None:
        self._cache = {name: self._empty for name in self._pasts}
        self.position = 0

    def _run(self, tokens: np.ndarray, keep: bool) -> np.ndarray:
        out = self._session.run(self._outputs, {"input_ids": tokens.astype(np.int64)[None], **self._cache})
        if keep:
            self._cache = dict(_pairs(self._pasts, list(out[1:])))
            self.position += len(tokens)
        return out[0][0]


def is_decoder(path: str) -> bool:
    """Whether `path` is a decoder LM file (prefill/decode signatures, or past_key_values inputs)."""
    if _model_format(path) == "tflite":
        interpreter_class, _, _ = _tflite_interpreter()
        return "decode" in interpreter_class(model_path=path).get_signature_list()
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    return any(i.name.startswith("past_key_values.") for i in session.get_inputs())


def open_decoder(path: str, threads: int = 1, providers: list[str] | None = None) -> Decoder:
    if threads < 1:
        raise RunnerError(f"threads must be 1 or more, got {threads}.")
    path = str(path)
    if _model_format(path) == "tflite":
        return TFLiteDecoder(path, threads)
    return OnnxDecoder(path, threads, providers)


def teacher_forced(model: Decoder, window: np.ndarray, prompt: int) -> np.ndarray:
    """Logits (T, vocabulary) after each token of `window`: its first `prompt` tokens prefilled, then every later
    one decoded in turn (the true token fed, not the predicted one)."""
    window = np.asarray(window).astype(np.int64).reshape(-1)
    if not 0 < prompt <= len(window):
        raise RunnerError(f"the prompt ({prompt} tokens) must be 1 to {len(window)} tokens, the window's length.")
    logits = [model.prefill(window[:prompt])]
    logits += [model.decode(int(token))[None] for token in window[prompt:]]
    return np.concatenate(logits).astype(np.float32)


def greedy(model: Decoder, prompt_tokens: np.ndarray, count: int) -> list[int]:
    """`count` tokens generated greedily after `prompt_tokens` (stops with RunnerError at the end of the cache)."""
    logits = model.prefill(np.asarray(prompt_tokens).reshape(-1))[-1]
    out = []
    for _ in range(count):
        out.append(int(np.argmax(logits)))
        if len(out) == count:
            break
        logits = model.decode(out[-1])
    return out


def lm_benchmark(
    path: str,
    x: np.ndarray | None,
    y: np.ndarray | None,
    prompt: int,
    runs: int = 100,
    warmup: int = 10,
    threads: int = 1,
    providers: list[str] | None = None,
    max_runs: int | None = None,
    target_ci_width: float | None = None,
    max_seconds: float | None = None,
) -> dict:
    """A decoder LM file measured as one is used: perplexity on (x, y) token windows teacher-forced through its
    prefill and decode, time to first token (a `prompt`-token prefill), decode tokens/s (one decode step after the
    prompt, timed like any latency: p50 with its interval), and peak memory after filling its KV cache.

    Returns `benchmark`'s JSON shape (latency_ms is the decode step's) plus `lm`: ttft_ms, decode_tokens_per_s,
    prompt_len, cache_len, greedy (the continuation of the first window's prompt) and generated tokens/s.
    """
    _check_counts(runs, warmup, 1, max_runs)
    if _model_format(path) == "tflite":
        _tflite_interpreter()
    else:
        _onnxruntime()
    baseline_rss = _current_rss()
    model = open_decoder(path, threads, providers)
    samples, scores, outputs = 0, {"accuracy": None, "per_class": {}}, None
    prompt_tokens = np.ones(prompt, dtype=np.int64)
    if x is not None and len(x) > 0:
        x = np.asarray(x).astype(np.int64)
        if x.ndim != 2:
            raise RunnerError(f"a decoder is scored on token windows (N, T), got data of shape {x.shape}.")
        outputs = np.stack([teacher_forced(model, window, prompt) for window in x])
        samples = len(x)
        if y is not None:
            scores = score(outputs, np.asarray(y))
        prompt_tokens = x[0, :prompt]
    ttft, decode = _lm_calls(model, prompt_tokens)
    for _ in range(warmup):
        ttft()
        decode()
    load_before = _load_average()
    times_ms, stopped = time_interleaved([ttft, decode], runs, max_runs, target_ci_width, max_seconds)
    load_after = _load_average()
    # The cache filled to its length by a greedy generation: the memory a full context takes.
    room = min(model.cache_len, 4096) - prompt
    start = time.perf_counter()
    continuation = greedy(model, prompt_tokens, room) if room > 0 else []
    generate_s = time.perf_counter() - start
    model_rss = max(0, _current_rss() - baseline_rss)
    decode_stats = latency_stats(times_ms[1], warmup, stopped[1])
    result = {
        "runner_version": RUNNER_VERSION,
        "artifact": {"path": path, "sha256": _sha256_file(path), "bytes": os.path.getsize(path)},
        "runtime": {"name": model.runtime, "version": model.runtime_version, "providers": list(model.providers),
                    "warnings": list(model.warnings)},
        "threads": threads,
        "batch": 1,
        "load_ms": model.load_ms,
        "latency_ms": decode_stats,
        "memory": {"baseline_rss_bytes": baseline_rss, "peak_rss_bytes": max(_peak_rss(), baseline_rss),
                   "model_rss_bytes": model_rss},
        "samples": samples,
        **scores,
        "output_checksum": _checksum(outputs if outputs is not None else np.zeros(1)),
        "host": _host(load_before, load_after),
        "lm": {**lm_speeds(latency_stats(times_ms[0], warmup, stopped[0]), decode_stats),
               "prompt_len": prompt, "cache_len": model.cache_len, "greedy": continuation[:64],
               "generated_tokens": len(continuation),
               "generated_tokens_per_s": len(continuation) / generate_s if continuation else None},
    }
    if outputs is not None:
        result["predictions"] = np.argmax(outputs, axis=-1).tolist()
    return result


def _lm_calls(model: Decoder, prompt_tokens: np.ndarray) -> tuple:
    """(time to first token, one decode step): the callables the timing loop runs."""
    def ttft() -> None:
        model.prefill(prompt_tokens)

    model.prefill(prompt_tokens)
    decode_step = model.decode_timer()
    state = (getattr(model, "_kv", None), getattr(model, "_cache", None), model.position)

    def restore_then_decode() -> None:
        # ttft() reset the cache: put the prompt's back (cheap: arrays are swapped, not copied) before the step.
        if state[0] is not None:
            model._kv = state[0]
        if state[1] is not None:
            model._cache = state[1]
        model.position = state[2]
        decode_step()

    return ttft, restore_then_decode


def lm_speeds(ttft: dict, decode: dict) -> dict:
    """TTFT statistics, and decode tokens/s: 1000 / the decode step's p50, its interval from the p50's."""
    low, high = decode["p50_ci"]
    return {"ttft_ms": ttft, "decode_tokens_per_s": {"p50": 1000.0 / decode["p50"],
                                                     "p50_ci": [1000.0 / high, 1000.0 / low]}}


def lm_benchmark_many(paths: list[str], prompt: int, runs: int = 100, warmup: int = 10, threads: int = 1,
                      providers: list[str] | None = None, max_runs: int | None = None,
                      target_ci_width: float | None = None, max_seconds: float | None = None) -> dict:
    """Every decoder file of `paths` timed interleaved (TTFT and a decode step each); no scoring."""
    _check_counts(runs, warmup, 1, max_runs)
    models = [open_decoder(str(p), threads, providers) for p in paths]
    calls = []
    for model in models:
        calls += list(_lm_calls(model, np.ones(prompt, dtype=np.int64)))
    for _ in range(warmup):
        for call in calls:
            call()
    load_before = _load_average()
    times_ms, stopped = time_interleaved(calls, runs, max_runs, target_ci_width, max_seconds)
    load_after = _load_average()
    artifacts = []
    for i, model in enumerate(models):
        path = str(paths[i])
        decode = latency_stats(times_ms[2 * i + 1], warmup, stopped[2 * i + 1])
        artifacts.append({
            "artifact": {"path": path, "sha256": _sha256_file(path), "bytes": os.path.getsize(path)},
            "runtime": {"name": model.runtime, "version": model.runtime_version, "providers": list(model.providers),
                        "warnings": list(model.warnings)},
            "threads": threads, "batch": 1, "load_ms": model.load_ms, "latency_ms": decode,
            "lm": {**lm_speeds(latency_stats(times_ms[2 * i], warmup, stopped[2 * i]), decode),
                   "prompt_len": prompt, "cache_len": model.cache_len},
        })
    return {"runner_version": RUNNER_VERSION, "artifacts": artifacts, "host": _host(load_before, load_after)}


def _checksum(outputs: np.ndarray) -> str:
    """sha256 of the float32 outputs rounded to 4 decimals, so tiny float noise does not change it."""
    rounded = np.round(np.asarray(outputs, dtype=np.float32), 4).astype(np.float32)
    rounded = rounded + np.float32(0.0)  # turns -0.0 into 0.0, so both hash alike
    return hashlib.sha256(np.ascontiguousarray(rounded).tobytes()).hexdigest()


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _proc_status_bytes(field: str) -> int | None:
    """A memory field (e.g. VmRSS) of /proc/self/status in bytes, or None where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # the kernel reports kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _rusage_peak_bytes() -> int:
    try:
        import resource
    except ImportError:  # Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in bytes on macOS and in KiB on Linux and the BSDs.
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def _current_rss() -> int:
    rss = _proc_status_bytes("VmRSS")
    # Without /proc the peak so far is the best available stand-in for the current size.
    return rss if rss is not None else _rusage_peak_bytes()


def _peak_rss() -> int:
    peak = _proc_status_bytes("VmHWM")
    return peak if peak is not None else _rusage_peak_bytes()


def _host(load_before: float | None = None, load_after: float | None = None) -> dict:
    """What shapes the numbers on this machine: the CPU, its cores, and how busy it was around the timing."""
    return {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "load_before": load_before,
        "load_after": load_after,
    }


def _load_average() -> float | None:
    """The one-minute load average (runnable processes), or None where the system has none (Windows)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def cpu_model() -> str:
    # x86 Linux names the CPU in "model name"; many ARM boards (a Raspberry Pi) give only "Model".
    found = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() in ("model name", "Model") and value.strip():
                    found.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return found.get("model name") or found.get("Model") or platform.processor() or platform.machine()


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def load_data(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """`x` and, when present, `y` from an .npz file, with errors that say how to fix the file."""
    if not os.path.isfile(path):
        raise RunnerError(f"Data file {path} does not exist (or is not a regular file): give an .npz file with arrays "
                          "x (and y).")
    try:
        _check_declared_sizes(path)
        with np.load(path, allow_pickle=False) as data:
            names = list(data.files)
            if "x" not in names:
                raise RunnerError(
                    f"Data file {path} has no array 'x' (it has: {', '.join(names) or 'nothing'}). "
                    "Save it with np.savez(path, x=inputs, y=labels)."
                )
            x = data["x"]
            y = data["y"] if "y" in names else None
    except RunnerError:
        raise
    except Exception as e:  # not a zip, truncated, pickled objects, ...
        raise RunnerError(
            f"Data file {path} is not a readable .npz ({_one_line(e)}). "
            "Save it with np.savez(path, x=inputs, y=labels)."
        ) from None
    return x, y


def _check_declared_sizes(path: str) -> None:
    """Refuse an .npz whose arrays' headers declare more than MAX_DATA_BYTES, before anything is allocated."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if not name.endswith(".npy"):
                continue
            with archive.open(name) as stream:
                version = np.lib.format.read_magic(stream)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(stream)
            size = int(np.prod(shape, dtype=object)) * max(dtype.itemsize, 4)
            if size > MAX_DATA_BYTES:
                raise RunnerError(f"Data file {path}: its array {name[:-4]} declares shape {tuple(shape)} "
                                  f"({size / 2**30:,.1f} GiB as float32), more than the runner loads "
                                  f"({MAX_DATA_BYTES / 2**30:.0f} GiB). Give a smaller sample.")


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send everything written to file descriptor 1 to stderr, so `--json` output stays one JSON object.

    Runtimes are native code and some print to stdout themselves; redirecting the descriptor
    catches those prints too, not just Python's.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _summary(result: dict) -> str:
    lat = result["latency_ms"]
    mem = result["memory"]
    rt = result["runtime"]
    providers = f" on {', '.join(rt['providers'])}" if rt["providers"] else ""
    lines = [
        f"{result['artifact']['path']}  ({rt['name']} {rt['version']}{providers}, "
        f"{result['threads']} thread(s), batch {result['batch']})",
        f"  load      {result['load_ms']:.1f} ms",
        f"  latency   p50 {lat['p50']:.3f} ms [{lat['p50_ci'][0]:.3f}, {lat['p50_ci'][1]:.3f}]  "
        f"p90 {lat['p90']:.3f} ms  "
        f"p99 {lat['p99']:.3f} ms  ({lat['runs']} runs, 95% interval of the p50 in brackets)",
        f"  memory    peak {mem['peak_rss_bytes'] / 2**20:.1f} MiB, model +{mem['model_rss_bytes'] / 2**20:.1f} MiB",
    ]
    if result["accuracy"] is not None:
        lines.append(f"  accuracy  {result['accuracy'] * 100:.2f}% on {result['samples']} samples")
    if result.get("perplexity") is not None:
        lines.append(f"  perplexity {result['perplexity']:.3f} "
                     f"(cross-entropy {result['cross_entropy']:.4f} nats per token)")
    lm = result.get("lm")
    if lm:
        speed = lm["decode_tokens_per_s"]
        lines.append(f"  decode    {speed['p50']:.1f} tokens/s [{speed['p50_ci'][0]:.1f}, {speed['p50_ci'][1]:.1f}]"
                     f"  TTFT p50 {lm['ttft_ms']['p50']:.3f} ms for {lm['prompt_len']} prompt tokens"
                     f"  (cache {lm['cache_len']} tokens)")
    lines.extend(f"  warning: {w}" for w in rt["warnings"])
    return "\n".join(lines)


def _check_copy(path: str, expected: str | None) -> None:
    """A file copied to the device must be the one that was sent: compare sha256 before running."""
    if expected is None or not os.path.isfile(path):
        return  # a missing file gets its own error where it is opened
    actual = _sha256_file(path)
    if actual != expected.lower():
        raise RunnerError(
            f"{path} has sha256 {actual[:12]}... but {expected[:12]}... was sent: the copy on this device is "
            "damaged or stale; copy it again"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="runner.py", description="Time .tflite or .onnx models on this device, and score one on data."
    )
    parser.add_argument("artifact", nargs="+",
                        help="the .tflite or .onnx file (several: timed interleaved, not scored)")
    parser.add_argument("--data", help="an .npz with x (preprocessed inputs) and optionally y (integer labels)")
    parser.add_argument("--runs", type=int, default=100, help="timed runs, at least (default 100)")
    parser.add_argument("--max-runs", type=int, help="timed runs at most, with --target-ci-width (default: --runs)")
    parser.add_argument("--target-ci-width", type=float,
                        help="add runs until the p50's 95%% interval is at most this fraction of the p50 (e.g. 0.05)")
    parser.add_argument("--max-seconds", type=float, help="stop adding runs after this many seconds of timing")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs first (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="runtime threads (default 1)")
    parser.add_argument("--batch", type=int, default=1, help="batch size of each timed run (default 1)")
    parser.add_argument(
        "--providers", help="ONNX execution providers in order, e.g. CUDAExecutionProvider,CPUExecutionProvider"
    )
    parser.add_argument("--delegate", default="xnnpack", choices=DELEGATES,
                        help="TFLite: xnnpack (LiteRT's default) or none (the builtin kernels alone)")
    parser.add_argument("--predictions", action="store_true", help="include the top-1 prediction of every sample")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    parser.add_argument("--expect-sha256", action="append", default=[],
                        help="refuse to run unless the artifact has this sha256 (copy check); once per artifact")
    parser.add_argument("--expect-data-sha256", help="refuse to run unless --data has this sha256 (copy check)")
    parser.add_argument("--profile", action="store_true",
                        help="time the artifact op by op instead (.onnx: onnxruntime's profiler; .tflite: the files of "
                        "--op-model, one op of it each)")
    parser.add_argument("--op-model", action="append", default=[],
                        help="with --profile: INDEX:FILE, one op of the INDEX-th artifact (a .tflite file, from 0) "
                        "as its own model, in op order")
    parser.add_argument("--lm-prompt", type=int,
                        help="the files are decoder LMs (prefill/decode with a KV cache): measure perplexity on the "
                        "data's token windows through prefill and decode, time to first token for a prompt of this "
                        "many tokens, and decode tokens/s")
    args = parser.parse_args(argv)

    providers = [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else None
    adaptive = {"max_runs": args.max_runs, "target_ci_width": args.target_ci_width, "max_seconds": args.max_seconds}
    try:
        if args.expect_sha256 and len(args.expect_sha256) != len(args.artifact):
            raise RunnerError(f"--expect-sha256 was given {len(args.expect_sha256)} times for {len(args.artifact)} "
                              "artifacts: give it once per artifact, in the same order.")
        for i, artifact in enumerate(args.artifact):
            _check_copy(artifact, args.expect_sha256[i] if args.expect_sha256 else None)
        if args.data:
            _check_copy(args.data, args.expect_data_sha256)
        x, y = load_data(args.data) if args.data else (None, None)
        with _stdout_to_stderr() if args.json else nullcontext():
            if args.lm_prompt is not None and len(args.artifact) == 1:
                result = lm_benchmark(args.artifact[0], x, y, args.lm_prompt, runs=args.runs, warmup=args.warmup,
                                      threads=args.threads, providers=providers, **adaptive)
            elif args.lm_prompt is not None:
                result = lm_benchmark_many(args.artifact, args.lm_prompt, runs=args.runs, warmup=args.warmup,
                                           threads=args.threads, providers=providers, **adaptive)
            elif args.profile:
                result = profile_many(args.artifact, args.op_model, args.runs, args.warmup, args.threads, providers,
                                      args.delegate)
            elif len(args.artifact) == 1:
                result = benchmark(
                    args.artifact[0], x, y, runs=args.runs, warmup=args.warmup, threads=args.threads,
                    batch=args.batch, providers=providers, delegate=args.delegate,
                    with_predictions=args.predictions, **adaptive,
                )  # fmt: skip
            else:
                result = benchmark_many(args.artifact, x, runs=args.runs, warmup=args.warmup, threads=args.threads,
                                        batch=args.batch, providers=providers, delegate=args.delegate, **adaptive)
    except RunnerError as e:
        print(f"runner.py: error: {e}", file=sys.stderr)
        if _UNFINISHED:
            # A TFLite call still runs in its thread: end the process now, before interpreter shutdown and the
            # runtime's own destructors run under it.
            sys.stderr.flush()
            os._exit(2)
        return 2
    if args.json:
        print(json.dumps(result))
    elif args.profile:
        for path, profile in _pairs(args.artifact, result["profiles"]):
            print("\n".join([path, *(f"  {op.get('op', op.get('file'))}: {op['us']:.1f} us" for op in profile["ops"])]))
    elif "artifacts" in result:
        print("\n".join(_latency_line(r) for r in result["artifacts"]))
    else:
        print(_summary(result))
    return 0


def _latency_line(result: dict) -> str:
    lat = result["latency_ms"]
    low, high = lat["p50_ci"]
    return (f"{result['artifact']['path']}: p50 {lat['p50']:.3f} ms [{low:.3f}, {high:.3f}]  p90 {lat['p90']:.3f} ms  "
            f"({lat['runs']} runs, stopped: {lat['stopped']})")


if __name__ == "__main__":
    sys.exit(main())
