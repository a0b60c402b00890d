"""`cfgen phantoms cxr|brain|ct`: chest radiograph, brain MRI and chest CT phantoms with their true counterfactuals."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cfgen.cli.common import JsonOpt, QuietOpt, handle_errors, out_option, print_json, seed_option
from cfgen.errors import UsageError

VolumesOpt = Annotated[int, typer.Option("-n", help="Number of volumes")]
VolumeSeedOpt = seed_option("Data set seed (volume i uses SeedSequence([seed, i]))")
VolumeStartOpt = Annotated[int, typer.Option(help="First volume index (held-out sets: a different seed or start)")]
VolumeSizeOpt = Annotated[int, typer.Option(help="Volume size in voxels per axis (cubic)")]
SpacingOpt = Annotated[float, typer.Option(help="Voxel size in mm (the anatomy does not depend on the grid)")]
CounterfactualsOpt = Annotated[bool, typer.Option(help="Also write the true counterfactuals and masks")]
WorkersOpt = Annotated[int, typer.Option(help="Processes [0 = up to 4, one per core]")]

app = typer.Typer(rich_markup_mode=None, help="Procedural phantoms with ground-truth counterfactuals.", no_args_is_help=True)


def _check_grid(n: int, size: int, spacing: float, max_spacing: float, min_fov: float, what: str) -> None:
    if not 1 <= n <= 100_000:
        raise UsageError(f"-n {n}: must be between 1 and 100000")
    if not 16 <= size <= 256:
        raise UsageError(f"--size {size}: must be between 16 and 256")
    if not 0.5 <= spacing <= max_spacing:
        raise UsageError(f"--spacing {spacing}: must be between 0.5 and {max_spacing:g} mm")
    if size * spacing < min_fov:
        raise UsageError(f"--size {size} x --spacing {spacing:g} = {size * spacing:g} mm: the {what} needs a field "
                         f"of view of at least {min_fov:g} mm")


@app.command("cxr")
@handle_errors
def cxr_command(
    n: Annotated[int, typer.Option("-n", help="Number of images")] = 100,
    out: out_option("Output folder") = Path("phantoms-cxr"),
    seed: seed_option("Data set seed (image i uses SeedSequence([seed, i]))") = 0,
    start: Annotated[int, typer.Option(help="First image index (held-out sets: a different seed or start)")] = 0,
    size: Annotated[int, typer.Option(help="Image size in pixels (square)")] = 256,
    effusion: Annotated[float, typer.Option(help="Prevalence of pleural effusion")] = 0.4,
    cardiomegaly: Annotated[float, typer.Option(help="Prevalence of cardiomegaly")] = 0.3,
    devices: Annotated[float, typer.Option(help="Prevalence of support devices (before the correlation)")] = 0.5,
    device_effusion_corr: Annotated[float, typer.Option(help="How strongly devices follow effusion: 0 independent, 1 devices iff effusion")] = 0.6,
    counterfactuals: CounterfactualsOpt = True,
    workers: WorkersOpt = 0,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Chest-radiograph phantoms from a structural causal model, with CheXpert-style labels."""
    from cfgen.phantoms.cxr import Prevalence
    from cfgen.phantoms.dataset import write_cxr_dataset

    if not 1 <= n <= 1_000_000:
        raise UsageError(f"-n {n}: must be between 1 and 1000000")
    if not 32 <= size <= 2048:
        raise UsageError(f"--size {size}: must be between 32 and 2048")
    for name, v in (("effusion", effusion), ("cardiomegaly", cardiomegaly), ("devices", devices),
                    ("device-effusion-corr", device_effusion_corr)):
        if not 0.0 <= v <= 1.0:
            raise UsageError(f"--{name} {v}: must be between 0 and 1")
    prev = Prevalence(effusion=effusion, cardiomegaly=cardiomegaly, devices=devices,
                      device_effusion_corr=device_effusion_corr)
    from cfgen.cli.progress import simple_progress

    with simple_progress(n, "phantoms", quiet) as tick:
        report = write_cxr_dataset(out, n, seed=seed, size=size, prev=prev, counterfactuals=counterfactuals,
                                   workers=workers or None, start=start, on_item=tick)
    if json_out:
        print_json(report)
    elif not quiet:
        s = report["summary"]
        typer.echo(f"wrote {s['images']} phantoms and {s['counterfactuals']} true counterfactuals to {out} "
                   f"in {report['timings']['total_s']:.1f} s; prevalence {s['prevalence']}", err=True)


@app.command("brain")
@handle_errors
def brain_command(
    n: VolumesOpt = 20,
    out: out_option("Output folder") = Path("phantoms-brain"),
    seed: VolumeSeedOpt = 0,
    start: VolumeStartOpt = 0,
    size: VolumeSizeOpt = 64,
    spacing: SpacingOpt = 3.0,
    ms: Annotated[float, typer.Option(help="Fraction of subjects with white-matter lesions")] = 0.3,
    mean_lesion_ml: Annotated[float, typer.Option(help="Mean lesion load (mL) of subjects with lesions")] = 8.0,
    counterfactuals: CounterfactualsOpt = True,
    anatomy: Annotated[str, typer.Option(
        help="Also write label maps of these structures, comma-separated, value k = the k-th "
             "(icv, brain, wm, deep, ventricles, hippocampus, lesions): anatomy/*.nii.gz and a 'labels' "
             "column, what `cfgen finetune` reads for a base with label channels")] = "",
    workers: WorkersOpt = 0,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """T1 brain MRI phantoms (NIfTI) from a structural causal model: age, sex, Alzheimer's stage, MS lesions."""
    from cfgen.cli.progress import simple_progress
    from cfgen.phantoms.brain import MAX_LESION_ML, BrainPrevalence, check_anatomy
    from cfgen.phantoms.brain_dataset import write_brain_dataset

    _check_grid(n, size, spacing, 10.0, 160, "head")
    if not 0.0 <= ms <= 1.0:
        raise UsageError(f"--ms {ms}: must be between 0 and 1")
    if not 0.0 < mean_lesion_ml <= MAX_LESION_ML:
        raise UsageError(f"--mean-lesion-ml {mean_lesion_ml}: must be in (0, {MAX_LESION_ML:g}]")
    try:
        structures = check_anatomy(a.strip() for a in anatomy.split(",") if a.strip())
    except ValueError as exc:
        raise UsageError(f"--anatomy {anatomy}: {exc}") from None
    prev = BrainPrevalence(ms=ms, mean_lesion_ml=mean_lesion_ml)
    with simple_progress(n, "phantoms", quiet) as tick:
        report = write_brain_dataset(out, n, seed=seed, size=size, spacing=spacing, prev=prev,
                                     counterfactuals=counterfactuals, workers=workers or None, start=start,
                                     on_item=tick, anatomy=structures)
    if json_out:
        print_json(report)
    elif not quiet:
        s = report["summary"]
        typer.echo(f"wrote {s['images']} brain phantoms and {s['counterfactuals']} true counterfactuals to {out} "
                   f"in {report['timings']['total_s']:.1f} s", err=True)


@app.command("ct")
@handle_errors
def ct_command(
    n: VolumesOpt = 20,
    out: out_option("Output folder") = Path("phantoms-ct"),
    seed: VolumeSeedOpt = 0,
    start: VolumeStartOpt = 0,
    size: VolumeSizeOpt = 64,
    spacing: SpacingOpt = 6.0,
    effusion: Annotated[float, typer.Option(help="Prevalence of pleural effusion (half small, half large)")] = 0.4,
    emphysema: Annotated[float, typer.Option(help="Prevalence of emphysema at age 40 (rises with age)")] = 0.35,
    cardiomegaly: Annotated[float, typer.Option(help="Prevalence of cardiomegaly")] = 0.3,
    nodules: Annotated[float, typer.Option(help="Fraction of subjects with pulmonary nodules")] = 0.3,
    fmt: Annotated[str, typer.Option("--format", help="nifti, or dicom (CT series folders with RescaleIntercept, "
                                                      "windows, Synthetic Data; masks and label maps stay NIfTI)")] = "nifti",
    counterfactuals: CounterfactualsOpt = True,
    workers: WorkersOpt = 0,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Chest CT phantoms in HU (NIfTI or DICOM) with lobe/airway/vessel/heart/effusion label maps."""
    from cfgen.cli.progress import simple_progress
    from cfgen.phantoms.ct import CTPrevalence
    from cfgen.phantoms.ct_dataset import write_ct_dataset

    _check_grid(n, size, spacing, 12.0, 380, "chest")
    for name, v in (("effusion", effusion), ("emphysema", emphysema), ("cardiomegaly", cardiomegaly),
                    ("nodules", nodules)):
        if not 0.0 <= v <= 1.0:
            raise UsageError(f"--{name} {v}: must be between 0 and 1")
    if fmt not in ("nifti", "dicom"):
        raise UsageError(f"--format {fmt}: use nifti or dicom")
    prev = CTPrevalence(effusion=effusion, emphysema=emphysema, cardiomegaly=cardiomegaly, nodules=nodules)
    with simple_progress(n, "phantoms", quiet) as tick:
        report = write_ct_dataset(out, n, seed=seed, size=size, spacing=spacing, prev=prev,
                                  counterfactuals=counterfactuals, workers=workers or None, start=start, on_item=tick,
                                  fmt=fmt)
    if json_out:
        print_json(report)
    elif not quiet:
        s = report["summary"]
        typer.echo(f"wrote {s['images']} CT phantoms and {s['counterfactuals']} true counterfactuals to {out} "
                   f"in {report['timings']['total_s']:.1f} s", err=True)
