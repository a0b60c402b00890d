"""`cfgen synth3d`: text-to-volume, low-resolution base stage then sliding-window super-resolution."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cfgen.cli.common import (Device, DeviceOpt, Dtype, DtypeOpt, JsonOpt, OverwriteOpt, QuietOpt, handle_errors,
                              out_option, print_item_errors, print_json, seed_option)


@handle_errors
def synth3d(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="What to generate, e.g. 'brain MRI of an 85 year old male'")],
    out: out_option("Output folder: sample-NNN/volume.nii.gz, labels, base, preview, report.json"),
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Base stage: models.toml entry or folder [default: the registry's default_synth3d]")] = None,
    sr: Annotated[Optional[str], typer.Option("--sr", help="Super-resolution stage: entry or folder, or none [default: the base's [synth] super_resolution]")] = None,
    num: Annotated[int, typer.Option("--num", "-n", help="Volumes to generate (seeds SEED, SEED+1, ...)")] = 1,
    seed: seed_option("Seed of the first volume") = 0,
    steps: Annotated[Optional[int], typer.Option(help="Base sampling steps [default: the model's, else 50]")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Classifier-free guidance at the base [default: the model's [synth] guidance, else its [defaults] guidance, else 7.5]")] = None,
    sr_steps: Annotated[Optional[int], typer.Option(help="Super-resolution sampling steps [default: the stage's, else 20]")] = None,
    size: Annotated[Optional[int], typer.Option(help="Output side in voxels, same field of view [default: base resolution x the SR scale]")] = None,
    patch: Annotated[Optional[int], typer.Option(help="Super-resolution window side in voxels (bounds memory) [default: the stage's]")] = None,
    overlap: Annotated[Optional[float], typer.Option(help="Window overlap, 0..1 [default: the stage's, else 0.25]")] = None,
    mask_from: Annotated[Optional[Path], typer.Option("--mask-from", help="Label NIfTI (value k = the model's k-th label): generate the image around this anatomy")] = None,
    label_guidance: Annotated[Optional[float], typer.Option("--label-guidance", help="With --mask-from: how strongly the image follows the given labels (1 = none; models trained with labels given clean) [default: the model's [synth] label_guidance, else 1]")] = None,
    dicom: Annotated[bool, typer.Option("--dicom", help="Also write each volume as a DICOM CT series (sample-NNN/dicom/); models with a fixed HU window")] = False,
    device: DeviceOpt = Device.auto,
    dtype: DtypeOpt = Dtype.float32,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Generate 3D volumes from text (MedSyn-style): base stage under guidance, optional anatomy label
    channels, then super-resolution in sliding windows. The sampler (DDIM or rectified flow) is each
    stage's own, from its [scheduler] kind."""
    from cfgen.cli.progress import simple_progress
    from cfgen.synthesis.generate import SynthParams
    from cfgen.synthesis.run import run_synth3d

    p = SynthParams(prompt=prompt, num=num, seed=seed, steps=steps, guidance=guidance, sr_steps=sr_steps, size=size,
                    patch=patch, overlap=overlap, label_guidance=label_guidance)
    with simple_progress(None, "sampling steps", quiet) as tick:
        report = run_synth3d(p, out, model, sr, mask_from, device.value, dtype.value, overwrite, on_step=tick,
                             dicom=dicom)
    if json_out:
        print_json(report)
    print_item_errors(report["items"])
    if not quiet:
        s = report["summary"]
        typer.echo(f"synth3d: {s['ok']} generated, {s['skipped']} already there, {s['error']} failed; "
                   f"{report['params']['size']}^3 at {report['params']['spacing_mm']:.3g} mm in {out} "
                   f"({report['timings']['total_s']:.1f} s)", err=True)
    if any(it["status"] == "error" for it in report["items"]):
        raise typer.Exit(1)
