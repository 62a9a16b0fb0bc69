"""A run against a stored baseline (a previous run's results.json): what regressed, as gates and as Markdown.

Each (device, artifact) of the new run is matched with the baseline's row of the same name on the
same device and checked on three limits (`BaselineSpec`):

- p50: a regression when it is slower by more than `max_p50_regression` AND significantly slower
  (the two p50 intervals do not overlap, see edgepress/stats.py); noise is never a regression;
- accuracy: a regression when it dropped by more than `max_accuracy_regression` (points);
- bytes: a regression when the file grew by more than `max_bytes_regression`.

Latencies are re-timed (`retime`): two runs' stored p50s do not compare on a shared machine, where the
p50 of one file moves between two runs by more than either run's interval shows (benchmarks/reproducibility.py:
up to a third on the demo's sub-millisecond models). So the baseline's file and the new one are timed again,
now, interleaved in one runner process on their device, and compared on those numbers; a pair slower beyond the
limit is timed once more, and its regression stands only if the second timing shows it too. When that cannot be
done (the baseline's artifacts are gone, an adb device, a device that does not answer) the stored numbers are
compared, and flagged; they are compared only when both were measured alike (same CPU, cores, runtime and
version, threads, batch); otherwise the device is flagged and its latency left out, never silently compared.
`edgepress run --baseline FILE` keeps the comparison in results["baseline"] (`compare_with_baseline`) and the
verdict adds it to each row as gates (`edgepress.verdict.add_baseline_gates`: `baseline_p50`, `baseline_accuracy`,
`baseline_bytes`); `edgepress compare OLD NEW` prints it as a Markdown table.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgepress.errors import EdgepressError
from edgepress.results import MAX_BYTES, check_results
from edgepress.specs.baseline import BaselineSpec
from edgepress.specs.measure import MeasureSpec

# What must be equal for two latencies to be comparable, read from each row.
_LATENCY_CONDITIONS = {
    "CPU": lambda r: (r.get("host") or {}).get("cpu"),
    "cores": lambda r: (r.get("host") or {}).get("cores"),
    "runtime": lambda r: f"{r['runtime']['name']} {r['runtime']['version']}",
    "execution providers": lambda r: ", ".join(r["runtime"].get("providers") or []),
    "threads": lambda r: r["latency"].get("threads"),
    "batch": lambda r: r["latency"].get("batch"),
}
# Versions that shape artifacts and numbers; a difference is flagged (sizes and accuracies are still compared).
_VERSIONS = ("tensorflow", "tf_keras", "ai-edge-litert", "onnxruntime", "onnx", "tf2onnx", "numpy")


@dataclass
class RowComparison:
    """One (device, artifact): its baseline and new values, and which limit it broke. status: compared, new
    (no baseline row), removed (only in the baseline)."""

    device: str
    artifact: str
    status: str
    old: dict | None = None  # {p50, p50_ci, accuracy, bytes}
    new: dict | None = None
    p50_change: float | None = None  # relative: +0.12 is 12% slower
    p50_significant: bool | None = None
    latency_compared: bool = True
    retimed: bool = False  # both p50s timed again now, interleaved (see `retime`); else the stored ones
    timed_twice: bool = False  # slower in the first re-timing, so timed again: the numbers are the second's
    accuracy_change: float | None = None  # new - old, a fraction
    bytes_change: float | None = None  # relative
    regressions: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    """Every row compared, what was flagged (environment differences), and the limits used."""

    baseline: str
    rows: list[RowComparison]
    flags: list[str]
    limits: BaselineSpec

    @property
    def regressed(self) -> bool:
        return any(r.regressions for r in self.rows)

    def regressions(self) -> list[str]:
        return [f"{r.artifact} on {r.device}: {', '.join(r.regressions)}" for r in self.rows if r.regressions]

    def to_dict(self) -> dict:
        return {"path": self.baseline, "limits": self.limits.model_dump(), "flags": self.flags,
                "regressed": self.regressed, "rows": [asdict(r) for r in self.rows]}

    def to_markdown(self, title: str = "edgepress: changes against the baseline") -> str:
        """A table ready for a pull-request comment, then the flags and the verdict."""
        lim = self.limits
        lines = [
            f"### {title}",
            "",
            f"Limits: p50 +{lim.max_p50_regression:.0%} (significant only), "
            f"accuracy -{lim.max_accuracy_regression * 100:.2f} pt, bytes +{lim.max_bytes_regression:.0%}. "
            "p50 in ms with its 95% interval"
            + ("; re-timed now, the baseline's file and the new one interleaved." if any(r.retimed for r in self.rows)
               else "."),
            "",
            "| device | artifact | p50 before | p50 now | p50 change | accuracy before | accuracy now | bytes change "
            "| verdict |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            lines.append("| " + " | ".join([r.device, f"`{r.artifact}`", *_cells(r)]) + " |")
        lines.append("")
        lines += [f"- ⚠️ {flag}" for flag in self.flags]
        if self.flags:
            lines.append("")
        found = self.regressions()
        lines.append(f"**{len(found)} regression(s):** " + "; ".join(found) if found else "**No regression.**")
        return "\n".join(lines) + "\n"


def _cells(r: RowComparison) -> list[str]:
    def p50(v: dict | None) -> str:
        if not v or v.get("p50") is None:
            return "-"
        ci = v.get("p50_ci")
        return f"{v['p50']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    def acc(v: dict | None) -> str:
        return "-" if not v or v.get("accuracy") is None else f"{v['accuracy']:.2%}"

    if r.status != "compared":
        verdict = "new (no baseline)" if r.status == "new" else "removed (only in the baseline)"
        return [p50(r.old), p50(r.new), "-", acc(r.old), acc(r.new), "-", verdict]
    if not r.latency_compared:
        change = "not compared"
    elif r.p50_change is None:
        change = "-"
    else:
        change = (f"{r.p50_change:+.1%}" + ("" if r.p50_significant else " (within noise)")
                  + (" (timed twice)" if r.timed_twice else ""))
    size = "-" if r.bytes_change is None else f"{r.bytes_change:+.1%}"
    verdict = "❌ " + ", ".join(r.regressions) if r.regressions else "ok"
    return [p50(r.old), p50(r.new), change, acc(r.old), acc(r.new), size, verdict]


def load_results(path: str | Path, what: str = "Baseline") -> dict:
    """A results.json (`what`: how messages name it), checked to have the shape this edgepress writes
    (edgepress/results.py); EdgepressError naming the problem otherwise."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise EdgepressError(f"{what} {path} not found: give a run's results.json (a first run has no baseline: "
                             "keep its results.json as the baseline for the next).")
    if path.stat().st_size > MAX_BYTES:
        raise EdgepressError(f"{what} {path} is {path.stat().st_size:,} bytes; a results.json is at most "
                             f"{MAX_BYTES:,}. Give a run's results.json.")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgepressError(f"{what} {path} is not a results.json ({e}).") from None
    except RecursionError:
        raise EdgepressError(f"{what} {path} nests too deeply to be a results.json. Give a run's results.json, as "
                             "that run wrote it.") from None
    return check_results(raw, f"{what} {path}")


def compare(old_results: dict, new_results: dict, limits: BaselineSpec | dict | None = None,
            baseline: str = "baseline", timings: dict | None = None) -> Comparison:
    """Compare each (device, artifact) of `new_results` with `old_results`; see the module's docstring.

    `timings` ({(device, artifact): (old latency, new latency)}, from `retime`) replaces the stored latencies
    of those rows. Raises EdgepressError when the two runs are of different models or data (their accuracies
    and sizes would not mean the same thing).
    """
    limits = limits if isinstance(limits, BaselineSpec) else BaselineSpec(path=baseline, **(limits or {}))
    _check_same_job(old_results, new_results, baseline)
    timings = timings or {}
    flags = _version_flags(old_results, new_results)
    old_rows = {(r["device"], r["name"]): r for r in old_results["artifacts"]}
    new_rows = {(r["device"], r["name"]): r for r in new_results["artifacts"]}
    flagged: set[str] = set()
    rows = []
    for key, new in new_rows.items():
        old = old_rows.get(key)
        if old is None:
            rows.append(RowComparison(key[0], key[1], "new", new=_values(new)))
            continue
        if key in timings:  # timed again, now and alike: what the two runs stored does not matter
            old, new = {**old, "latency": timings[key][0]}, {**new, "latency": timings[key][1]}
        row = _compare_row(old, new, limits)
        row.retimed = key in timings
        differences = [] if row.retimed else _latency_differences(old, new)
        if differences:
            row.latency_compared = False
            row.regressions = [r for r in row.regressions if r != "p50"]
            if key[0] not in flagged:
                flagged.add(key[0])
                flags.append(f"{key[0]}: latency not compared, the baseline was measured with another "
                             + "; ".join(differences) + ". Measure the baseline on this machine to compare.")
        rows.append(row)
    rows += [RowComparison(k[0], k[1], "removed", old=_values(r)) for k, r in old_rows.items() if k not in new_rows]
    stored = sorted({r.device for r in rows if r.status == "compared" and r.latency_compared and not r.retimed})
    if stored:
        flags.append(f"{', '.join(stored)}: p50 compared from the two runs' stored numbers, which move between runs "
                     "by more than their intervals show on a shared machine. Keep the baseline's run directory with "
                     "its artifacts so they are timed again beside the new ones.")
        flags += _busy_flags(old_results, new_results)
    return Comparison(baseline, rows, flags, limits)


def retime(old_results: dict, new_results: dict, old_dir: Path, new_dir: Path, devices: list, measure: MeasureSpec,
           say=None, only: set[tuple[str, str]] | None = None) -> tuple[dict, list[str]]:
    """Time every artifact of `new_results` again with its baseline counterpart of `old_results`, now and
    interleaved in one runner process per device, so the two p50s are measured alike (see the module's docstring).

    A row's files are its recorded path, else the file of that name in its run directory's artifacts/ (a run
    directory restored from a CI cache), checked against the recorded sha256. `devices` (Device objects) are where
    the timing happens: the caller's, never read from a results file (a file does not choose where edgepress
    connects); a device of `new_results` not among them is flagged. The timing follows `measure`.
    `say(message)` reports progress. `only` ({(device, artifact)}) limits the timing to those rows.
    Returns ({(device, artifact): (old latency, new latency)}, flags for what could not be timed again).
    """
    from edgepress.deploy.measure import time_together
    from edgepress.deploy.transports import DeviceError

    m = measure
    old_rows = {(r["device"], r["name"]): r for r in old_results["artifacts"]}
    timings, flags = {}, []
    given = {device.name for device in devices}
    absent = sorted({r["device"] for r in new_results["artifacts"]} - given)
    if absent and only is None:
        flags.append(f"{', '.join(absent)}: not timed again, no device profile of that name was given to time "
                     "on (`edgepress compare --device NAME`; a results file does not choose where edgepress connects).")
    for device in devices:
        pairs, missing = [], []
        for new in (r for r in new_results["artifacts"] if r["device"] == device.name and r.get("latency")):
            old = old_rows.get((device.name, new["name"]))
            if old is None or not old.get("latency") or (only is not None and (device.name, new["name"]) not in only):
                continue
            files = _artifact_file(old, old_dir), _artifact_file(new, new_dir)
            (pairs if None not in files else missing).append((new["name"], *files, new["latency"].get("threads")))
        if missing:
            flags.append(f"{device.name}: not timed again, the baseline's file is gone or changed for "
                         + ", ".join(name for name, *_ in missing) + f" (looked in {old_dir / 'artifacts'}).")
        if not pairs:
            continue
        if device.reach.kind == "adb":
            flags.append(f"{device.name}: not timed again (over adb each file is timed alone, not interleaved).")
            continue
        if say:
            say(f"timing {len(pairs)} artifact(s) again beside the baseline's on {device.name}")
        paths = [f for _, old_file, new_file, _ in pairs for f in (old_file, new_file)]
        try:
            timed = time_together(paths, device, m.runs, m.warmup, m.threads, None, m.run_cap, m.target_ci_width,
                                  2 * m.max_seconds)
        except DeviceError as e:
            flags.append(f"{device.name}: not timed again ({e}).")
            continue
        for i, (name, _, _, threads) in enumerate(pairs):
            (old_t, _), (new_t, _) = timed[2 * i], timed[2 * i + 1]
            alike = {"unit": "ms", "threads": threads, "batch": 1}
            timings[(device.name, name)] = ({**old_t, **alike}, {**new_t, **alike})
    return timings, flags


def local_devices(results: dict) -> list:
    """The devices of `results` that are shipped profiles reached on this machine (x86-host): where `edgepress
    compare` re-times when no --device is given. A device reached over ssh or adb is timed only when the user names
    its profile: the host in a results file is somebody else's choice."""
    from edgepress.devices import load_device, shipped_profiles

    shipped = shipped_profiles()
    names = dict.fromkeys(r["device"] for r in results["artifacts"] if isinstance(r.get("device"), str))
    return [d for d in (load_device(n) for n in names if n in shipped) if d.reach.kind == "local"]


def measure_of(results: dict) -> MeasureSpec:
    """How `results` timed its artifacts (its recipe's measure: section), for timing them again alike."""
    try:
        return MeasureSpec.model_validate((results.get("recipe") or {}).get("measure") or {})
    except ValueError:  # pydantic's ValidationError: a tampered file; time with the defaults
        return MeasureSpec()


def _artifact_file(row: dict, run_dir: Path) -> Path | None:
    """The file a results row measured: its path when that is inside `run_dir` (a results file does not choose which
    of the user's files edgepress reads and copies to a device), else the same name in run_dir/artifacts; None when
    neither is there with the recorded sha256."""
    import hashlib

    recorded, inside = Path(row["path"]), Path(run_dir).resolve()
    candidates = [recorded] if recorded.resolve().is_relative_to(inside) else []
    if recorded.name not in ("", ".", ".."):
        candidates.append(Path(run_dir) / "artifacts" / recorded.name)
    for path in candidates:
        if path.is_file() and (not row.get("sha256") or hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"]):
            return path
    return None


def _busy_flags(old: dict, new: dict) -> list[str]:
    """A flag when either run was measured on a busy machine: between two runs, load moves p50s by more than
    either run's interval shows (benchmarks/reproducibility.py measures by how much)."""
    from edgepress.stats import busy_warnings

    found = [f"the baseline: {w}" for w in busy_warnings(old)] + [f"this run: {w}" for w in busy_warnings(new)]
    return [f"{w} A latency change may be that load." for w in found]


def _check_same_job(old: dict, new: dict, baseline: str) -> None:
    def job(results: dict) -> tuple:
        data = results.get("data") or {}
        return (results.get("recipe") or {}).get("name"), data.get("dataset"), data.get("test_samples")

    if job(old) != job(new):
        (name_o, data_o, n_o), (name_n, data_n, n_n) = job(old), job(new)
        raise EdgepressError(
            f"Baseline {baseline} is for another model or data: recipe {name_o!r} on {data_o} ({n_o} test samples), "
            f"this run is {name_n!r} on {data_n} ({n_n} test samples). Give the baseline of the same recipe."
        )


def _version_flags(old: dict, new: dict) -> list[str]:
    a, b = old.get("environment") or {}, new.get("environment") or {}
    changed = [f"{p} {a.get(p)} -> {b.get(p)}" for p in _VERSIONS if a.get(p) != b.get(p)]
    if not changed:
        return []
    return ["the baseline was made with other versions (" + ", ".join(changed) + "): sizes and accuracies may differ "
            "for that reason alone."]


def _latency_differences(old: dict, new: dict) -> list[str]:
    out = []
    for what, read in _LATENCY_CONDITIONS.items():
        if read(old) != read(new):
            out.append(f"{what} ({read(old)} vs {read(new)})")
    return out


def _values(row: dict) -> dict:
    latency = row.get("latency") or {}
    return {"p50": latency.get("p50"), "p50_ci": latency.get("p50_ci"), "accuracy": row["metrics"].get("accuracy"),
            "bytes": row["bytes"]}


def _compare_row(old: dict, new: dict, limits: BaselineSpec) -> RowComparison:
    from edgepress.stats import faster

    row = RowComparison(new["device"], new["name"], "compared", old=_values(old), new=_values(new))
    p50_old, p50_new = row.old["p50"], row.new["p50"]
    if p50_old and p50_new is not None:
        row.p50_change = p50_new / p50_old - 1
        row.p50_significant = faster(old, new) or faster(new, old)  # the intervals are apart, either way
        if row.p50_change > limits.max_p50_regression and faster(old, new):
            row.regressions.append("p50")
    acc_old, acc_new = row.old["accuracy"], row.new["accuracy"]
    if acc_old is not None:
        row.accuracy_change = None if acc_new is None else acc_new - acc_old
        # Accuracies are fractions of the same samples: allow float rounding at the limit.
        if acc_new is None or acc_old - acc_new > limits.max_accuracy_regression + 1e-9:
            row.regressions.append("accuracy")
    if row.old["bytes"]:
        row.bytes_change = row.new["bytes"] / row.old["bytes"] - 1
        if row.bytes_change > limits.max_bytes_regression + 1e-12:
            row.regressions.append("bytes")
    return row


def compare_files(old: str | Path, new: str | Path, limits: BaselineSpec | dict | None = None,
                  devices: list | None = None, say=None) -> Comparison:
    """`compare_runs` of two results.json files (or run directories), each checked by `load_results`, re-timed on
    `devices` (default: `local_devices` of the new run) with the new run's measure options."""
    limits = limits if isinstance(limits, BaselineSpec) else BaselineSpec(path=str(old), **(limits or {}))
    old_results, new_results = load_results(old), load_results(new, "Results")
    devices = local_devices(new_results) if devices is None else devices
    return compare_runs(old_results, new_results, limits, _run_dir(old), _run_dir(new), devices,
                        measure_of(new_results), say=say)


def compare_runs(old_results: dict, new_results: dict, limits: BaselineSpec, old_dir: Path, new_dir: Path,
                 devices: list, measure: MeasureSpec, say=None) -> Comparison:
    """`compare`, the artifacts of both runs (in `old_dir` and `new_dir`) first timed again together (`retime`)
    unless `limits.retime` is false; what could not be timed again leads the flags.

    A pair slower beyond the limit in that re-timing is timed once more, and the regression stands only when the
    second timing shows it too: a change of the machine's speed can fall on one file's blocks of an interleaved
    timing (benchmarks/reproducibility.py saw one such pair among 16, +55% once, tied when timed again).
    """
    _check_same_job(old_results, new_results, limits.path)  # refused before any timing
    timings, flags = {}, []
    if limits.retime:
        timings, flags = retime(old_results, new_results, old_dir, new_dir, devices, measure, say)
    comparison = compare(old_results, new_results, limits, baseline=limits.path, timings=timings)
    slower = {(r.device, r.artifact): r for r in comparison.rows if r.retimed and "p50" in r.regressions}
    if slower:
        again, more_flags = retime(old_results, new_results, old_dir, new_dir, devices, measure, say,
                                   only=set(slower))
        comparison = compare(old_results, new_results, limits, baseline=limits.path, timings={**timings, **again})
        flags += more_flags
        for row in comparison.rows:
            first = slower.get((row.device, row.artifact))
            if first is None or (row.device, row.artifact) not in again:
                continue
            row.timed_twice = True
            if "p50" not in row.regressions:
                flags.append(f"{row.device}: {row.artifact} was {first.p50_change:+.0%} slower in the first "
                             f"re-timing and {row.p50_change:+.0%} when timed again: not a regression.")
    comparison.flags[:0] = flags
    return comparison


def _run_dir(path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_dir() else path.parent


def compare_with_baseline(results: dict, spec: BaselineSpec | None, run_dir: Path, devices: list,
                          measure: MeasureSpec, say=None) -> str | None:
    """Compare `results` with the baseline `spec` names; the comparison goes into results["baseline"] (its rows
    become gates in `add_baseline_gates`, called by the verdict), its flags into results["notes"]. With
    `spec.retime` the baseline's artifacts are timed again beside this run's (in `run_dir`) on `devices`, as
    `measure` says.

    Returns None, or the message of a baseline that could not be used (missing, other schema, other model):
    then results["baseline"] = {path, error} and no gate is added; the caller saves the results, then raises
    EdgepressError(message), so a first run's results can become the next run's baseline.
    """
    if spec is None:
        return None
    try:
        comparison = compare_runs(load_results(spec.path), results, spec, _run_dir(spec.path), Path(run_dir),
                                  devices, measure, say)
    except EdgepressError as e:
        results["baseline"] = {"path": spec.path, "error": str(e)}
        return str(e)
    results["baseline"] = comparison.to_dict()
    results.setdefault("notes", []).extend(comparison.flags)
    return None


def with_baseline(recipe, path: str | Path):
    """`recipe` gated against the results.json at `path` (command-line --baseline): the recipe's own baseline
    limits if it has them, else the defaults."""
    gates = recipe.gates
    resolved = str(Path(path).resolve())
    baseline = gates.baseline.model_copy(update={"path": resolved}) if gates.baseline else BaselineSpec(path=resolved)
    return recipe.model_copy(update={"gates": gates.model_copy(update={"baseline": baseline})})
