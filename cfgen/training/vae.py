"""Training a model folder's VAE on images (for models trained from scratch, e.g. on phantoms):
the 2D family's diffusers ``vae/`` or the 3D family's MONAI ``autoencoder/``.

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

from cfgen.editing.grid import ModelGrid
from cfgen.errors import InputError, UsageError
from cfgen.io.atomic import atomic_dir, write_json
from cfgen.training.checkpoint import checkpoints, load_checkpoint, save_checkpoint
from cfgen.training.config import derived_seed
from cfgen.training.data import ImageCaptionDataset, Sample, collate


def image_samples(csv_path: Path) -> list[Sample]:
    from cfgen.io.tables import image_column, read_csv

    columns, rows = read_csv(csv_path)
    col = image_column(columns)
    if col is None:
        raise InputError(f"{csv_path}: needs an 'image' (or 'Path') column; columns found: {', '.join(columns)}")
    samples = [Sample(row=i, path=csv_path.parent / r[col], caption="") for i, r in enumerate(rows, start=2)
               if r[col] and (csv_path.parent / r[col]).is_file()]
    if not samples:
        raise InputError(f"{csv_path}: no readable image paths")
    return samples


class _Diffusers2D:
    """vae/ of a latent-diffusion-2d folder (diffusers AutoencoderKL)."""

    subfolder = "vae"

    def __init__(self, folder: Path, dev: str):
        from diffusers import AutoencoderKL

        self.net = AutoencoderKL.from_pretrained(folder, subfolder="vae", use_safetensors=True).to(dev)

    def encode(self, x):
        post = self.net.encode(x).latent_dist
        return post.mean, post.std, post.kl()

    def decode(self, z):
        return self.net.decode(z).sample

    def save(self, target: Path, scaling_factor: float) -> None:
        self.net.register_to_config(scaling_factor=scaling_factor)
        self.net.save_pretrained(target, safe_serialization=True)


class _Monai3D:
    """autoencoder/ of a latent-diffusion-3d folder (MONAI AutoencoderKL)."""

    subfolder = "autoencoder"

    def __init__(self, folder: Path, dev: str):
        import json

        from cfgen.models.ldm3d import AE_DIR, WEIGHTS, _network

        self.config = json.loads((folder / AE_DIR / "config.json").read_text())
        self.net = _network(AE_DIR, self.config, folder / AE_DIR, dev, torch.float32).requires_grad_(True)
        self.weights = WEIGHTS

    def encode(self, x):
        mu, sigma = self.net.encode(x)
        kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2).clamp_min(1e-12)) - 1).flatten(1).sum(1)
        return mu, sigma, kl

    def decode(self, z):
        return self.net.decode(z)

    def save(self, target: Path, scaling_factor: float) -> None:
        import json

        from safetensors.torch import save_file

        target.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()},
                  str(target / self.weights))
        (target / "config.json").write_text(json.dumps({**self.config, "scaling_factor": scaling_factor}, indent=2))


def random_crop(x: torch.Tensor, side: int | None, seed: int) -> torch.Tensor:
    """The same random window of side ``side`` (a multiple of 8, at most the image) for each image."""
    if not side or side >= min(x.shape[2:]):
        return x
    gen = torch.Generator().manual_seed(seed)
    starts = [int(torch.randint(0, n - side + 1, (1,), generator=gen)) for n in x.shape[2:]]
    return x[(slice(None), slice(None)) + tuple(slice(a, a + side) for a in starts)]


def _loss(ae, x: torch.Tensor, gen: torch.Generator, kl_weight: float) -> torch.Tensor:
    """L1 reconstruction of a posterior sample plus the weighted KL term."""
    mean, std, kl = ae.encode(x)
    z = mean + std * torch.randn(mean.shape, generator=gen, device=x.device)
    return (ae.decode(z) - x).abs().mean() + kl_weight * kl.mean()


def _save_scaled(ae, ds, out: Path, dev: str) -> tuple[float, float]:
    """The trained autoencoder into ``out``, scaled for unit-variance latents (what the UNet
    expects); returns (latent std, probe L1 in the model's range) on up to 64 samples."""
    ae.net.eval()
    with torch.no_grad():
        probe = collate([ds[i] for i in range(min(64, len(ds)))])["pixels"].to(dev)
        mean = ae.encode(probe)[0]
        std = float(mean.std())
        l1 = float((ae.decode(mean) - probe).abs().mean())
    with atomic_dir(out / ae.subfolder) as tmp:
        ae.save(tmp, 1.0 / max(std, 1e-6))
    return std, l1


def train_vae(data_csv: Path, model_folder: Path, out: Path, steps: int, batch_size: int = 16, lr: float = 1e-4,
              kl_weight: float = 1e-6, seed: int = 0, device: str = "auto", checkpoint_every: int = 1000,
              resume: bool = False, on_step: Callable[[int, float], None] | None = None,
              crop: int | None = None) -> dict:
    """Train the autoencoder of ``model_folder``; write it to ``out``/vae (2D) or ``out``/autoencoder
    (3D) and return a summary. ``crop``: train on random crops of this side (the networks are
    convolutional, so a 3D autoencoder learns from 32^3 patches at an eighth of the cost of 64^3)."""
    from cfgen.models.hf import quiet_hf
    from cfgen.models.loader import _folder_entry, resolve_device

    quiet_hf()
    t0 = time.perf_counter()
    dev = resolve_device(device)
    entry = _folder_entry(Path(model_folder))
    from cfgen.models.files import is_wavelet_config

    sub = Path(model_folder) / ("autoencoder" if entry.spatial_dims == 3 else "vae")
    if is_wavelet_config(sub / "config.json"):
        raise UsageError(f"{sub}: the Haar wavelet transform has no weights to train (it is exactly invertible)")
    ae = (_Monai3D if entry.spatial_dims == 3 else _Diffusers2D)(Path(model_folder), dev)
    ae.net.train()
    if crop is not None and (crop < 8 or crop % 8):
        raise InputError(f"crop {crop}: must be a multiple of 8 (at least 8)")
    samples = image_samples(Path(data_csv))
    ds = ImageCaptionDataset(samples, ModelGrid.of(entry), entry.channels, entry.value_range)
    opt = torch.optim.AdamW(ae.net.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    existing = checkpoints(out)
    if existing and not resume:
        raise InputError(f"{out}: holds checkpoints ({existing[-1].name}); pass resume to continue")
    start = int(load_checkpoint(existing[-1], ae.net, opt, sched)["step"]) if existing else 0
    losses = []
    per_epoch = max(1, len(samples) // batch_size)
    for step in range(start, steps):
        epoch, k = divmod(step, per_epoch)
        perm = torch.randperm(len(samples), generator=torch.Generator().manual_seed(derived_seed(seed, epoch))).tolist()
        data = collate([ds[i] for i in perm[k * batch_size:(k + 1) * batch_size]])
        if data["pixels"] is None:
            continue
        gen = torch.Generator(device=dev).manual_seed(derived_seed(seed, "step", step))
        x = random_crop(data["pixels"], crop, derived_seed(seed, "crop", step)).to(dev)
        loss = _loss(ae, x, gen, kl_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        losses.append([step + 1, round(float(loss.detach()), 6)])
        if on_step:
            on_step(step + 1, float(loss.detach()))
        if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
            save_checkpoint(out, step + 1, ae.net, opt, sched, extra={"seed": seed})
    std, l1 = _save_scaled(ae, ds, Path(out), dev)
    summary = {"steps": steps, "start_step": start, "losses": losses, "latent_std": std,
               "scaling_factor": 1.0 / max(std, 1e-6), "probe_l1_model_range": l1, "samples": len(samples),
               "seconds": round(time.perf_counter() - t0, 1), "component": ae.subfolder, "crop": crop}
    write_json(Path(out) / "vae_training.json", summary)
    return summary
