"""Patient geometry for NIfTI outputs of DICOM inputs: DICOM's LPS patient coordinates (ITK's and
SimpleITK's convention) to NIfTI's RAS, for the voxel order cfgen writes.

Single-frame DICOM: the pixel at (row r, column c) lies at
``ImagePositionPatient + c * dc * X + r * dr * Y`` (X, Y: the row and column direction cosines of
ImageOrientationPatient; dr, dc: PixelSpacing's row and column spacing; PS3.3 C.7.6.2.1.1).
cfgen's NIfTI of a 2D scan stores ``data[i, j] = pixel[rows - 1 - j, i]`` (bottom row first, as
nibabel displays it), so voxel (i, j) is that pixel with c = i and r = rows - 1 - j. A series read
through SimpleITK stores ``data[i, j, k]`` at ITK index (i, j, k): origin + D diag(spacing) index.
"""
from __future__ import annotations

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def dicom_file_affine(ds, rows: int) -> np.ndarray | None:
    """RAS affine of cfgen's NIfTI voxel grid for a single-frame DICOM image; None when the file
    carries no patient geometry (e.g. a secondary capture without orientation or position)."""
    iop, ipp, ps = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient"), ds.get("PixelSpacing")
    if iop is None or ipp is None or ps is None or len(iop) != 6 or len(ipp) != 3 or len(ps) != 2:
        return None
    x, y = np.array(iop[:3], dtype=float), np.array(iop[3:], dtype=float)
    dr, dc = float(ps[0]), float(ps[1])
    dz = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = x * dc
    lps[:3, 1] = -y * dr  # j counts rows from the bottom
    lps[:3, 2] = np.cross(x, y) * dz
    lps[:3, 3] = np.array(ipp, dtype=float) + (rows - 1) * dr * y
    return LPS_TO_RAS @ lps


def itk_affine(origin, direction, spacing) -> np.ndarray:
    """RAS affine of a volume stored in ITK index order (what SimpleITK reads a series as)."""
    lps = np.eye(4)
    lps[:3, :3] = np.array(direction, dtype=float).reshape(3, 3) * np.array(spacing, dtype=float)
    lps[:3, 3] = np.array(origin, dtype=float)
    return LPS_TO_RAS @ lps


def volume_affine(scan) -> np.ndarray | None:
    """RAS affine of a volume's voxel grid (``scan.pixels[0]``, voxel order): a NIfTI's own (sform,
    else qform), a DICOM series' patient geometry, or ``meta["affine"]`` of a volume made in memory;
    None for 2D images and volumes without one."""
    if scan.spatial_dims != 3:
        return None
    if scan.meta.get("affine") is not None:
        return np.asarray(scan.meta["affine"], dtype=float)
    if scan.format == "nifti" and "header" in scan.meta:
        return np.asarray(scan.meta["header"].get_best_affine(), dtype=float)
    if scan.format == "dicom-series":
        return itk_affine(scan.meta["origin"], scan.meta["direction"], scan.spacing)
    return None
