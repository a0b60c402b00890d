"""Per-pair metrics that need no model: identity preservation and ground truth.

Images are tensors in [0, 1], shape (1, C, *spatial).

Ground truth (phantoms, or any data with a true counterfactual ``t`` of the factual ``x``):
  gt_l1            mean |x' - t|: error of the counterfactual x'
  gt_l1_nothing    mean |x - t|: error of doing nothing (returning x)
  gt_error_ratio   gt_l1 / gt_l1_nothing (< 1: better than doing nothing; 0: exact)
  gt_achieved      <x' - x, t - x> / |t - x|^2: fraction of the required change made
                   (1 exact, 0 nothing, < 0 the wrong way)
  change_inside / change_outside   mean |x' - x| inside / outside the true-difference region
                   (the given mask, else where |t - x| > REGION_THRESHOLD)
  gt_floor_l1      mean |f - t| of the ideal editor's output f (the true change with another noise
                   draw): the error no editor can go below; gt_floor_ratio = gt_floor_l1 / gt_l1_nothing
  gt_sample_floor_l1 / _ratio      the same for the ideal editor of a world that agrees with the
                   scan and the prompt but draws anew what they do not show (chest phantoms: where
                   added devices sit, an added effusion's side and size, the new CTR): the floor of
                   an editor that samples a plausible counterfactual, as diffusion editors do
  mask_recall / mask_precision     when the edit used a mask: the share of the true region it
                   covered, and the share of it that lies in the true region
"""
from __future__ import annotations

import math

from cfgen.metrics.image import PSNR_CAP_DB, l1, ms_ssim, psnr, ssim

REGION_THRESHOLD = 0.02


def identity_metrics(x, xcf) -> dict[str, float | None]:
    p = psnr(x, xcf)
    return {"l1": l1(x, xcf), "psnr": p if math.isfinite(p) else None, "psnr_capped": min(p, PSNR_CAP_DB),
            "ssim": ssim(x, xcf), "ms_ssim": ms_ssim(x, xcf)}


def true_region(x, truth, region=None):
    """The true-difference region: the given mask, else where |t - x| > REGION_THRESHOLD."""
    if region is not None:
        return region.bool()
    return (truth - x).float().abs().amax(dim=1, keepdim=True) > REGION_THRESHOLD


def mask_metrics(edit_region, region) -> dict[str, float | None]:
    """How well the edit's mask found the true region: recall |E & T| / |T|, precision |E & T| / |E|."""
    e, t = edit_region.bool(), region.bool()
    hit = float((e & t).sum())
    return {"mask_recall": hit / float(t.sum()) if t.any() else None,
            "mask_precision": hit / float(e.sum()) if e.any() else None,
            "mask_fraction": float(e.float().mean())}


def floor_metrics(x, floor, truth, prefix: str = "gt_floor") -> dict[str, float | None]:
    err, nothing = l1(floor, truth), l1(x, truth)
    return {f"{prefix}_l1": err, f"{prefix}_ratio": err / nothing if nothing > 0 else None}


def truth_metrics(x, xcf, truth, region=None) -> dict[str, float | None]:
    need = (truth - x).float()
    made = (xcf - x).float()
    err, nothing = l1(xcf, truth), l1(x, truth)
    denom = float((need * need).sum())
    out = {"gt_l1": err, "gt_l1_nothing": nothing, "gt_error_ratio": err / nothing if nothing > 0 else None,
           "gt_achieved": float((made * need).sum()) / denom if denom > 0 else None}
    region = true_region(x, truth, region)
    change = made.abs().mean(dim=1, keepdim=True)
    inside, outside = region, ~region
    out["change_inside"] = float(change[inside].mean()) if inside.any() else None
    out["change_outside"] = float(change[outside].mean()) if outside.any() else None
    out["region_fraction"] = float(inside.float().mean())
    return out
