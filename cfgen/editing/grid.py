"""Where a scan's voxels go on the model's grid, and the exact way back.

Volumes: the voxel axes are reordered and flipped to the model's orientation (``orientation`` in
its cfgen.toml, axis codes such as "RAS"; nibabel.orientations, lossless), each axis is resampled
to the model's voxel ``spacing`` (mm) and the result is centred in the model's cube, padded with
the model's black. A field of view larger than the cube is scaled by one factor on every axis to
fit (the effective spacing is recorded). A model without a spacing: the volume's longest physical
side fills the cube, the physical aspect ratio kept. Residual obliquity (a rotation smaller than
45 degrees) is not resampled away: it is recorded.

2D images: the longest side fills the model's square, the pixel aspect ratio kept.

On the way back the same steps run in reverse, so every output has the input's grid and affine.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ModelGrid:
    """What a model's inputs look like: ``resolution`` voxels per axis in ``dims`` dimensions and,
    for volumes, the axis codes and voxel spacing (mm) it was trained on."""

    resolution: int
    dims: int = 2
    orientation: str = "RAS"
    spacing: tuple[float, ...] | None = None

    @classmethod
    def of(cls, entry) -> ModelGrid:
        return cls(entry.resolution, entry.spatial_dims, entry.orientation, entry.spacing)


@dataclass(frozen=True)
class Placement:
    """One scan on one model grid: (reorientation, per-axis resize, centred pad) and back."""

    scan_shape: tuple[int, ...]  # spatial, scan voxel order
    to_axes: np.ndarray | None  # nibabel orientation transform scan -> model axes (volumes)
    from_axes: np.ndarray | None
    oriented_shape: tuple[int, ...]  # scan shape in model axis order
    resized: tuple[int, ...]  # voxels per axis on the model grid before padding
    pad: tuple[int, ...]  # (before, after) per model axis
    info: dict

    def to_model(self, img: np.ndarray, fill: float = 0.0) -> torch.Tensor:
        """(C, *scan shape) -> (1, C, R, ...) on the model's grid."""
        x = torch.from_numpy(np.ascontiguousarray(_orient(img, self.to_axes), dtype=np.float32))[None]
        return F.pad(_resize(x, self.resized), _torch_pad(self.pad), value=fill)

    def to_scan(self, y: torch.Tensor) -> np.ndarray:
        """(1, C, R, ...) on the model's grid -> (C, *scan shape) on the scan's grid."""
        y = y.detach().float().cpu()
        crop = tuple(slice(self.pad[2 * i], self.pad[2 * i] + s) for i, s in enumerate(self.resized))
        y = _resize(y[(slice(None), slice(None)) + crop], self.oriented_shape)[0].numpy()
        return np.ascontiguousarray(_orient(y, self.from_axes))

    def record(self) -> dict:
        return {"scan_size": list(self.scan_shape), "resized": list(self.resized), "pad": list(self.pad), **self.info}


def _orient(img: np.ndarray, transform: np.ndarray | None) -> np.ndarray:
    """Apply a nibabel orientation transform to the spatial axes of a channels-first array."""
    if transform is None:
        return img
    from nibabel.orientations import apply_orientation

    return np.moveaxis(apply_orientation(np.moveaxis(img, 0, -1), transform), -1, 0)


def _torch_pad(pad: tuple[int, ...]) -> tuple[int, ...]:
    """(before, after) per axis in axis order -> F.pad's order (last axis first)."""
    pairs = [pad[i:i + 2] for i in range(0, len(pad), 2)]
    return tuple(v for pair in reversed(pairs) for v in pair)


def _resize(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    if x.ndim == 4:
        shrink = any(s < n for s, n in zip(size, x.shape[2:]))
        return F.interpolate(x, size=size, mode="bilinear", antialias=shrink, align_corners=False)
    return F.interpolate(x, size=size, mode="trilinear", align_corners=False)


def _axes(affine: np.ndarray | None, orientation: str):
    """(scan -> model transform, model -> scan transform, obliquity in degrees); None when the
    scan's affine says nothing usable about its axes."""
    if affine is None or not np.isfinite(affine).all() or abs(np.linalg.det(np.asarray(affine)[:3, :3])) < 1e-12:
        return None, None, None  # no axes to read (e.g. an all-zero affine)
    from nibabel.affines import obliquity
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    ornt = io_orientation(affine)
    if np.isnan(ornt).any():
        return None, None, None
    target = axcodes2ornt(tuple(orientation))
    oblique = float(np.degrees(np.nanmax(np.abs(obliquity(affine)))))
    return ornt_transform(ornt, target), ornt_transform(target, ornt), oblique


def _spacing(affine: np.ndarray | None, fallback: tuple[float, ...] | None, dims: int) -> np.ndarray:
    if affine is not None:
        zooms = np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))
        if np.isfinite(zooms).all() and (zooms > 0).all():
            return zooms
    if fallback and len(fallback) == dims and all(s > 0 for s in fallback):
        return np.asarray(fallback, dtype=float)
    return np.ones(dims)


def place(shape: tuple[int, ...], grid: ModelGrid, affine: np.ndarray | None = None,
          spacing: tuple[float, ...] | None = None) -> Placement:
    """Where a scan of spatial ``shape`` (with its RAS ``affine``, volumes) goes on ``grid``."""
    shape = tuple(int(s) for s in shape)
    r = grid.resolution
    info: dict = {}
    to_axes = from_axes = None
    if len(shape) == 3:
        to_axes, from_axes, oblique = _axes(affine, grid.orientation)
        zooms = _spacing(affine, spacing, 3)
        info["orientation"] = _codes(affine) if to_axes is not None else "unknown: voxel order used as the model's"
        info["model_orientation"] = grid.orientation
        if oblique is not None:
            info["obliquity_deg"] = round(oblique, 3)
        order = [int(a) for a in to_axes[:, 0]] if to_axes is not None else [0, 1, 2]
        oriented, phys = [0] * 3, [0.0] * 3
        for i, a in enumerate(order):
            oriented[a], phys[a] = shape[i], shape[i] * float(zooms[i])
        target = np.asarray(grid.spacing, dtype=float) if grid.spacing else np.full(3, max(phys) / r)
        extent = np.asarray(phys) / target
        scale = min(1.0, r / extent.max())
        info["spacing"] = [round(float(z), 4) for z in (np.asarray(phys) / np.asarray(oriented))]
        info["model_spacing"] = [round(float(s / scale), 4) for s in target]
        if scale < 1.0 and grid.spacing:
            info["scaled_to_fit"] = round(scale, 4)  # the field of view exceeds the model's cube
    else:
        oriented = list(shape)
        extent = np.asarray(shape, dtype=float)
        scale = r / extent.max()
    resized = tuple(max(1, min(r, int(round(e * scale)))) for e in extent)
    pad = tuple(v for s in resized for v in ((r - s) // 2, r - s - (r - s) // 2))
    return Placement(shape, to_axes, from_axes, tuple(oriented), resized, pad, info)


def _codes(affine: np.ndarray) -> str:
    import nibabel as nib

    return "".join(nib.aff2axcodes(affine))
