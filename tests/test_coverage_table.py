"""The layer coverage table in README.md is what edgepress does: each row computed again (tests/coverage_table.py:
the family's model through every step and every export) must equal README's. A few rows run by default (and in CI);
the rest are `slow` (`pytest -m slow tests/test_coverage_table.py`), about 2 minutes each on a busy machine."""

from __future__ import annotations

import pytest

from tests import coverage_table
from tests.models.families import FAMILIES, FRAMEWORKS

REGENERATE = "python -m tests.coverage_table --write --framework {} --family {}"
# A row per framework that CI computes: attention (a Keras 3 model bridged to tf_keras for tfmot, and refused by
# some steps), a PyTorch program (litert-torch and torch.onnx), and tf_keras's plain Dense.
CI_ROWS = {("keras3", "attention"), ("torch", "conv2d"), ("tf_keras", "dense")}


def test_the_readme_table_is_as_rendered_and_says_works_or_refused():
    """Hand edits show: the block between the markers is exactly what `render` makes of its rows. (A missing row
    fails that row's test below.)"""
    rows = coverage_table.read_readme()
    assert set(rows) <= {(fw, family) for fw in FRAMEWORKS for family in FAMILIES}
    text = coverage_table.README.read_text()
    block = text.split(coverage_table.START, 1)[1].split(coverage_table.END, 1)[0]
    assert block == "\n" + coverage_table.render(rows), "README.md's table was edited by hand: " + REGENERATE.format(
        "<framework>", "<family>")
    assert all(cell == coverage_table.WORKS or cell.startswith(coverage_table.REFUSED)
               for cells in rows.values() for cell in cells.values())


def test_render_and_parse_are_inverse_and_number_each_reason_once():
    rows = {("tf_keras", "dense"): dict.fromkeys(coverage_table.COLUMNS, coverage_table.WORKS),
            ("torch", "lstm"): dict.fromkeys(coverage_table.COLUMNS, coverage_table.REFUSED + "no | pipes.")}
    rows["torch", "lstm"]["onnx fp32"] = coverage_table.WORKS
    rows["tf_keras", "dense"]["qat"] = coverage_table.REFUSED + "qat cannot."
    text = coverage_table.render(rows)
    assert coverage_table.parse(text) == rows
    assert text.count("qat cannot.") == 1 and text.count("no | pipes.") == 1


@pytest.mark.parametrize("framework,family", [
    pytest.param(framework, family, marks=() if (framework, family) in CI_ROWS else pytest.mark.slow)
    for framework in FRAMEWORKS for family in FAMILIES])
def test_a_row_of_the_readme_table_is_what_edgepress_does(framework, family, tmp_path):
    computed = coverage_table.row(framework, family, tmp_path)  # raises CoverageBug on an internal error
    written = coverage_table.read_readme().get((framework, family))
    changed = [f"  {column}: README says {written.get(column) if written else None!r}, now {cell!r}"
               for column, cell in computed.items() if not written or written.get(column) != cell]
    assert not changed, (f"The layer coverage row {framework} {family} changed:\n" + "\n".join(changed)
                         + "\nIf the change is right, regenerate it: " + REGENERATE.format(framework, family))
