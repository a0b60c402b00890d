"""`cfgen invert` and `cfgen edit`: one scan or a batch CSV, resumable, with a run report.
A thin layer over :mod:`cfgen.editing.batch`, which owns the run."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cfgen.cli.common import (BatchOpt, BatchSizeOpt, CompileOpt, Device, DeviceOpt, Dtype, DtypeOpt, FigureFormatOpt,
                              FormatOpt,
                              JsonOpt, ModelOpt, OutOpt, OverwriteOpt, QuietOpt, SeedOpt, ShardOpt, StepsOpt,
                              StrengthOpt,
                              WindowOpt, WorkersOpt, finish_run, handle_errors)

ScanArg = Annotated[Optional[str], typer.Argument(help="Scan: PNG/JPEG/TIFF, DICOM file, DICOM series folder, NIfTI")]
SourceOpt = Annotated[Optional[str], typer.Option("--source-prompt", "-s", help="Text describing the scan as it is [default: empty; batch: source_prompt or caption column]")]
PromptOpt = Annotated[Optional[str], typer.Option("--prompt", "-p", help="Target text: what the counterfactual should show")]
NegativeOpt = Annotated[Optional[str], typer.Option(help="Text for the unconditional branch of guidance [default: empty]")]
GuidanceOpt = Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale for regeneration [default: model's, else 7.5]")]
EtaOpt = Annotated[Optional[float], typer.Option(help="DDIM eta: 0 = deterministic; >0 adds noise drawn from --seed")]
MaskOpt = Annotated[Optional[str], typer.Option(help="none (PRISM: regenerate everything), auto (DiffEdit-style mask from where source and target prompts disagree), refine (a generous auto mask, then only where that edit changed the scan) or a PNG/NIfTI mask file (nonzero = may change)")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Refuse prompts the text encoder cannot take whole (words past its "
                                        "length, characters its tokenizer cannot represent) instead of warning")]
RangeOpt = Annotated[Optional[float], typer.Option("--difference-range", help="Colour scale of every difference map "
                                                  "of the run, +-this value: HU for CT, a fraction of the intensity "
                                                  "window otherwise [default: edit 0.5 (500 HU), invert 0.1 (100 HU)]")]
InversionOpt = Annotated[Optional[str], typer.Option("--inversion", help="ddim; negative-prompt (Miyake et al. 2023: the "
                                                    "source prompt as the unconditional branch, forward passes only); "
                                                    "null-text (Mokady et al. 2023: the null embedding optimised per "
                                                    "step, PRISM's; about 2 x null-text-steps more UNet passes) [default: ddim]")]
SolverOpt = Annotated[Optional[str], typer.Option("--solver", help="ddim, or dpm++ (DPM-Solver++(2M) sampling with the "
                                              "matching inversion, for few steps, e.g. --steps 10) [default: ddim]")]
NullStepsOpt = Annotated[Optional[int], typer.Option("--null-text-steps", help="null-text: optimisation steps per timestep [default: 10]")]
GateOpt = Annotated[Optional[float], typer.Option("--min-inversion-psnr", help="Gate: before editing, reconstruct under the source "
                                                  "prompt at the edit's guidance; below this PSNR (dB, outside the mask, "
                                                  "against the first stage's own reconstruction) try twice the steps, "
                                                  "then negative-prompt, then null-text; fail the item if none reaches it")]
InvGuidanceOpt = Annotated[Optional[float], typer.Option("--guidance", help="Guidance of the reconstruction [default: 1, plain DDIM; "
                                                         "an edit's guidance shows what its inversion keeps]")]
AttentionOpt = Annotated[Optional[str], typer.Option("--attention", help="Prompt-to-prompt attention control (PRISM's): "
                                                    "refine (words both prompts share keep the scan's cross-attention "
                                                    "maps), replace (a word swap, prompts of equal token count), or "
                                                    "none [default: none]")]
CrossOpt = Annotated[Optional[float], typer.Option("--cross-attention", help="Prompt-to-prompt: fraction of the steps "
                                                  "with the scan's cross-attention maps [default: 0.8]")]
SelfOpt = Annotated[Optional[float], typer.Option("--self-attention", help="Prompt-to-prompt: fraction of the steps "
                                                 "with the scan's self-attention maps [default: 0.4]")]
SweepOpt = Annotated[Optional[str], typer.Option("--sweep", help="PRISM's sweep, e.g. self-attention=0.4,0.5,0.6,0.7,0.8: "
                                                "the variants run in one batch and the best by --select-by is kept, "
                                                "every score recorded (needs --attention)")]
SelectOpt = Annotated[Optional[str], typer.Option("--select-by", help="--sweep's scorer: a clip entry (S_CLIP) or a "
                                                 "classifier entry (p of the target class for the label the prompts "
                                                 "change) [default: the model's, demo-cxr: cxr-classifier]")]
ThresholdOpt = Annotated[Optional[float], typer.Option(help="auto and refine masks: fraction of the largest disagreement that counts as edit region [default: refine: the model's refine_threshold; then the model's mask_threshold; else auto 0.5, refine 0.3]")]
RefineOpt = Annotated[Optional[float], typer.Option(help="refine mask: change of the first pass (fraction of the intensity window's width in scan units, 0..1) that keeps a pixel in the mask [default: the model's refine_change, else 0.12]")]

LabelsOpt = Annotated[Optional[str], typer.Option("--labels", help="The scan's anatomy label map (integer NIfTI on "
                                                 "its grid, value k = the k-th label) for a model that generates label "
                                                 "channels with the image (demo-ct); inverted and regenerated with it, "
                                                 "the counterfactual's map written beside it [batch: labels column]")]


def _run(command: str, scan: str | None, batch: Path | None, settings, json_out: bool, quiet: bool, **options) -> None:
    from cfgen.cli.progress import run_progress
    from cfgen.editing.batch import run_operation

    result = run_operation(command, scan, settings, batch=batch, progress=lambda n, k: run_progress(n, k, quiet),
                           **options)
    finish_run(command, result, json_out, quiet)


def _settings(out: Path, model: str | None, device: Device, dtype: Dtype, fmt, overwrite: bool, batch_size: str,
              compile_unet: bool, workers: int | None, strict: bool, shard: str | None, figure_format: str,
              difference_range: float | None):
    from cfgen.editing.batch import RunSettings, parse_batch_size

    return RunSettings(out=out, model=model, device=device.value, dtype=dtype.value, fmt=fmt.value if fmt else None,
                       overwrite=overwrite, batch_size=parse_batch_size(batch_size), compile=compile_unet,
                       workers=workers, strict=strict, shard=shard, figure_format=figure_format,
                       difference_range=difference_range)


@handle_errors
def invert(scan: ScanArg = None, source_prompt: SourceOpt = None, batch: BatchOpt = None, out: OutOpt = Path("cfgen-out"),
           model: ModelOpt = None, steps: StepsOpt = None, strength: StrengthOpt = None, window: WindowOpt = None,
           guidance: InvGuidanceOpt = None, inversion: InversionOpt = None, null_text_steps: NullStepsOpt = None,
           solver: SolverOpt = None, fmt: FormatOpt = None, device: DeviceOpt = Device.auto, dtype: DtypeOpt = Dtype.float32,
           overwrite: OverwriteOpt = False, json_out: JsonOpt = False, quiet: QuietOpt = False,
           batch_size: BatchSizeOpt = "1", compile_unet: CompileOpt = False, workers: WorkersOpt = None,
           strict: StrictOpt = False, shard: ShardOpt = None, figure_format: FigureFormatOpt = "png",
           difference_range: RangeOpt = None, labels: LabelsOpt = None) -> None:
    """Invert a scan under its source prompt; save the latents and the reconstruction with PSNR/SSIM."""
    settings = _settings(out, model, device, dtype, fmt, overwrite, batch_size, compile_unet, workers, strict, shard,
                         figure_format, difference_range)
    _run("invert", scan, batch, settings, json_out, quiet, source_prompt=source_prompt, steps=steps,
         strength=strength, window=window, guidance=guidance, inversion=inversion, null_text_steps=null_text_steps,
         solver=solver, labels=labels)


@handle_errors
def edit(scan: ScanArg = None, prompt: PromptOpt = None, source_prompt: SourceOpt = None,
         negative_prompt: NegativeOpt = None, batch: BatchOpt = None, out: OutOpt = Path("cfgen-out"),
         model: ModelOpt = None, steps: StepsOpt = None, guidance: GuidanceOpt = None, strength: StrengthOpt = None,
         eta: EtaOpt = None, seed: SeedOpt = None, mask: MaskOpt = None, mask_threshold: ThresholdOpt = None,
         refine_change: RefineOpt = None, inversion: InversionOpt = None, null_text_steps: NullStepsOpt = None, min_inversion_psnr: GateOpt = None,
         solver: SolverOpt = None, attention: AttentionOpt = None, cross_attention: CrossOpt = None, self_attention: SelfOpt = None,
         sweep: SweepOpt = None, select_by: SelectOpt = None, window: WindowOpt = None, fmt: FormatOpt = None, device: DeviceOpt = Device.auto,
         dtype: DtypeOpt = Dtype.float32, overwrite: OverwriteOpt = False, json_out: JsonOpt = False,
         quiet: QuietOpt = False, batch_size: BatchSizeOpt = "1", compile_unet: CompileOpt = False,
         workers: WorkersOpt = None, strict: StrictOpt = False, shard: ShardOpt = None,
         figure_format: FigureFormatOpt = "png", difference_range: RangeOpt = None, labels: LabelsOpt = None) -> None:
    """Counterfactual of a scan (or a CSV of scans) for a target prompt."""
    settings = _settings(out, model, device, dtype, fmt, overwrite, batch_size, compile_unet, workers, strict, shard,
                         figure_format, difference_range)
    _run("edit", scan, batch, settings, json_out, quiet, prompt=prompt, source_prompt=source_prompt,
         negative_prompt=negative_prompt, steps=steps, guidance=guidance, strength=strength, eta=eta, seed=seed,
         window=window, mask=mask, mask_threshold=mask_threshold, refine_change=refine_change, inversion=inversion, null_text_steps=null_text_steps,
         min_inversion_psnr=min_inversion_psnr, solver=solver, attention=attention, cross_attention=cross_attention,
         self_attention=self_attention, sweep=sweep, select_by=select_by, labels=labels)
