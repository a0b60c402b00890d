"""`cfgen caption`: tabular labels -> text captions."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from cfgen.captions.templates import UncertainPolicy, caption_rows
from cfgen.cli.common import handle_errors, out_option
from cfgen.errors import UsageError
from cfgen.io.tables import format_csv, read_csv, write_csv


@handle_errors
def caption(
    labels: Annotated[Path, typer.Argument(help="Labels CSV (e.g. CheXpert's train.csv); - reads standard input")],
    out: out_option("Output CSV [default: stdout]", Optional[Path]) = None,
    template: Annotated[str, typer.Option("--template", "-t", help="chexpert, brain, ct, or a string with {column} fields")] = "chexpert",
    uncertain: Annotated[UncertainPolicy, typer.Option(help="CheXpert -1 labels: ignore (not mentioned, never called normal), negative, positive, possible")] = UncertainPolicy.ignore,
    blank: Annotated[UncertainPolicy, typer.Option(help="CheXpert blank labels (same choices)")] = UncertainPolicy.negative,
    column: Annotated[str, typer.Option(help="Name of the caption column to add")] = "caption",
) -> None:
    """Turn a labels CSV into captions (PRISM Listing 1 for CheXpert). CSV in, CSV out."""
    columns, rows = read_csv(labels)
    if out is not None and out.resolve() == labels.resolve():
        raise UsageError(f"--out {out}: would overwrite the input table")
    texts = caption_rows(rows, columns, template, str(labels), uncertain, blank)
    for row, text in zip(rows, texts):
        row[column] = text
    cols = columns + ([column] if column not in columns else [])
    if out is None:
        sys.stdout.write(format_csv(cols, rows))
    else:
        write_csv(out, cols, rows)
        typer.echo(f"wrote {len(rows)} captions to {out}", err=True)
