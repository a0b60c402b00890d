"""CT measures (MedSyn's): pleural effusion volume, %LAA-950 of the lungs, cardiothoracic ratio.

Measured on a CT volume in HU with an integer label map on its grid. Label ids (``--ct-labels``;
the default is the convention cfgen's CT label maps use): lung 1-5 (the lobes), airway 6,
vessel 7, heart 8, effusion 9.
  pleural cavity  lung and effusion labels, without airway and vessel voxels
  effusion_ml     cavity voxels whose HU is fluid ([FLUID_HU]), plus the fluid share of the cavity
                  voxels next to them (partial volume, linear between lung at -860 and fluid at
                  10 HU), times the voxel volume: by HU, so the same rule measures a counterfactual
                  with the original's label map
  laa950_pct      100 x the share of the cavity's other (aerated) voxels below -950 HU
  ctr             the widest left-right extent of the heart over axial slices divided by the widest
                  of the pleural cavity (the internal thoracic diameter), both in mm along the
                  patient's left-right axis (from the affine; residual obliquity is ignored). The
                  heart is the label's largest 26-connected component and the thorax the cavity's
                  26-connected components of at least a tenth of its largest (both lungs):
                  islands labelled heart or lung elsewhere (a segmenter's or a generator's stray
                  voxels, e.g. one lung voxel in the air beside the body) would set the widths
The heart's size is read from the label map, so a counterfactual's CTR needs the counterfactual's
own label map (``counterfactual_labels``); without it ``ctr_after`` is left out, not copied.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cfgen.errors import InputError, UsageError

DEFAULT_LABELS = "lung=1-5,airway=6,vessel=7,heart=8,effusion=9"
PARTS = ("lung", "airway", "vessel", "heart", "effusion")
FLUID_HU = (-50.0, 80.0)  # pleural fluid (transudate ~0-20 HU, exudate and blood up to ~60)
LAA_HU = -950.0
LUNG_HU = -860.0  # aerated lung, for the partial-volume share of fluid at the fluid's edge
#: a volume whose lowest value is above this is not in HU (air is -1000 HU)
MAX_AIR_HU = -500.0
#: thorax components smaller than this share of the largest are stray voxels, not a lung
ISLAND_SHARE = 0.1


def parse_labels(spec: str | None) -> dict[str, tuple[int, ...]]:
    """``lung=1-5,heart=8,...`` -> {part: label ids}; every part not named has no label."""
    out: dict[str, tuple[int, ...]] = {p: () for p in PARTS}
    for item in (spec or DEFAULT_LABELS).split(","):
        name, _, ids = item.strip().partition("=")
        try:
            values: list[int] = []
            for chunk in ids.split("+"):
                lo, _, hi = chunk.partition("-")
                values += list(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            values = []
        if name not in PARTS or not values:
            raise UsageError(f"--ct-labels {spec}: use PART=IDS with parts {', '.join(PARTS)} and ids like 8, 1-5 "
                             f"or 1+3 (default {DEFAULT_LABELS})")
        out[name] = tuple(values)
    if not out["lung"]:
        raise UsageError(f"--ct-labels {spec}: the lungs need a label (lung=...)")
    return out


def _axes(affine: np.ndarray) -> tuple[int, int, float, float]:
    """Voxel axes closest to the patient's left-right and superior-inferior axes, the spacing
    along the first (mm) and the voxel volume (mL)."""
    m = affine[:3, :3]
    lr = int(np.argmax(np.abs(m[0])))
    si = int(np.argmax(np.abs(m[2])))
    if si == lr:
        si = int(np.argsort(-np.abs(m[2]))[1])
    return lr, si, float(np.linalg.norm(m[:, lr])), abs(float(np.linalg.det(m))) / 1000.0


def _widest(mask: np.ndarray, lr: int, si: int, spacing: float) -> float:
    """The largest left-right extent (mm, outer voxel edges) of ``mask`` over the slices along ``si``."""
    best = 0
    for k in range(mask.shape[si]):
        sl = np.take(mask, k, axis=si)
        axis = lr if lr < si else lr - 1
        cols = np.flatnonzero(sl.any(axis=1 - axis))
        if cols.size:
            best = max(best, int(cols[-1] - cols[0] + 1))
    return best * spacing


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of ``mask`` (all of it when it has one or none; equal
    largest ones together)."""
    return without_islands(mask, 1.0)


def without_islands(mask: np.ndarray, share: float = ISLAND_SHARE) -> np.ndarray:
    """``mask``'s 26-connected components of at least ``share`` of its largest one."""
    from scipy.ndimage import label

    comps, n = label(mask, structure=np.ones((3,) * mask.ndim, bool))
    if n <= 1:
        return mask
    sizes = np.bincount(comps.ravel())
    sizes[0] = 0
    return (sizes >= share * sizes.max())[comps]


def _fluid_voxels(hu: np.ndarray, cavity: np.ndarray, fluid: np.ndarray) -> float:
    """Fluid voxels plus, in the cavity voxels next to them, the fluid share of a partial-volume
    voxel (linear between aerated lung at LUNG_HU and fluid at 10 HU)."""
    from scipy.ndimage import binary_dilation

    rim = binary_dilation(fluid) & cavity & ~fluid
    share = np.clip((hu[rim] - LUNG_HU) / (10.0 - LUNG_HU), 0.0, 1.0)
    return float(fluid.sum()) + float(share.sum())


def measures(hu: np.ndarray, labels: np.ndarray, affine: np.ndarray, ids: dict[str, tuple[int, ...]],
             heart: bool = True) -> dict[str, float | None]:
    """effusion_ml, laa950_pct and (with ``heart``) ctr of one volume ``hu`` (X, Y, Z)."""
    lr, si, spacing, voxel_ml = _axes(affine)
    part = {p: np.isin(labels, v) if v else np.zeros(labels.shape, bool) for p, v in ids.items()}
    cavity = (part["lung"] | part["effusion"]) & ~part["airway"] & ~part["vessel"]
    fluid = cavity & (hu >= FLUID_HU[0]) & (hu <= FLUID_HU[1])
    aerated = cavity & (hu < FLUID_HU[0])
    out: dict[str, float | None] = {
        "effusion_ml": _fluid_voxels(hu, cavity, fluid) * voxel_ml,
        "laa950_pct": 100.0 * float((aerated & (hu < LAA_HU)).sum()) / aerated.sum() if aerated.any() else None}
    if heart:
        heart_part = largest_component(part["heart"])
        thorax = _widest(without_islands(cavity) | heart_part, lr, si, spacing)
        out["ctr"] = _widest(heart_part, lr, si, spacing) / thorax if heart_part.any() and thorax else None
    return out


def _label_map(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    from cfgen.io.scan import read_scan

    m = read_scan(path)
    if m.pixels.shape[1:] != shape:
        raise InputError(f"{path}: label map of size {tuple(m.pixels.shape[1:])} does not match the volume {shape}")
    v = m.pixels[0]
    if not np.all(v == np.round(v)):
        raise InputError(f"{path}: a label map holds integer labels; this one has fractional values")
    return v.astype(np.int32)


def _hu(scan) -> np.ndarray:
    v = scan.pixels[0]
    if scan.spatial_dims != 3 or scan.channels != 1:
        raise InputError(f"{scan.path}: CT measures need a single-channel volume")
    if float(v.min()) > MAX_AIR_HU:
        raise InputError(f"{scan.path}: CT measures need values in HU (air at -1000); this volume's lowest value is "
                         f"{float(v.min()):g}")
    return v


def pair_measures(original, counterfactual, labels: Path, cf_labels: Path | None,
                  ids: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """Before (original), after (counterfactual) and change; scans as read by cfgen.io.scan."""
    from cfgen.io.geometry import volume_affine

    hu, hu_cf = _hu(original), _hu(counterfactual)
    affine = volume_affine(original)
    if affine is None:
        affine = np.diag([*(original.spacing or (1.0, 1.0, 1.0)), 1.0])
    lab = _label_map(labels, hu.shape)
    before = measures(hu, lab, affine, ids)
    lab_cf = _label_map(cf_labels, hu.shape) if cf_labels is not None else lab
    after = measures(hu_cf, lab_cf, affine, ids, heart=cf_labels is not None)
    out: dict[str, Any] = {}
    for k, v in before.items():
        out[k] = v
        if after.get(k) is not None:
            out[f"{k}_after"] = after[k]
            if v is not None:
                out[f"{k}_change"] = after[k] - v
    return out
