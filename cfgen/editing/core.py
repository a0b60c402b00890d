"""Invert and edit scans with a loaded model, one or a batch. No printing, no files: arrays and metrics."""
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


def batch_key(p: EditParams) -> tuple | None:
    """Jobs with equal keys can share every UNet forward (one batch); None: run alone
    (eta > 0 draws noise per item from its seed)."""
    return None if p.eta else (p.steps, p.strength, p.guidance)


def _latent_mask(model, sched, z0, src, tgt, scan: Scan, prep: Prepared, p: EditParams, mode: str):
    if mode == "auto":
        return masks.auto_mask(model.unet, sched, z0, src, tgt, int(p.seed), p.mask_threshold)
    if mode != "none":
        return masks.file_mask(mode, scan, prep, model.entry.resolution, z0.shape[-1])
    return None


def _run(model, scans: list[Scan], ps: list[EditParams], targets: list[str], guidance: float, eta: float,
         on_step: Callable[[], None] | None, mask_modes: list[str] | None = None) -> tuple:
    """Invert and regenerate a batch: every UNet forward (guidance included) runs on all items."""
    if len(ps) > 1 and len({batch_key(p) for p in ps}) != 1 or (len(ps) > 1 and eta):
        raise ValueError("a batch needs equal steps, strength and guidance and eta 0")
    p0 = ps[0]
    preps = [_prepare(model, sc, p) for sc, p in zip(scans, ps)]
    sched = ddim.make_scheduler(model.entry.scheduler, p0.steps)
    ts = ddim.edit_timesteps(sched, p0.strength)
    z0 = encode_images(model, torch.cat([pr.x for pr in preps]))
    n = len(ps)
    src, tgt, neg = encode_prompts(model, [p.source_prompt for p in ps] + list(targets)
                                   + [p.negative_prompt for p in ps]).chunk(3)
    step = (lambda: [on_step() for _ in range(n)]) if on_step else None  # progress counts items
    traj = ddim.invert(model.unet, sched, z0, src, ts, on_step=step)
    latent_masks = [_latent_mask(model, sched, z0[i:i + 1], src[i:i + 1], tgt[i:i + 1], scans[i], preps[i], ps[i], m)
                    for i, m in enumerate(mask_modes or ["none"] * n)]
    blend = None
    if any(m is not None for m in latent_masks):  # items without a mask: all ones (blend leaves them alone)
        full = torch.cat([m if m is not None else torch.ones_like(z0[i:i + 1, :1], dtype=torch.float32)
                          for i, m in enumerate(latent_masks)])
        blend = masks.trajectory_blend(full, traj)
    gen = torch.Generator(device=model.device).manual_seed(int(p0.seed))
    z = ddim.sample(model.unet, sched, traj[-1], tgt, ts, uncond=neg, guidance=guidance, eta=eta,
                    generator=gen, blend=blend, on_step=step)
    lat = {"z0": z0, "zT": traj[-1], "z_out": z}
    return preps, decode_latents(model, z), lat, [int(t) for t in ts], latent_masks


def _item(lat: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    return {k: v[i:i + 1] for k, v in lat.items()}


def _identity_metrics(scan: Scan, prep: Prepared, pixels: np.ndarray) -> dict[str, Any]:
    """PRISM's L1 (images in [0, 1] through the scan's window) at the scan's own resolution."""
    w = prep.window
    a = unit(w.to_model(scan.pixels), (w.model_low, w.model_high))
    b = unit(w.to_model(pixels), (w.model_low, w.model_high))
    d = np.abs(a - b)
    return {"l1": float(d.mean()), "changed_fraction": float((d > 0.05).mean()), "max_abs_change": float(d.max())}


def _check_edit(p: EditParams) -> None:
    p.check()
    if not p.prompt:
        raise UsageError("--prompt: the target prompt is empty")


def edit_many(model, scans: list[Scan], ps: list[EditParams],
              on_step: Callable[[], None] | None = None) -> list[Outcome]:
    """Counterfactuals of several scans in one batch (equal ``batch_key``): invert under each
    source prompt, regenerate under each target prompt."""
    for p in ps:
        _check_edit(p)
    preps, ys, lat, ts, latent_masks = _run(model, scans, ps, [p.prompt for p in ps], ps[0].guidance, ps[0].eta,
                                            on_step, [p.mask for p in ps])
    lat.pop("z_out")
    outs = []
    for i, (scan, prep, p) in enumerate(zip(scans, preps, ps)):
        y = ys[i:i + 1]
        pixels = from_model(y, prep, scan.channels)
        scan_mask = None
        metrics: dict[str, Any] = {}
        if latent_masks[i] is not None:
            # outside the mask the scan itself, not its VAE reconstruction
            scan_mask = masks.feathered_scan_mask(latent_masks[i], prep, model.entry.resolution)
            pixels = (scan_mask * pixels + (1 - scan_mask) * scan.pixels).astype(np.float32)
            metrics["mask_fraction"] = float((scan_mask > 0.5).mean())
        metrics.update(_identity_metrics(scan, prep, pixels))
        outs.append(Outcome(prepared=prep, pixels=pixels, model_out=y, latents=_item(lat, i), metrics=metrics,
                            timesteps=ts, mask=scan_mask))
    return outs


def edit(model, scan: Scan, p: EditParams, on_step: Callable[[], None] | None = None) -> Outcome:
    """Counterfactual: invert under the source prompt, regenerate under the target prompt."""
    return edit_many(model, [scan], [p], on_step)[0]


def invert_many(model, scans: list[Scan], ps: list[EditParams],
                on_step: Callable[[], None] | None = None) -> list[Outcome]:
    """DDIM inversion under the source prompt plus the reconstruction from the inverted noise.

    Reports PSNR/SSIM of the reconstruction against the model-space input (invert + sample)
    and of the VAE alone (encode + decode), so a user sees where fidelity is lost.
    """
    from cfgen.metrics.image import reconstruction_metrics

    for p in ps:
        p.check()
    preps, ys, lat, ts, _ = _run(model, scans, ps, [p.source_prompt for p in ps], 1.0, 0.0, on_step)
    vo = model.entry.value_range
    vae_all = unit(decode_latents(model, lat["z0"]), vo)
    outs = []
    for i, (scan, prep) in enumerate(zip(scans, preps)):
        y, li = ys[i:i + 1], _item(lat, i)
        x = unit(prep.x, vo)
        metrics = reconstruction_metrics(x, unit(y, vo))
        z0, z_rec = li["z0"].float(), li.pop("z_out").float()
        metrics["latent_rel_error"] = float((z_rec - z0).norm() / z0.norm().clamp_min(1e-12))
        vae_only = vae_all[i:i + 1]
        metrics.update(reconstruction_metrics(x, vae_only, prefix="vae_"))
        # the DDIM part alone: reconstruction against what the VAE gives back without diffusion
        metrics.update(reconstruction_metrics(vae_only, unit(y, vo), prefix="inversion_"))
        outs.append(Outcome(prepared=prep, pixels=from_model(y, prep, scan.channels), model_out=y, latents=li,
                            metrics=metrics, timesteps=ts))
    return outs


def invert(model, scan: Scan, p: EditParams, on_step: Callable[[], None] | None = None) -> Outcome:
    return invert_many(model, [scan], [p], on_step)[0]
