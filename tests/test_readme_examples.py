"""README's "Adding a compression step" and "Adding a model kind" run as written: each section's module and its test
are taken from README.md, the module put where a new kind or step goes (a folder added to the package's path, so the
repository is not touched), and its test run by pytest in a fresh process with the suite's fixtures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _blocks(section: str) -> dict[str, str]:
    """The ```python blocks of README's `## {section}`, by the file each names on its first line."""
    text = (REPO / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", body, re.S)
    return {block.splitlines()[0].removeprefix("# ").strip(): block for block in blocks}


RUN = """
import sys, pytest
import edgepress.compress, edgepress.models, edgepress.models.source as source
edgepress.compress.__path__.append(sys.argv[1] + "/compress")
edgepress.models.__path__.append(sys.argv[1] + "/models")
source.KIND_MODULES = (*source.KIND_MODULES, *sys.argv[2].split(","))  # README: add the module to KIND_MODULES
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-p", "tests.conftest", "--rootdir", sys.argv[1],
                      *sys.argv[3:]]))
"""


@pytest.mark.parametrize("section, kinds", [("Adding a compression step", ""),
                                            ("Adding a model kind", "numpy_linear")])
def test_the_readme_example_runs_as_written(section, kinds, tmp_path):
    blocks = _blocks(section)
    modules = {name: code for name, code in blocks.items() if name.startswith("edgepress/")}
    tests = {name: code for name, code in blocks.items() if name.startswith("tests/")}
    assert len(modules) == 1 and len(tests) == 1, f"{section}: expected one module and one test, got {list(blocks)}"
    for name, code in {**modules, **tests}.items():
        path = tmp_path / name.removeprefix("edgepress/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code)
    test_file = tmp_path / next(iter(tests)).removeprefix("edgepress/")
    done = subprocess.run([sys.executable, "-c", RUN, str(tmp_path), kinds, str(test_file)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
