"""Training a model folder's VAE on images (for models trained from scratch, e.g. on phantoms).

Objective: L1 reconstruction + ``kl_weight`` x KL(q(z|x) || N(0, I)) (the LDM recipe without
the adversarial and perceptual terms, which need pretrained networks cfgen cannot download).
After training, ``scaling_factor`` is set to 1 / std of the latents (as SD v1.5's 0.18215 was
chosen), so the UNet sees unit-variance latents. Checkpoints and resume as in finetune.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from cfgen.errors import InputError
from cfgen.io.atomic import atomic_dir, write_json
from cfgen.training.checkpoint import checkpoints, load_checkpoint, save_checkpoint
from cfgen.training.config import derived_seed
from cfgen.training.data import ImageCaptionDataset, Sample, collate


def image_samples(csv_path: Path) -> list[Sample]:
    from cfgen.io.tables import read_csv

    columns, rows = read_csv(csv_path)
    col = next((c for c in ("image", "Path", "path") if c in columns), None)
    if col is None:
        raise InputError(f"{csv_path}: needs an 'image' (or 'Path') column; columns found: {', '.join(columns)}")
    samples = [Sample(row=i, path=csv_path.parent / r[col], caption="") for i, r in enumerate(rows, start=2)
               if r[col] and (csv_path.parent / r[col]).is_file()]
    if not samples:
        raise InputError(f"{csv_path}: no readable image paths")
    return samples


def train_vae(data_csv: Path, model_folder: Path, out: Path, steps: int, batch_size: int = 16, lr: float = 1e-4,
              kl_weight: float = 1e-6, seed: int = 0, device: str = "auto", checkpoint_every: int = 1000,
              resume: bool = False, on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train ``model_folder``/vae; write the trained VAE to ``out``/vae and return a summary."""
    from diffusers import AutoencoderKL

    from cfgen.models.loader import _folder_entry, quiet_hf, resolve_device

    quiet_hf()
    t0 = time.perf_counter()
    dev = resolve_device(device)
    entry = _folder_entry(Path(model_folder))
    vae = AutoencoderKL.from_pretrained(model_folder, subfolder="vae", use_safetensors=True).to(dev)
    vae.train()
    samples = image_samples(Path(data_csv))
    ds = ImageCaptionDataset(samples, entry.resolution, entry.channels, entry.value_range)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    existing = checkpoints(out)
    if existing and not resume:
        raise InputError(f"{out}: holds checkpoints ({existing[-1].name}); pass resume to continue")
    start = int(load_checkpoint(existing[-1], vae, opt, sched)["step"]) if existing else 0
    losses = []
    per_epoch = max(1, len(samples) // batch_size)
    for step in range(start, steps):
        epoch, k = divmod(step, per_epoch)
        perm = torch.randperm(len(samples), generator=torch.Generator().manual_seed(derived_seed(seed, epoch))).tolist()
        data = collate([ds[i] for i in perm[k * batch_size:(k + 1) * batch_size]])
        if data["pixels"] is None:
            continue
        x = data["pixels"].to(dev)
        gen = torch.Generator(device=dev).manual_seed(derived_seed(seed, "step", step))
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen, device=dev)
        rec = vae.decode(z).sample
        loss = (rec - x).abs().mean() + kl_weight * post.kl().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        losses.append([step + 1, round(float(loss.detach()), 6)])
        if on_step:
            on_step(step + 1, float(loss.detach()))
        if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
            save_checkpoint(out, step + 1, vae, opt, sched, extra={"seed": seed})
    vae.eval()
    with torch.no_grad():  # unit-variance latents for the UNet
        probe = collate([ds[i] for i in range(min(64, len(ds)))])["pixels"].to(dev)
        std = float(vae.encode(probe).latent_dist.mean.std())
        l1 = float((vae.decode(vae.encode(probe).latent_dist.mean).sample - probe).abs().mean())
    vae.register_to_config(scaling_factor=1.0 / max(std, 1e-6))
    with atomic_dir(Path(out) / "vae") as tmp:
        vae.save_pretrained(tmp, safe_serialization=True)
    summary = {"steps": steps, "start_step": start, "losses": losses, "latent_std": std,
               "scaling_factor": 1.0 / max(std, 1e-6), "probe_l1_model_range": l1, "samples": len(samples),
               "seconds": round(time.perf_counter() - t0, 1)}
    write_json(Path(out) / "vae_training.json", summary)
    return summary
