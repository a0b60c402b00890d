"""`cfgen models`: list the registry; `cfgen models show NAME`: one entry."""
from __future__ import annotations

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
    table = Table(title="cfgen models (models.toml)")
    for col in ("name", "family", "source", "res", "ch", "licence", "here"):
        table.add_column(col)
    for name, e in sorted(reg.entries.items()):
        label = f"{name} (default)" if name == reg.default else name
        table.add_row(label, e.family, e.describe_source(), str(e.resolution), str(e.channels), e.licence,
                      _local_state(e))
    Console().print(table)


@app.command("show")
@handle_errors
def show(name: Annotated[str, typer.Argument(help="Entry name")]) -> None:
    """Print one registry entry as JSON."""
    from cfgen.models.registry import load_registry

    entry = load_registry().get(name)
    print_json({**entry.as_dict(), "here": _local_state(entry)})
