"""A lossless representation: the orthonormal Haar wavelet packet transform, in place of a VAE.

``levels`` L splits every channel of a (B, C, *spatial) image, along every spatial axis, into
its low and high halves (pywt's ``haar``: low = (even + odd) / sqrt 2, high = (even - odd) / sqrt
2), and does the same to every band again, L times: 2D gives C * 4^L bands of side / 2^L, 3D
C * 8^L bands. The transform is orthonormal, so it is exactly invertible (float rounding only)
and leaves distances and Gaussian noise unchanged: diffusion on the bands is diffusion on the
pixels, with the network seeing 2^L x 2^L blocks as channels (the WDM family; the 3D
language-guided counterfactual paper found wavelet-space diffusion best). It has no weights.

A model folder declares it with the autoencoder's config alone (2D ``vae/config.json``, 3D
``autoencoder/config.json``)::

  {"_class_name": "HaarWavelet", "levels": 2, "in_channels": 1, "scaling_factor": 1.0}

Optional ``band_scales``: one positive multiplier per band (the bands' order), applied after the
transform and divided out before its inverse, so it stays exactly invertible. It plays the part
of a VAE's scaling factor band by band: a phantom's or a scan's detail bands are small (std 0.04-0.3
against the low band's 1.6 for 12 mm CT), so under unit noise the network must predict the noise
of those bands to a few percent or leave it in the sample; scaled to unit std they carry signal
the network learns (``unit_band_scales`` measures them on training data; cfgen/training/bands.py).

and answers the calls a diffusers AutoencoderKL answers (``encode(x).latent_dist.mean``,
``decode(z).sample``, ``config.scaling_factor``), so loading, finetuning, inversion, editing and
masks run unchanged. Band order of one level: input channel fastest, then the first spatial
axis's half, then the next (2D: ``[aa, da, ad, dd]`` in pywt.dwtn's keys, each with all C
channels); each further level splits every band of the one before in the same way.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from cfgen.errors import ModelError

from cfgen.models.files import WAVELET_CLASS as CLASS_NAME

MAX_LEVELS = 4
_R = 1.0 / math.sqrt(2.0)


def _split(x: torch.Tensor, axis: int) -> torch.Tensor:
    even, odd = x.narrow(axis, 0, x.shape[axis] // 2 * 2).unflatten(axis, (-1, 2)).unbind(axis + 1)
    return torch.cat([(even + odd) * _R, (even - odd) * _R], dim=1)


def _merge(y: torch.Tensor, axis: int) -> torch.Tensor:
    low, high = y.chunk(2, dim=1)
    even, odd = (low + high) * _R, (low - high) * _R
    return torch.stack([even, odd], dim=axis + 1).flatten(axis, axis + 1)


def haar_forward(x: torch.Tensor, levels: int) -> torch.Tensor:
    """(B, C, *S) -> (B, C * 2^(d L), *S / 2^L); every spatial size must divide by 2^L."""
    for _ in range(levels):
        for axis in range(2, x.ndim):
            x = _split(x, axis)
    return x


def haar_inverse(y: torch.Tensor, levels: int) -> torch.Tensor:
    for _ in range(levels):
        for axis in reversed(range(2, y.ndim)):
            y = _merge(y, axis)
    return y


class HaarWavelet(torch.nn.Module):
    """The Haar packet transform with the diffusers autoencoder interface (no parameters)."""

    def __init__(self, levels: int = 1, in_channels: int = 1, scaling_factor: float = 1.0,
                 band_scales: list[float] | None = None):
        super().__init__()
        self.levels = int(levels)
        self.config = SimpleNamespace(_class_name=CLASS_NAME, levels=self.levels, in_channels=int(in_channels),
                                      scaling_factor=float(scaling_factor), shift_factor=0.0,
                                      band_scales=[float(v) for v in band_scales] if band_scales else None)
        # a buffer, so that .to(device, dtype) says where the transform runs (no weights)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    @property
    def downsampling(self) -> int:
        return 2 ** self.levels

    @property
    def voxel_space(self) -> bool:
        return self.levels == 0

    @property
    def lossless(self) -> bool:
        """Per channel and exactly invertible: anatomy label channels can go through it with the image."""
        return True

    def latent_channels(self, spatial_dims: int) -> int:
        return self.config.in_channels * 2 ** (spatial_dims * self.levels)

    def _check(self, x: torch.Tensor) -> None:
        f = self.downsampling
        if any(s % f for s in x.shape[2:]):
            raise ValueError(f"HaarWavelet with {self.levels} levels needs sizes divisible by {f}, got "
                             f"{tuple(x.shape[2:])}")

    def _scales(self, y: torch.Tensor) -> torch.Tensor | None:
        """The band multipliers shaped to broadcast over ``y`` (None: all 1)."""
        scales = self.config.band_scales
        if not scales:
            return None
        if len(scales) != y.shape[1]:
            raise ValueError(f"HaarWavelet: {len(scales)} band_scales for {y.shape[1]} bands")
        return torch.tensor(scales, dtype=y.dtype, device=y.device).reshape((1, -1) + (1,) * (y.ndim - 2))

    def encode(self, x: torch.Tensor):
        self._check(x)
        y = haar_forward(x, self.levels)
        scales = self._scales(y)
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=y if scales is None else y * scales))

    def decode(self, z: torch.Tensor):
        scales = self._scales(z)
        return SimpleNamespace(sample=haar_inverse(z if scales is None else z / scales, self.levels))

    def config_dict(self) -> dict[str, Any]:
        c = self.config
        return {"_class_name": CLASS_NAME, "levels": c.levels, "in_channels": c.in_channels,
                "scaling_factor": c.scaling_factor, **({"band_scales": c.band_scales} if c.band_scales else {})}

    def save_pretrained(self, folder: Path, **_: Any) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.config_dict(), indent=2) + "\n", encoding="utf-8")


def load_wavelet(config_file: Path, channels: int | None = None) -> HaarWavelet:
    """The transform a config declares, its values checked (one-line ModelError naming the file)."""
    config_file = Path(config_file)
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{config_file}: cannot read ({exc})") from None
    levels, ch, scale = data.get("levels", 1), data.get("in_channels", channels or 1), data.get("scaling_factor", 1.0)
    if not isinstance(levels, int) or isinstance(levels, bool) or not 0 <= levels <= MAX_LEVELS:
        raise ModelError(f"{config_file}: levels: expected an integer 0..{MAX_LEVELS}, found {levels!r:.40}")
    if not isinstance(ch, int) or isinstance(ch, bool) or ch < 1:
        raise ModelError(f"{config_file}: in_channels: expected a positive integer, found {ch!r:.40}")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 0 < scale < 1e6:
        raise ModelError(f"{config_file}: scaling_factor: expected a positive number, found {scale!r:.40}")
    if channels is not None and ch != channels:
        raise ModelError(f"{config_file}: in_channels {ch} but the model's images have {channels} channel(s)")
    return HaarWavelet(levels, ch, float(scale), _band_scales(config_file, data.get("band_scales"), levels, ch))


def _band_scales(config_file: Path, scales: Any, levels: int, channels: int) -> list[float] | None:
    """band_scales checked: positive numbers, one per band of a 2D or a 3D transform."""
    if scales is None:
        return None
    bands = {channels * 4 ** levels, channels * 8 ** levels}
    if (not isinstance(scales, list) or len(scales) not in bands
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1e6 for v in scales)):
        raise ModelError(f"{config_file}: band_scales: expected a list of {' or '.join(map(str, sorted(bands)))} "
                         f"positive numbers (one per band), found {scales!r:.60}")
    return [float(v) for v in scales]


def unit_band_scales(latents: torch.Tensor, channels: int, cap: float = 32.0, scaled: int | None = None) -> list[float]:
    """Multipliers that bring every detail band of unscaled Haar ``latents`` (B, bands, ...) to unit
    std over the batch, within [1, cap] (never shrunk; a nearly constant band is not blown up past
    ``cap``); the low bands (the first ``channels``) keep 1. ``scaled``: only the detail bands of
    the first ``scaled`` input channels (e.g. the image, not the label channels after it); None:
    all. Three significant digits, for a readable config."""
    std = latents.float().transpose(0, 1).reshape(latents.shape[1], -1).std(dim=1)
    out = (1.0 / std.clamp_min(1e-12)).clamp(1.0, cap)
    out[:channels] = 1.0
    if scaled is not None:  # bands are ordered input channel fastest
        out[(torch.arange(out.numel()) % channels) >= scaled] = 1.0
    return [float(f"{v:.3g}") for v in out.tolist()]
