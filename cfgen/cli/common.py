"""Shared option types, error handling and output for all commands (defined once)."""
from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from cfgen.errors import CfgenError


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Dtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Format(str, Enum):
    png = "png"
    jpeg = "jpeg"
    tiff = "tiff"
    dicom = "dicom"
    nifti = "nifti"


def out_option(help: str, type_: Any = Path) -> Any:
    """``--out/-o`` for a command, with the command's own help text (the names are defined here once)."""
    return Annotated[type_, typer.Option("--out", "-o", help=help)]


def seed_option(help: str, type_: Any = int) -> Any:
    """``--seed`` for a command, with what the seed drives in that command."""
    return Annotated[type_, typer.Option("--seed", help=help)]


ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="models.toml entry name or a model folder [default: the registry's default]")]
OutOpt = out_option("Output folder (report.json and one folder per scan)")
SeedOpt = seed_option("Seed for the random parts (eta > 0); recorded per item", Optional[int])
DeviceOpt = Annotated[Device, typer.Option(help="Where to run")]
DtypeOpt = Annotated[Dtype, typer.Option(help="Weights/activations precision (scheduler maths stays float32)")]
FormatOpt = Annotated[Optional[Format], typer.Option("--format", help="Output format [default: the input's]")]
StepsOpt = Annotated[Optional[int], typer.Option(help="DDIM steps [default: model's, else 50]")]
StrengthOpt = Annotated[Optional[float], typer.Option(help="Fraction of the steps to invert, 0..1 [default: 1]")]
WindowOpt = Annotated[Optional[str], typer.Option(help="Intensity window mapped to the model range: auto, minmax, dtype, percentile, LOW,HIGH or LOW,KNEE,HIGH (piecewise linear, KNEE to the middle of the range)")]
BatchOpt = Annotated[Optional[Path], typer.Option("--batch", help="CSV of jobs (image or Path, prompt, optional source_prompt/caption, strength, seed, output); - reads standard input (relative paths: from the working directory)")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Redo items whose outputs exist")]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the UNet once per process (pays off on GPUs "
                                                          "over many items; CFGEN_COMPILE_BACKEND picks the backend)")]
BatchSizeOpt = Annotated[str, typer.Option("--batch-size", help="Items sharing each UNet forward (batch CSVs: consecutive "
                                                         "rows with equal steps, strength, guidance and eta 0), or "
                                                         "auto: as many as the free memory holds (measured)")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", help="Threads that read, prepare and write scans while "
                                                   "the model computes [default: the cores, but one, per process; 2..16]")]
ShardOpt = Annotated[Optional[str], typer.Option("--shard", help="I/N: run only the I-th of N contiguous shares of the "
                                                 "batch rows (1-based; e.g. a Slurm array task); shards may share "
                                                 "one --out, and `cfgen report OUT` merges them")]
FigureFormatOpt = Annotated[str, typer.Option("--figure-format", help="Figures (panel, difference map; evaluate: examples, "
                                               "histograms): png, svg (text stays text), pdf, or none (edit/invert: no "
                                               "figures, for large batches)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Also print report.json to stdout")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summary")]


def safe_text(message: str) -> str:
    """File names that are not valid UTF-8 (surrogate escapes) printed as backslash escapes, never a crash."""
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


def fail(message: str, code: int) -> None:
    typer.echo(f"cfgen: error: {safe_text(message)}", err=True)
    raise typer.Exit(code)


def handle_errors(fn: Callable) -> Callable:
    """Library errors -> one line on stderr and the error's exit code (CFGEN_DEBUG=1: traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any):
        try:
            return fn(*args, **kwargs)
        except CfgenError as exc:
            if os.environ.get("CFGEN_DEBUG"):
                traceback.print_exc()
            fail(str(exc).replace("\n", " "), exc.exit_code)
        except KeyboardInterrupt:
            typer.echo("cfgen: interrupted; re-run the same command to resume", err=True)
            raise typer.Exit(130) from None

    return wrapper


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_item_warnings(items: list[dict], most: int = 5) -> None:
    """Distinct item warnings on stderr, at most ``most`` (all of them are in item.json/report.json)."""
    distinct = list(dict.fromkeys(w for it in items for w in it.get("warnings", [])))
    for w in distinct[:most]:
        typer.echo(f"cfgen: warning: {w}", err=True)
    if len(distinct) > most:
        typer.echo(f"cfgen: warning: {len(distinct) - most} more warnings in report.json", err=True)


def print_item_errors(items: list[dict]) -> None:
    """One line per failed item, always (also with --quiet): failures are never silent."""
    for item in items:
        if item["status"] == "error":
            typer.echo(f"cfgen: error: {safe_text(str(item['error']))}", err=True)


#: metrics worth a glance on the terminal after a run (all of them are in report.json)
SUMMARY_METRICS = ("l1", "changed_fraction", "psnr", "ssim", "vae_psnr", "inversion_psnr", "latent_rel_error")


def finish_run(command: str, result: Any, json_out: bool, quiet: bool) -> None:
    """After an item run (cfgen.editing.batch.RunResult): the failed items, the report or a one-line
    summary, and exit code 1 when an item failed. A secondary shard process prints nothing."""
    if not result.main:
        raise typer.Exit(1 if result.failed else 0)
    data = result.report.data
    print_item_warnings(data["items"])
    print_item_errors(data["items"])
    if json_out:
        print_json(data)
    elif not quiet:
        s = data["summary"]
        means = ", ".join(f"{k} {v['mean']:.4g}" for k, v in s["metrics"].items() if k in SUMMARY_METRICS)
        typer.echo(f"{command}: {s['ok']} ok, {s['skipped']} skipped, {s['error']} failed in "
                   f"{data['timings']['total_s']:.1f} s{'; ' + means if means else ''}; report: {result.report.path}",
                   err=True)
    if result.failed:
        raise typer.Exit(1)
