"""The house rules that hold the package together, checked: layers and cycles (import-linter's contracts in
pyproject.toml, which .ci/run also runs), and no private name used outside its module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "edgepress"


def test_the_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint)], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "BROKEN" not in done.stdout and "0 broken" in done.stdout


def test_no_module_imports_a_private_name_of_another():
    """`from edgepress.x import _name` makes a private helper of x part of its interface: the one place a rule lives
    becomes two. A helper two modules need is public, in the module whose job it is."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edgepress"):
                found += [f"{path.relative_to(PACKAGE.parent)}: {node.module}.{alias.name}"
                          for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert found == []
