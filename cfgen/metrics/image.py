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


def reconstruction_metrics(a: torch.Tensor, b: torch.Tensor, prefix: str = "") -> dict:
    p = psnr(a, b)
    finite = math.isfinite(p)
    return {f"{prefix}psnr": p if finite else None, f"{prefix}psnr_capped": min(p, PSNR_CAP_DB),
            f"{prefix}ssim": ssim(a, b), f"{prefix}l1": l1(a, b)}
