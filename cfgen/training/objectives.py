"""What the UNet learns: targets, noising, the weighted loss, and the objectives the training loop
(cfgen/training/finetune.py) calls as ``objective(model, unet, noise_scheduler, pixels, captions,
gen, cfg, eval_mode)``.

  target         epsilon (noise), v (``v_prediction``), x0 (``sample``, MedSyn Eq. 8), or the
                 rectified-flow velocity z0 - noise
  x0_estimate    the one-step estimate of z0 from a network output (cycle and distillation losses)
  weighted_mse   MSE per sample, Min-SNR weighted (Hang et al.) with --snr-gamma
  Denoising      PRISM Algorithm 1: the latent diffusion loss under the (dropped-out) caption
  SuperRes       MedSyn's super-resolution stage: the same loss on random windows with the
                 low-res input concatenated
  (cfgen/training/cycle.py: the Cycle Diffusion Model objective)
"""
from __future__ import annotations

import functools
from typing import Any, Protocol, TYPE_CHECKING

import torch
import torch.nn.functional as F

from cfgen.errors import ModelError, UsageError
from cfgen.training.config import FinetuneConfig

if TYPE_CHECKING:
    from cfgen.models.loader import LoadedModel


class Objective(Protocol):
    def check(self, model: Any, cfg: FinetuneConfig) -> None: ...

    def describe(self) -> Any: ...

    def __call__(self, model: Any, unet: Any, noise_scheduler: Any, pixels: torch.Tensor, captions: list[str],
                 gen: torch.Generator, cfg: FinetuneConfig, eval_mode: bool = False) -> torch.Tensor: ...


def target(noise_scheduler, latents, noise, t):
    """What the network learns to output at (latents noised with ``noise`` to ``t``): the velocity
    latents - noise (rectified flow), v, x0 itself (prediction_type "sample", MedSyn Eq. 8) or the noise."""
    if getattr(noise_scheduler, "is_flow", False):
        return latents - noise
    if noise_scheduler.config.prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, t)
    if noise_scheduler.config.prediction_type == "sample":
        return latents
    return noise


def x0_estimate(noise_scheduler, z_t, out, t):
    """The one-step estimate of z0 (DDIM's \\hat z_0, or z_t - s v for rectified flow)."""
    if getattr(noise_scheduler, "is_flow", False):
        s = (t.float() / noise_scheduler.config.num_train_timesteps).reshape((-1,) + (1,) * (z_t.ndim - 1))
        return z_t + s * out  # v = z0 - noise, z_t = (1 - s) z0 + s noise
    a = noise_scheduler.alphas_cumprod.to(z_t.device)[t].float().reshape((-1,) + (1,) * (z_t.ndim - 1))
    if noise_scheduler.config.prediction_type == "v_prediction":
        return a.sqrt() * z_t - (1 - a).sqrt() * out
    if noise_scheduler.config.prediction_type == "sample":
        return out
    return (z_t - (1 - a).sqrt() * out) / a.sqrt()


def noising(noise_scheduler, latents: torch.Tensor, gen, cfg: FinetuneConfig, eval_mode: bool = False):
    """(timesteps, noisy latents, target) of one batch: DDPM forward process and the noise (or v)
    target, or rectified flow's interpolation and velocity target."""
    b = latents.shape[0]
    noise = torch.randn(latents.shape, generator=gen).to(latents.device)
    if cfg.noise_offset and not eval_mode:
        shape = (b, latents.shape[1]) + (1,) * (latents.ndim - 2)
        noise = noise + cfg.noise_offset * torch.randn(shape, generator=gen).to(latents.device)
    if getattr(noise_scheduler, "is_flow", False):  # rectified flow: velocity target, t uniform
        from cfgen.editing.flow import training_pair

        return training_pair(latents, noise, gen, noise_scheduler.config.num_train_timesteps)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), generator=gen).to(latents.device)
    return t, noise_scheduler.add_noise(latents, noise, t), target(noise_scheduler, latents, noise, t)


def weighted_mse(noise_scheduler, pred: torch.Tensor, target: torch.Tensor, t, cfg: FinetuneConfig,
                 eval_mode: bool = False, where: torch.Tensor | None = None) -> torch.Tensor:
    """MSE per sample, Min-SNR weighted when --snr-gamma is set (DDPM models only); ``where``: weights of
    the positions (broadcast over channels), the per-sample mean then weighted by them."""
    err = F.mse_loss(pred, target, reduction="none")
    if where is None:
        per_sample = err.flatten(1).mean(dim=1)
    else:
        w = where.expand_as(err)
        per_sample = (err * w).flatten(1).sum(dim=1) / w.flatten(1).sum(dim=1)
    if cfg.snr_gamma is not None and not eval_mode and not getattr(noise_scheduler, "is_flow", False):
        from diffusers.training_utils import compute_snr

        snr = compute_snr(noise_scheduler, t)
        capped = torch.clamp(snr, max=cfg.snr_gamma)
        # the loss on x0 weighted min(SNR, gamma) (Hang et al.), in each target's own units
        weight = {"v_prediction": capped / (snr + 1), "sample": capped}.get(
            noise_scheduler.config.prediction_type, capped / snr)
        per_sample = per_sample * weight
    return per_sample.mean()


def condition(model: LoadedModel, captions: list[str], gen, cfg: FinetuneConfig, eval_mode: bool) -> torch.Tensor:
    """Encoded captions with classifier-free-guidance dropout (tabular models: per field and per row)."""
    from cfgen.editing.components import encode_prompts

    tabular = model.fields is not None
    if not eval_mode and cfg.caption_dropout > 0 and not tabular:
        drop = torch.rand(len(captions), generator=gen) < cfg.caption_dropout
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
    cond = encode_prompts(model, captions).float()
    if not eval_mode and cfg.caption_dropout > 0 and tabular:
        from cfgen.models.tabular import drop_fields

        cond = drop_fields(cond, cfg.caption_dropout, gen)
    return cond


def given_labels(model: LoadedModel, latents: torch.Tensor, noisy: torch.Tensor, share: float, gen) -> tuple:
    """--label-condition: in a random ``share`` of the batch the label channels' latents are given clean;
    (noisy latents, mask of the (sample, channel) pairs left out of the loss)."""
    from cfgen.models.synth import labelled_latents

    labelled = torch.tensor(labelled_latents(latents.shape[1], model.entry.channels, model.entry.synth))
    chosen = torch.rand(latents.shape[0], generator=gen) < share
    mask = (chosen[:, None] & labelled[None, :]).reshape(latents.shape[:2] + (1,) * (latents.ndim - 2))
    mask = mask.to(latents.device)
    return torch.where(mask, latents, noisy), mask


def label_weight_map(model: LoadedModel, pixels: torch.Tensor, latent_shape, weights: dict[str, float]) -> torch.Tensor:
    """--label-weight: (batch, 1, *latent grid) weights, at each latent position the largest weight of
    the labels its voxels hold (1 where none is named); labels decoded as the sampler decodes them."""
    import numpy as np

    from cfgen.models.label_codes import decode
    from cfgen.models.synth import label_encoding, label_names

    e = model.entry
    names = label_names(e)
    mid = (e.value_range[0] + e.value_range[1]) / 2
    table = torch.tensor([1.0] + [float(weights.get(n, 1.0)) for n in names])
    chans = pixels[:, e.channels:].detach().float().cpu().numpy()
    codes = np.stack([decode(c, len(names), label_encoding(e.synth), mid) for c in chans])
    voxel = table[torch.from_numpy(codes.astype(np.int64))].unsqueeze(1)
    return to_latent_grid(voxel, latent_shape).to(pixels.device)


def to_latent_grid(weights: torch.Tensor, latent_shape) -> torch.Tensor:
    """(batch, 1, *pixel grid) loss weights -> (batch, 1, *latent grid): each latent position takes the
    largest weight of the pixels it encodes."""
    pool = {4: F.adaptive_max_pool2d, 5: F.adaptive_max_pool3d}[weights.ndim]
    return pool(weights.float(), tuple(latent_shape[2:]))


def loss_weights(model: LoadedModel, pixels: torch.Tensor, latent_shape, cfg: FinetuneConfig,
                 regions: torch.Tensor | None, given: torch.Tensor | None = None) -> torch.Tensor | None:
    """--label-weight and --region-weight together: the larger of the two at each latent position;
    with --label-weight-given the label weights count only in the volumes whose labels ``given`` has clean."""
    maps = []
    if cfg.label_weights:
        w = label_weight_map(model, pixels, latent_shape, cfg.label_weights)
        if cfg.label_weight_given:
            chosen = given.flatten(1).any(dim=1) if given is not None else torch.zeros(w.shape[0], dtype=torch.bool)
            w = torch.where(chosen.to(w.device).view((-1,) + (1,) * (w.ndim - 1)), w, torch.ones_like(w))
        maps.append(w)
    if regions is not None:
        maps.append(to_latent_grid(regions.to(pixels.device), latent_shape))
    return functools.reduce(torch.maximum, maps) if maps else None


class Denoising:
    """PRISM Algorithm 1: latents from the frozen autoencoder, noised, predicted under the caption
    (with --label-condition, some volumes' anatomy label channels given clean)."""

    def check(self, model: LoadedModel, cfg: FinetuneConfig) -> None:
        from cfgen.models.synth import label_channel_count

        from cfgen.models.synth import label_names

        if cfg.label_condition > 0 and not label_channel_count(model.entry.synth):
            raise UsageError(f"--label-condition {cfg.label_condition}: model '{model.name}' generates no "
                             "anatomy label channels (its [synth] table names no labels)")
        unknown = sorted(set(cfg.label_weights) - set(label_names(model.entry)))
        if unknown:
            known = ", ".join(label_names(model.entry)) or "none: its [synth] table names no labels"
            raise UsageError(f"--label-weight {unknown[0]}: model '{model.name}' has no such label (its labels: {known})")

    def describe(self) -> str:
        return "denoising"

    def __call__(self, model: LoadedModel, unet, noise_scheduler, pixels, captions, gen, cfg: FinetuneConfig, eval_mode=False,
                 regions: torch.Tensor | None = None):
        """``regions``: (batch, 1, *pixel grid) loss weights of --region-weight (the dataset's ``weights``)."""
        from cfgen.editing.components import encode_images

        latents = encode_images(model, pixels).float()
        t, noisy, tgt = noising(noise_scheduler, latents, gen, cfg, eval_mode)
        given = None
        if cfg.label_condition > 0 and not eval_mode:
            noisy, given = given_labels(model, latents, noisy, cfg.label_condition, gen)
        cond = condition(model, captions, gen, cfg, eval_mode)
        pred = unet(noisy, t, encoder_hidden_states=cond).sample.float()
        if given is not None:  # the given channels have nothing to predict
            pred = torch.where(given, tgt, pred)
        return weighted_mse(noise_scheduler, pred, tgt, t, cfg, eval_mode,
                            loss_weights(model, pixels, latents.shape, cfg, regions, given))


class SuperResObjective:
    """`cfgen finetune` on a super-resolution stage: the denoising loss on random windows with the
    low-res input concatenated (selected from the model's [synth] table, not by an option)."""

    def __init__(self, scale: int, patch: int, residual: bool = False):
        self.scale, self.patch, self.residual = int(scale), int(patch), bool(residual)

    @classmethod
    def for_entry(cls, entry) -> "SuperResObjective":
        return cls(entry.synth["scale"], entry.synth.get("patch", 64), entry.synth.get("residual", False))

    def describe(self) -> dict:
        return {"kind": "super-resolution", "scale": self.scale, "patch": self.patch, "residual": self.residual}

    def check(self, model: LoadedModel, cfg) -> None:
        from cfgen.models.sr_stage import check_stage

        check_stage(model)
        if model.entry.resolution % self.scale:
            raise ModelError(f"{model.folder}: resolution {model.entry.resolution} is not a multiple of scale {self.scale}")

    def _crop(self, x: torch.Tensor, low: torch.Tensor, gen: torch.Generator):
        side = x.shape[-1]
        p = min(self.patch, side)
        corners = torch.randint(0, side - p + 1, (x.shape[0], 3), generator=gen).tolist()
        cut = [(slice(None),) + tuple(slice(c, c + p) for c in cs) for cs in corners]
        return (torch.stack([x[i][c] for i, c in enumerate(cut)]), torch.stack([low[i][c] for i, c in enumerate(cut)]))

    def __call__(self, model: LoadedModel, unet, noise_scheduler, pixels, captions, gen, cfg, eval_mode=False):
        from cfgen.models.sr_stage import low_res_input

        x = pixels.to(model.device).float()
        x, low = self._crop(x, low_res_input(x, self.scale), gen)
        t, noisy, tgt = noising(noise_scheduler, x, gen, cfg, eval_mode)
        pred = unet(torch.cat([noisy, low], dim=1), t).sample.float()
        if self.residual:  # x0 = upsampled input + the predicted detail
            pred = pred + low.float()
        return weighted_mse(noise_scheduler, pred, tgt, t, cfg, eval_mode)
