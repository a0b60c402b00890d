"""PRISM Algorithm 1 with diffusers components: only the UNet trains.

For each batch: latents = VAE(image) (frozen), noise and a timestep drawn, noisy latents from
the DDPM forward process, the UNet predicts the noise (or v) conditioned on the frozen text
encoder's embedding of the caption, MSE. Runs unchanged on one CPU and under
``accelerate launch`` (data sharded per process, gradients synchronised by accelerate).

Determinism and resume: the data order of epoch e is a permutation seeded by (seed, e); the
noise, timesteps and caption dropout of micro-batch m of step s on process r come from a
generator seeded by (seed, r, s, m). Nothing random depends on history, so resuming from a
checkpoint (weights, optimizer, LR schedule, EMA) continues exactly where the run stopped.

The parts: objectives (what the UNet learns) in objectives.py and cycle.py, validation grids in
validation.py, the saved model folder in export.py, checkpoints in checkpoint.py; this module
sets a run up (:func:`prepare_run`) and runs its loop (:class:`Trainer`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TYPE_CHECKING

import torch

from cfgen.editing.grid import ModelGrid
from cfgen.errors import InputError, UsageError
from cfgen.report import RunReport
from cfgen.training.checkpoint import check_resume, checkpoints, load_checkpoint, resume_settings, save_checkpoint
from cfgen.training.config import FinetuneConfig, derived_seed
from cfgen.training.data import ImageCaptionDataset, collate, read_training_csv
from cfgen.training.objectives import Denoising, Objective, SuperResObjective

if TYPE_CHECKING:
    from cfgen.models.loader import LoadedModel

StepCallback = Callable[[int, int, float], None]


@dataclass
class Schedule:
    """How the samples split into processes, micro-batches and optimizer steps."""

    world: int
    rank: int
    batch: int  # per process per micro-batch
    micro_per_epoch: int
    steps_per_epoch: int
    total: int

    @classmethod
    def plan(cls, n_samples: int, world: int, rank: int, cfg: FinetuneConfig) -> "Schedule":
        per_proc = n_samples // world
        batch = min(cfg.batch_size, max(1, per_proc))
        micro = max(1, per_proc // batch)
        steps = max(1, micro // cfg.gradient_accumulation)
        return cls(world, rank, batch, micro, steps, cfg.max_steps or cfg.epochs * steps)


@dataclass
class Run:
    """A prepared training run: model, data, objective, optimisation state, schedule, report."""

    model: LoadedModel
    objective: Objective
    noise_scheduler: Any
    dataset: ImageCaptionDataset
    acc: Any
    unet: Any  # prepared by accelerate
    optimizer: Any  # prepared by accelerate
    raw_optimizer: Any
    lr_sched: Any
    ema: Any
    start: int
    schedule: Schedule
    report: RunReport
    samples: list  # the readable training rows (cfgen.training.data.Sample)
    data: str  # the training CSV as given


def _tabular_rows(samples: list, fields, csv_path: Path) -> tuple[list, list[dict]]:
    """Captions a tabular model cannot read are reported and left out before the first step."""
    from cfgen.errors import CfgenError
    from cfgen.models.tabular import parse_prompt

    good, bad = [], []
    for s in samples:
        try:
            parse_prompt(s.caption, fields)
            good.append(s)
        except CfgenError as exc:
            bad.append({"input": str(s.path.name), "row": s.row, "status": "error",
                        "error": f"{csv_path} line {s.row}: {exc}", "outputs": {}, "metrics": {}})
    if not good:
        raise InputError(f"{csv_path}: no caption this tabular model can read ({bad[0]['error']})")
    return good, bad


def noise_schedule(entry, cfg: FinetuneConfig):
    """The training forward process: DDPM from the entry's scheduler, or rectified flow."""
    from diffusers import DDPMScheduler

    from cfgen.editing.flow import FlowSchedule, is_flow

    if is_flow(entry.scheduler):
        if cfg.snr_gamma is not None:
            raise UsageError("--snr-gamma: Min-SNR weighting is for DDPM models; this model is trained by "
                             "rectified flow (velocity target, uniform timesteps)")
        return FlowSchedule(entry.scheduler, 1)
    return DDPMScheduler.from_config({k: v for k, v in entry.scheduler.items()
                                      if k not in ("set_alpha_to_one", "steps_offset", "kind")})


def _trainable_unet(model: LoadedModel, cfg: FinetuneConfig):
    unet = model.unet
    unet.requires_grad_(True)
    unet.train()
    if cfg.gradient_checkpointing:
        if not hasattr(unet, "enable_gradient_checkpointing"):
            raise UsageError(f"--gradient-checkpointing: not available for '{model.entry.family}' models")
        unet.enable_gradient_checkpointing()
    return unet


def _read_data(data_csv: Path, model_name: str | None, caption_column: str, template: str | None,
               objective: Objective | None, cfg: FinetuneConfig) -> tuple[list, list[dict], bool]:
    """The training rows (and the bad ones), checked against what the model is before loading it."""
    from cfgen.models.loader import entry_for
    from cfgen.models.synth import is_super_resolution, label_names

    planned = entry_for(model_name)
    if cfg.window is None:  # the model's own window (fixed HU for a CT model), else each scan's auto window
        cfg.window = str(planned.defaults.get("window", "auto"))
    sr = is_super_resolution(planned)
    if sr and (objective is not None or cfg.validation_prompts):
        raise UsageError(f"--model {model_name}: a super-resolution stage trains with its own objective and "
                         "renders no prompts (drop the cycle rules / --validation-prompt)")
    samples, bad = read_training_csv(Path(data_csv), caption_column, template, need_captions=not sr,
                                     label_column="labels" if label_names(planned) else None,
                                     region_columns=list(cfg.region_weights))
    return samples, bad, sr


def _optimisation(unet, cfg: FinetuneConfig, total: int, existing: list[Path]):
    """AdamW, the LR schedule and EMA, restored from the newest checkpoint when resuming."""
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay, eps=cfg.adam_epsilon)
    lr_sched = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=total)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay) if cfg.ema else None
    start = int(load_checkpoint(existing[-1], unet, optimizer, lr_sched, ema)["step"]) if existing else 0
    return optimizer, lr_sched, ema, start


def _check_label_options(objective, cfg: FinetuneConfig) -> None:
    """--label-condition, --label-weight and --region-weight shape the denoising loss; the other
    objectives (super-resolution, cycle, distillation) would ignore them."""
    used = [name for name, on in (("--label-condition", cfg.label_condition > 0), ("--label-weight", cfg.label_weights),
                                  ("--region-weight", cfg.region_weights)) if on]
    if used and not isinstance(objective, Denoising):
        what = objective.describe()
        what = what.get("kind") if isinstance(what, dict) else what
        whom = "a model" if used[0] == "--region-weight" else "a base model with label channels"
        raise UsageError(f"{used[0]}: applies to `cfgen finetune` on {whom}, not to the {what} objective")


def _check_tracker(cfg: FinetuneConfig) -> str | None:
    """--report-to: the tracker accelerate logs to, its package checked before anything loads."""
    if cfg.report_to is None:
        return None
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise UsageError("--report-to tensorboard: the tensorboard package is not installed (pip install tensorboard)")
    return cfg.report_to


def _tracker_config(cfg: FinetuneConfig) -> dict[str, Any]:
    """Hyperparameters as TensorBoard's hparams take them (scalars and strings only)."""
    return {k: v for k, v in cfg.as_dict().items() if isinstance(v, (int, float, str, bool))}


def prepare_run(data_csv: Path, model_name: str | None, out: Path, cfg: FinetuneConfig, resume: bool,
                caption_column: str, template: str | None, device: str, objective: Objective | None) -> Run:
    """Everything checked and loaded before the first step."""
    from accelerate import Accelerator

    from cfgen.models.loader import load_model, resolve_device
    from cfgen.models.synth import label_encoding, label_names

    samples, bad_rows, sr = _read_data(data_csv, model_name, caption_column, template, objective, cfg)
    existing = checkpoints(out)
    if existing and not resume:
        raise InputError(f"{out}: holds checkpoints ({existing[-1].name}); pass --resume to continue "
                         "or choose another output folder")
    tracking = _check_tracker(cfg)
    acc = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.gradient_accumulation,
                      cpu=resolve_device(device) == "cpu", log_with=tracking, project_dir=out / "logs" if tracking else None)
    cfg.mixed_precision = str(acc.mixed_precision)  # what accelerate chose: recorded, and kept on resume
    if existing:
        check_resume(existing[-1], resume_settings(cfg))
    model = load_model(model_name, device=str(acc.device))
    e = model.entry
    command = getattr(objective, "command", "cycle-train") if objective else "finetune"
    objective = SuperResObjective.for_entry(e) if sr else (objective or Denoising())
    _check_label_options(objective, cfg)
    objective.check(model, cfg)
    if model.fields is not None:
        samples, unreadable = _tabular_rows(samples, model.fields, Path(data_csv))
        bad_rows += unreadable
    unet = _trainable_unet(model, cfg)
    noise_scheduler = noise_schedule(e, cfg)
    dataset = ImageCaptionDataset(samples, ModelGrid.of(e), e.channels, e.value_range, cfg.window,
                                  labels=len(label_names(e)), label_encoding=label_encoding(e.synth),
                                  region_weights=cfg.region_weights)
    schedule = Schedule.plan(len(samples), acc.num_processes, acc.process_index, cfg)
    optimizer, lr_sched, ema, start = _optimisation(unet, cfg, schedule.total, existing)
    unet_p, optimizer_p = acc.prepare(unet, optimizer)
    report = RunReport(command, out, {
        **cfg.as_dict(), "objective": objective.describe(),
        "data": str(data_csv), "model": model_name or e.name, "resume": resume, "template": template,
        "caption_column": caption_column})
    report.set_model(model.report_info(), str(acc.device))
    for item in bad_rows:
        report.add_item(item)
    return Run(model, objective, noise_scheduler, dataset, acc, unet_p, optimizer_p, optimizer,
               lr_sched, ema, start, schedule, report, samples, str(data_csv))


class Trainer:
    """The loop of a prepared :class:`Run`: micro-batches, accumulation, checkpoints, validation."""

    def __init__(self, run: Run, out: Path, cfg: FinetuneConfig, on_step: StepCallback | None = None):
        self.run, self.out, self.cfg, self.on_step = run, Path(out), cfg, on_step
        samples = run.samples
        self.eval_batch = collate([run.dataset[i] for i in range(min(4, len(samples)))])
        self.training: dict[str, Any] = {}
        self.running: list[float] = []  # micro-batch losses of the optimizer step under way

    def loss(self, net, data: dict, gen: torch.Generator, eval_mode: bool = False) -> torch.Tensor:
        r = self.run
        extra = {"regions": data["weights"]} if "weights" in data else {}
        return r.objective(r.model, net, r.noise_scheduler, data["pixels"].to(r.acc.device), data["captions"], gen,
                           self.cfg, eval_mode=eval_mode, **extra)

    def eval_loss(self) -> float | None:
        """The loss on the first four samples with fixed noise (no dropout): comparable across runs."""
        if self.eval_batch["pixels"] is None:
            return None
        net = self.run.acc.unwrap_model(self.run.unet)
        net.eval()
        with torch.no_grad():
            v = float(self.loss(net, self.eval_batch, torch.Generator().manual_seed(derived_seed(self.cfg.seed, "eval")),
                                eval_mode=True))
        net.train()
        return v

    def _micro_step(self, data: dict, gen: torch.Generator) -> float:
        r, cfg = self.run, self.cfg
        with r.acc.accumulate(r.unet):
            if data["pixels"] is not None:
                loss = self.loss(r.unet, data, gen)
            else:  # every image of this micro-batch failed: a zero loss keeps processes in step
                loss = sum(p.sum() for p in r.unet.parameters()) * 0.0
            r.acc.backward(loss)
            if r.acc.sync_gradients and cfg.max_grad_norm:
                r.acc.clip_grad_norm_(r.unet.parameters(), cfg.max_grad_norm)
            r.optimizer.step()
            r.optimizer.zero_grad(set_to_none=True)
        return float(r.acc.gather(loss.detach().reshape(1)).mean())

    def _after_step(self, step: int, epoch: int, mean_loss: float) -> None:
        """Optimizer step done: LR, EMA, the loss log, checkpoint and validation when due."""
        r, cfg, s = self.run, self.cfg, self.run.schedule
        r.lr_sched.step()
        if r.ema is not None:
            r.ema.step(r.acc.unwrap_model(r.unet).parameters())
        self.training["losses"].append([step, round(mean_loss, 6)])
        if cfg.report_to:
            r.acc.log({"train/loss": mean_loss, "train/learning_rate": float(r.lr_sched.get_last_lr()[0])}, step=step)
        if self.on_step and r.acc.is_main_process:
            self.on_step(step, s.total, mean_loss)
        if step % cfg.checkpoint_every == 0 or step == s.total:
            r.acc.wait_for_everyone()
            if r.acc.is_main_process:
                save_checkpoint(self.out, step, r.acc.unwrap_model(r.unet), r.raw_optimizer, r.lr_sched, r.ema,
                                extra={"epoch": epoch, "seed": cfg.seed, "settings": resume_settings(cfg)},
                                keep=cfg.keep_checkpoints)
        if cfg.validation_prompts and cfg.validate_every and step % cfg.validate_every == 0 and r.acc.is_main_process:
            self.validate(r.acc.unwrap_model(r.unet), f"step-{step:07d}.png", step)

    def validate(self, net, name: str, step: int) -> None:
        from cfgen.training.validation import render_validation

        cfg = self.cfg
        path = self.out / "validation" / name
        render_validation(self.run.model, net, cfg.validation_prompts, cfg.validation_steps, cfg.validation_guidance,
                          cfg.seed, path)
        if cfg.report_to and path.is_file():
            import numpy as np
            from PIL import Image

            writer = self.run.acc.get_tracker(cfg.report_to, unwrap=True)
            image = np.asarray(Image.open(path).convert("RGB"))
            writer.add_image("validation", image, step, dataformats="HWC")

    def _epoch(self, step: int) -> int:
        """The rest of the epoch that ``step`` falls in; returns the step reached."""
        s, cfg = self.run.schedule, self.cfg
        epoch, within = divmod(step, s.steps_per_epoch)
        order = torch.Generator().manual_seed(derived_seed(cfg.seed, "epoch", epoch))
        perm = torch.randperm(len(self.run.samples), generator=order)
        shard = perm[s.rank::s.world][: s.micro_per_epoch * s.batch].tolist()
        for mb in range(within * cfg.gradient_accumulation, s.steps_per_epoch * cfg.gradient_accumulation):
            data = collate([self.run.dataset[i] for i in shard[mb * s.batch:(mb + 1) * s.batch]])
            self.training["skipped_images"] += data["errors"]
            gen = torch.Generator().manual_seed(derived_seed(cfg.seed, s.rank, step, mb))
            self.running.append(self._micro_step(data, gen))
            if not self.run.acc.sync_gradients:
                continue
            step += 1
            self._after_step(step, epoch, sum(self.running) / len(self.running))
            self.running.clear()
            if step >= s.total:
                break
        return step

    def train(self) -> dict[str, Any]:
        s = self.run.schedule
        self.training = {"start_step": self.run.start, "total_steps": s.total, "steps_per_epoch": s.steps_per_epoch,
                         "batch_size_per_process": s.batch, "processes": s.world,
                         "effective_batch": s.batch * self.cfg.gradient_accumulation * s.world,
                         "samples": len(self.run.samples), "eval_loss_start": self.eval_loss(),
                         "losses": [], "skipped_images": []}
        if self.cfg.report_to:
            self.run.acc.init_trackers("finetune", config=_tracker_config(self.cfg))
            self.run.acc.log({"eval/loss": self.training["eval_loss_start"]}, step=self.run.start)
        step = self.run.start
        while step < s.total:
            step = self._epoch(step)
        self.training["final_step"] = step
        return self.training


def _finish(run: Run, trainer: Trainer, out: Path, cfg: FinetuneConfig, t0: float) -> dict:
    """EMA weights into the UNet, the final validation grid, the model folder and the report."""
    from cfgen.training.export import save_model

    acc = run.acc
    acc.wait_for_everyone()
    final = acc.unwrap_model(run.unet)
    if run.ema is not None:
        run.ema.copy_to(final.parameters())
    trainer.training["eval_loss_end"] = trainer.eval_loss()
    if cfg.report_to:
        acc.log({"eval/loss": trainer.training["eval_loss_end"]}, step=trainer.training["final_step"])
    if acc.is_main_process:
        final.eval()
        if cfg.validation_prompts:
            trainer.validate(final, "final.png", trainer.training["final_step"])
        recipe = {"base_model": run.model.report_info(), "data": run.data, "config": cfg.as_dict(),
                  "steps": trainer.training["final_step"], "processes": run.schedule.world, "device": str(acc.device)}
        defaults = getattr(run.objective, "model_defaults", None)  # a distilled student's steps and guidance
        synth = {"given_labels": "clean"} if cfg.label_condition > 0 else None  # how --mask-from gives labels
        save_model(out, run.model, final, recipe, defaults() if defaults else None, synth)
        run.report.data["training"] = trainer.training
        run.report.data["outputs"] = {"model": "model", "checkpoints": "checkpoints"}
        run.report.data["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
        run.report.write()
    acc.end_training()
    return run.report.data


def finetune(data_csv: Path, model_name: str | None, out: Path, cfg: FinetuneConfig, resume: bool = False,
             caption_column: str = "caption", template: str | None = None, device: str = "auto",
             on_step: StepCallback | None = None, objective: Objective | None = None) -> dict:
    """Train the UNet of ``model_name`` on ``data_csv``; ``objective`` (default: the denoising loss)
    may replace the loss, e.g. cfgen.training.cycle.CycleObjective (`cfgen cycle-train`) or
    cfgen.training.distill.ConsistencyDistillation (`cfgen distill`)."""
    cfg.check()
    t0 = time.perf_counter()
    out = Path(out)
    run = prepare_run(Path(data_csv), model_name, out, cfg, resume, caption_column, template, device, objective)
    trainer = Trainer(run, out, cfg, on_step)
    trainer.train()
    return _finish(run, trainer, out, cfg, t0)
