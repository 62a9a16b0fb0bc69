"""The `edgepress` command: builds a Recipe or a call, then calls the API.

TensorFlow is imported only inside commands that need it, so `edgepress --help` is instant.
Exit codes: 0 ok, 1 a gate failed, 2 bad input (the message says what to fix), 70 a bug in edgepress (the
traceback is saved to a file), 130 interrupted (Ctrl-C). `_guard` is the one place that decides them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.exceptions import TyperException

from edgepress import compat  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any TF import)
from edgepress.errors import EdgepressError, GateFailed
from edgepress.values import MAX_RUNS, MAX_THREADS

MAX_SAMPLES = 10_000_000

app = typer.Typer(
    help="Compress trained models, export TFLite and ONNX artifacts, and measure them on edge targets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Click's plain help, not rich's panels: rich squeezes its five-column option table to fit the terminal and
    # cuts long option names (`--max-accuracy-…` at 80 columns); click writes each name whole and wraps the help.
    rich_markup_mode=None,
)
# Logs and CI are not terminals: give them wide lines so table rows stay whole.
console = Console(log_path=False, width=None if sys.stdout.isatty() else 160)
# Messages are whole lines (soft_wrap): the terminal wraps them, so a path stays whole to copy and a message reads
# the same in any width (a test's long temp path does not fold a phrase across lines).
errors = Console(stderr=True, soft_wrap=True)

RunDir = Annotated[Path | None, typer.Option("--output", "-o", help="Run directory (default: runs/<name>-<time>).")]
TrustModel = Annotated[bool, typer.Option(
    "--trust-model", help="Trust the model file: let code saved in it (Lambda layers) run when it is loaded.")]


@app.command()
def demo(output: RunDir = None) -> None:
    """Train the seed CNN on scikit-learn's digits, compress, export and measure it (no download)."""
    recipe_file = resources.files("edgepress") / "demo.yaml"
    with resources.as_file(recipe_file) as path:
        _run(path, output, None, None, trust_model=False)


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file (see `edgepress schema`).")],
    output: RunDir = None,
    data: Annotated[str | None, typer.Option(help="Override the recipe's data path.")] = None,
    model: Annotated[str | None, typer.Option(help="Override the recipe's model with this file.")] = None,
    baseline: Annotated[Path | None, typer.Option(
        help="A previous run's results.json: gate each artifact against it (limits: the recipe's gates.baseline, "
        "else p50 +10% if significant, accuracy -0.2 pt, bytes +5%).")] = None,
    junit: Annotated[Path | None, typer.Option(help="Also write the gates as JUnit XML to this file.")] = None,
    mlflow: Annotated[str | None, typer.Option(
        help="Log the run to MLflow: a folder for a local store (e.g. mlruns), sqlite:///FILE, or http://HOST:PORT."
    )] = None,
    trust_model: TrustModel = False,
    device: Annotated[list[str] | None, typer.Option(
        help="Measure on this device instead of the recipe's targets (a shipped profile name or a .yaml profile "
        "file); repeat for several, e.g. --device x86-host --device rpi5-emulated.")] = None,
) -> None:
    """Run a recipe: load or train the model, compress, export, measure, and apply the gates."""
    _run(recipe, output, data, model, trust_model, baseline, junit, mlflow, device)


@app.command()
def compare(
    old: Annotated[Path, typer.Argument(help="The baseline: a results.json (or its run directory).")],
    new: Annotated[Path, typer.Argument(help="The run to check: a results.json (or its run directory).")],
    max_p50_regression: Annotated[str, typer.Option(help="Largest significant p50 slow-down: 0.1 or 10%.")] = "10%",
    max_accuracy_regression: Annotated[str, typer.Option(help="Largest accuracy drop: 0.002 or 0.2 pt.")] = "0.2 pt",
    max_bytes_regression: Annotated[str, typer.Option(help="Largest file growth: 0.05 or 5%.")] = "5%",
    retime: Annotated[bool, typer.Option(
        help="Time OLD's artifacts again beside NEW's, interleaved, and compare those p50s (two runs' stored p50s "
        "drift apart on a shared machine); --no-retime compares the stored numbers.")] = True,
    device: Annotated[list[str] | None, typer.Option(
        help="Device profile (name or .yaml file) to time again on; repeat for several. Default: the devices of "
        "NEW that are this machine (x86-host); a device over ssh or adb is timed only when named here.")] = None,
) -> None:
    """Print how NEW differs from OLD as a Markdown table (for a pull-request comment); exit 1 on a regression."""

    def work():
        from pydantic import ValidationError

        from edgepress.compare import compare_files
        from edgepress.specs.baseline import BaselineSpec

        try:
            limits = BaselineSpec(path=str(old), max_p50_regression=max_p50_regression,
                                  max_accuracy_regression=max_accuracy_regression,
                                  max_bytes_regression=max_bytes_regression, retime=retime)
        except ValidationError as e:
            raise EdgepressError("; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())) from None
        from edgepress.devices import load_device

        devices = None if not device else [load_device(name) for name in device]
        comparison = compare_files(old, new, limits, devices, say=lambda m: print(m, file=sys.stderr))
        print(comparison.to_markdown(), end="")
        if comparison.regressed:
            raise GateFailed("regression against the baseline: " + "; ".join(comparison.regressions()))

    _guard(work)


@app.command()
def schema() -> None:
    """Print the recipe's JSON Schema."""
    from edgepress.recipe import schema as recipe_schema

    print(json.dumps(recipe_schema(), indent=2))


@app.command()
def models() -> None:
    """List the model zoo."""
    from edgepress.models.zoo import ZOO

    table = Table("name", "input", "description")
    for name, entry in ZOO.items():
        table.add_row(name, "x".join(map(str, entry.input_shape)), entry.description)
    console.print(table)


@app.command()
def devices() -> None:
    """List the shipped device profiles."""
    from edgepress.devices import load_device, shipped_profiles

    table = Table("name", "reach", "arch", "runtimes", "threads", "precisions", "description")
    for name in sorted(shipped_profiles()):
        d = load_device(name)
        runtimes = ", ".join(d.runtimes) + (f" ({', '.join(d.execution_providers)})" if d.runs("onnx") else "")
        precisions = ", ".join(f"{c.format} {c.precision}" for c in d.precisions)
        table.add_row(d.name, d.reach.kind, d.architecture, runtimes, str(d.threads), precisions, d.description)
    console.print(table)


@app.command()
def bench(
    artifacts: Annotated[list[Path], typer.Argument(help=".tflite or .onnx files.")],
    device: Annotated[str, typer.Option(help="Device profile name or .yaml file (see `edgepress devices`).")] = (
        "x86-host"
    ),
    data: Annotated[Path | None, typer.Option(help=".npz with x (preprocessed inputs) and y (labels).")] = None,
    runs: Annotated[int, typer.Option(min=1, max=MAX_RUNS)] = 100,
    warmup: Annotated[int, typer.Option(min=0, max=MAX_RUNS)] = 10,
    threads: Annotated[int | None, typer.Option(min=1, max=MAX_THREADS, help="Default: the device's.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the results to this JSON file.")] = None,
) -> None:
    """Measure existing artifacts on one device: latency, load time, memory, and accuracy with --data."""

    def work():

        from edgepress import files
        from edgepress.deploy import measure
        from edgepress.devices import load_device
        from edgepress.models.datasets import read_npz
        from edgepress.text import interval_text, ms

        if json_out is not None:
            files.check_output_file(json_out, "--json")
        target = load_device(device)
        pair = None if data is None else read_npz(data)  # checked: x finite numbers, y integer labels
        table = Table("artifact", "runtime", "accuracy", "p50 ms", "p90 ms", "mean ms", "load ms", "peak MiB",
                      title=f"on {target.name} ({target.reach.kind})", title_justify="left")
        results, failed = [], []
        for artifact in artifacts:
            with console.status(f"measuring {artifact.name} on {target.name}"), _warnings_logged():
                try:
                    r = measure(artifact, pair, runs, warmup, threads, device=target)
                except EdgepressError as e:
                    failed.append(f"{artifact.name}: {e}")
                    continue
            results.append(r)
            lat, peak = r["latency_ms"], r["memory"].get("peak_rss_bytes")
            table.add_row(artifact.name, " ".join([r["runtime"]["name"], *r["runtime"]["providers"][:1]]),
                          "-" if r["accuracy"] is None else f"{r['accuracy']:.2%}",
                          ms(lat["p50"]) + interval_text(lat),
                          ms(lat["p90"]), ms(lat["mean"]), ms(r["load_ms"]),
                          "-" if peak is None else f"{peak / 2**20:.1f}")
            for warning in r["runtime"]["warnings"]:
                console.print(f"[yellow]warning:[/] {escape(artifact.name)}: {escape(warning)}")
        console.print(table)
        if json_out is not None:
            for r in results:
                r.pop("predictions", None)
            files.write_text(json_out, json.dumps(results, indent=2) + "\n")
        if failed:
            raise EdgepressError("could not measure " + "; ".join(failed))

    _guard(work)


@app.command()
def profile(
    artifacts: Annotated[list[Path], typer.Argument(help=".tflite or .onnx files.")],
    device: Annotated[str, typer.Option(help="Device profile name or .yaml file (see `edgepress devices`).")] = (
        "x86-host"
    ),
    runs: Annotated[int, typer.Option(min=1, max=MAX_RUNS, help="Timed runs of each op.")] = 100,
    warmup: Annotated[int, typer.Option(min=0, max=MAX_RUNS)] = 10,
    threads: Annotated[int | None, typer.Option(min=1, max=MAX_THREADS, help="Default: the device's.")] = None,
    top: Annotated[int, typer.Option(min=1, max=100_000, help="Ops to list per artifact, slowest first.")] = 10,
) -> None:
    """Where each artifact's time goes on a device, op by op: time, share, dtypes, kernel kind, and whether the
    delegate (TFLite) or the first execution provider (ONNX) ran it."""

    def work():
        from edgepress.deploy.profile import profile_many
        from edgepress.devices import load_device
        from edgepress.text import top_ops

        target = load_device(device)
        for path in artifacts:
            if not path.is_file() or path.suffix not in (".tflite", ".onnx"):
                raise EdgepressError(f"{path}: give .tflite or .onnx files that exist.")
        with console.status(f"profiling {len(artifacts)} artifact(s) op by op on {target.name}"), _warnings_logged():
            profiles = profile_many(artifacts, target, runs, warmup, threads)
        failed = []
        for path, result in zip(artifacts, profiles, strict=True):
            if result.get("error"):
                failed.append(f"{path.name}: {result['error']}")
                continue
            whole = "-" if result["whole_us"] is None else f"{result['whole_us']:.1f} us"
            table = Table("op", "name", "in -> out", "kind", "runs on", "MACs", "us", "share",
                          title=f"{path.name} on {target.name}: whole run {whole}, ops {result['total_us']:.1f} us "
                          f"({result['method']})", title_justify="left")
            for op in top_ops(result, top):
                table.add_row(op["op"], escape(op["name"].split(";")[0]), f"{op['in']} -> {op['out']}",
                              op["kind"] or "-", op["runs_on"] or "-", "-" if op["macs"] is None else f"{op['macs']:,}",
                              f"{op['us']:.1f}", "-" if op["share"] is None else f"{op['share']:.0%}")
            console.print(table)
            types = ", ".join(f"{op} {us:.1f} us" for op, us in result["by_type"].items())
            console.print(f"by op type: {escape(types)}", highlight=False)
        if failed:
            raise EdgepressError("could not profile " + "; ".join(failed))

    _guard(work)


@app.command()
def bundle(
    artifact: Annotated[Path, typer.Argument(help="A decoder .tflite or .onnx file edgepress exported.")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Default: beside the file, NAME.litertlm (.tflite) or NAME-genai/ (.onnx).")] = None,
    tokenizer: Annotated[Path | None, typer.Option(
        help="The model's tokenizer.json (default: python_source's characters, for a model of that vocabulary).")
    ] = None,
) -> None:
    """Package an exported decoder LM for an LM runtime: a .tflite as a LiteRT-LM bundle (.litertlm), an .onnx as
    an onnxruntime-genai folder (genai_config.json); both with a tokenizer.json."""

    def work():
        if not artifact.is_file() or artifact.suffix not in (".tflite", ".onnx"):
            raise EdgepressError(f"{artifact}: give a decoder .tflite or .onnx file edgepress exported.")
        vocab = None
        if tokenizer is not None:
            try:
                vocab = json.loads(tokenizer.read_text())
            except (OSError, ValueError) as e:
                raise EdgepressError(f"--tokenizer {tokenizer}: cannot read it as a tokenizer.json ({e}).") from None
        if artifact.suffix == ".tflite":
            from edgepress.deploy.litertlm import litertlm_bundle

            out = litertlm_bundle(artifact, output or artifact.with_suffix(".litertlm"), vocab)
        else:
            from edgepress.deploy.genai import genai_folder

            out = genai_folder(artifact, output or artifact.with_name(f"{artifact.stem}-genai"), vocab)
        console.print(f"wrote {out}", highlight=False)

    _guard(work)


@app.command()
def quantize(
    model: Annotated[Path, typer.Argument(help="Trained model: .keras or .h5 file, or SavedModel directory.")],
    max_accuracy_drop: Annotated[str, typer.Option(help="Largest accuracy drop from the float model: 0.005 or 0.5%.")],
    data: Annotated[str, typer.Option(
        help="Calibration and evaluation data: 'digits', an MNIST idx directory or mnist.npz, or an .npz with x, y.")],
    fmt: Annotated[str, typer.Option("--format", help="tflite or onnx.")] = "tflite",
    precision: Annotated[str, typer.Option(help="int8: TFLite int8 or ONNX int8_static.")] = "int8",
    output: RunDir = None,
    dataset: Annotated[str | None, typer.Option(help="digits, mnist or npz; default: from --data.")] = None,
    test_size: Annotated[int | None, typer.Option(
        min=1, max=MAX_SAMPLES, help="Evaluation samples, from the end of the data.")] = None,
    calibration_samples: Annotated[int, typer.Option(
        min=1, max=MAX_SAMPLES, help="Calibration samples, from the start.")] = 200,
    preset: Annotated[str, typer.Option(help="ONNX target: default, x86-avx2, x86-avx512-vnni, arm64.")] = "default",
    calibration_method: Annotated[str | None, typer.Option(help="ONNX: minmax, entropy or percentile.")] = None,
    per_channel: Annotated[bool | None, typer.Option("--per-channel/--per-tensor", help="ONNX weights.")] = None,
    quant_format: Annotated[str | None, typer.Option(help="ONNX: qdq or qoperator.")] = None,
    search: Annotated[str, typer.Option(help="linear or bisect.")] = "linear",
    max_float_layers: Annotated[int | None, typer.Option(
        min=1, max=100_000, help="Keep at most this many layers float.")] = None,
    runs: Annotated[int, typer.Option(min=1, max=MAX_RUNS, help="Timed runs per artifact.")] = 100,
    trust_model: TrustModel = False,
) -> None:
    """Quantize MODEL to int8 within an accuracy budget, keeping the most sensitive layers in float if needed."""
    from edgepress.recipe import Recipe
    from edgepress.specs.quantize import parse_config

    def work():
        from edgepress.api import run as run_recipe

        calibration = {"samples": calibration_samples, "preset": preset, "method": calibration_method,
                       "per_channel": per_channel, "format": quant_format}
        config = parse_config(precision=precision, max_accuracy_drop=max_accuracy_drop, search=search,
                              max_float_layers=max_float_layers,
                              calibration={k: v for k, v in calibration.items() if v is not None})
        try:
            config.check_format(fmt)
        except ValueError as e:
            raise EdgepressError(f"--format {fmt}: {e}.") from None
        kind, path = (dataset, data) if dataset else _dataset_of(data)
        recipe = Recipe.from_dict({
            "name": _run_name(model.stem),
            "model": {"path": str(model), "trusted": trust_model},
            "data": {"dataset": kind, "path": None if kind == "digits" else path, "test_size": test_size,
                     "calibration_samples": calibration_samples},
            # fp32 beside it: the baseline for the table's size and speed-up columns.
            "exports": [{"format": fmt, "precision": "fp32"}, {"format": fmt, "quantize": config.model_dump()}],
            "measure": {"runs": runs},
        }, source="for the quantize command")
        with _live_progress() as progress:
            report = run_recipe(recipe, output, progress)
        _print_report(report)
        report.check()

    _guard(work)


@app.command()
def tune(
    source: Annotated[str, typer.Argument(help="A trained model (.keras, .h5, SavedModel) or a recipe .yaml, whose "
                                          "tune: section (optional) sets trials, time budget and space.")],
    data: Annotated[str | None, typer.Option(
        help="'digits', an MNIST idx directory or mnist.npz, or an .npz with x, y (a recipe has its own).")] = None,
    device: Annotated[list[str] | None, typer.Option(
        help="Device profile to tune for (repeat for several; default: the recipe's targets or x86-host).")] = None,
    max_accuracy_drop: Annotated[str | None, typer.Option(help="Budget: drop from the source, 0.01 or 1%.")] = None,
    max_p50_ms: Annotated[float | None, typer.Option(help="Budget: median latency at batch 1, ms.")] = None,
    max_bytes: Annotated[int | None, typer.Option(min=1, max=2**62, help="Budget: artifact file size.")] = None,
    trials: Annotated[int | None, typer.Option(min=1, max=10_000, help=(
        "Finished trials the study holds (default 20; with --time-budget: as many as fit)."))] = None,
    time_budget: Annotated[str | None, typer.Option(help=(
        "Stop starting trials after this: 30m, 1h, 900s. Without --trials, the budget alone ends the tune."))] = None,
    ray: Annotated[str | None, typer.Option(help="Run trials as Ray tasks: 'auto' or the head's HOST:PORT.")] = None,
    sampler: Annotated[str | None, typer.Option(help="tpe or nsga2.")] = None,
    output: RunDir = None,
) -> None:
    """Search for the fastest artifact per device within the budgets; resume or extend with the same -o."""
    from edgepress.recipe import Recipe

    def work():
        from edgepress.tune import tune as run_tune

        recipe = _tune_recipe(source, data, device, max_accuracy_drop, max_p50_ms, max_bytes, trials, time_budget,
                              sampler)
        run_dir = output or Path("runs") / f"tune-{recipe.name}"
        with _live_progress() as progress:
            result = run_tune(recipe, run_dir, progress, ray=ray)
        for name, best in result.best.items():
            if best:
                said = (f"perplexity {best['perplexity']:.3f}, decode {best['decode_tokens_per_s']:,.0f} tokens/s"
                        if best.get("perplexity") is not None else
                        f"accuracy {best['accuracy']:.2%}, p50 {best['p50_ms']:.3f} ms")
                console.print(f"{escape(name)}: trial {best['trial']} {escape(best['artifact'])}: {said}, "
                              f"{best['bytes']:,} bytes -> {escape(best['recipe'])}", soft_wrap=True)
        console.print(f"Run directory: {escape(str(run_dir))} (tune.json, report.html, best-<device>.yaml, study.db)",
                      highlight=False, soft_wrap=True)
        result.check()

    def _tune_recipe(source, data, devices, drop, p50, size, trials, budget, sampler):
        if source.endswith((".yaml", ".yml")):
            recipe = Recipe.from_yaml(source).with_overrides(data=data)
            raw = recipe.model_dump(mode="json", exclude_unset=False)
            raw["exports"] = []  # the tune chooses them; the recipe's default ones came from its targets
            # What the recipe's tune: section sets, not its defaults: a --time-budget lifts an unset trial count.
            raw["tune"] = recipe.tune.model_dump(mode="json", exclude_unset=True) if recipe.tune else None
        else:
            if data is None:
                raise EdgepressError("--data is needed with a model file: 'digits', an MNIST idx directory or "
                                     "mnist.npz, or an .npz with x and y.")
            kind, path = _dataset_of(data)
            raw = {"name": _run_name(Path(source).stem), "model": {"path": str(Path(source).resolve())},
                   "data": {"dataset": kind, "path": None if kind == "digits" else str(Path(path).resolve())}}
        if devices:
            raw["targets"] = devices
        gates = dict(raw.get("gates") or {})
        for key, value in (("max_accuracy_drop", drop), ("max_p50_ms", p50), ("max_bytes", size)):
            if value is not None:
                gates[key] = value
        raw["gates"] = gates
        spec = dict(raw.get("tune") or {})
        for key, value in (("trials", trials), ("time_budget", budget), ("sampler", sampler)):
            if value is not None:
                spec[key] = value
        raw["tune"] = spec
        return Recipe.from_dict(raw, source="for the tune command")

    _guard(work)


def _dataset_of(data: str) -> tuple[str, str | None]:
    """The dataset kind of a --data value: digits, an .npz with x and y, or MNIST (idx directory, keras mnist.npz)."""
    if data == "digits":
        return "digits", None
    if not data.endswith(".npz"):
        return "mnist", data
    if not Path(data).is_file():
        return "npz", data  # the loader names the missing file
    import numpy as np

    try:
        with np.load(data) as npz:  # keras' mnist.npz has x_train / y_train / x_test / y_test, a user's x and y
            return ("mnist" if "x_train" in npz.files else "npz"), data
    except Exception:  # not a readable .npz: the loader says what is wrong with it
        return "npz", data


def _run_name(stem: str) -> str:
    """A recipe name from a model file's name: the characters a name may have, the rest as '_'."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip("._-")[:100] or "model"


def _run(recipe_path: Path, output: Path | None, data: str | None, model: str | None, trust_model: bool = False,
         baseline: Path | None = None, junit: Path | None = None, mlflow: str | None = None,
         devices: list[str] | None = None) -> None:
    from edgepress.recipe import Recipe

    def work():
        from edgepress.api import run as run_recipe

        if junit is not None:
            from edgepress import files

            files.check_output_file(junit, "--junit")
        recipe = Recipe.from_yaml(recipe_path).with_overrides(data=data, model=model, devices=devices)
        if trust_model:  # --trust-model is model.trusted: true
            recipe = recipe.model_copy(update={"model": recipe.model.model_copy(update={"trusted": True})})
        if baseline is not None:
            from edgepress.compare import with_baseline

            recipe = with_baseline(recipe, baseline)
        with _live_progress() as progress:
            report = run_recipe(recipe, output, progress)
        _print_report(report)
        if junit is not None:
            from edgepress.junit import write_junit

            console.print(f"JUnit: {escape(str(write_junit(report.results, junit)))}", highlight=False, soft_wrap=True)
        if mlflow is not None:
            from edgepress.tracking import log_run

            console.print(f"MLflow run: {log_run(report.results, report.run_dir, mlflow)} ({mlflow})")
        report.check()

    _guard(work)


@contextmanager
def _live_progress() -> Iterator[_LiveProgress]:
    """A spinner line for the current stage, a log line per finished stage (and per library warning)."""
    with console.status("starting (importing TensorFlow)") as status, _warnings_logged():
        yield _LiveProgress(status)


@contextmanager
def _warnings_logged() -> Iterator[None]:
    """A library's Python warning (Keras' UserWarning) as a log line, not text written into a spinner's line."""
    import warnings

    shown = warnings.showwarning

    def log_warning(message, category, filename, lineno, file=None, line=None) -> None:
        console.log(f"warning ({escape(category.__name__)}, {escape(Path(filename).name)}:{lineno}): "
                    f"{escape(str(message).strip())}")

    warnings.showwarning = log_warning
    try:
        yield
    finally:
        warnings.showwarning = shown


class _LiveProgress:
    """Shows the current stage on a spinner line and logs each finished stage."""

    def __init__(self, status) -> None:
        self.status = status

    def update(self, message: str) -> None:
        from edgepress import interrupt

        interrupt.check()  # a safe point: each epoch, step, export and measurement reports here
        self.status.update(escape(message))

    def done(self, message: str) -> None:
        from edgepress import interrupt

        interrupt.check()
        console.log(escape(message))


def _print_report(report) -> None:
    from edgepress.console import print_report

    print_report(report, console)
    console.print(f"Run directory: {escape(str(report.run_dir))} (results.json, report.md, report.html)",
                  highlight=False, soft_wrap=True)  # soft_wrap: the path whole, on one line, at any width


# Exit codes (README "Exit codes"): 1 a gate failed, 2 bad input, 70 a bug in edgepress (EX_SOFTWARE in sysexits.h:
# never 1, which CI would read as a gate), 130 interrupted by Ctrl-C (the shell's code for SIGINT).
EXIT_GATES, EXIT_BAD_INPUT, EXIT_BUG, EXIT_INTERRUPTED = 1, 2, 70, 130


def _guard(work) -> None:
    """Run `work`: the one boundary between edgepress and the terminal. Every failure becomes a short message and
    an exit code, never a traceback; an unexpected one (a bug) has its traceback saved to a file."""
    from edgepress import files, interrupt

    before = files.current_run_dir()
    with interrupt.catching():  # Ctrl-C is recorded as well as raised: a library callback cannot swallow it
        _ending(work, before)


def _ending(work, before: Path | None) -> None:
    """`_guard`'s body: run `work` and turn how it ended into a message and an exit code."""
    from edgepress import interrupt

    try:
        work()
        interrupt.check()  # a Ctrl-C a library swallowed (printed nothing, raised nothing) still ends with 130
    except KeyboardInterrupt:
        _interrupted()
    except (typer.Exit, typer.Abort, TyperException):  # the CLI's own exits and usage errors: typer shows them
        raise
    except Exception as e:
        if interrupt.requested():  # after a Ctrl-C, whatever a library made of it: the user stopped the run
            _interrupted()
        _failed(e, before)


def _failed(e: Exception, before: Path | None) -> None:
    """The message and exit code of `e`: bad input, failed gates, or (anything else) a bug in edgepress, reported
    with its traceback saved, never shown."""
    from edgepress import files

    if isinstance(e, EdgepressError):
        errors.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    if isinstance(e, GateFailed):
        errors.print(f"[bold red]gates failed:[/] {escape(str(e))}", highlight=False)
        raise typer.Exit(EXIT_GATES) from None
    run_dir = files.current_run_dir()
    _report_bug(e, run_dir if run_dir is not before else None)  # `is`: the directory this work prepared
    raise typer.Exit(EXIT_BUG) from None


def _interrupted() -> None:
    errors.print("[bold red]interrupted[/] (Ctrl-C): the run stopped; every file it wrote is complete.",
                 highlight=False)
    raise typer.Exit(EXIT_INTERRUPTED) from None


def _report_bug(error: BaseException, run_dir: Path | None) -> None:
    """Save the traceback of an unexpected error (in the run directory, else the temp dir) and say how to report
    it, in a few lines on stderr."""
    import datetime as dt
    import platform
    import shlex
    import tempfile
    import traceback
    from importlib import metadata

    from edgepress import files
    from edgepress.errors import first_line

    try:
        version = metadata.version("edgepress")
    except metadata.PackageNotFoundError:
        version = "(not installed)"
    text = (f"edgepress {version}, Python {platform.python_version()}, {platform.platform()}\n"
            f"command: {shlex.join(sys.argv)}\n\n" + "".join(traceback.format_exception(error)))
    name = f"edgepress-error-{dt.datetime.now():%Y%m%d-%H%M%S-%f}.txt"
    saved = None
    for folder in [run_dir, Path(tempfile.gettempdir())]:
        if folder is None:
            continue
        try:
            saved = files.write_text(folder / name, text)
            break
        except OSError:
            continue
    where = f"The full traceback is in {saved}" if saved else "The traceback could not be saved (no writable folder)"
    errors.print(
        f"[bold red]internal error:[/] {escape(type(error).__name__)}: {escape(first_line(error))}.\n"
        f"This is a bug in edgepress, not in your input. {escape(where)}.\n"
        "Please report it: open an issue in edgepress's repository with that file attached and the command you ran.",
        highlight=False, soft_wrap=True,  # soft_wrap: the file's path stays whole, to copy
    )


def main() -> None:
    try:
        app()
    except Exception as e:  # a command without _guard, or the CLI itself: still no traceback
        _report_bug(e, None)
        sys.exit(EXIT_BUG)


if __name__ == "__main__":
    main()
