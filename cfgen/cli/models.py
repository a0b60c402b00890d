"""`cfgen models`: list the registry; `cfgen models show NAME`: one entry."""
from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from cfgen.cli.common import handle_errors, print_json

app = typer.Typer(rich_markup_mode=None, help="List the model registry (models.toml) or show one entry.",
                  invoke_without_command=True, no_args_is_help=False)


def _local_state(entry) -> str:
    if entry.source != "hub":
        return "shipped" if entry.source == "package" else "local"
    from cfgen.models.hub import models_dir

    placed = models_dir()
    if placed and (placed / entry.name).is_dir():
        return "placed"
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(entry.repo_id, "unet/config.json", revision=entry.revision)
        return "cached" if isinstance(hit, str) else "needs download"
    except Exception:
        return "needs download"


@app.callback()
@handle_errors
def list_models(ctx: typer.Context,
                json_out: Annotated[bool, typer.Option("--json", help="Print JSON")] = False) -> None:
    """List the model registry."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console
    from rich.table import Table

    from cfgen.models.registry import load_registry

    reg = load_registry()
    if json_out:
        print_json({"default": reg.default, "models": [e.as_dict() for e in reg.entries.values()]})
        return
    columns = ("name", "family", "source", "res", "ch", "licence", "here")
    rows = [(f"{name} (default)" if name == reg.default else name, e.family, e.describe_source(), str(e.resolution),
             str(e.channels), e.licence, _local_state(e)) for name, e in sorted(reg.entries.items())]
    if not sys.stdout.isatty():  # a pipe or a file: whole values, tab-separated, one entry per line
        sys.stdout.write("".join("\t".join(r) + "\n" for r in [columns, *rows]))
        return
    table = Table(title="cfgen models (models.toml)")
    for col in columns:
        table.add_column(col)
    for r in rows:
        table.add_row(*r)
    Console().print(table)


@app.command("show")
@handle_errors
def show(name: Annotated[str, typer.Argument(help="Entry name")],
         json_out: Annotated[bool, typer.Option("--json", help="Print JSON")] = False) -> None:
    """Print one registry entry: key: value lines, or JSON with --json."""
    from cfgen.models.registry import load_registry

    entry = load_registry().get(name)
    data = {**entry.as_dict(), "here": _local_state(entry)}
    if json_out:
        print_json(data)
        return
    for key, value in data.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        sys.stdout.write(f"{key}: {text}\n")
