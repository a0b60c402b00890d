"""`cfgen invert` and `cfgen edit`: one scan or a batch CSV, resumable, with a run report."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from cfgen.cli.common import (BatchOpt, BatchSizeOpt, CompileOpt, DeviceOpt, DtypeOpt, Device, Dtype, FormatOpt, JsonOpt, ModelOpt,
                              OutOpt, OverwriteOpt, QuietOpt, StepsOpt, StrengthOpt, WindowOpt, WorkersOpt, handle_errors,
                              print_item_errors, print_json)
from cfgen.errors import UsageError

ScanArg = Annotated[Optional[str], typer.Argument(help="Scan: PNG/JPEG/TIFF, DICOM file, DICOM series folder, NIfTI")]
#: metrics worth a glance on the terminal (all of them are in report.json)
SUMMARY_METRICS = ("l1", "changed_fraction", "psnr", "ssim", "vae_psnr", "inversion_psnr", "latent_rel_error")

SourceOpt = Annotated[Optional[str], typer.Option("--source-prompt", "-s", help="Text describing the scan as it is [default: empty; batch: source_prompt or caption column]")]


def _run(command: str, scan: str | None, batch: Path | None, out: Path, model: str | None, device: Device,
         dtype: Dtype, fmt, overwrite: bool, json_out: bool, quiet: bool, batch_size: str = "1",
         compile_unet: bool = False, workers: int | None = None, **given) -> None:
    from cfgen.editing.jobs import jobs_from_csv, single_job
    from cfgen.editing.params import EditParams
    from cfgen.models.loader import entry_for
    from cfgen.report import RunReport

    if (scan is None) == (batch is None):
        raise UsageError("give one scan or --batch CSV (not both, not neither)")
    if scan is not None and not Path(scan).exists():
        from cfgen.errors import ScanReadError

        raise ScanReadError(f"{scan}: file not found")
    mask = given.get("mask")
    if mask not in (None, "none", "auto") and not Path(mask).is_file():
        from cfgen.errors import InputError

        raise InputError(f"{mask}: mask file not found (--mask takes none, auto or a file)")
    size = _batch_size(batch_size)
    if workers is not None and not 1 <= workers <= 64:
        raise UsageError(f"--workers {workers}: must be between 1 and 64")
    if batch is not None and not batch.is_file():
        from cfgen.errors import InputError

        raise InputError(f"{batch}: CSV file not found")
    t0 = time.perf_counter()
    entry = entry_for(model)
    params = EditParams.resolve(entry.defaults, **given)
    params.check()
    need_prompt = command == "edit"
    if batch is not None:
        jobs = jobs_from_csv(batch, params, need_prompt=need_prompt)
    else:
        if need_prompt and not params.prompt:
            raise UsageError("--prompt is required: the text of the counterfactual")
        jobs = [single_job(scan, params)]
    report_params = {**params.as_dict(), "model": model or entry.name, "batch": str(batch) if batch else None,
                     "format": fmt.value if fmt else None, "device": device.value, "dtype": dtype.value,
                     "overwrite": overwrite, "batch_size": size or "auto", "compile": compile_unet,
                     "workers": workers or "auto"}
    report = RunReport(command, out, report_params)

    from cfgen.editing.operations import OPERATIONS
    from cfgen.editing.runner import run_jobs
    from cfgen.models.loader import load_model

    from cfgen.editing.shard import Shard

    shard = Shard(device.value)  # several processes (accelerate launch): jobs r, r + N, ... each
    mine = shard.take(jobs)
    if shard.size > 1:
        report.path = shard.partial_path(out)
    t1 = time.perf_counter()
    loaded = load_model(model, device=shard.device or device.value, dtype=dtype.value)
    report.set_model(loaded.report_info(), loaded.device)
    from cfgen.editing.speed import tune

    plan = None
    if size is None or str(loaded.device).startswith("cuda"):  # VAE slices/tiles when memory is short
        from cfgen.editing import memory

        plan = memory.plan(loaded, len(mine), size)  # before compiling: the probe's shapes are its own
        memory.apply(loaded, plan)
        size = plan.batch_size
    report.data["speed"] = tune(loaded, compile_unet)
    if plan is not None:
        report.data["speed"]["memory"] = plan.record()
    report.data["timings"]["model_load_s"] = round(time.perf_counter() - t1, 3)
    from cfgen.cli.progress import run_progress

    k = max(1, round(params.strength * params.steps))
    with run_progress(len(mine), 2 * k, quiet or not shard.main) as (on_item, on_step):
        run_jobs(OPERATIONS[command], loaded, mine, out, report, fmt=fmt.value if fmt else None,
                 overwrite=overwrite, on_item=on_item, on_step=on_step, batch_size=size, io_threads=workers)
    report.data["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    report.write()
    if shard.size > 1:
        shard.wait()
        if not shard.main:
            raise typer.Exit(1 if report.failed else 0)
        merged = RunReport(command, out, report_params)
        merged.set_model(report.data["model"], report.data["device"])
        merged.data["timings"] = dict(report.data["timings"])
        shard.merge(out, merged, jobs)
        merged.data["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
        merged.write()
        report = merged
    print_item_errors(report.data["items"])
    if json_out:
        print_json(report.data)
    elif not quiet:
        s = report.data["summary"]
        means = ", ".join(f"{k} {v['mean']:.4g}" for k, v in s["metrics"].items()
                          if k in SUMMARY_METRICS)
        typer.echo(f"{command}: {s['ok']} ok, {s['skipped']} skipped, {s['error']} failed in "
                   f"{report.data['timings']['total_s']:.1f} s{'; ' + means if means else ''}; report: {report.path}",
                   err=True)
    if report.failed:
        raise typer.Exit(1)


def _batch_size(text: str) -> int | None:
    """--batch-size: a number in [1, 1024], or auto (None)."""
    if text.strip().lower() == "auto":
        return None
    try:
        size = int(text)
    except ValueError:
        raise UsageError(f"--batch-size {text}: give a whole number or auto") from None
    if not 1 <= size <= 1024:
        raise UsageError(f"--batch-size {text}: must be between 1 and 1024")
    return size


@handle_errors
def invert(
    scan: ScanArg = None,
    source_prompt: SourceOpt = None,
    batch: BatchOpt = None,
    out: OutOpt = Path("cfgen-out"),
    model: ModelOpt = None,
    steps: StepsOpt = None,
    strength: StrengthOpt = None,
    window: WindowOpt = None,
    fmt: FormatOpt = None,
    device: DeviceOpt = Device.auto,
    dtype: DtypeOpt = Dtype.float32,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    batch_size: BatchSizeOpt = "1",
    compile_unet: CompileOpt = False,
    workers: WorkersOpt = None,
) -> None:
    """DDIM-invert a scan under its source prompt; save the latents and the reconstruction with PSNR/SSIM."""
    _run("invert", scan, batch, out, model, device, dtype, fmt, overwrite, json_out, quiet, batch_size, compile_unet,
         workers, source_prompt=source_prompt, steps=steps, strength=strength, window=window)


@handle_errors
def edit(
    scan: ScanArg = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Target text: what the counterfactual should show")] = None,
    source_prompt: SourceOpt = None,
    negative_prompt: Annotated[Optional[str], typer.Option(help="Text for the unconditional branch of guidance [default: empty]")] = None,
    batch: BatchOpt = None,
    out: OutOpt = Path("cfgen-out"),
    model: ModelOpt = None,
    steps: StepsOpt = None,
    guidance: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale for regeneration [default: model's, else 7.5]")] = None,
    strength: StrengthOpt = None,
    eta: Annotated[Optional[float], typer.Option(help="DDIM eta: 0 = deterministic; >0 adds noise drawn from --seed")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for the random parts (eta > 0); recorded per item")] = None,
    mask: Annotated[Optional[str], typer.Option(help="none (PRISM: regenerate everything), auto (DiffEdit-style mask from where source and target prompts disagree) or a PNG/NIfTI mask file (nonzero = may change)")] = None,
    mask_threshold: Annotated[Optional[float], typer.Option(help="auto mask: fraction of the largest disagreement that counts as edit region")] = None,
    window: WindowOpt = None,
    fmt: FormatOpt = None,
    device: DeviceOpt = Device.auto,
    dtype: DtypeOpt = Dtype.float32,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    batch_size: BatchSizeOpt = "1",
    compile_unet: CompileOpt = False,
    workers: WorkersOpt = None,
) -> None:
    """Counterfactual of a scan (or a CSV of scans) for a target prompt."""
    _run("edit", scan, batch, out, model, device, dtype, fmt, overwrite, json_out, quiet, batch_size, compile_unet,
         workers, prompt=prompt, source_prompt=source_prompt, negative_prompt=negative_prompt, steps=steps,
         guidance=guidance, strength=strength, eta=eta, seed=seed, window=window, mask=mask,
         mask_threshold=mask_threshold)
