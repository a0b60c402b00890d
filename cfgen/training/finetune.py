"""PRISM Algorithm 1 with diffusers components: only the UNet trains.

For each batch: latents = VAE(image) (frozen), noise and a timestep drawn, noisy latents from
the DDPM forward process, the UNet predicts the noise (or v) conditioned on the frozen text
encoder's embedding of the caption, MSE. Runs unchanged on one CPU and under
``accelerate launch`` (data sharded per process, gradients synchronised by accelerate).

Determinism and resume: the data order of epoch e is a permutation seeded by (seed, e); the
noise, timesteps and caption dropout of micro-batch m of step s on process r come from a
generator seeded by (seed, r, s, m). Nothing random depends on history, so resuming from a
checkpoint (weights, optimizer, LR schedule, EMA) continues exactly where the run stopped.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from cfgen.errors import InputError, UsageError
from cfgen.io.atomic import atomic_dir
from cfgen.report import RunReport
from cfgen.training.checkpoint import checkpoints, load_checkpoint, save_checkpoint
from cfgen.training.config import FinetuneConfig, derived_seed
from cfgen.synthesis.stages import toml_lines
from cfgen.training.data import ImageCaptionDataset, collate, read_training_csv

COPIED_COMPONENTS = ("vae", "autoencoder", "text_encoder", "tokenizer", "scheduler")



def target(noise_scheduler, latents, noise, t):
    """What the network learns to output at (latents noised with ``noise`` to ``t``): the velocity
    latents - noise (rectified flow), v, x0 itself (prediction_type "sample", MedSyn Eq. 8) or the noise."""
    if getattr(noise_scheduler, "is_flow", False):
        return latents - noise
    if noise_scheduler.config.prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, t)
    if noise_scheduler.config.prediction_type == "sample":
        return latents
    return noise


def _condition(model, captions, gen, cfg: FinetuneConfig, eval_mode: bool) -> torch.Tensor:
    """Encoded captions with classifier-free-guidance dropout (tabular models: per field and per row)."""
    from cfgen.editing.components import encode_prompts

    tabular = model.components.get("fields") is not None
    if not eval_mode and cfg.caption_dropout > 0 and not tabular:
        drop = torch.rand(len(captions), generator=gen) < cfg.caption_dropout
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
    cond = encode_prompts(model, captions).float()
    if not eval_mode and cfg.caption_dropout > 0 and tabular:
        from cfgen.models.tabular import drop_fields

        cond = drop_fields(cond, cfg.caption_dropout, gen)
    return cond


def noising(noise_scheduler, latents: torch.Tensor, gen, cfg: FinetuneConfig, eval_mode: bool = False):
    """(timesteps, noisy latents, target) of one batch: DDPM forward process and the noise (or v)
    target, or rectified flow's interpolation and velocity target."""
    b = latents.shape[0]
    noise = torch.randn(latents.shape, generator=gen).to(latents.device)
    if cfg.noise_offset and not eval_mode:
        shape = (b, latents.shape[1]) + (1,) * (latents.ndim - 2)
        noise = noise + cfg.noise_offset * torch.randn(shape, generator=gen).to(latents.device)
    if getattr(noise_scheduler, "is_flow", False):  # rectified flow: velocity target, t uniform
        from cfgen.editing.flow import training_pair

        return training_pair(latents, noise, gen, noise_scheduler.config.num_train_timesteps)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), generator=gen).to(latents.device)
    return t, noise_scheduler.add_noise(latents, noise, t), target(noise_scheduler, latents, noise, t)


def weighted_mse(noise_scheduler, pred: torch.Tensor, target: torch.Tensor, t, cfg: FinetuneConfig,
                 eval_mode: bool = False) -> torch.Tensor:
    """MSE per sample, Min-SNR weighted when --snr-gamma is set (DDPM models only)."""
    per_sample = F.mse_loss(pred, target, reduction="none").flatten(1).mean(dim=1)
    if cfg.snr_gamma is not None and not eval_mode and not getattr(noise_scheduler, "is_flow", False):
        from diffusers.training_utils import compute_snr

        snr = compute_snr(noise_scheduler, t)
        capped = torch.clamp(snr, max=cfg.snr_gamma)
        # the loss on x0 weighted min(SNR, gamma) (Hang et al.), in each target's own units
        weight = {"v_prediction": capped / (snr + 1), "sample": capped}.get(
            noise_scheduler.config.prediction_type, capped / snr)
        per_sample = per_sample * weight
    return per_sample.mean()


def _loss(model, unet, noise_scheduler, pixels, captions, gen, cfg: FinetuneConfig, eval_mode=False):
    from cfgen.editing.components import encode_images

    latents = encode_images(model, pixels).float()
    t, noisy, target = noising(noise_scheduler, latents, gen, cfg, eval_mode)
    cond = _condition(model, captions, gen, cfg, eval_mode)
    pred = unet(noisy, t, encoder_hidden_states=cond).sample.float()
    return weighted_mse(noise_scheduler, pred, target, t, cfg, eval_mode)


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


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))


def _model_toml(entry) -> str:
    lines = [f'family = "{entry.family}"', f"resolution = {entry.resolution}", f"channels = {entry.channels}",
             f'intensity = "{entry.intensity}"', "", "[scheduler]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in entry.scheduler.items() if v is not None]
    lines += ["", "[defaults]"] + [f"{k} = {_toml_value(v)}" for k, v in entry.defaults.items()]
    return "\n".join(lines + toml_lines(entry.synth)) + "\n"


def save_model(out: Path, model, unet, recipe: dict) -> Path:
    """A model folder that `--model OUT/model` loads: the base's frozen parts + the trained UNet."""
    target = out / "model"
    with atomic_dir(target) as tmp:
        for comp in COPIED_COMPONENTS:
            if (model.folder / comp).is_dir():
                shutil.copytree(model.folder / comp, tmp / comp)
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        (tmp / "cfgen.toml").write_text(_model_toml(model.entry))
        (tmp / "training.json").write_text(json.dumps(recipe, indent=2, default=str))
    return target


@torch.no_grad()
def render_validation(model, unet, prompts: list[str], steps: int, guidance: float, seed: int,
                      target: Path) -> Path:
    """One image per prompt from fixed noise, side by side, as a PNG grid."""
    import numpy as np
    from PIL import Image

    from cfgen.editing import ddim
    from cfgen.editing.components import decode_latents, encode_prompts
    from cfgen.editing.prepare import unit
    from cfgen.io.atomic import atomic_path

    e = model.entry
    sched = ddim.make_scheduler(e.scheduler, steps)
    from cfgen.viz.figures import as_2d

    side = e.resolution // model.vae_scale_factor
    tiles = []
    for i, prompt in enumerate(prompts):
        gen = torch.Generator().manual_seed(derived_seed(seed, i))
        shape = (1, unet.config.in_channels) + (side,) * e.spatial_dims
        z = torch.randn(shape, generator=gen).to(model.device) * sched.init_noise_sigma
        cond, uncond = encode_prompts(model, [prompt, ""]).float().chunk(2)
        z = ddim.sample(unet, sched, z, cond, sched.timesteps, uncond=uncond, guidance=guidance)
        img = unit(decode_latents(model, z)[0], e.value_range).cpu().numpy()
        tiles.append(np.round(as_2d(img) * 255).astype(np.uint8))  # volumes: orthogonal mid-slices
    grid = np.concatenate(tiles, axis=1) if tiles else np.zeros((8, 8), np.uint8)
    with atomic_path(target) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    (target.with_suffix(".json")).write_text(json.dumps({"prompts": prompts, "steps": steps, "guidance": guidance}))
    return target


def finetune(data_csv: Path, model_name: str | None, out: Path, cfg: FinetuneConfig, resume: bool = False,
             caption_column: str = "caption", template: str | None = None, device: str = "auto",
             on_step: Callable[[int, int, float], None] | None = None, objective=None) -> dict:
    """Train the UNet of ``model_name`` on ``data_csv``; ``objective`` (default: the denoising loss)
    may replace the loss, e.g. cfgen.training.cycle.CycleObjective (`cfgen cycle-train`)."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from cfgen.models.loader import load_model, resolve_device

    cfg.check()
    t0 = time.perf_counter()
    out = Path(out)
    from cfgen.models.loader import entry_for
    from cfgen.synthesis.stages import is_super_resolution, label_names

    planned = entry_for(model_name)
    sr = is_super_resolution(planned)
    if sr and (objective is not None or cfg.validation_prompts):
        raise UsageError(f"--model {model_name}: a super-resolution stage trains with its own objective and "
                         "renders no prompts (drop the cycle rules / --validation-prompt)")
    samples, bad_rows = read_training_csv(Path(data_csv), caption_column, template, need_captions=not sr,
                                          label_column="labels" if label_names(planned) else None)
    existing = checkpoints(out)
    if existing and not resume:
        raise InputError(f"{out}: holds checkpoints ({existing[-1].name}); pass --resume to continue "
                         "or choose another output folder")
    dev = resolve_device(device)
    acc = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.gradient_accumulation,
                      cpu=dev == "cpu")
    model = load_model(model_name, device=str(acc.device))
    e = model.entry
    command = "cycle-train" if objective else "finetune"
    if sr:
        from cfgen.synthesis.superres import SuperResObjective

        objective = SuperResObjective(e.synth["scale"], e.synth.get("patch", 64), e.synth.get("residual", False))
    loss_fn = objective or _loss
    if objective is not None:
        objective.check(model, cfg)
    if model.components.get("fields") is not None:
        samples, unreadable = _tabular_rows(samples, model.components["fields"], Path(data_csv))
        bad_rows += unreadable
    unet = model.components["unet"]
    unet.requires_grad_(True)
    unet.train()
    if cfg.gradient_checkpointing:
        if not hasattr(unet, "enable_gradient_checkpointing"):
            raise UsageError(f"--gradient-checkpointing: not available for '{e.family}' models")
        unet.enable_gradient_checkpointing()
    from cfgen.editing.flow import FlowSchedule, is_flow

    if is_flow(e.scheduler):
        if cfg.snr_gamma is not None:
            raise UsageError("--snr-gamma: Min-SNR weighting is for DDPM models; this model is trained by "
                             "rectified flow (velocity target, uniform timesteps)")
        noise_scheduler = FlowSchedule(e.scheduler, 1)
    else:
        noise_scheduler = DDPMScheduler.from_config({k: v for k, v in e.scheduler.items()
                                                     if k not in ("set_alpha_to_one", "steps_offset", "kind")})
    dataset = ImageCaptionDataset(samples, e.resolution, e.channels, e.value_range, cfg.window, dims=e.spatial_dims,
                                  labels=len(label_names(e)))
    world, rank = acc.num_processes, acc.process_index
    per_proc = len(samples) // world
    batch = min(cfg.batch_size, max(1, per_proc))
    micro_per_epoch = max(1, per_proc // batch)
    steps_per_epoch = max(1, micro_per_epoch // cfg.gradient_accumulation)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay, eps=cfg.adam_epsilon)
    lr_sched = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=total)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay) if cfg.ema else None
    start = 0
    if existing:
        state = load_checkpoint(existing[-1], unet, optimizer, lr_sched, ema)
        start = int(state["step"])
    unet_p, optimizer_p = acc.prepare(unet, optimizer)

    report = RunReport(command, out, {
        **cfg.as_dict(), "objective": objective.describe() if objective else "denoising",
        "data": str(data_csv), "model": model_name or e.name, "resume": resume, "template": template,
        "caption_column": caption_column})
    report.set_model(model.report_info(), str(acc.device))
    for item in bad_rows:
        report.add_item(item)
    eval_idx = list(range(min(4, len(samples))))
    eval_batch = collate([dataset[i] for i in eval_idx])

    def eval_loss() -> float | None:
        if eval_batch["pixels"] is None:
            return None
        net = acc.unwrap_model(unet_p)
        net.eval()
        with torch.no_grad():
            v = float(loss_fn(model, net, noise_scheduler, eval_batch["pixels"].to(acc.device), eval_batch["captions"],
                            torch.Generator().manual_seed(derived_seed(cfg.seed, "eval")), cfg, eval_mode=True))
        net.train()
        return v

    training = {"start_step": start, "total_steps": total, "steps_per_epoch": steps_per_epoch,
                "batch_size_per_process": batch, "processes": world,
                "effective_batch": batch * cfg.gradient_accumulation * world, "samples": len(samples),
                "eval_loss_start": eval_loss(), "losses": [], "skipped_images": []}
    step = start
    running: list[float] = []
    while step < total:
        epoch, within = divmod(step, steps_per_epoch)
        perm = torch.randperm(len(samples), generator=torch.Generator().manual_seed(derived_seed(cfg.seed, "epoch", epoch)))
        shard = perm[rank::world][: micro_per_epoch * batch].tolist()
        for mb in range(within * cfg.gradient_accumulation, steps_per_epoch * cfg.gradient_accumulation):
            data = collate([dataset[i] for i in shard[mb * batch:(mb + 1) * batch]])
            for err in data["errors"]:
                training["skipped_images"].append(err)
            gen = torch.Generator().manual_seed(derived_seed(cfg.seed, rank, step, mb))
            with acc.accumulate(unet_p):
                if data["pixels"] is not None:
                    loss = loss_fn(model, unet_p, noise_scheduler, data["pixels"].to(acc.device), data["captions"], gen, cfg)
                else:  # every image of this micro-batch failed: a zero loss keeps processes in step
                    loss = sum(p.sum() for p in unet_p.parameters()) * 0.0
                acc.backward(loss)
                if acc.sync_gradients and cfg.max_grad_norm:
                    acc.clip_grad_norm_(unet_p.parameters(), cfg.max_grad_norm)
                optimizer_p.step()
                optimizer_p.zero_grad(set_to_none=True)
            running.append(float(acc.gather(loss.detach().reshape(1)).mean()))
            if not acc.sync_gradients:
                continue
            lr_sched.step()
            if ema is not None:
                ema.step(acc.unwrap_model(unet_p).parameters())
            step += 1
            mean_loss = sum(running) / len(running)
            running.clear()
            training["losses"].append([step, round(mean_loss, 6)])
            if on_step and acc.is_main_process:
                on_step(step, total, mean_loss)
            if step % cfg.checkpoint_every == 0 or step == total:
                acc.wait_for_everyone()
                if acc.is_main_process:
                    save_checkpoint(out, step, acc.unwrap_model(unet_p), optimizer, lr_sched, ema, extra={"epoch": epoch, "seed": cfg.seed}, keep=cfg.keep_checkpoints)
            if cfg.validation_prompts and cfg.validate_every and step % cfg.validate_every == 0 and acc.is_main_process:
                render_validation(model, acc.unwrap_model(unet_p), cfg.validation_prompts, cfg.validation_steps,
                                  cfg.validation_guidance, cfg.seed, out / "validation" / f"step-{step:07d}.png")
            if step >= total:
                break
    acc.wait_for_everyone()
    final = acc.unwrap_model(unet_p)
    if ema is not None:
        ema.copy_to(final.parameters())
    training["eval_loss_end"] = eval_loss()
    training["final_step"] = step
    if acc.is_main_process:
        final.eval()
        if cfg.validation_prompts:
            render_validation(model, final, cfg.validation_prompts, cfg.validation_steps, cfg.validation_guidance,
                              cfg.seed, out / "validation" / "final.png")
        recipe = {"base_model": model.report_info(), "data": str(data_csv), "config": cfg.as_dict(),
                  "steps": step, "processes": world, "device": str(acc.device)}
        save_model(out, model, final, recipe)
        report.data["training"] = training
        report.data["outputs"] = {"model": "model", "checkpoints": "checkpoints"}
        report.data["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
        report.write()
    acc.end_training()
    return report.data
