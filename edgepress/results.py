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
  scratch_accuracy}.
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

from typing import Any

from typing_extensions import NotRequired, TypedDict

from edgepress.errors import EdgepressError

SCHEMA_VERSION = 1


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


class DeviceInfo(TypedDict):
    reach: str
    error: str | None
    memory_budget_mb: float | None
    emulated: NotRequired[bool]  # its CPU is emulated: latency recorded, never judged nor recommended on


class Metrics(TypedDict):
    accuracy: float | None
    accuracy_drop: NotRequired[float | None]
    agreement: float | None
    cross_entropy: NotRequired[float]
    perplexity: NotRequired[float]


class Latency(TypedDict, total=False):
    unit: str
    p50: float | None
    p90: float | None
    p99: float | None
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    runs: int
    warmup: int
    threads: int | None
    batch: int | None
    p50_ci: list[float] | None
    p90_ci: list[float] | None
    confidence: float
    stopped: str | None
    times_ms: list[float]
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
    name: str
    device: str
    format: str
    precision: str
    path: str
    bytes: int
    gzip_bytes: int
    sha256: str
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
    the first keys at fault otherwise (`what` names the file in the message)."""
    from pydantic import TypeAdapter, ValidationError

    if not isinstance(raw, dict) or "artifacts" not in raw:
        raise EdgepressError(f"{what} is not an edgepress results.json (it has no artifacts).")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise EdgepressError(f"{what} has schema_version {version!r}, this edgepress writes {SCHEMA_VERSION}: "
                             "measure it again with this version.")
    try:
        TypeAdapter(Results).validate_python(raw, strict=False)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:3])
        raise EdgepressError(f"{what} is not a results.json this edgepress can read ({problems}). Give the "
                             "results.json of a run, as that run wrote it.") from None
    return raw
