"""Full-reference image metrics on images in [0, 1], through MONAI's implementations.

PSNR of identical images is infinite; reports carry it as ``null`` with ``psnr_capped``
at 100 dB so that JSON stays valid and tables stay sortable.
"""
from __future__ import annotations

import math

import torch

PSNR_CAP_DB = 100.0


def l1(a: torch.Tensor, b: torch.Tensor) -> float:
    """PRISM's identity preservation: mean absolute difference, images in [0, 1]."""
    return float((a.float() - b.float()).abs().mean())


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    from monai.metrics import PSNRMetric

    val = float(PSNRMetric(max_val=1.0, reduction="mean")(a.float(), b.float()).mean())
    return val


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    from monai.metrics import SSIMMetric

    dims = a.ndim - 2
    win = max(3, min(11, min(a.shape[2:]) // 2 * 2 - 1))
    return float(SSIMMetric(spatial_dims=dims, data_range=1.0, win_size=win)(a.float(), b.float()).mean())


#: MONAI's (and the MS-SSIM paper's) weights for 5 scales
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_scales(shape: tuple[int, ...], kernel: int = 7) -> int:
    """How many scales fit: each scale halves the image, which must stay wider than the kernel."""
    side = min(shape)
    scales = len(MS_SSIM_WEIGHTS)
    while scales > 1 and side <= (kernel - 1) * 2 ** (scales - 1):
        scales -= 1
    return scales


def ms_ssim(a: torch.Tensor, b: torch.Tensor, kernel: int = 7) -> float:
    """MONAI's multi-scale SSIM; images too small for 5 scales use the first scales' weights
    (renormalised), and below 2 scales this is plain SSIM."""
    from monai.metrics import MultiScaleSSIMMetric

    scales = ms_ssim_scales(tuple(a.shape[2:]), kernel)
    if scales < 2:
        return ssim(a, b)
    w = MS_SSIM_WEIGHTS[:scales]
    w = tuple(v / sum(w) for v in w)
    metric = MultiScaleSSIMMetric(spatial_dims=a.ndim - 2, data_range=1.0, kernel_size=kernel, weights=w)
    return float(metric(a.float(), b.float()).mean())


def reconstruction_metrics(a: torch.Tensor, b: torch.Tensor, prefix: str = "") -> dict:
    p = psnr(a, b)
    finite = math.isfinite(p)
    return {f"{prefix}psnr": p if finite else None, f"{prefix}psnr_capped": min(p, PSNR_CAP_DB),
            f"{prefix}ssim": ssim(a, b), f"{prefix}l1": l1(a, b)}
