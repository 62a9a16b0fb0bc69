"""The layer coverage table in README.md, computed: one tiny model per layer family and framework
(tests/models/families.py) through every step and every export, each cell "works" or "refused" with the reason the
refusal gives.

    python -m tests.coverage_table --write                      # every row, README.md rewritten between the markers
    python -m tests.coverage_table --write --framework torch    # only some rows (also --family dense, repeatable)
    python -m tests.coverage_table --framework tf_keras --family dense   # print the rows, write nothing

A step's cell runs that step alone (1 epoch on 64 digits) and one export of its result (TFLite fp32, or the first
the step allows after it); an export's cell exports the model with no step. "works" means the run ended with exit 0
and every artifact was written, loaded, checked against its model (a float export agreeing on at least 90% of the
check samples) and measured, as in every run. "refused" means the plan refused the recipe before writing anything
(exit 2). Anything else (an exception that is not a refusal, a refusal after planning, an artifact that could not be
measured, a float export that disagrees with its model) is a bug in edgepress, never a row: computing it raises.
tests/test_coverage_table.py compares each computed row with README's.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.models.families import FAMILIES, FRAMEWORKS, save_model, token_data

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- coverage:start -->", "<!-- coverage:end -->"
TITLES = {"keras3": "Keras 3", "tf_keras": "tf_keras", "torch": "PyTorch (.pt2)"}
DATA = {"train_size": 64, "test_size": 32, "calibration_samples": 16, "check_samples": 16}
MEASURE = {"runs": 2, "warmup": 1, "target_ci_width": None, "profile": False}
EPOCH = {"batch_size": 32}
STEPS = {
    "prune": {"type": "prune", "target_sparsity": 0.5, "fine_tune_epochs": 1, **EPOCH},
    "structured_prune": {"type": "structured_prune", "ratio": 0.5, "fine_tune_epochs": 1, **EPOCH},
    "cluster": {"type": "cluster", "number_of_clusters": 8, "fine_tune_epochs": 1, **EPOCH},
    "qat": {"type": "qat", "fine_tune_epochs": 1, **EPOCH},
    "distill": {"type": "distill", "teacher": "source", "epochs": 1, **EPOCH},
    "equalize": {"type": "equalize"},
}
EXPORTS = [("tflite", p) for p in ("fp32", "fp16", "dynamic", "int8", "int16x8", "int8_weight", "int4_weight")] + [
    ("onnx", p) for p in ("fp32", "fp16", "int8_dynamic", "int8_static", "int4_weight")]
COLUMNS = [*STEPS, *(f"{f} {p}" for f, p in EXPORTS)]
WORKS = "works"
REFUSED = "refused: "  # + the refusal's reason


class CoverageBug(AssertionError):
    """A cell that is neither "works" nor a refusal in the plan: a bug in edgepress, to fix, never a row."""


@dataclass
class Cell:
    """What one recipe did: WORKS, REFUSED + reason, or a bug (raised by `row`)."""

    text: str
    bug: str | None = None


def reason(message: str, folder: Path) -> str:
    """A refusal's message as the table says it: on one line, with the row's temporary folder left out."""
    text = " ".join(str(message).split())
    for path in (str(folder.resolve()), str(folder)):
        text = text.replace(path + "/", "")
    return text.replace("|", "/")  # a Markdown table cell


def _recipe(framework: str, family: str, model: Path, data: dict, steps: list[dict], exports: list[tuple]) -> dict:
    return {"name": family, "model": {"path": str(model)}, "data": data, "steps": steps, "measure": MEASURE,
            "exports": [{"format": f, "precision": p} for f, p in exports]}


def attempt(recipe: dict, run_dir: Path, folder: Path) -> Cell:
    """Run `recipe` into `run_dir` and say what happened (see the module's docstring)."""
    import edgepress
    from edgepress.errors import EdgepressError

    try:
        report = edgepress.run(edgepress.Recipe.from_dict(recipe), run_dir)
    except EdgepressError as e:
        if run_dir.exists():
            return Cell("", f"refused after planning (the plan should have): {reason(e, folder)}")
        return Cell(REFUSED + reason(e, folder))
    except Exception as e:  # noqa: BLE001 - exit 70: a bug, reported with its type
        return Cell("", f"{type(e).__name__}: {reason(e, folder)[:500]}")
    wanted = {(e["format"], e["precision"]) for e in recipe["exports"]}
    rows = {(a["format"], a["precision"]): a for a in report.artifacts}
    if set(rows) != wanted:
        return Cell("", f"exports {sorted(wanted - set(rows))} were not made nor refused")
    for (format, precision), a in rows.items():
        if a.get("error") or not (a.get("latency") or {}).get("p50"):
            return Cell("", f"{format} {precision} was not measured: {a.get('error')}")
        if not a.get("check", {}).get("samples"):
            return Cell("", f"{format} {precision} was not checked against its model")
        if precision in ("fp32", "fp16") and a["check"]["top1_agreement"] < 0.9:
            return Cell("", f"{format} {precision} disagrees with its model: top-1 agreement "
                            f"{a['check']['top1_agreement']:.2f}")
    return Cell(WORKS)


def _after(step: str, working: list[tuple]) -> list[tuple]:
    """The export a step's cell makes after it: TFLite fp32 (TFLite int8 after a step that allows only quantized
    exports: qat) when the model has it, or else the first export of the model that works and the step allows."""
    from edgepress.compress.step import STEPS as REGISTERED

    allowed = REGISTERED[step].exports_after
    preferred = [e for e in (("tflite", "fp32"), ("tflite", "int8")) if e in working] + working + EXPORTS
    return [next(e for e in preferred if allowed is None or e in allowed)]


def row(framework: str, family: str, folder: Path) -> dict[str, str]:
    """`family`'s model in `framework` through each step and each export: column -> cell text. Raises CoverageBug
    naming every cell that is a bug."""
    import edgepress
    from edgepress.errors import EdgepressError
    from edgepress.plan import make_plan

    folder.mkdir(parents=True, exist_ok=True)
    model = save_model(framework, family, folder)
    data = ({"dataset": "npz", "path": str(token_data(folder / "tokens.npz"))} if family == "embedding"
            else {"dataset": "digits"}) | DATA
    cells: dict[str, Cell] = {}
    # Exports of the model as it is: each planned alone (a refusal names one export), those accepted run together,
    # and one by one only if that run fails (to say which).
    def plans(exports: list[tuple]) -> EdgepressError | None:
        try:
            make_plan(edgepress.Recipe.from_dict(_recipe(framework, family, model, data, [], exports)), folder / "plan")
        except EdgepressError as e:
            return e
        return None

    accepted = EXPORTS if plans(EXPORTS) is None else []
    for export in EXPORTS if not accepted else ():
        refusal = plans([export])
        if refusal is None:
            accepted.append(export)
        else:
            cells[" ".join(export)] = Cell(REFUSED + reason(refusal, folder))
    if accepted:
        together = attempt(_recipe(framework, family, model, data, [], accepted), folder / "exports", folder)
        for export in accepted:
            cells[" ".join(export)] = together if together.bug is None else attempt(
                _recipe(framework, family, model, data, [], [export]), folder / f"export-{'-'.join(export)}", folder)
    working = [e for e in EXPORTS if cells[" ".join(e)].text == WORKS] or EXPORTS
    for name, step in STEPS.items():
        cells[name] = attempt(_recipe(framework, family, model, data, [step], _after(name, working)),
                              folder / f"step-{name}", folder)
    bugs = [f"{framework} {family} {column}: {cells[column].bug}" for column in COLUMNS if cells[column].bug]
    if bugs:
        raise CoverageBug("edgepress failed (a bug, not a refusal):\n" + "\n".join(bugs))
    return {column: cells[column].text for column in COLUMNS}


# -- the table in README.md --------------------------------------------------------------------------------------


def render(rows: dict[tuple[str, str], dict[str, str]]) -> str:
    """The Markdown between the markers: per framework a table (a family per row, a step or an export per column,
    each refused cell numbered) and the numbered reasons under it."""
    out = []
    for framework in FRAMEWORKS:
        families = [f for f in FAMILIES if (framework, f) in rows]
        if not families:
            continue
        reasons: dict[str, int] = {}
        lines = ["| layer family | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
        for family in families:
            cells = []
            for column in COLUMNS:
                text = rows[framework, family][column]
                if text == WORKS:
                    cells.append(WORKS)
                else:
                    number = reasons.setdefault(text.removeprefix(REFUSED), len(reasons) + 1)
                    cells.append(f"refused [{number}]")
            lines.append(f"| {FAMILIES[family][0]} | " + " | ".join(cells) + " |")
        out += [f"#### {TITLES[framework]}", "", *lines, ""]
        out += [f"{number}. {text}" for text, number in reasons.items()] + [""] if reasons else []
    return "\n".join(out).rstrip() + "\n"


def parse(block: str) -> dict[tuple[str, str], dict[str, str]]:
    """The rows of a rendered block (`render`'s inverse)."""
    by_title = {title: name for name, title in TITLES.items()}
    by_label = {label: name for name, (label, _) in FAMILIES.items()}
    rows, framework, numbered, reasons = {}, None, {}, {}
    for line in block.splitlines():
        if line.startswith("#### "):
            if framework:
                rows.update(_resolved(numbered, reasons))
            framework, numbered, reasons = by_title[line[5:].strip()], {}, {}
        elif line.startswith("| ") and not line.startswith("| layer family"):
            label, *cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            numbered[framework, by_label[label]] = dict(zip(COLUMNS, cells, strict=True))
        elif re.match(r"\d+\. ", line):
            number, text = line.split(". ", 1)
            reasons[number] = text
    if framework:
        rows.update(_resolved(numbered, reasons))
    return rows


def _resolved(numbered: dict, reasons: dict) -> dict:
    def text(cell: str) -> str:
        found = re.fullmatch(r"refused \[(\d+)\]", cell)
        return REFUSED + reasons[found.group(1)] if found else cell

    return {key: {column: text(cell) for column, cell in cells.items()} for key, cells in numbered.items()}


def read_readme(path: Path = README) -> dict[tuple[str, str], dict[str, str]]:
    """The rows of the table in README.md ({} when it has none)."""
    text = path.read_text()
    if START not in text or END not in text:
        return {}
    return parse(text.split(START, 1)[1].split(END, 1)[0])


def write_readme(rows: dict[tuple[str, str], dict[str, str]], path: Path = README) -> None:
    """README.md with `rows` in its table (the other rows kept), between the markers. Locked: runs for different
    frameworks may write at the same time."""
    import fcntl

    with open(path, "r+") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        text = file.read()
        if START not in text or END not in text:
            raise SystemExit(f"{path} has no {START} ... {END} markers: add them where the table goes")
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1]
        file.seek(0)
        file.write(f"{before}{START}\n{render({**read_readme(path), **rows})}{END}{after}")
        file.truncate()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.coverage_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="write the rows into README.md")
    parser.add_argument("--framework", action="append", choices=FRAMEWORKS)
    parser.add_argument("--family", action="append", choices=list(FAMILIES))
    args = parser.parse_args(argv)
    import edgepress  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

    rows, bugs = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for framework in args.framework or FRAMEWORKS:
            for family in args.family or FAMILIES:
                print(f"{framework} {family} ...", file=sys.stderr, flush=True)
                try:
                    rows[framework, family] = row(framework, family, Path(tmp) / framework / family)
                except CoverageBug as e:
                    bugs.append(str(e))
                    print(e, file=sys.stderr, flush=True)
                    continue
                print(render({(framework, family): rows[framework, family]}), flush=True)
                if args.write:  # row by row: a long run that stops keeps the rows it made
                    write_readme({(framework, family): rows[framework, family]})
    if bugs:
        print("\n".join(["", "Bugs (not written):", *bugs]), file=sys.stderr)
    return 1 if bugs else 0


if __name__ == "__main__":
    raise SystemExit(main())
