"""`cfgen report OUT`: merge the item journals of every process (shards) into OUT/report.json."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cfgen.cli.common import JsonOpt, handle_errors, print_json

OutArg = Annotated[Path, typer.Argument(help="Output folder of cfgen edit or invert (one or several shards)")]


@handle_errors
def report(out: OutArg, json_out: JsonOpt = False) -> None:
    """Write OUT/report.json from the journals of every process that wrote into OUT, also while
    shards still run (what is not finished is listed under "missing")."""
    from cfgen.report import rebuild

    rep = rebuild(out)
    d = rep.data
    s, missing = d["summary"], d["missing"]
    if json_out:
        print_json(d)
    typer.echo(f"report: {s['ok']} ok, {s['skipped']} skipped, {s['error']} failed, {len(missing)} missing "
               f"({len(d['in_progress'])} being computed) of {len(rep.names or [])} items; {rep.path}", err=True)
