"""`cfgen finetune`, `cfgen cycle-train` and `cfgen distill`: adapt a model to a labelled image set
(only the UNet trains). One command function serves the three names: `cycle-train` is `finetune`
with the Cycle Diffusion Model objective, which `finetune --counterfactual RULE` also selects;
`distill` is `finetune` with latent consistency distillation (cfgen/training/distill.py), whose
options only it takes."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cfgen.cli.common import Device, DeviceOpt, JsonOpt, ModelOpt, QuietOpt, handle_errors, out_option, print_json, seed_option
from cfgen.training.config import FinetuneConfig, parse_label_weights, parse_region_weights

D = FinetuneConfig()  # the defaults, defined once in the typed config
CYCLE_COMMAND, DISTILL_COMMAND, DEFAULT_RULES = "cycle-train", "distill", ["age:10,30,60"]
CounterfactualOpt = Annotated[Optional[list[str]], typer.Option(
    help="Counterfactual rule (repeatable; selects the cycle objective): age:10,30,60 (numeric field, +- kept in "
         "range), sex (another category), 'TEXT=>OTHER' (text swap), 'finding:Pleural Effusion,Cardiomegaly' (add or "
         "remove one CheXpert finding of a chexpert-template caption) [cycle-train default: age:10,30,60]")]


@handle_errors
def finetune(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="CSV with image (or Path) and caption columns; paths relative to it; - reads standard input")],
    model: ModelOpt = None,
    out: out_option("Output folder: model/, checkpoints/, validation/, report.json") = Path("cfgen-finetune"),
    caption_column: Annotated[str, typer.Option(help="Caption column")] = "caption",
    template: Annotated[Optional[str], typer.Option(help="Make captions from labels instead: chexpert, brain or a {column} template")] = None,
    learning_rate: Annotated[float, typer.Option(help="AdamW learning rate (PRISM: 1e-5)")] = D.learning_rate,
    lr_scheduler: Annotated[str, typer.Option(help="constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial")] = D.lr_scheduler,
    lr_warmup_steps: Annotated[int, typer.Option(help="Warm-up steps")] = D.lr_warmup_steps,
    batch_size: Annotated[int, typer.Option(help="Images per process per micro-batch")] = D.batch_size,
    gradient_accumulation: Annotated[int, typer.Option(help="Micro-batches per optimizer step")] = D.gradient_accumulation,
    mixed_precision: Annotated[Optional[str], typer.Option(help="no, bf16 or fp16 (fp16 needs a GPU) [default: accelerate's: `accelerate launch --mixed_precision`, its config file, else no]")] = D.mixed_precision,
    report_to: Annotated[Optional[str], typer.Option(help="tensorboard: log loss, learning rate and validation images to OUT/logs (pip install tensorboard)")] = None,
    gradient_checkpointing: Annotated[bool, typer.Option(help="Trade compute for memory")] = D.gradient_checkpointing,
    ema: Annotated[bool, typer.Option(help="Keep an exponential moving average of the weights (saved model uses it)")] = D.ema,
    ema_decay: Annotated[float, typer.Option(help="EMA decay")] = D.ema_decay,
    snr_gamma: Annotated[Optional[float], typer.Option(help="Min-SNR loss weighting gamma (e.g. 5)")] = D.snr_gamma,
    noise_offset: Annotated[float, typer.Option(help="Noise offset (e.g. 0.05)")] = D.noise_offset,
    caption_dropout: Annotated[float, typer.Option(help="Fraction of captions replaced by '' (classifier-free guidance); tabular models: "
                                                             "each field missing with this probability, and whole rows")] = D.caption_dropout,
    label_condition: Annotated[float, typer.Option(help="3D models with anatomy label channels: share of training volumes whose labels are given clean "
                                                       "(not noised, not in the loss), so `synth3d --mask-from` generates the image around given labels (e.g. 0.3)")] = D.label_condition,
    label_weight: Annotated[Optional[list[str]], typer.Option(help="3D models with anatomy label channels: NAME=W (repeatable) weights the loss W times "
                                                                  "where the volume holds that label, e.g. vessel=20 for thin structures")] = None,
    label_weight_given: Annotated[bool, typer.Option(help="Apply --label-weight only in the volumes whose labels are given clean "
                                                         "(--label-condition): teaches the image to follow given labels without "
                                                         "pushing free generation towards the weighted structures")] = D.label_weight_given,
    region_weight: Annotated[Optional[list[str]], typer.Option(help="COLUMN=W (repeatable): weights the loss W times inside the region of the "
                                                                   "mask file in that CSV column (nonzero = region, on the image's grid; an empty "
                                                                   "cell: none), e.g. lesion_mask=20 for small findings")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Optimizer steps [default: from --epochs]")] = D.max_steps,
    epochs: Annotated[int, typer.Option(help="Epochs when --max-steps is not given")] = D.epochs,
    checkpoint_every: Annotated[int, typer.Option(help="Save a resumable checkpoint every N steps")] = D.checkpoint_every,
    keep_checkpoints: Annotated[int, typer.Option(help="Checkpoints kept")] = D.keep_checkpoints,
    validation_prompt: Annotated[Optional[list[str]], typer.Option(help="Prompt rendered to validation/*.png (repeatable)")] = None,
    validate_every: Annotated[int, typer.Option(help="Render validation prompts every N steps (0: at the end only)")] = D.validate_every,
    seed: seed_option("Seed of data order, noise, timesteps and caption dropout") = D.seed,
    window: Annotated[Optional[str], typer.Option(help="Intensity window mapped to the model range: auto, minmax, dtype, percentile, LOW,HIGH (e.g. -1024,600 HU) or LOW,KNEE,HIGH (e.g. -1024,-700,600) [default: the model's, else auto]")] = None,
    counterfactual: CounterfactualOpt = None,
    cycle_weight: Annotated[Optional[float], typer.Option(help="lambda: weight of the L1 cycle loss (CDM Eq. 2) [default: 1]")] = None,
    distill_guidance: Annotated[Optional[float], typer.Option(help="distill: the teacher's classifier-free guidance, baked into the student [default: the model's, else 7.5]")] = None,
    teacher_steps: Annotated[Optional[int], typer.Option(help="distill: DDIM steps of the teacher's grid (one solver step of T/N per sample) [default: 50]")] = None,
    student_steps: Annotated[Optional[int], typer.Option(help="distill: the student's --steps, written into its [defaults] [default: 4]")] = None,
    huber_c: Annotated[Optional[float], typer.Option(help="distill: pseudo-Huber constant of the consistency loss [default: 0.001]")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in --out")] = False,
    device: DeviceOpt = Device.auto,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fine-tune a model's UNet on image-caption pairs (PRISM Algorithm 1). Works under `accelerate launch`."""
    cfg = FinetuneConfig(learning_rate=learning_rate, lr_scheduler=lr_scheduler, lr_warmup_steps=lr_warmup_steps,
                         batch_size=batch_size, gradient_accumulation=gradient_accumulation,
                         mixed_precision=mixed_precision, gradient_checkpointing=gradient_checkpointing, ema=ema,
                         ema_decay=ema_decay, snr_gamma=snr_gamma, noise_offset=noise_offset,
                         caption_dropout=caption_dropout, label_condition=label_condition,
                         label_weights=parse_label_weights(label_weight), label_weight_given=label_weight_given,
                         region_weights=parse_region_weights(region_weight), max_steps=max_steps, epochs=epochs,
                         checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
                         validation_prompts=list(validation_prompt or []), validate_every=validate_every, seed=seed,
                         window=window, report_to=report_to)
    cfg.check()
    distill = {"guidance": distill_guidance, "teacher_steps": teacher_steps, "student_steps": student_steps,
               "huber_c": huber_c}
    objective = _objective(ctx.info_name, counterfactual, cycle_weight, distill)
    from cfgen.io.tables import is_stdin

    if not is_stdin(data) and not data.is_file():
        from cfgen.errors import InputError

        raise InputError(f"{data}: CSV file not found")
    from cfgen.cli.progress import simple_progress
    from cfgen.training.finetune import finetune as run

    with simple_progress(max_steps or 0, "training steps", quiet or not max_steps) as tick:
        report = run(data, model, out, cfg, resume=resume, caption_column=caption_column, template=template,
                     device=device.value, on_step=(lambda s, t, loss: tick()) if tick else None, objective=objective)
    _print(report, out, json_out, quiet)


def _objective(command: str | None, rules: list[str] | None, weight: float | None, distill: dict):
    """Consistency distillation for `distill`; the cycle objective for `cycle-train` or when rules
    are given; None: the denoising loss."""
    from cfgen.errors import UsageError

    given = [k for k, v in distill.items() if v is not None]
    if command == DISTILL_COMMAND:
        if rules or weight is not None:
            raise UsageError("--counterfactual / --cycle-weight: cycle training, not distillation (run cfgen cycle-train)")
        from cfgen.training.distill import ConsistencyDistillation

        return ConsistencyDistillation(**{k: distill[k] for k in given})
    if given:
        name = {"guidance": "distill-guidance"}.get(given[0], given[0]).replace("_", "-")
        raise UsageError(f"--{name}: an option of cfgen distill (consistency distillation), not of cfgen {command}")
    if command != CYCLE_COMMAND and not rules:
        if weight is not None:
            raise UsageError("--cycle-weight: give --counterfactual rules too (or run cfgen cycle-train)")
        return None
    from cfgen.training.cycle import CycleObjective, parse_rules

    return CycleObjective(parse_rules(rules or DEFAULT_RULES), 1.0 if weight is None else weight)


def _print(report: dict, out: Path, json_out: bool, quiet: bool) -> None:
    if json_out:
        print_json(report)
    elif not quiet and report.get("training"):
        tr = report["training"]
        typer.echo(f"{report['command']}: steps {tr['start_step']} -> {tr['final_step']} of {tr['total_steps']}, "
                   f"eval loss {tr['eval_loss_start']:.4f} -> {tr['eval_loss_end']:.4f}, "
                   f"{len(report['items'])} bad rows; model: {out / 'model'}", err=True)


DISTILL_HELP = ("Distil a trained model into a few-step student (latent consistency distillation, LCM): the student "
                "learns to land where the teacher's guided DDIM solver goes, in one step from any level, and edits "
                "through the same loop with --steps 4 and guidance 1 (written into its model folder). Takes every "
                "finetune option.")
CYCLE_HELP = ("Fine-tune with the Cycle Diffusion Model objective: denoising under a counterfactual condition, back "
              "under the original, and an L1 cycle loss between the latent and its round trip (CDM Eq. 2). Takes "
              "every finetune option.")
