"""Every option's help, "[default: ...]" notes included, reaches `--help` (rich markup once read
the brackets as tags and dropped the defaults of 22 options)."""
from __future__ import annotations

import typer
from typer.testing import CliRunner

from cfgen.cli.main import app


def _commands(cmd, path: tuple[str, ...] = ()):
    if hasattr(cmd, "commands"):  # a group
        for name, sub in cmd.commands.items():
            yield from _commands(sub, path + (name,))
    else:
        yield path, cmd


def test_every_help_note_is_printed():
    root = typer.main.get_command(app)
    runner = CliRunner()
    notes = 0
    for path, cmd in _commands(root):
        res = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "400"}, catch_exceptions=False)
        assert res.exit_code == 0, path
        shown = " ".join(res.output.split())
        for param in cmd.params:
            text = " ".join((getattr(param, "help", None) or "").split())
            if "[default:" in text:
                notes += 1
                assert text in shown, (path, param.name)
    assert notes >= 15
