"""Every command's --help at 80 columns shows every option name whole (a real subprocess, as a terminal sets
COLUMNS), and no line is wider than the terminal."""

import os
import re
import subprocess
import sys

import pytest
import typer

from edgepress.cli import app

COMMANDS = sorted(typer.main.get_command(app).commands)


def _help(*args: str, columns: int = 80) -> str:
    env = {**os.environ, "COLUMNS": str(columns), "LINES": "40"}
    done = subprocess.run([sys.executable, "-m", "edgepress.cli", *args, "--help"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_command_is_checked():
    assert {"demo", "run", "quantize", "bench", "devices", "models", "schema"} <= set(COMMANDS)


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_shows_every_option_whole_at_80_columns(command):
    args = [command] if command else []
    text = _help(*args)
    group = typer.main.get_command(app)
    params = group.commands[command].params if command else group.params
    names = [name for p in params for name in (*p.opts, *p.secondary_opts) if name.startswith("-")]
    assert "--help" in text
    for name in names:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), f"{name} is not whole in:\n{text}"
    assert "…" not in text
    too_long = [line for line in text.splitlines() if len(line) > 80]
    assert not too_long, too_long
