"""`cfgen finetune`: adapt a model to a labelled image set (only the UNet trains)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cfgen.cli.common import Device, DeviceOpt, JsonOpt, ModelOpt, QuietOpt, handle_errors, print_json


@handle_errors
def finetune(
    data: Annotated[Path, typer.Argument(help="CSV with image (or Path) and caption columns; paths relative to it")],
    model: ModelOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: model/, checkpoints/, validation/, report.json")] = Path("cfgen-finetune"),
    caption_column: Annotated[str, typer.Option(help="Caption column")] = "caption",
    template: Annotated[Optional[str], typer.Option(help="Make captions from labels instead: chexpert, brain or a {column} template")] = None,
    learning_rate: Annotated[float, typer.Option(help="AdamW learning rate (PRISM: 1e-5)")] = 1e-5,
    lr_scheduler: Annotated[str, typer.Option(help="constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial")] = "constant",
    lr_warmup_steps: Annotated[int, typer.Option(help="Warm-up steps")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per process per micro-batch")] = 8,
    gradient_accumulation: Annotated[int, typer.Option(help="Micro-batches per optimizer step")] = 1,
    mixed_precision: Annotated[str, typer.Option(help="no, bf16 or fp16 (fp16 needs a GPU)")] = "no",
    gradient_checkpointing: Annotated[bool, typer.Option(help="Trade compute for memory")] = False,
    ema: Annotated[bool, typer.Option(help="Keep an exponential moving average of the weights (saved model uses it)")] = False,
    ema_decay: Annotated[float, typer.Option(help="EMA decay")] = 0.9999,
    snr_gamma: Annotated[Optional[float], typer.Option(help="Min-SNR loss weighting gamma (e.g. 5)")] = None,
    noise_offset: Annotated[float, typer.Option(help="Noise offset (e.g. 0.05)")] = 0.0,
    caption_dropout: Annotated[float, typer.Option(help="Fraction of captions replaced by '' (classifier-free guidance); tabular models: "
                                                             "each field missing with this probability, and whole rows")] = 0.1,
    max_steps: Annotated[Optional[int], typer.Option(help="Optimizer steps [default: from --epochs]")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs when --max-steps is not given")] = 1,
    checkpoint_every: Annotated[int, typer.Option(help="Save a resumable checkpoint every N steps")] = 500,
    keep_checkpoints: Annotated[int, typer.Option(help="Checkpoints kept")] = 3,
    validation_prompt: Annotated[Optional[list[str]], typer.Option(help="Prompt rendered to validation/*.png (repeatable)")] = None,
    validate_every: Annotated[int, typer.Option(help="Render validation prompts every N steps (0: at the end only)")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of data order, noise, timesteps and caption dropout")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in --out")] = False,
    device: DeviceOpt = Device.auto,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fine-tune a model's UNet on image-caption pairs (PRISM Algorithm 1). Works under `accelerate launch`."""
    _train(**{k: v for k, v in locals().items()})


def _train(data: Path, model, out: Path, caption_column: str, template, learning_rate: float, lr_scheduler: str,
           lr_warmup_steps: int, batch_size: int, gradient_accumulation: int, mixed_precision: str,
           gradient_checkpointing: bool, ema: bool, ema_decay: float, snr_gamma, noise_offset: float,
           caption_dropout: float, max_steps, epochs: int, checkpoint_every: int, keep_checkpoints: int,
           validation_prompt, validate_every: int, seed: int, resume: bool, device, json_out: bool, quiet: bool,
           objective=None, command: str = "finetune") -> None:
    from cfgen.training.config import FinetuneConfig

    cfg = FinetuneConfig(learning_rate=learning_rate, lr_scheduler=lr_scheduler, lr_warmup_steps=lr_warmup_steps,
                         batch_size=batch_size, gradient_accumulation=gradient_accumulation,
                         mixed_precision=mixed_precision, gradient_checkpointing=gradient_checkpointing, ema=ema,
                         ema_decay=ema_decay, snr_gamma=snr_gamma, noise_offset=noise_offset,
                         caption_dropout=caption_dropout, max_steps=max_steps, epochs=epochs,
                         checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
                         validation_prompts=list(validation_prompt or []), validate_every=validate_every, seed=seed)
    cfg.check()
    if not data.is_file():
        from cfgen.errors import InputError

        raise InputError(f"{data}: CSV file not found")
    from cfgen.cli.progress import simple_progress
    from cfgen.training.finetune import finetune as run

    with simple_progress(max_steps or 0, "training steps", quiet or not max_steps) as tick:
        report = run(data, model, out, cfg, resume=resume, caption_column=caption_column, template=template,
                     device=device.value, on_step=(lambda s, t, loss: tick()) if tick else None, objective=objective)
    if json_out:
        print_json(report)
    elif not quiet and report.get("training"):
        tr = report["training"]
        typer.echo(f"{command}: steps {tr['start_step']} -> {tr['final_step']} of {tr['total_steps']}, "
                   f"eval loss {tr['eval_loss_start']:.4f} -> {tr['eval_loss_end']:.4f}, "
                   f"{len(report['items'])} bad rows; model: {out / 'model'}", err=True)


def _with_cycle_options(func):
    """cycle-train takes every finetune option plus the counterfactual rules and the cycle weight."""
    import inspect

    extra = [
        inspect.Parameter("counterfactual", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[list[str]], typer.Option(help="Counterfactual rule (repeatable): age:10,30,60 (numeric field, "
                                                   "+- kept in range), sex (another category), 'TEXT=>OTHER' (text "
                                                   "swap) [default: age:10,30,60]")]),
        inspect.Parameter("cycle_weight", inspect.Parameter.KEYWORD_ONLY, default=1.0, annotation=Annotated[
            float, typer.Option(help="lambda: weight of the L1 cycle loss (CDM Eq. 2)")]),
    ]
    base = inspect.signature(finetune.__wrapped__, eval_str=True)
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.default is not inspect.Parameter.empty else p
              for p in base.parameters.values()]
    func.__signature__ = base.replace(parameters=params + extra)
    return func


@handle_errors
@_with_cycle_options
def cycle_train(**options) -> None:
    """Fine-tune with the Cycle Diffusion Model objective: denoising under a counterfactual condition, back
    under the original, and an L1 cycle loss between the latent and its round trip (CDM Eq. 2)."""
    from cfgen.training.cycle import CycleObjective, parse_rules

    rules = parse_rules(options.pop("counterfactual") or ["age:10,30,60"])
    objective = CycleObjective(rules, options.pop("cycle_weight"))
    _train(**options, objective=objective, command="cycle-train")
