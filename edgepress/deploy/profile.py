"""Where an artifact's time goes on a device, op by op, and which ops its delegate or execution provider ran.

    profiles = profile_many([artifact, ...], device, runs=50)   # one profile (or {"error"}) per artifact
    profile["ops"]       # [{name, op, us, share, runs_on, offloaded, in, out, kind, macs, prep}], in execution order
    profile["by_type"]   # {op type: us}, the ops of each type added up

Measured by the on-device runner (edgepress/deploy/runner.py, --profile), so it works on a board over ssh, with no
TensorFlow there. ONNX: onnxruntime's own profiler, per node of the graph it runs (its fusions done), with the
execution provider of each. TFLite: LiteRT's Python API has no op timer, so each op is cut out of the file as a model
of its own (edgepress/deploy/op_models.py, here on the host) and the runner times each with the device's delegate,
recording whether the delegate took it (`offloaded`; for ONNX: whether the device's first execution provider ran
it); each such time holds one invocation's fixed cost too (`floor_us`, the cheapest
op's time, estimates it), so the ops' times add up to more than the whole file's. `method` says which way a profile was
taken. `kind` is the kernel kind of a MAC op (integer, int16, hybrid or float, edgepress/deploy/coverage.py), `macs` its
multiply-accumulates.
"""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path
from typing import Any

from edgepress.artifact import Artifact
from edgepress.devices import Device
from edgepress.errors import EdgepressError, first_line


def profile_many(artifacts: list[Artifact | Path], device: Device, runs: int = 50, warmup: int = 10,
                 threads: int | None = None) -> list[dict[str, Any]]:
    """The profile of each artifact on `device` (see the module doc), taken in one runner process; an artifact that
    cannot be profiled there gets {"error": why} (its measurement stands without it)."""
    from edgepress.deploy.op_models import op_models
    from edgepress.deploy.transports import DeviceError, run_profile

    paths = [Path(a.path if isinstance(a, Artifact) else a) for a in artifacts]
    threads = threads or device.threads
    with tempfile.TemporaryDirectory() as work:
        cut, op_files = [], []
        for i, path in enumerate(paths):
            rows = op_models(path, Path(work) / f"a{i}") if path.suffix == ".tflite" else []
            cut.append(rows)
            # Each artifact's op files get their own names: over ssh they share one work folder.
            files = []
            for row in rows:
                if row["file"]:
                    named = Path(work) / f"a{i}_{row['file']}"
                    (Path(work) / f"a{i}" / row["file"]).rename(named)
                    row["file"] = named.name
                    files.append(named)
            op_files.append(files)
        try:
            raw = run_profile(device, paths, op_files, runs, warmup, threads)
        except DeviceError as e:
            return [{"error": str(e)} for _ in paths]
    return [profile if profile.get("error") else _joined(path, rows, profile, device) for path, rows, profile in
            zip(paths, cut, raw["profiles"], strict=True)]


def _joined(path: Path, rows: list[dict], raw: dict, device: Device) -> dict[str, Any]:
    """The runner's timings of one file, with what the host knows of its ops (types, names, MACs, kernel kinds)."""
    from edgepress.deploy.coverage import int8_macs

    try:
        macs = {op["name"]: op for op in int8_macs(path)["ops"]}
    except EdgepressError as e:  # MACs not countable (an ONNX graph with unknown sizes): the timings still stand
        macs, note = {}, f"MACs not counted: {first_line(e)}"
    else:
        note = None
    if path.suffix == ".tflite":
        timed = {op["file"]: op for op in raw["ops"]}
        runs_on = {"xnnpack": "XNNPACK", "gpu": "GPU delegate"}.get(device.delegate, "builtin kernels")
        ops = []
        for row in rows:
            op = timed.get(row["file"]) if row["file"] else None
            ops.append({"name": row["name"], "op": row["op"], "us": None if op is None else op["us"],
                        "runs_on": None if op is None else (runs_on if op["delegated"] else "builtin kernels"),
                        "offloaded": None if op is None else bool(op["delegated"]),
                        "in": row["in"], "out": row["out"], "prep": row["prep"], "why": row["why"]})
    else:
        first = device.execution_providers[0] if device.execution_providers else "CPUExecutionProvider"
        ops = [{"name": op["name"], "op": op["op"], "us": op["us"], "runs_on": op["provider"],
                "offloaded": op["provider"] == first, "in": op.get("in"), "out": op.get("out"), "prep": [],
                "why": None} for op in raw["ops"]]
        macs = _by_onnx_node(ops, macs)
    total = sum(op["us"] for op in ops if op["us"] is not None)
    by_type: dict[str, float] = {}
    for op in ops:
        mac = macs.get(op["name"])
        op.update(kind=mac["kind"] if mac else None, macs=mac["macs"] if mac else None,
                  share=None if op["us"] is None or not total else op["us"] / total)
        if op["us"] is not None:
            by_type[op["op"]] = by_type.get(op["op"], 0.0) + op["us"]
    return {"method": raw["method"], "runtime": raw["runtime"], "device": device.name, "whole_us": raw["whole_us"],
            "floor_us": raw.get("floor_us"), "total_us": total, "ops": ops,
            "by_type": dict(sorted(by_type.items(), key=lambda item: -item[1])), "note": note}


def _by_onnx_node(ops: list[dict], macs: dict[str, dict]) -> dict[str, dict]:
    """The MAC ops of coverage (named as in the graph at ORT_ENABLE_EXTENDED) by the names the profiler gives their
    nodes (the graph at ORT_ENABLE_ALL, whose layout transforms rename some: `conv2d/BiasAdd_token_1`,
    `conv2d/Relu:0_nchwc`): the longest coverage name a profiled MAC node's name starts with; the MAC nodes left
    are taken in order when as many are left on both sides (both graphs keep the order of the model's layers)."""
    from edgepress.deploy.coverage import ONNX_MAC_OPS

    mac_nodes = [op for op in ops if op["op"] in ONNX_MAC_OPS or op["op"] in ("Conv", "FusedConv")]
    found, used = {}, set()
    for op in mac_nodes:
        names = [name for name in macs if op["name"] == name or op["name"].startswith(name + "_")]
        if names:
            found[op["name"]] = macs[max(names, key=len)]
            used.add(max(names, key=len))
    left = [op for op in mac_nodes if op["name"] not in found]
    unmatched = [name for name in macs if name not in used]
    if len(left) == len(unmatched):
        found.update({op["name"]: macs[name] for op, name in zip(left, unmatched, strict=True)})
    return found


def why_slower(profile: dict, base: dict, count: int = 2) -> str:
    """Why a file is slower than `base` (its format's fp32 on the same device), from the two per-op profiles: the op
    types whose time grew the most, each with its time in both files and where it ran ("CONV_2D 107.6 us (integer,
    builtin kernels) against 3.5 us (float, XNNPACK)"), the op types only it runs (the quantize and dequantize ops at
    its edges, a dynamic-range quantizer), then the ops of types the base file's delegate runs that this file's does
    not take ("XNNPACK does not take 19 of its 120 ops: SQUARED_DIFFERENCE x5, ..., 160.2 us timed alone")."""
    def by_type(p: dict) -> dict[str, dict]:
        types: dict[str, dict] = {}
        for op in p.get("ops", []):
            if op.get("us") is None:
                continue
            row = types.setdefault(op["op"], {"us": 0.0, "how": {}})
            row["us"] += op["us"]
            how = ", ".join(str(part) for part in (op.get("kind"), op.get("runs_on")) if part)
            if how:
                ops, us = row["how"].get(how, (0, 0.0))
                row["how"][how] = (ops + 1, us + op["us"])
        return types

    mine, theirs = by_type(profile), by_type(base)
    none = {"us": 0.0}
    grown = sorted(((t, row["us"] - theirs.get(t, theirs.get(_float_twin(t), none))["us"]) for t, row in mine.items()),
                   key=lambda item: -item[1])
    parts = []
    for op_type, extra in grown[:count]:
        if extra <= 0:
            break
        here = f"{op_type} {_timed(mine[op_type])}"
        twin = _float_twin(op_type)
        if op_type in theirs:
            parts.append(f"{here} against {_timed(theirs[op_type])}")
        elif twin in theirs:  # onnxruntime's integer op for the float one the fp32 file runs
            parts.append(f"{here} against {twin} {_timed(theirs[twin])}")
        else:
            parts.append(f"{here}, an op the fp32 file does not run")
    left = _not_taken(profile, base) or _onnx_overhead(profile, base)
    return "; ".join(parts + ([left] if left and parts else []))


def _not_taken(profile: dict, base: dict) -> str:
    """The ops of `profile` its delegate did not take, of the types `base`'s delegate takes, by type: "XNNPACK does
    not take 19 of its 120 ops: SQUARED_DIFFERENCE x5, BATCH_MATMUL x3 (160.2 us timed alone)"; "" when none."""
    delegate = next((op["runs_on"] for op in base.get("ops", []) if op.get("offloaded")), None)
    # The same op in both files (the converter names ops alike at every precision), else an op of a type it takes.
    offloaded = {op.get("name"): bool(op.get("offloaded")) for op in base.get("ops", [])}
    taken = {op["op"] for op in base.get("ops", []) if op.get("offloaded")}
    left = [op for op in profile.get("ops", []) if op.get("offloaded") is False
            and offloaded.get(op.get("name"), op["op"] in taken)]
    if not left or delegate is None or delegate == "builtin kernels":
        return ""
    counts: dict[str, int] = {}
    for op in left:
        counts[op["op"]] = counts.get(op["op"], 0) + 1
    us = sum(op["us"] or 0.0 for op in left)
    types = ", ".join(f"{t} x{n}" for t, n in sorted(counts.items(), key=lambda item: -item[1]))
    text = (f"{delegate} does not take {len(left)} of its {len(profile['ops'])} ops, which its fp32 file runs there: "
            f"{types} ({us:.1f} us timed alone, on the builtin kernels)")
    if set(counts) & _NORM_AND_ATTENTION:
        text += (". A Keras model's tflite int8 export with `float_ops: [layernorm, attention]` keeps its LayerNorm "
                 "and attention ops in float, where XNNPACK runs them")
    return text


def _float_twin(op_type: str) -> str:
    """The float ONNX op an onnxruntime integer op stands for (QLinearMatMul -> MatMul, QGemm -> Gemm)."""
    return op_type.removeprefix("QLinear") if op_type.startswith("QLinear") else {"QGemm": "Gemm"}.get(op_type, op_type)


def _onnx_overhead(profile: dict, base: dict) -> str:
    """What a quantized ONNX file runs that its fp32 file does not, from onnxruntime's per-node profiles: how many
    nodes each runs, its QuantizeLinear / DequantizeLinear nodes and its requantizing elementwise ops (QLinearAdd,
    QLinearMul...) with their time, and its integer MAC ops' time against the fp32 file's float ones; "" for a file
    with no QDQ nodes (not onnxruntime's, or not quantized). At batch 1 a small model's ONNX time goes by node, not
    by MAC: int8 pays off only where its MAC ops gain more than the nodes it adds cost."""
    ops = [op for op in profile.get("ops", []) if op.get("us") is not None]
    qdq = [op for op in ops if op["op"] in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        return ""
    requantizing = [op for op in ops if op["op"].startswith("QLinear") and op.get("kind") is None]
    counts = collections.Counter(op["op"] for op in requantizing)

    def us(chosen: list[dict]) -> float:
        return sum(op["us"] for op in chosen)

    integer = [op for op in ops if op.get("kind") == "integer"]
    floats = [op for op in base.get("ops", []) if op.get("kind") == "float" and op.get("us") is not None]
    text = (f"onnxruntime runs {len(ops)} nodes for it against {len(base.get('ops', []))} for its fp32 file: "
            f"{len(qdq)} QuantizeLinear / DequantizeLinear ({us(qdq):.1f} us)")
    if requantizing:
        types = ", ".join(f"{t} x{n}" for t, n in counts.most_common())
        text += f" and {len(requantizing)} requantizing elementwise ops ({types}: {us(requantizing):.1f} us)"
    if integer and floats:
        text += (f"; its {len(integer)} integer MAC ops take {us(integer):.1f} us against {us(floats):.1f} us for "
                 f"the fp32 file's {len(floats)} float ones")
    if requantizing:
        text += (". A Keras model's onnx int8_static export with `float_ops: [layernorm, attention, elementwise]` "
                 "keeps those ops in float and quantizes only its matmuls' inputs")
    return text


# int8 ops XNNPACK does not take, from a LayerNorm (its variance and rsqrt) or an attention (the score and context
# batch matmuls of two activations, the softmax): what `float_ops` keeps in float.
_NORM_AND_ATTENTION = {"SQUARED_DIFFERENCE", "RSQRT", "BATCH_MATMUL", "SOFTMAX"}


def _timed(row: dict) -> str:
    """An op type's time and where it ran: "107.6 us (integer, builtin kernels)"; when its ops ran in more than one
    way, each way's share: "55.6 us (integer, builtin kernels: 3 ops, 53.0 us; integer, XNNPACK: 1 op, 2.6 us)"."""
    if len(row["how"]) <= 1:
        return f"{row['us']:.1f} us" + (f" ({next(iter(row['how']))})" if row["how"] else "")
    ways = sorted(row["how"].items(), key=lambda item: -item[1][1])
    return f"{row['us']:.1f} us (" + "; ".join(
        f"{how}: {ops} op{'s' if ops > 1 else ''}, {us:.1f} us" for how, (ops, us) in ways) + ")"
