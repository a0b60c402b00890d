"""The super-resolution stage (MedSyn Eq. 8/10): a convolutional diffusion UNet that denoises the
full-resolution volume given the upsampled low-resolution one as extra input channels,
``H(concat(x_t, up(x_low)), t)``, and no text (MedSyn keeps text at the base only).

With ``[synth] residual = true`` (x0 prediction) the UNet's output is added to the upsampled
input: it learns the detail trilinear upsampling misses, and starts from trilinear itself.

Sampling runs the UNet in overlapping windows (MONAI's ``sliding_window_inference``, Gaussian
blending), so memory depends on the window, not on the output size. Training (`cfgen finetune`
on a model whose ``[synth]`` table has ``scale``) crops windows of the same size: the low-res
input is the volume average-pooled by ``scale`` and upsampled back (trilinear).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Callable

import torch
import torch.nn.functional as F

from cfgen.errors import ModelError, UsageError


def upsample(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x, size=(size,) * (x.ndim - 2), mode="trilinear", align_corners=False)


def low_res_input(x: torch.Tensor, scale: int) -> torch.Tensor:
    """What the stage sees in training: ``x`` at 1/scale resolution, upsampled back to ``x``'s grid."""
    return upsample(F.avg_pool3d(x, scale), x.shape[-1])


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


def check_stage(model) -> None:
    if model.components["vae"].net is not None:
        raise ModelError(f"{model.folder}: a super-resolution stage works in voxel space; remove autoencoder/")
    cfg = model.unet.config
    if cfg.in_channels != 2 * cfg.out_channels or cfg.out_channels != model.entry.channels:
        raise ModelError(f"{model.folder / 'unet' / 'config.json'}: a super-resolution stage takes 2 x {model.entry.channels} "
                         f"channels (noisy + low-res) and returns {model.entry.channels}; found in_channels "
                         f"{cfg.in_channels}, out_channels {cfg.out_channels}")
    if model.entry.synth.get("residual") and model.entry.scheduler.get("prediction_type") != "sample":
        raise ModelError(f"{model.folder}: [synth] residual needs x0 prediction (scheduler prediction_type = \"sample\")")


@torch.no_grad()
def super_resolve(model, low: torch.Tensor, size: int, steps: int, seed: int, patch: int | None = None,
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


class SuperResObjective:
    """`cfgen finetune` on a super-resolution stage: the denoising loss on random windows with the
    low-res input concatenated (selected from the model's [synth] table, not by an option)."""

    def __init__(self, scale: int, patch: int, residual: bool = False):
        self.scale, self.patch, self.residual = int(scale), int(patch), bool(residual)

    def describe(self) -> dict:
        return {"kind": "super-resolution", "scale": self.scale, "patch": self.patch, "residual": self.residual}

    def check(self, model, cfg) -> None:
        check_stage(model)
        if model.entry.resolution % self.scale:
            raise ModelError(f"{model.folder}: resolution {model.entry.resolution} is not a multiple of scale {self.scale}")

    def _crop(self, x: torch.Tensor, low: torch.Tensor, gen: torch.Generator):
        side = x.shape[-1]
        p = min(self.patch, side)
        corners = torch.randint(0, side - p + 1, (x.shape[0], 3), generator=gen).tolist()
        cut = [(slice(None),) + tuple(slice(c, c + p) for c in cs) for cs in corners]
        return (torch.stack([x[i][c] for i, c in enumerate(cut)]), torch.stack([low[i][c] for i, c in enumerate(cut)]))

    def __call__(self, model, unet, noise_scheduler, pixels, captions, gen, cfg, eval_mode=False):
        from cfgen.training.finetune import noising, weighted_mse

        x = pixels.to(model.device).float()
        x, low = self._crop(x, low_res_input(x, self.scale), gen)
        t, noisy, target = noising(noise_scheduler, x, gen, cfg, eval_mode)
        pred = unet(torch.cat([noisy, low], dim=1), t).sample.float()
        if self.residual:  # x0 = upsampled input + the predicted detail
            pred = pred + low.float()
        return weighted_mse(noise_scheduler, pred, target, t, cfg, eval_mode)
