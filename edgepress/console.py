"""The run's table in a terminal or a CI log: every artifact name whole, at any width from 80 columns up.

One table per device (its name is the table's title, not a column). The recipe's common file-name prefix
is dropped from the artifact column; the name is never cut or folded. Columns that do not fit the width
are left out in a fixed order (the least needed first) and named under the table; float layers and the
runtime wrap at spaces.
A terminal gets rich's box drawing and colour; anything else (a CI log, a pipe) plain text.
"""

from __future__ import annotations

import io
import os

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table

# Kept first to last: at a narrow width the columns at the end go first. The device is each table's title.
PRIORITY = (
    "artifact", "precision", "accuracy", "perplexity", "tokens/s", "TTFT ms", "drop", "p50 ms", "speed-up", "gates",
    "bytes", "format", "peak MiB", "layout", "int8", "float layers", "size", "agreement", "p90 ms", "gzip bytes",
    "runtime",
)
# The report's column each console column shows, where the name differs (shorter headers fit more columns).
SOURCE = {"speed-up": "speed-up vs fp32", "int8": "int8 MACs", "size": "size vs fp32",
          "tokens/s": "decode tokens/s"}
# Only these may wrap; every other cell is one unbroken line.
WRAPPING = ("float layers", "runtime")


def name_prefix(names: list[str]) -> str:
    """The prefix every artifact name shares, up to and including its last "_" (the recipe's name and "_")."""
    if not names:
        return ""
    prefix = os.path.commonprefix(names)
    return prefix[: prefix.rfind("_") + 1]


def print_report(report, console: Console) -> None:
    """Print `report`'s summary, one table per device, the verdict and the notes, fitted to `console.width`."""
    console.print(escape(report.summary()), highlight=False)
    rows = report.table()
    prefix = name_prefix([r["name"] for r in rows])
    wanted = [c for c in PRIORITY if SOURCE.get(c, c) in report.columns()]
    left_out: list[str] = []
    for device in dict.fromkeys(r["device"] for r in rows):
        device_rows = [r for r in rows if r["device"] == device]
        shown = wanted
        while _narrowest(device_rows, shown, prefix, console.is_terminal) > console.width and len(shown) > 1:
            shown = shown[:-1]
        table = _table(device_rows, shown, prefix, console.is_terminal)
        left_out += [c for c in wanted if c not in shown and c not in left_out]
        console.print()
        without = f"; artifact names without the prefix '{escape(prefix)}'" if prefix else ""
        console.print(f"on {escape(device)} (★ recommended{without})", style="bold", highlight=False)
        console.print(table)
    if left_out:
        console.print(f"Not shown at this width: {', '.join(left_out)} (report.md and report.html have every "
                      "column).", highlight=False)
    console.print(escape(report.verdict()), highlight=False)
    for note in report.notes():
        console.print(f"Note: {escape(note)}", highlight=False)
    for note in report.quantize_notes():
        console.print(f"Accuracy-aware quantization: {escape(note)}", highlight=False)


def _narrowest(rows: list[dict[str, str]], columns: list[str], prefix: str, terminal: bool) -> int:
    """The fewest characters a line of this table needs: each unbroken column at its widest cell, each
    wrapping column at its longest word, plus the table's own separators and padding."""
    table = _table(rows, columns, prefix, terminal)
    cells = [[column.header, *column.cells] for column in table.columns]
    natural = [max(cell_len(str(c)) for c in col) for col in cells]
    least = [max(cell_len(w) for c in col for w in str(c).split()) if column.header in WRAPPING else width
             for column, col, width in zip(table.columns, cells, natural, strict=True)]
    wide = Console(width=10_000, file=io.StringIO(), force_terminal=terminal)
    overhead = wide.measure(table).maximum - sum(natural)
    return overhead + sum(least)


def _table(rows: list[dict[str, str]], columns: list[str], prefix: str, terminal: bool) -> Table:
    table = Table(box=box.SIMPLE_HEAD if terminal else None, show_edge=False, pad_edge=False,
                  padding=(0, 1), collapse_padding=True, header_style="bold" if terminal else "")
    for column in columns:
        wraps = column in WRAPPING
        table.add_column(column, justify="left" if column in ("artifact", "float layers", "runtime") else "right",
                         no_wrap=not wraps, overflow="fold" if wraps else "ignore")
    for row in rows:
        cells = {**row, "artifact": row["name"][len(prefix):] + (" ★" if row["best"] else "")}
        table.add_row(*(escape(cells[SOURCE.get(c, c)]) for c in columns),
                      style="bold green" if row["best"] and terminal else None)
    return table
