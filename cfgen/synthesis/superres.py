"""The super-resolution stage (MedSyn Eq. 8/10): a convolutional diffusion UNet that denoises the
full-resolution volume given the upsampled low-resolution one as extra input channels,
``H(concat(x_t, up(x_low)), t)``, and no text (MedSyn keeps text at the base only).

With ``[synth] residual = true`` (x0 prediction) the UNet's output is added to the upsampled
input: it learns the detail trilinear upsampling misses, and starts from trilinear itself.

Sampling runs the UNet in overlapping windows (MONAI's ``sliding_window_inference``, Gaussian
blending), so memory depends on the window, not on the output size. Training (`cfgen finetune`
on a model whose ``[synth]`` table has ``scale``: cfgen/training/objectives.py) crops windows of
the same size; the stage's inputs and checks are in cfgen/models/sr_stage.py.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Callable, TYPE_CHECKING

import torch

from cfgen.errors import UsageError
from cfgen.models.sr_stage import check_stage, upsample

if TYPE_CHECKING:
    from cfgen.models.loader import LoadedModel


class WindowedUNet:
    """The SR UNet with the call signature the DDIM loop uses; the low-res input is concatenated
    and the volume processed in windows of ``patch`` voxels (one window when it fits in one)."""

    def __init__(self, unet, low: torch.Tensor, patch: int, overlap: float, residual: bool = False):
        self.unet, self.low, self.patch, self.overlap, self.residual = unet, low, patch, overlap, residual

    def __call__(self, z: torch.Tensor, t, encoder_hidden_states=None):
        from monai.inferers import sliding_window_inference

        x = torch.cat([z, self.low.to(z.dtype)], dim=1)

        def predictor(window: torch.Tensor) -> torch.Tensor:
            return self.unet(window, t).sample

        roi = [min(self.patch, s) for s in x.shape[2:]]  # never pad a small volume up to the window
        out = torch.as_tensor(sliding_window_inference(x, roi, 1, predictor, overlap=self.overlap,
                                                       mode="gaussian", sw_device=z.device, device=z.device))
        return SimpleNamespace(sample=out + self.low.to(out.dtype) if self.residual else out)


@torch.no_grad()
def super_resolve(model: LoadedModel, low: torch.Tensor, size: int, steps: int, seed: int, patch: int | None = None,
                  overlap: float | None = None, on_step: Callable[[], None] | None = None) -> torch.Tensor:
    """(N, C, r, r, r) in the model's range -> (N, C, size, size, size) sampled by the stage."""
    from cfgen.editing import ddim

    check_stage(model)
    synth = model.entry.synth
    patch = int(patch or synth.get("patch", 64))
    overlap = float(synth.get("overlap", 0.25) if overlap is None else overlap)
    if patch < 8 or not 0 <= overlap < 1:
        raise UsageError(f"--patch {patch} / --overlap {overlap}: need a window of at least 8 voxels and overlap in [0, 1)")
    patch -= patch % 8  # the UNet halves the window up to three times
    cond = upsample(low.to(model.device, torch.float32), size)
    sched = ddim.make_scheduler(model.entry.scheduler, steps)
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn(cond.shape, generator=gen).to(model.device) * sched.init_noise_sigma
    net = WindowedUNet(model.unet, cond.to(model.dtype), patch, overlap, bool(synth.get("residual")))
    z = ddim.sample(net, sched, z.to(model.dtype), None, sched.timesteps, on_step=on_step)
    return z.float()
