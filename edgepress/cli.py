"""The `edgepress` command: builds a Recipe or a call, then calls the API.

TensorFlow is imported only inside commands that need it, so `edgepress --help` is instant.
Exit codes: 0 ok, 1 a gate failed, 2 bad input (the message says what to fix).
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgepress import compat  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any TF import)
from edgepress.errors import EdgepressError, GateFailed

app = typer.Typer(
    help="Compress trained models, export TFLite and ONNX artifacts, and measure them on edge targets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Logs and CI are not terminals: give them wide lines so table rows stay whole.
console = Console(log_path=False, width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True)

RunDir = Annotated[Path | None, typer.Option("--output", "-o", help="Run directory (default: runs/<name>-<time>).")]


@app.command()
def demo(output: RunDir = None) -> None:
    """Train the seed CNN on scikit-learn's digits, compress, export and measure it (no download)."""
    recipe_file = resources.files("edgepress") / "demo.yaml"
    with resources.as_file(recipe_file) as path:
        _run(path, output, None, None)


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file (see `edgepress schema`).")],
    output: RunDir = None,
    data: Annotated[str | None, typer.Option(help="Override the recipe's data path.")] = None,
    model: Annotated[str | None, typer.Option(help="Override the recipe's model with this file.")] = None,
) -> None:
    """Run a recipe: load or train the model, compress, export, measure, and apply the gates."""
    _run(recipe, output, data, model)


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
    runs: Annotated[int, typer.Option(min=1)] = 100,
    warmup: Annotated[int, typer.Option(min=0)] = 10,
    threads: Annotated[int | None, typer.Option(min=1, help="Default: the device's.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the results to this JSON file.")] = None,
) -> None:
    """Measure existing artifacts on one device: latency, load time, memory, and accuracy with --data."""

    def work():
        import numpy as np

        from edgepress import files
        from edgepress.deploy import measure
        from edgepress.devices import load_device

        target = load_device(device)
        pair = None
        if data is not None:
            with np.load(data) as f:
                pair = (f["x"], f["y"]) if "x" in f and "y" in f else None
            if pair is None:
                raise EdgepressError(f"{data} needs arrays 'x' (preprocessed inputs) and 'y' (integer labels).")
        table = Table("artifact", "runtime", "accuracy", "p50 ms", "p90 ms", "mean ms", "load ms", "peak MiB",
                      title=f"on {target.name} ({target.reach.kind})", title_justify="left")
        results, failed = [], []
        for artifact in artifacts:
            with console.status(f"measuring {artifact.name} on {target.name}"):
                try:
                    r = measure(artifact, pair, runs, warmup, threads, device=target)
                except EdgepressError as e:
                    failed.append(f"{artifact.name}: {e}")
                    continue
            results.append(r)
            lat, peak = r["latency_ms"], r["memory"].get("peak_rss_bytes")
            table.add_row(artifact.name, " ".join([r["runtime"]["name"], *r["runtime"]["providers"][:1]]),
                          "-" if r["accuracy"] is None else f"{r['accuracy']:.2%}", _num(lat["p50"]),
                          _num(lat["p90"]), _num(lat["mean"]), _num(r["load_ms"]),
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
def quantize(
    model: Annotated[Path, typer.Argument(help="Trained model: .keras or .h5 file, or SavedModel directory.")],
    max_accuracy_drop: Annotated[str, typer.Option(help="Largest accuracy drop from the float model: 0.005 or 0.5%.")],
    data: Annotated[str, typer.Option(
        help="Calibration and evaluation data: 'digits', an MNIST idx directory or mnist.npz, or an .npz with x, y.")],
    fmt: Annotated[str, typer.Option("--format", help="tflite or onnx.")] = "tflite",
    precision: Annotated[str, typer.Option(help="int8: TFLite int8 or ONNX int8_static.")] = "int8",
    output: RunDir = None,
    dataset: Annotated[str | None, typer.Option(help="digits, mnist or npz; default: from --data.")] = None,
    test_size: Annotated[int | None, typer.Option(min=1, help="Evaluation samples, from the end of the data.")] = None,
    calibration_samples: Annotated[int, typer.Option(min=1, help="Calibration samples, from the start.")] = 200,
    preset: Annotated[str, typer.Option(help="ONNX target: default, x86-avx2, x86-avx512-vnni, arm64.")] = "default",
    calibration_method: Annotated[str | None, typer.Option(help="ONNX: minmax, entropy or percentile.")] = None,
    per_channel: Annotated[bool | None, typer.Option("--per-channel/--per-tensor", help="ONNX weights.")] = None,
    quant_format: Annotated[str | None, typer.Option(help="ONNX: qdq or qoperator.")] = None,
    search: Annotated[str, typer.Option(help="linear or bisect.")] = "linear",
    max_float_layers: Annotated[int | None, typer.Option(min=1, help="Keep at most this many layers float.")] = None,
    runs: Annotated[int, typer.Option(min=1, help="Timed runs per artifact.")] = 100,
) -> None:
    """Quantize MODEL to int8 within an accuracy budget, keeping the most sensitive layers in float if needed."""
    from edgepress.deploy.accuracy_aware import parse_config
    from edgepress.recipe import Recipe

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
            "model": {"path": str(model)},
            "data": {"dataset": kind, "path": None if kind == "digits" else path, "test_size": test_size,
                     "calibration_samples": calibration_samples},
            # fp32 beside it: the baseline for the table's size and speed-up columns.
            "exports": [{"format": fmt, "precision": "fp32"}, {"format": fmt, "quantize": config.model_dump()}],
            "measure": {"runs": runs},
        }, source="for the quantize command")
        with console.status("starting (importing TensorFlow)") as status:
            report = run_recipe(recipe, output, _LiveProgress(status))
        _print_report(report)
        report.check()

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

    with np.load(data) as npz:  # keras' mnist.npz has x_train / y_train / x_test / y_test, a user's x and y
        return ("mnist" if "x_train" in npz.files else "npz"), data


def _run_name(stem: str) -> str:
    """A recipe name from a model file's name: the characters a name may have, the rest as '_'."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip("._-")[:100] or "model"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _run(recipe_path: Path, output: Path | None, data: str | None, model: str | None) -> None:
    from edgepress.recipe import Recipe

    def work():
        from edgepress.api import run as run_recipe

        recipe = Recipe.from_yaml(recipe_path).with_overrides(data=data, model=model)
        with console.status("starting (importing TensorFlow)") as status:
            report = run_recipe(recipe, output, _LiveProgress(status))
        _print_report(report)
        report.check()

    _guard(work)


class _LiveProgress:
    """Shows the current stage on a spinner line and logs each finished stage."""

    def __init__(self, status) -> None:
        self.status = status

    def update(self, message: str) -> None:
        self.status.update(escape(message))

    def done(self, message: str) -> None:
        console.log(escape(message))


def _print_report(report) -> None:
    columns = [c for c in report.columns() if c not in ("format", "precision")]
    table = Table(title=report.summary(), title_justify="left")
    for column in columns:
        table.add_column(column, justify="left" if column == "artifact" else "right")
    for row in report.table():
        table.add_row(*(row[c] for c in columns), style="bold green" if "★" in row["artifact"] else None)
    console.print(table)
    console.print(report.verdict())
    for note in report.notes():
        console.print(f"Note: {escape(note)}")
    for note in report.quantize_notes():
        console.print(f"Accuracy-aware quantization: {escape(note)}")
    console.print(f"Run directory: {report.run_dir} (results.json, report.md, report.html)")


def _guard(work) -> None:
    """Run `work`, turning edgepress's errors into a message and an exit code instead of a traceback."""
    try:
        work()
    except EdgepressError as e:
        errors.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        raise typer.Exit(2) from None
    except GateFailed as e:
        errors.print(f"[bold red]gates failed:[/] {escape(str(e))}", highlight=False)
        raise typer.Exit(1) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
