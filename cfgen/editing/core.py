"""Invert and edit scans with a loaded model, one or a batch. No printing, no files: arrays and metrics."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, TYPE_CHECKING

import numpy as np
import torch

from cfgen.editing import ddim, inversion, labelled, masks
from cfgen.editing.grid import ModelGrid
from cfgen.editing.components import decode_latents, encode_images, encode_prompts, to_device
from cfgen.editing.jobs import require_prompt
from cfgen.editing.params import AUTOMATIC_MASKS, MASK_MODES, EditParams
from cfgen.editing.prepare import Prepared, from_model, geometry_to_model, to_model, unit, window_fraction
from cfgen.errors import UsageError
from cfgen.io.scan import Scan

if TYPE_CHECKING:
    from cfgen.models.loader import LoadedModel



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
    inversion: dict | None = None  # how the scan was inverted (method, steps, the gate's tries)
    attention: dict | None = None  # prompt-to-prompt: settings, the sweep's variants and scores
    labels: np.ndarray | None = None  # labelled models: the counterfactual's (reconstruction's) label map, scan grid


def prepare(model: LoadedModel, scan: Scan, p: EditParams) -> Prepared:
    """The scan on the model's grid and value range; on CUDA in pinned host memory, so that the
    copy to the GPU does not block (the runner does this in its reader threads)."""
    e = model.entry
    prep = to_model(scan, ModelGrid.of(e), e.channels, e.value_range, p.window)
    if p.labels:  # a model that generates anatomy label channels: inverted with the scan's labels
        labelled.attach(model, scan, prep, p.labels)
    if str(model.device).startswith("cuda"):
        prep.x = prep.x.pin_memory()
    return prep


@dataclass
class Computed:
    """One item's model-side result, on the host: what the scan-side finishing (resizing to the
    scan, intensity window, metrics) needs. The runner finishes items in worker threads while
    the next batch computes."""

    prepared: Prepared
    model_out: torch.Tensor  # (1, C, R, ...) float32, model space
    latents: dict[str, torch.Tensor]  # float32
    timesteps: list[int]
    latent_mask: torch.Tensor | None = None
    vae_out: torch.Tensor | None = None  # invert: the VAE alone (encode + decode), model space
    inversion: dict | None = None  # inversion.Inverted.record
    attention: dict | None = None  # prompt-to-prompt settings and the sweep's scores (attention.py, sweep.py)
    refine_change: float | None = None  # --mask refine: the change that keeps a pixel in the mask
    label_out: torch.Tensor | None = None  # labelled models: the regenerated label channels, model space
    file_region: np.ndarray | None = None  # --mask FILE: (1, *scan size) bool, where the user lets the scan change


def batch_key(p: EditParams) -> tuple | None:
    """Jobs with equal keys can share every UNet forward (one batch); None: run alone
    (eta > 0 draws noise per item from its seed)."""
    return None if p.eta else (p.steps, p.strength, p.guidance, p.inversion, p.null_text_steps, p.min_inversion_psnr,
                               p.solver, p.attention, p.cross_attention, p.self_attention, p.sweep)


def _latent_mask(model: LoadedModel, sched, z0, src, tgt, on_model: torch.Tensor | None, p: EditParams, mode: str):
    """``on_model``: a mask file's region on the model's grid (read once per item, resampled once)."""
    if mode in AUTOMATIC_MASKS:  # refine: the first pass (finish_edit keeps where it changed the scan)
        return masks.auto_mask(model.unet, sched, z0, src, tgt, int(p.seed), p.diffedit_threshold())
    if mode != "none":
        return masks.file_mask(mode, on_model, z0.shape[-1])
    return None


def _run(model: LoadedModel, scans: list[Scan], ps: list[EditParams], targets: list[str], guidance: float, eta: float,
         on_step: Callable[[], None] | None, mask_modes: list[str] | None = None,
         preps: list[Prepared] | None = None, vae_chunk: int | None = None, selector=None,
         regions: list[np.ndarray | None] | None = None) -> tuple:
    """Invert and regenerate a batch: every UNet forward (guidance included) runs on all items.
    ``selector``: the loaded clip/classifier model that picks among sweep variants; ``regions``: the
    mask files' regions of items whose mask mode is a file."""
    if len(ps) > 1 and len({batch_key(p) for p in ps}) != 1 or (len(ps) > 1 and eta):
        raise ValueError("a batch needs equal steps, strength and guidance and eta 0")
    p0 = ps[0]
    preps = preps or [prepare(model, sc, p) for sc, p in zip(scans, ps)]
    z0 = encode_images(model, torch.cat([to_device(model, _model_input(pr)) for pr in preps]), chunk=vae_chunk)
    n = len(ps)
    src, tgt, neg = encode_prompts(model, [p.source_prompt for p in ps] + list(targets)
                                   + [p.negative_prompt for p in ps]).chunk(3)
    step = (lambda: [on_step() for _ in range(n)]) if on_step else None  # progress counts items
    mask_sched = ddim.make_scheduler(model.entry.scheduler, p0.steps)
    files = [None if r is None else geometry_to_model(r.astype(np.float32), pr)
             for r, pr in zip(regions or [None] * n, preps)]  # mask files' regions on the model grid
    latent_masks = [_latent_mask(model, mask_sched, z0[i:i + 1], src[i:i + 1], tgt[i:i + 1], files[i], ps[i], m)
                    for i, m in enumerate(mask_modes or ["none"] * n)]
    inv = _inversion(model, z0, src, neg, p0, guidance, latent_masks, step, vae_chunk, scans)
    sched, ts, traj = inv.sched, inv.ts, inv.traj
    full = None
    if any(m is not None for m in latent_masks):  # items without a mask: all ones (blend leaves them alone)
        full = torch.cat([m if m is not None else torch.ones_like(z0[i:i + 1, :1], dtype=torch.float32)
                          for i, m in enumerate(latent_masks)])
    if p0.attention != "none":
        z, ys, inv.attention = _controlled(model, inv, src, tgt, guidance, full, ps, preps, scans, step, vae_chunk,
                                           selector, files)
    else:
        gen = torch.Generator(device=model.device).manual_seed(int(p0.seed))
        blend = None if full is None else masks.trajectory_blend(full, traj)
        z = ddim.sample(model.unet, sched, traj[-1], tgt, ts, uncond=inv.uncond, guidance=guidance, eta=eta,
                        generator=gen, blend=blend, on_step=step)
        ys = decode_latents(model, z, chunk=vae_chunk)
    lat = {"z0": z0, "zT": traj[-1], "z_out": z}
    return preps, ys, lat, [int(t) for t in ts], latent_masks, inv


def _model_input(prep: Prepared) -> torch.Tensor:
    """What the first stage encodes: the image, and for a labelled model its label channels."""
    if prep.labels is None:
        return prep.x
    return torch.cat([prep.x, prep.labels.to(prep.x.dtype)], dim=1)


def _controlled(model: LoadedModel, inv: inversion.Inverted, src, tgt, guidance: float, mask, ps: list[EditParams],
                preps: list[Prepared], scans: list[Scan], step, vae_chunk: int | None, selector,
                files: list[torch.Tensor | None]) -> tuple:
    """Prompt-to-prompt regeneration (attention.py), every sweep variant in one batch, and the
    best variant per item (sweep.py): its latents, its decoded image, the records. ``files``: the
    mask files' regions on the model's grid (None where an item's mask is not a file)."""
    from cfgen.editing import attention, sweep

    why = attention.supported(model)
    if why:
        raise UsageError(why)
    selfs = ps[0].sweep_values()
    control = attention.make_control(model, ps, selfs, len(inv.ts))
    z = attention.sample(model, inv.sched, inv.traj, src, tgt, inv.ts, inv.uncond, guidance, control, mask, step)
    ys = decode_latents(model, z, chunk=vae_chunk)
    base = {"mode": ps[0].attention, "cross_attention": ps[0].cross_attention}
    if len(selfs) == 1:
        return z, ys, [{**base, "self_attention": selfs[0]} for _ in ps]
    if selector is None:
        raise UsageError("--sweep needs a model to select with: --select-by (a clip or classifier entry)")
    vo = model.entry.value_range
    x = unit(torch.cat([pr.x for pr in preps]).float(), vo)
    cands = unit(ys.float().cpu(), vo)
    if mask is not None:  # score what will be written: each variant composited onto the scan
        cands = _as_delivered(cands, x, mask.float().cpu(), ps, model.entry.resolution, files)
    chosen, records = sweep.select(selector, x, cands, ps, selfs, [str(s.path) for s in scans])
    return z[chosen.to(z.device)], ys[chosen.to(ys.device)], [{**base, **r} for r in records]


def _as_delivered(cands: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, ps: list[EditParams],
                  resolution: int, files: list[torch.Tensor | None]) -> torch.Tensor:
    """Sweep variants (K * n, variant-major, [0, 1]) composited onto their scans ``x`` (n) inside
    each item's feathered latent mask, refined for --mask refine, times a mask file's own region
    (``files``, on the model grid): what finish_edit writes, before the resize to the scan's grid."""
    n, out = len(ps), cands.clone()
    for j in range(cands.shape[0]):
        i = j % n
        _, m = masks.edit_region(mask[i:i + 1], x[i:i + 1], cands[j:j + 1], resolution, ps[i].change_threshold())
        if files[i] is not None:
            m = m * files[i].to(m.dtype)
        out[j:j + 1] = m * cands[j:j + 1] + (1 - m) * x[i:i + 1]
    return out


def _inversion(model: LoadedModel, z0, src, neg, p: EditParams, guidance: float, latent_masks: list, step,
               vae_chunk: int | None, scans: list[Scan]) -> inversion.Inverted:
    """The chosen inversion, or with ``--min-inversion-psnr`` the gate's (inversion.gated): the
    region that must stay is outside each item's edit mask (on the decoded grid)."""
    if p.min_inversion_psnr is None:
        return inversion.invert(model, z0, src, neg, p, guidance, p.inversion, p.steps, step)
    decode = lambda z: labelled.split(decode_latents(model, z, chunk=vae_chunk), model)[0]  # noqa: E731
    return inversion.gated(model, z0, src, neg, p, guidance, latent_masks, decode, step,
                           [str(sc.path) for sc in scans])


def _host(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().float().cpu()


def _computed(model: LoadedModel, preps, ys, lat, ts, inv, guidance: float, latent_masks=None,
              vae=None) -> list[Computed]:
    """Per item, on the host: one copy per tensor per batch (no synchronisation per step); a
    labelled model's decoded channels split into image and labels."""
    (ys, labs), (vae, _) = labelled.split(_host(ys), model), labelled.split(_host(vae), model)
    lat = {k: _host(v) for k, v in lat.items()}
    return [Computed(prepared=prep, model_out=ys[i:i + 1], latents={k: v[i:i + 1] for k, v in lat.items()},
                     timesteps=ts, latent_mask=_host(latent_masks[i]) if latent_masks else None,
                     vae_out=None if vae is None else vae[i:i + 1], inversion=inv.record(i, guidance),
                     attention=inv.attention[i] if inv.attention else None,
                     label_out=None if labs is None else labs[i:i + 1])
            for i, prep in enumerate(preps)]


def _identity_metrics(scan: Scan, prep: Prepared, pixels: np.ndarray) -> dict[str, Any]:
    """PRISM's L1 (images in [0, 1] through the scan's window) at the scan's own resolution."""
    w = prep.window
    a = unit(w.to_model(scan.pixels), (w.model_low, w.model_high))
    b = unit(w.to_model(pixels), (w.model_low, w.model_high))
    d = np.abs(a - b)
    return {"l1": float(d.mean()), "changed_fraction": float((d > 0.05).mean()), "max_abs_change": float(d.max())}


def _check_edit(model: LoadedModel, p: EditParams) -> None:
    p.check()
    require_prompt(p.prompt, "--prompt: the target prompt is empty")
    if model.fields is not None:
        from cfgen.models.tabular import check_editable

        check_editable(model.entry.name, model.entry.defaults, p.source_prompt, p.prompt, model.fields)


def compute_edits(model: LoadedModel, scans: list[Scan], ps: list[EditParams], on_step: Callable[[], None] | None = None,
                  preps: list[Prepared] | None = None, vae_chunk: int | None = None, selector=None) -> list[Computed]:
    """The model side of a batch of edits (equal ``batch_key``): invert under each source
    prompt, regenerate under each target prompt. ``preps``: the scans already prepared;
    ``vae_chunk``: items per VAE call (the run's memory plan; None: the whole batch)."""
    for p in ps:
        _check_edit(model, p)
    regions = [None if p.mask in MASK_MODES else masks.scan_region(p.mask, sc) for p, sc in zip(ps, scans)]
    preps, ys, lat, ts, latent_masks, inv = _run(model, scans, ps, [p.prompt for p in ps], ps[0].guidance, ps[0].eta,
                                            on_step, [p.mask for p in ps], preps, vae_chunk, selector, regions)
    lat.pop("z_out")
    out = _computed(model, preps, ys, lat, ts, inv, ps[0].guidance, latent_masks)
    for c, p, region in zip(out, ps, regions):
        c.refine_change, c.file_region = p.change_threshold(), region
    return out


def finish_edit(model: LoadedModel, scan: Scan, c: Computed) -> Outcome:
    """The scan side of one edit: back to the scan's grid and units, mask blend, metrics."""
    prep = c.prepared
    pixels = from_model(c.model_out, prep, scan.channels)
    scan_mask = None
    metrics: dict[str, Any] = {}
    if c.latent_mask is not None:
        # outside the mask the scan itself, not its VAE reconstruction;
        # refine compares with the scan, not its VAE reconstruction: what the VAE loses (thin
        # devices) is part of what a removal changes (benchmarks/refine_mask.py: 0.47 vs 0.69)
        first, model_mask = masks.edit_region(c.latent_mask, window_fraction(prep.x.float(), prep),
                                              window_fraction(c.model_out, prep), model.entry.resolution,
                                              c.refine_change)
        if c.refine_change is not None:
            metrics["mask_first_fraction"] = float((masks.to_scan_mask(first, prep) > 0.5).mean())
        scan_mask = masks.to_scan_mask(model_mask, prep)
        if c.file_region is not None:  # the user's mask holds voxel by voxel, not per latent cell
            scan_mask = scan_mask * c.file_region
        pixels = (scan_mask * pixels + (1 - scan_mask) * scan.pixels).astype(np.float32)
        metrics["mask_fraction"] = float((scan_mask > 0.5).mean())
    metrics.update(_identity_metrics(scan, prep, pixels))
    return Outcome(prepared=prep, pixels=pixels, model_out=c.model_out, latents=c.latents, metrics=metrics,
                   timesteps=c.timesteps, mask=scan_mask, inversion=c.inversion, attention=c.attention,
                   labels=_edited_labels(model, c, scan_mask, metrics))


def _edited_labels(model: LoadedModel, c: Computed, scan_mask: np.ndarray | None, metrics: dict) -> np.ndarray | None:
    """The counterfactual's label map: the model's inside the edit mask, the scan's own outside;
    ``metrics`` gets the share of voxels whose label changed."""
    if c.label_out is None:
        return None
    new, own = labelled.to_scan(c.label_out, c.prepared, model), c.prepared.label_map
    if scan_mask is not None:
        new = np.where(scan_mask[0] > 0.5, new, own).astype(np.uint8)
    metrics["labels_changed_fraction"] = float((new != own).mean())
    return new


def edit_many(model: LoadedModel, scans: list[Scan], ps: list[EditParams],
              on_step: Callable[[], None] | None = None, selector=None) -> list[Outcome]:
    """Counterfactuals of several scans in one batch (equal ``batch_key``)."""
    computed = compute_edits(model, scans, ps, on_step, selector=selector)
    return [finish_edit(model, scan, c) for scan, c in zip(scans, computed)]


def edit(model: LoadedModel, scan: Scan, p: EditParams, on_step: Callable[[], None] | None = None,
         selector=None) -> Outcome:
    """Counterfactual: invert under the source prompt, regenerate under the target prompt."""
    return edit_many(model, [scan], [p], on_step, selector)[0]


def compute_inversions(model: LoadedModel, scans: list[Scan], ps: list[EditParams], on_step: Callable[[], None] | None = None,
                       preps: list[Prepared] | None = None, vae_chunk: int | None = None) -> list[Computed]:
    """The model side of DDIM inversion under the source prompt, the reconstruction from the
    inverted noise, and the VAE alone (encode + decode)."""
    for p in ps:
        p.check()
    preps, ys, lat, ts, _, inv = _run(model, scans, ps, [p.source_prompt for p in ps], ps[0].guidance, 0.0, on_step,
                                      None, preps, vae_chunk)
    return _computed(model, preps, ys, lat, ts, inv, ps[0].guidance,
                     vae=decode_latents(model, lat["z0"], chunk=vae_chunk))


def finish_inversion(model: LoadedModel, scan: Scan, c: Computed) -> Outcome:
    """PSNR/SSIM of the reconstruction against the model-space input (invert + sample) and of
    the VAE alone, so a user sees where fidelity is lost."""
    from cfgen.metrics.image import reconstruction_metrics

    vo = model.entry.value_range
    prep, li = c.prepared, dict(c.latents)
    x, y = unit(prep.x.float(), vo), unit(c.model_out, vo)
    metrics = reconstruction_metrics(x, y)
    z0, z_rec = li["z0"], li.pop("z_out")
    metrics["latent_rel_error"] = float((z_rec - z0).norm() / z0.norm().clamp_min(1e-12))
    vae_only = unit(c.vae_out, vo)
    metrics.update(reconstruction_metrics(x, vae_only, prefix="vae_"))
    # the DDIM part alone: reconstruction against what the VAE gives back without diffusion
    metrics.update(reconstruction_metrics(vae_only, y, prefix="inversion_"))
    labels = None
    if c.label_out is not None:  # how well the anatomy comes back with the image
        labels = labelled.to_scan(c.label_out, prep, model)
        metrics.update(labelled.metrics(prep.label_map, labels, len(labelled.label_names(model.entry))))
    return Outcome(prepared=prep, pixels=from_model(c.model_out, prep, scan.channels), model_out=c.model_out,
                   latents=li, metrics=metrics, timesteps=c.timesteps, inversion=c.inversion, labels=labels)


def invert_many(model: LoadedModel, scans: list[Scan], ps: list[EditParams],
                on_step: Callable[[], None] | None = None) -> list[Outcome]:
    return [finish_inversion(model, scan, c) for scan, c in zip(scans, compute_inversions(model, scans, ps, on_step))]


def invert(model: LoadedModel, scan: Scan, p: EditParams, on_step: Callable[[], None] | None = None) -> Outcome:
    return invert_many(model, [scan], [p], on_step)[0]
