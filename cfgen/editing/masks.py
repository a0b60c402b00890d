"""Edit masks: where the counterfactual may differ from the scan.

``auto`` follows DiffEdit (Couairon et al., 2023): noise the scan's latent to the middle of the
schedule several times and compare the noise predicted under the target and the source prompt;
where they disagree is where the prompts are about. A user mask (PNG/NIfTI, nonzero = edit) is
brought to the model grid like the scan. During sampling, latents outside the mask are reset to
the inverted trajectory at the same timestep, and the decoded result is composited onto the
original pixels with a feathered mask, so the rest of the scan is preserved exactly.

``refine`` starts from a generous ``auto`` mask (DiffEdit's disagreement covers the region but
spills far beyond it) and keeps, of that edit, only where it changed the scan by more than
``--refine-change`` (smoothed, grown by a pixel, feathered): the edit's own change is a sharper
map of the region than the prompts' disagreement. The change is measured against the scan
itself, so a model whose autoencoder drifts by more than the threshold keeps most of the first
mask (demo-brain: worse than ``auto``). One pass of the model; the rest is pixels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cfgen.editing.prepare import Prepared, geometry_to_model, geometry_to_scan
from cfgen.errors import InputError
from cfgen.io.scan import Scan, read_scan, region_of

AUTO_NOISE_DRAWS = 5
AUTO_STRENGTH = 0.5
REFINE_SMOOTH = 1.0  # refine: Gaussian sigma (model-grid pixels) of the change map before the threshold
REFINE_GROW = 1  # pixels the kept region grows by
REFINE_EDGE = 0.7  # Gaussian sigma of the composite's edge


@torch.no_grad()
def auto_mask(unet, scheduler, z0: torch.Tensor, src: torch.Tensor, tgt: torch.Tensor, seed: int,
              threshold: float = 0.5) -> torch.Tensor:
    """(1, 1, h, w[, d]) binary latent mask from the disagreement of target and source predictions."""
    t = int(scheduler.config.num_train_timesteps * AUTO_STRENGTH)
    gen = torch.Generator().manual_seed(seed)
    acc = torch.zeros_like(z0[:, :1], dtype=torch.float32)
    for _ in range(AUTO_NOISE_DRAWS):
        noise = torch.randn(z0.shape, generator=gen).to(z0.device, z0.dtype)
        zt = scheduler.add_noise(z0, noise, torch.tensor([t]))
        both = unet(torch.cat([zt, zt]), t, encoder_hidden_states=torch.cat([src, tgt])).sample.float()
        e_src, e_tgt = both.chunk(2)
        acc += (e_tgt - e_src).abs().mean(dim=1, keepdim=True)
    pool = F.avg_pool3d if acc.ndim == 5 else F.avg_pool2d
    acc = pool(acc, 3, stride=1, padding=1)  # DiffEdit smooths before thresholding
    acc = acc / acc.max().clamp_min(1e-12)
    return (acc > threshold).float()


def file_mask(path: str, on_model: torch.Tensor, latent_size: int) -> torch.Tensor:
    """A user mask's region on the model's grid (scan_region, then geometry_to_model) -> (1, 1, h, w[, d])
    binary latent mask."""
    if not on_model.any():
        raise InputError(f"{path}: mask is empty (no nonzero pixel)")
    pool = F.adaptive_max_pool3d if on_model.ndim == 5 else F.adaptive_max_pool2d
    return (pool(on_model, latent_size) > 0).float()


def scan_region(path: str | Path, scan: Scan) -> np.ndarray:
    """A mask file on ``scan``'s grid: (1, *scan size) bool, nonzero = may change (checked against the
    scan's size): an edit's --mask keeps the scan outside it pixel by pixel."""
    m = read_scan(Path(path))
    if m.spatial_dims != scan.spatial_dims or m.pixels.shape[1:] != scan.pixels.shape[1:]:
        raise InputError(f"{path}: mask of shape {tuple(m.pixels.shape[1:])} does not match the scan "
                         f"{tuple(scan.pixels.shape[1:])}")
    return region_of(m)


def region_on_model(path: Path, scan: Scan, prep: Prepared) -> torch.Tensor:
    """A mask file on ``scan``'s grid -> (1, 1, R, ...) in [0, 1] on the model's grid (``prep``'s way),
    > 0 wherever a nonzero voxel lands: finetune's --region-weight."""
    return geometry_to_model(scan_region(path, scan).astype(np.float32), prep)


def feathered_model_mask(latent_mask: torch.Tensor, resolution: int) -> torch.Tensor:
    """(1, 1, R, R[, R]) mask in [0, 1] on the model's grid, edges softened over about one latent cell."""
    dims = latent_mask.ndim - 2
    up = F.interpolate(latent_mask, size=(resolution,) * dims, mode="nearest")
    k = (resolution // latent_mask.shape[-1]) | 1  # odd, about one latent cell
    if k > 1:
        pool = F.avg_pool3d if dims == 3 else F.avg_pool2d
        up = pool(up, k, stride=1, padding=k // 2, count_include_pad=False)
    return up


def to_scan_mask(model_mask: torch.Tensor, prep: Prepared) -> np.ndarray:
    """A model-grid mask -> (1, *scan size) in [0, 1] on the scan's grid."""
    return np.clip(geometry_to_scan(model_mask, prep), 0.0, 1.0)


def feathered_scan_mask(latent_mask: torch.Tensor, prep: Prepared, resolution: int) -> np.ndarray:
    """(1, *scan size) mask in [0, 1] on the scan's grid, edges softened over about one latent cell."""
    return to_scan_mask(feathered_model_mask(latent_mask, resolution), prep)


def refined_mask(first: torch.Tensor, x: torch.Tensor, y: torch.Tensor, change: float) -> torch.Tensor:
    """--mask refine's second step, on the model's grid: of the first pass's mask ``first`` (1, 1, ...)
    the part where its output ``y`` differs from the scan ``x`` (both (1, C, ...) in [0, 1]) by more
    than ``change`` after smoothing, grown by REFINE_GROW pixels, with a feathered edge."""
    from scipy import ndimage

    d = (first * (y - x)).abs().mean(dim=1)[0].double().numpy()
    keep = ndimage.gaussian_filter(d, REFINE_SMOOTH) > change
    if REFINE_GROW:
        keep = ndimage.binary_dilation(keep, iterations=REFINE_GROW)
    soft = ndimage.gaussian_filter(keep.astype(np.float64), REFINE_EDGE)
    return first * torch.from_numpy(soft).float()[None, None]


def edit_region(latent_mask: torch.Tensor, x: torch.Tensor, y: torch.Tensor, resolution: int,
                change: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(feathered latent mask, the mask the output is composited with) on the model's grid: the
    same unless --mask refine (``change``) keeps only where ``y`` moved away from ``x`` ([0, 1])."""
    first = feathered_model_mask(latent_mask, resolution)
    return first, (first if change is None else refined_mask(first, x, y, change))


def trajectory_blend(mask: torch.Tensor, traj: list[torch.Tensor]):
    """blend(z, i): after sampling step i, keep the inverted latent outside the mask.

    traj = [z0, z_{t_k}, ..., z_{t_1}] from ddim.invert; after step i of k the sampler is at
    the timestep whose inverted latent is traj[k - 1 - i].
    """
    k = len(traj) - 1

    def blend(z: torch.Tensor, i: int) -> torch.Tensor:
        ref = traj[k - 1 - i]
        return mask.to(z.dtype) * z + (1 - mask.to(z.dtype)) * ref

    return blend
