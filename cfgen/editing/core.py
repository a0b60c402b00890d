"""Invert and edit one scan with a loaded model. No printing, no files: arrays and metrics."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from cfgen.editing import ddim, masks
from cfgen.editing.components import decode_latents, encode_images, encode_prompts
from cfgen.editing.prepare import Prepared, from_model, to_model, unit
from cfgen.editing.params import EditParams
from cfgen.errors import UsageError
from cfgen.io.scan import Scan



@dataclass
class Outcome:
    """What invert/edit produce for one scan."""

    prepared: Prepared
    pixels: np.ndarray  # counterfactual (edit) or reconstruction (invert), scan units
    model_out: torch.Tensor  # the same in model space, (1, C, R, R)
    latents: dict[str, torch.Tensor]
    metrics: dict[str, Any] = field(default_factory=dict)
    timesteps: list[int] = field(default_factory=list)
    mask: np.ndarray | None = None  # (1, H, W) in [0, 1] on the scan's grid, when an edit mask was used


def _prepare(model, scan: Scan, p: EditParams) -> Prepared:
    e = model.entry
    return to_model(scan, e.resolution, e.channels, e.value_range, p.window, dims=e.spatial_dims)


def _run(model, scan: Scan, p: EditParams, target: str, guidance: float, eta: float,
         on_step: Callable[[], None] | None, mask_mode: str = "none") -> tuple:
    prep = _prepare(model, scan, p)
    sched = ddim.make_scheduler(model.entry.scheduler, p.steps)
    ts = ddim.edit_timesteps(sched, p.strength)
    z0 = encode_images(model, prep.x)
    src, tgt, neg = encode_prompts(model, [p.source_prompt, target, p.negative_prompt]).chunk(3)
    traj = ddim.invert(model.unet, sched, z0, src, ts, on_step=on_step)
    latent_mask = None
    if mask_mode == "auto":
        latent_mask = masks.auto_mask(model.unet, sched, z0, src, tgt, int(p.seed), p.mask_threshold)
    elif mask_mode != "none":
        latent_mask = masks.file_mask(mask_mode, scan, prep, model.entry.resolution, z0.shape[-1])
    blend = masks.trajectory_blend(latent_mask, traj) if latent_mask is not None else None
    gen = torch.Generator(device=model.device).manual_seed(int(p.seed))
    z = ddim.sample(model.unet, sched, traj[-1], tgt, ts, uncond=neg, guidance=guidance, eta=eta,
                    generator=gen, blend=blend, on_step=on_step)
    lat = {"z0": z0, "zT": traj[-1], "z_out": z}
    return prep, decode_latents(model, z), lat, [int(t) for t in ts], latent_mask


def _identity_metrics(scan: Scan, prep: Prepared, pixels: np.ndarray) -> dict[str, Any]:
    """PRISM's L1 (images in [0, 1] through the scan's window) at the scan's own resolution."""
    w = prep.window
    a = unit(w.to_model(scan.pixels), (w.model_low, w.model_high))
    b = unit(w.to_model(pixels), (w.model_low, w.model_high))
    d = np.abs(a - b)
    return {"l1": float(d.mean()), "changed_fraction": float((d > 0.05).mean()), "max_abs_change": float(d.max())}


def edit(model, scan: Scan, p: EditParams, on_step: Callable[[], None] | None = None) -> Outcome:
    """Counterfactual: invert under the source prompt, regenerate under the target prompt."""
    p.check()
    if not p.prompt:
        raise UsageError("--prompt: the target prompt is empty")
    prep, y, lat, ts, latent_mask = _run(model, scan, p, p.prompt, p.guidance, p.eta, on_step, p.mask)
    lat.pop("z_out")
    pixels = from_model(y, prep, scan.channels)
    scan_mask = None
    metrics: dict[str, Any] = {}
    if latent_mask is not None:
        # outside the mask the scan itself, not its VAE reconstruction
        scan_mask = masks.feathered_scan_mask(latent_mask, prep, model.entry.resolution)
        pixels = (scan_mask * pixels + (1 - scan_mask) * scan.pixels).astype(np.float32)
        metrics["mask_fraction"] = float((scan_mask > 0.5).mean())
    metrics.update(_identity_metrics(scan, prep, pixels))
    return Outcome(prepared=prep, pixels=pixels, model_out=y, latents=lat, metrics=metrics, timesteps=ts,
                   mask=scan_mask)


def invert(model, scan: Scan, p: EditParams, on_step: Callable[[], None] | None = None) -> Outcome:
    """DDIM inversion under the source prompt plus the reconstruction from the inverted noise.

    Reports PSNR/SSIM of the reconstruction against the model-space input (invert + sample)
    and of the VAE alone (encode + decode), so a user sees where fidelity is lost.
    """
    p.check()
    from cfgen.metrics.image import reconstruction_metrics

    prep, y, lat, ts, _ = _run(model, scan, p, p.source_prompt, 1.0, 0.0, on_step)
    vo = model.entry.value_range
    x = unit(prep.x, vo)
    metrics = reconstruction_metrics(x, unit(y, vo))
    z0, z_rec = lat["z0"].float(), lat.pop("z_out").float()
    metrics["latent_rel_error"] = float((z_rec - z0).norm() / z0.norm().clamp_min(1e-12))
    vae_only = unit(decode_latents(model, lat["z0"]), vo)
    metrics.update(reconstruction_metrics(x, vae_only, prefix="vae_"))
    # the DDIM part alone: reconstruction against what the VAE gives back without diffusion
    metrics.update(reconstruction_metrics(vae_only, unit(y, vo), prefix="inversion_"))
    pixels = from_model(y, prep, scan.channels)
    return Outcome(prepared=prep, pixels=pixels, model_out=y, latents=lat, metrics=metrics, timesteps=ts)
