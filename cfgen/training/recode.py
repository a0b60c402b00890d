"""A labelled 3D base with a new label code table (``[synth] label_codes``), warm-started from one
trained with the old table: the recipes' way to give a thin structure a bit of its own without
training the first phase again.

Where the old label bits are an affine function of the new ones (e.g. codes 1..9 -> the same with
vessel 7 moved to 16: old bit b = new bit b + new bit 4 for b < 3), the UNet's first convolution is
rewritten so that a clean new encoding gives exactly the features the old one gave (away from the
grid's border, where the zero padding differs): the Haar transform is linear per channel, so the map
between label bits carries over to every band, and its constant lands in the low band. The output
rows of the channels both tables share are copied; a new channel's start at zero (the phase after
this learns them). Noised labels are not mapped exactly (their noise adds up across bits).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cfgen.errors import UsageError


def bit_map(count: int, old, new) -> tuple[np.ndarray, np.ndarray]:
    """(M, c) with old bits = M @ new bits + c for every label 0..count (0/1 values), or UsageError."""
    from cfgen.models.label_codes import encode

    labels = np.arange(count + 1)
    b_old, b_new = encode(labels, count, old).T, encode(labels, count, new).T  # (labels, bits)
    design = np.concatenate([b_new, np.ones((count + 1, 1))], axis=1)
    x, *_ = np.linalg.lstsq(design, b_old, rcond=None)
    if np.abs(design @ x - b_old).max() > 1e-6:
        raise UsageError("the old label bits are not an affine function of the new codes' bits; train the new "
                         "table from the start instead")
    return x[:-1].T, x[-1]


def latent_map(m: np.ndarray, c: np.ndarray, image: int, bands: int, value_range: tuple[float, float],
               scales_old: np.ndarray, scales_new: np.ndarray, low_band_gain: float) -> tuple[np.ndarray, np.ndarray]:
    """(A, e): old latents = A @ new latents + e, latents ordered band-major (channel fastest)."""
    lo, hi = value_range
    d = lo * (1 - m.sum(axis=1)) + (hi - lo) * c  # old channel = M @ new channel + d, in the model's range
    n_old, n_new = image + m.shape[0], image + m.shape[1]
    a, e = np.zeros((bands * n_old, bands * n_new)), np.zeros(bands * n_old)
    block = np.zeros((n_old, n_new))
    block[:image, :image] = np.eye(image)
    block[image:, image:] = m
    for band in range(bands):
        rows, cols = slice(band * n_old, (band + 1) * n_old), slice(band * n_new, (band + 1) * n_new)
        a[rows, cols] = scales_old[rows, None] * block / scales_new[None, cols]
    e[image:n_old] = scales_old[image:n_old] * d * low_band_gain  # a constant is all low band (band 0)
    return a, e


def _rewrite(state: dict, a: np.ndarray, e: np.ndarray, bands: int, n_old: int, n_new: int,
             s_old: np.ndarray, s_new: np.ndarray) -> dict:
    """The UNet's state dict for the new latents: conv_in through the map, conv_out's shared rows copied."""
    sd = {k: v.double() for k, v in state.items()}
    w_in = sd["conv_in.conv.weight"]
    sd["conv_in.conv.weight"] = torch.einsum("oi...,ij->oj...", w_in, torch.from_numpy(a))
    sd["conv_in.conv.bias"] = sd["conv_in.conv.bias"] + w_in.sum(dim=(2, 3, 4)) @ torch.from_numpy(e)
    w_out, b_out = sd["out.2.conv.weight"], sd["out.2.conv.bias"]
    sd["out.2.conv.weight"] = w_out.new_zeros((bands * n_new,) + w_out.shape[1:])
    sd["out.2.conv.bias"] = b_out.new_zeros(bands * n_new)
    for band in range(bands):
        for ch in range(min(n_old, n_new)):
            i, j = band * n_old + ch, band * n_new + ch
            sd["out.2.conv.weight"][j] = w_out[i] * s_new[j] / s_old[i]
            sd["out.2.conv.bias"][j] = b_out[i] * s_new[j] / s_old[i]
    return {k: v.float() for k, v in sd.items()}


def recode(model_ref: str, out: Path, codes: list[int]) -> Path:
    """Write OUT/model: ``model_ref``'s base with label codes ``codes``; returns the folder."""
    from monai.networks.nets import DiffusionModelUNet

    from cfgen.models.label_codes import Encoding, channel_count
    from cfgen.models.ldm3d import AE_DIR, UNet3DAdapter
    from cfgen.models.loader import load_model
    from cfgen.models.synth import check_synth_table, label_encoding, label_names
    from cfgen.models.wavelet import HaarWavelet, haar_forward
    from cfgen.training.export import save_model

    model = load_model(model_ref, device="cpu")
    entry, vae, net = model.entry, model.vae, model.unet.net
    old = label_encoding(entry.synth)
    if (not isinstance(vae, HaarWavelet) or old.kind != "bits" or vae.config.scaling_factor != 1.0
            or entry.spatial_dims != 3):
        raise UsageError(f"{model_ref}: recoding needs a 3D Haar-wavelet base with bits-encoded labels")
    synth = check_synth_table({**entry.synth, "label_codes": list(codes)}, f"{model_ref} with label_codes {codes}")
    count, new = len(label_names(entry)), Encoding("bits", tuple(codes))
    image = entry.channels
    n_old, n_new = image + channel_count(count, old), image + channel_count(count, new)
    levels = vae.config.levels
    bands = 8 ** levels
    s_old = np.asarray(vae.config.band_scales or [1.0] * bands * n_old)
    s_new = np.ones(bands * n_new)
    shared = min(n_old, n_new)
    for band in range(bands):
        s_new[band * n_new:band * n_new + shared] = s_old[band * n_old:band * n_old + shared]
    gain = float(haar_forward(torch.ones(1, 1, *(2 ** levels,) * 3, dtype=torch.float64), levels)[0, 0].mean())
    a, e = latent_map(*bit_map(count, old, new), image, bands, entry.value_range, s_old, s_new, gain)
    sd = _rewrite(net.state_dict(), a, e, bands, n_old, n_new, s_old, s_new)
    cfg = {**vars(model.unet.config), "in_channels": bands * n_new, "out_channels": bands * n_new}
    fresh = DiffusionModelUNet(**{k: v for k, v in cfg.items() if k != "conditioning"})
    fresh.load_state_dict(sd)
    unet = UNet3DAdapter(fresh, cfg, model.unet.conditioner)
    haar = HaarWavelet(levels, n_new, 1.0, [float(s) for s in s_new])
    return save_model(Path(out), replace(model, entry=replace(entry, synth=synth)), unet,
                      {"recoded_from": str(model_ref), "label_codes": list(codes)},
                      more=lambda folder: haar.save_pretrained(folder / AE_DIR))
