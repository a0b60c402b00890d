"""The root app: registers the commands, nothing else. ``cfgen --help`` imports no torch."""
from __future__ import annotations

import gc

import typer

from cfgen import __version__, startup
from cfgen.cli import caption, edit, evaluate, finetune, models, phantoms, report, synth3d

app = typer.Typer(
    name="cfgen",
    help="Language-guided counterfactual editing of medical images with diffusion models.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help text is plain text: "[default: ...]" must not be read as markup
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cfgen {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit")) -> None:
    """Exit codes: 0 ok; 1 bad input or failed items; 2 usage errors."""


app.command("caption")(caption.caption)
app.command("invert")(edit.invert)
app.command("edit")(edit.edit)
app.command("finetune")(finetune.finetune)
app.command(finetune.CYCLE_COMMAND, help=finetune.CYCLE_HELP)(finetune.finetune)
app.command(finetune.DISTILL_COMMAND, help=finetune.DISTILL_HELP)(finetune.finetune)
app.command("evaluate")(evaluate.evaluate)
app.command("synth3d")(synth3d.synth3d)
app.command("report")(report.report)
app.add_typer(models.app, name="models")
app.add_typer(phantoms.app, name="phantoms")


def main() -> None:
    """The console script (``cfgen``, ``python -m cfgen``); in-process callers use ``app``.
    Collection waits for the model load (cfgen.startup), and after the command, however it ends,
    ``gc.freeze()``: the interpreter's exit then does not trace the objects of the imports again
    (about 1 s on 2 CPU cores). Reference counting still frees what it frees, and atexit
    handlers run."""
    startup.hold()
    try:
        app()
    finally:
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    main()
