"""Scan <-> model tensor: intensity window, channel handling, placing on the model's grid (grid.py).

Every step is recorded (``Prepared.record()``) so the report says exactly what was done.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cfgen.editing.grid import ModelGrid, Placement, place
from cfgen.errors import InputError
from cfgen.io.geometry import volume_affine
from cfgen.io.intensity import IntensityMap, choose_window
from cfgen.io.scan import Scan


@dataclass
class Prepared:
    x: torch.Tensor  # (1, C_model, R, R[, R]) in the model's value range
    window: IntensityMap
    channel_mode: str  # as-is | gray-to-rgb | rgb-to-gray
    placement: Placement  # where the scan's pixels are on the model's grid (cfgen/editing/grid.py)
    labels: torch.Tensor | None = None  # (1, label channels, R, R, R): the scan's anatomy (cfgen/editing/labelled.py)
    label_map: np.ndarray | None = None  # the same as given: integer labels on the scan's grid

    def record(self) -> dict:
        return {"window": self.window.as_dict(), "channels": self.channel_mode, **self.placement.record(),
                "model_size": list(self.x.shape[2:])}


def _channels(img: np.ndarray, model_channels: int, where) -> tuple[np.ndarray, str]:
    c = img.shape[0]
    if c == model_channels:
        return img, "as-is"
    if c == 1 and model_channels == 3:
        return np.repeat(img, 3, axis=0), "gray-to-rgb"  # the model sees the gray value in R, G, B
    if c == 3 and model_channels == 1:
        lum = np.array([0.299, 0.587, 0.114], dtype=np.float32).reshape((3,) + (1,) * (img.ndim - 1))
        return (img * lum).sum(axis=0, keepdims=True), "rgb-to-gray"
    raise InputError(f"{where}: image has {c} channels; the model takes {model_channels}")


def to_model(scan: Scan, grid: ModelGrid, channels: int, value_range: tuple[float, float],
             window: str = "auto") -> Prepared:
    if scan.spatial_dims != grid.dims:
        kind = "3D volume" if scan.spatial_dims == 3 else "2D image"
        raise InputError(f"{scan.path}: {kind} of shape {tuple(scan.pixels.shape[1:])} needs a "
                         f"{scan.spatial_dims}D model; this model is {grid.dims}D")
    win = choose_window(scan.pixels, scan.source_dtype, window, value_range, where=str(scan.path))
    img, mode = _channels(win.to_model(scan.pixels), channels, scan.path)
    placement = place(img.shape[1:], grid, volume_affine(scan), scan.spacing)
    # padded with the model's black, so that the scan keeps its aspect ratio
    return Prepared(x=placement.to_model(img, fill=value_range[0]), window=win, channel_mode=mode,
                    placement=placement)


def geometry_to_model(img: np.ndarray, prep: Prepared, fill: float = 0.0) -> torch.Tensor:
    """(C, *scan size) on the scan's grid -> (1, C, R, ...) on the model's grid, as the scan went."""
    return prep.placement.to_model(img, fill)


def label_channels(lab: np.ndarray, path, scan: Scan, prep: Prepared, count: int,
                   value_range: tuple[float, float], encoding="one-hot") -> torch.Tensor:
    """(channels, R, R, R): the integer label volume ``lab`` (read from ``path``, labels 1..count)
    encoded as the model's label channels (cfgen.models.label_codes: one-hot or bits), on the
    model's grid (``scan``'s, prepared as ``prep``) and in the model's range (0: low, 1: high).
    What a labelled base trains on, what `synth3d --mask-from` fixes and what a labelled edit
    inverts with the image. Labels are resampled as one-hot channels and the strongest taken
    (binary digits would mix under interpolation), then encoded."""
    from cfgen.models.label_codes import encode

    if lab.shape != scan.pixels.shape[1:]:
        raise InputError(f"{path}: label volume of shape {lab.shape} is not on the image's grid {scan.pixels.shape[1:]}")
    codes = np.rint(lab).astype(np.int64)
    if codes.min() < 0 or codes.max() > count:
        raise InputError(f"{path}: label values must be 0..{count} (the model's labels), found {codes.min()}..{codes.max()}")
    lo, hi = value_range
    if tuple(prep.placement.resized) == tuple(prep.placement.oriented_shape):  # no resampling: exact
        return lo + (hi - lo) * geometry_to_model(encode(codes, count, encoding), prep, fill=0.0)[0]
    codes = geometry_to_model(_onehot(codes, count), prep, fill=0.0)[0].argmax(dim=0).numpy()  # padding: background (ties)
    return lo + (hi - lo) * torch.from_numpy(encode(codes, count, encoding))


def labels_to_scan(channels: torch.Tensor, prep: Prepared, count: int, value_range: tuple[float, float],
                   encoding) -> np.ndarray:
    """The way back: label channels (1, channels, R, R, R) in the model's range -> uint8 label map
    on the scan's grid (decoded on the model's grid, then resampled as one-hot channels)."""
    from cfgen.models.label_codes import decode

    codes = decode(channels[0].float().cpu().numpy(), count, encoding, (value_range[0] + value_range[1]) / 2)
    return geometry_to_scan(torch.from_numpy(_onehot(codes, count))[None], prep).argmax(axis=0).astype(np.uint8)


def _onehot(codes: np.ndarray, count: int) -> np.ndarray:
    """(...) integer labels 0..count -> (count + 1, ...) float32, background included: what is
    resampled between the grids (the strongest channel after resampling is the label)."""
    return np.stack([(codes == k).astype(np.float32) for k in range(count + 1)])


def geometry_to_scan(y: torch.Tensor, prep: Prepared) -> np.ndarray:
    """(1, C, R, ...) on the model's grid -> (C, *scan size) on the scan's grid (the way back)."""
    return prep.placement.to_scan(y)


def from_model(y: torch.Tensor, prep: Prepared, scan_channels: int) -> np.ndarray:
    """Model-space image (1, C_model, R, R) -> scan pixels (C_scan, H, W) in scan units."""
    y = geometry_to_scan(y, prep)
    if prep.channel_mode == "gray-to-rgb":
        y = y.mean(axis=0, keepdims=True)
    elif prep.channel_mode == "rgb-to-gray" and scan_channels == 3:
        y = np.repeat(y, 3, axis=0)
    return prep.window.from_model(y).astype(np.float32)


def unit(x: torch.Tensor | np.ndarray, value_range: tuple[float, float]):
    """Model range -> [0, 1] (the range PRISM's L1 and our PSNR/SSIM are computed in)."""
    lo, hi = value_range
    return ((x - lo) / (hi - lo)).clip(0, 1)


def window_fraction(y: torch.Tensor, prep: Prepared) -> torch.Tensor:
    """Model-space values (host) -> fractions (0..1) of the window's width in scan units: what
    ``--refine-change`` counts. For a linear window the same as ``unit``; through a knee (e.g.
    -1024,-700,600) proportional to HU, so one threshold means the same HU in the lungs and above."""
    return torch.from_numpy(prep.window.width_fraction(y.float().numpy()))
