"""What a super-resolution stage is (MedSyn Eq. 8/10), shared by its training objective
(cfgen/training/objectives.py) and its sampler (cfgen/synthesis/superres.py): a voxel-space 3D
UNet taking the noisy volume and the upsampled low-resolution volume as channels, no text.

In training the low-res input is the volume average-pooled by ``scale`` and upsampled back
(trilinear); at sampling time it is the base stage's output upsampled to the target size.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from cfgen.errors import ModelError

if TYPE_CHECKING:
    from cfgen.models.loader import LoadedModel


def upsample(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x, size=(size,) * (x.ndim - 2), mode="trilinear", align_corners=False)


def low_res_input(x: torch.Tensor, scale: int) -> torch.Tensor:
    """What the stage sees in training: ``x`` at 1/scale resolution, upsampled back to ``x``'s grid."""
    return upsample(F.avg_pool3d(x, scale), x.shape[-1])


def check_stage(model: LoadedModel) -> None:
    """A loaded model can serve as a super-resolution stage: voxel space, 2C in, C out."""
    if not model.vae.voxel_space:
        raise ModelError(f"{model.folder}: a super-resolution stage works in voxel space; remove autoencoder/")
    cfg = model.unet.config
    if cfg.in_channels != 2 * cfg.out_channels or cfg.out_channels != model.entry.channels:
        raise ModelError(f"{model.folder / 'unet' / 'config.json'}: a super-resolution stage takes 2 x {model.entry.channels} "
                         f"channels (noisy + low-res) and returns {model.entry.channels}; found in_channels "
                         f"{cfg.in_channels}, out_channels {cfg.out_channels}")
    if model.entry.synth.get("residual") and model.entry.scheduler.get("prediction_type") != "sample":
        raise ModelError(f"{model.folder}: [synth] residual needs x0 prediction (scheduler prediction_type = \"sample\")")
