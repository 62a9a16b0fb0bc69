"""results.json, typed: what a run writes, what `edgepress compare` and `--baseline` read back.

    results: Results = {...}         # built by edgepress.api, judged by edgepress.verdict, shown by edgepress.report
    check_results(raw, "Baseline x.json")   # a file read back: refused (EdgepressError) unless it has this shape

The rows stay plain dicts (JSON in, JSON out); these TypedDicts say which keys they have and what type each
value is. `SCHEMA_VERSION` changes whenever a key is removed or changes meaning. Imports nothing above errors.

Notes on the values:
- `source.kind` is a model kind of edgepress.models (keras3, tf_keras, saved_model, onnx, torch); a sequence model
  (labels per time step) also has cross_entropy and perplexity, there and in each artifact's metrics.
- `models`: the source, then the model after each step (macs: multiply-accumulates for one sample); a distill step
  adds `distill` {student, teacher, temperature, alpha, epochs, teacher_accuracy, student_accuracy,
  scratch_accuracy}; a qat step of a Keras 3 attention model (trained natively) adds `qat` {how, kernels,
  attention_layers, weights, activations}.
- `artifacts`: one row per artifact and device; a value a device could not measure (adb: accuracy) is null. Every
  `quantization` has int8_macs, int16_macs, hybrid_macs, macs; a sparse TFLite export adds sparse(_tensors). The
  latency intervals are bootstrap intervals at `confidence` (0.95); `stopped` says why the adaptive runs stopped;
  `times_ms` keeps at most 2,000 per-run times. An accuracy-aware export's rows carry `float_layers` and
  `accuracy_aware` {role, max_accuracy_drop, budget_met, accuracy_drop_from_float, remedy, min_int8_macs}.
- `profile` on a row: where its time goes on that device, op by op (edgepress/deploy/profile.py: method, ops with
  their time, share, delegate or execution provider, dtypes, kernel kind and MACs, by_type), or {error}; null with
  measure.profile off.
- `error` on a row: the device could not run that artifact (its runtime lacks an op, op version or schema, or the
  format), and its numbers are null; `latency.emulated` marks a device whose CPU is emulated (never judged on p50).
- `across_devices`: each artifact on each device against the first device that ran it: accuracy on both, top-1
  agreement between them, same outputs to 4 decimals, and `flagged` when the accuracy moved beyond the budget
  (edgepress/across.py).
- `gates` on a row: each gate's limit, measured value and verdict (`minimum`: the limit is a floor); the
  baseline's gates also have the baseline's value (edgepress/verdict.py).
- `baseline` (with gates.baseline): the comparison {path, limits, flags, regressed, rows}, or {path, error}.
- `quantize`: one entry per accuracy-aware export (sensitivity.json has the same).
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

from pydantic import AfterValidator, Field
from typing_extensions import NotRequired, TypedDict

from edgepress.errors import EdgepressError
from edgepress.values import plain_path

SCHEMA_VERSION = 1

# The numbers a comparison computes with are checked to be what a run writes: finite, in range (a results file read
# back may come from anyone: a string, NaN, a negative size or a one-value interval would end in a wrong verdict or
# a crash).
Count = Annotated[int, Field(ge=0)]
Ms = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Share = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Number = Annotated[float, Field(allow_inf_nan=False)]
Interval = Annotated[list[Ms], Field(min_length=2, max_length=2)]
Name = Annotated[str, Field(min_length=1, max_length=300, pattern=r"^[^/\\\x00]+$")]
FilePath = Annotated[str, Field(max_length=4096), AfterValidator(plain_path)]  # no NUL, no part over 255 bytes
# What a results.json may be, at most: a run's file is megabytes (2,000 times per row), nested a few levels.
MAX_BYTES = 200_000_000
MAX_DEPTH = 32


class DataInfo(TypedDict):
    dataset: str
    train_samples: int
    test_samples: int
    calibration_samples: int


class SourceInfo(TypedDict):
    model: str
    kind: str
    params: int
    metrics: dict[str, float | None]


class ModelRow(TypedDict):
    stage: str
    accuracy: float | None
    params: int
    macs: int | None
    sparsity: float | None
    file: dict[str, Any]
    cross_entropy: NotRequired[float]
    perplexity: NotRequired[float]
    distill: NotRequired[dict[str, Any]]
    qat: NotRequired[dict[str, Any]]


class DeviceInfo(TypedDict):
    reach: str
    error: str | None
    memory_budget_mb: float | None
    emulated: NotRequired[bool]  # its CPU is emulated: latency recorded, never judged nor recommended on


class Metrics(TypedDict):
    accuracy: Share | None
    accuracy_drop: NotRequired[Number | None]
    agreement: Share | None
    cross_entropy: NotRequired[Number]
    perplexity: NotRequired[Number]


class Latency(TypedDict, total=False):
    unit: str
    p50: Ms | None
    p90: Ms | None
    p99: Ms | None
    mean: Ms | None
    std: Ms | None
    min: Ms | None
    max: Ms | None
    runs: Count
    warmup: Count | None
    threads: Count | None
    batch: Count | None
    p50_ci: Interval | None
    p90_ci: Interval | None
    confidence: Share
    stopped: str | None
    times_ms: list[Ms]
    emulated: bool


class RuntimeInfo(TypedDict):
    name: str
    version: str | None
    providers: list[str]
    warnings: list[str]


class Gate(TypedDict):
    limit: float
    value: float | None
    passed: bool
    minimum: NotRequired[bool]
    significant: NotRequired[bool | None]
    baseline: NotRequired[float | None]


class ArtifactRow(TypedDict):
    name: Name
    device: Name
    format: str
    precision: str
    path: FilePath
    bytes: Count
    gzip_bytes: Count
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    steps: list[str]
    quantization: dict[str, Any]
    check: dict[str, Any]
    layout: str | None
    metrics: Metrics
    latency: Latency
    load_ms: float | None
    memory: dict[str, int | None]
    runtime: RuntimeInfo
    host: dict[str, Any] | None
    profile: NotRequired[dict[str, Any] | None]
    gates: NotRequired[dict[str, Gate]]
    passed: NotRequired[bool]
    float_layers: NotRequired[list[dict[str, Any]]]
    accuracy_aware: NotRequired[dict[str, Any]]
    output_checksum: NotRequired[str | None]
    error: NotRequired[str]  # the device could not run it (its numbers are null)


class Results(TypedDict):
    schema_version: int
    edgepress_version: str | None
    created: str
    duration_s: float
    recipe: dict[str, Any]
    environment: dict[str, str | None]
    data: DataInfo
    source: SourceInfo
    models: list[ModelRow]
    devices: dict[str, DeviceInfo]
    artifacts: list[ArtifactRow]
    gates: dict[str, Any]
    quantize: list[dict[str, Any]]
    notes: list[str]
    best: NotRequired[dict[str, str | None]]
    passed: NotRequired[bool]
    baseline: NotRequired[dict[str, Any]]
    across_devices: NotRequired[list[dict[str, Any]]]  # edgepress/across.py


def check_results(raw: Any, what: str) -> Results:
    """`raw` (a results.json read back) if it has the shape of `Results` at this SCHEMA_VERSION; EdgepressError naming
    the first keys at fault otherwise (`what` names the file in the message). Strict: a value of another type is
    refused, not converted (the raw values are what the caller uses)."""
    from pydantic import ValidationError

    if not isinstance(raw, dict) or "artifacts" not in raw:
        raise EdgepressError(f"{what} is not an edgepress results.json (it has no artifacts).")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise EdgepressError(f"{what} has schema_version {version!r}, this edgepress writes {SCHEMA_VERSION}: "
                             "measure it again with this version.")
    depth = _depth(raw)
    if depth > MAX_DEPTH:
        raise EdgepressError(f"{what} nests {depth} levels deep; a results.json nests at most {MAX_DEPTH}. Give the "
                             "results.json of a run, as that run wrote it.")
    try:
        _adapter().validate_python(raw, strict=True)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:3])
        raise EdgepressError(f"{what} is not a results.json this edgepress can read ({problems}). Give the "
                             "results.json of a run, as that run wrote it.") from None
    return raw


@functools.cache
def _adapter():
    """The validator of `Results`, built once, on first use."""
    from pydantic import TypeAdapter

    return TypeAdapter(Results)


def _depth(value: Any) -> int:
    """How deeply `value` nests lists and dicts (without recursion: the value may be a hostile file's)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if deepest > MAX_DEPTH:
                return deepest
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest
