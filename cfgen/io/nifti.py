"""NIfTI (.nii, .nii.gz) through nibabel; the output keeps the input's header and affine.

2D images (X, Y) or (X, Y, 1) are shown in display orientation (rows = -Y, columns = X);
volumes keep voxel order (X, Y, Z).
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from cfgen import __version__
from cfgen.errors import ScanReadError
from cfgen.io.atomic import atomic_path
from cfgen.io.scan import Scan, check_size


def read_nifti(path: Path) -> Scan:
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        img = nib.load(path)
        shape = tuple(int(s) for s in img.shape)
        check_size(shape, path)
        kind = np.dtype(img.get_data_dtype())
        if kind.kind == "c" or kind.names is not None:  # complex (real + imaginary) or RGB records
            raise ScanReadError(f"{path}: NIfTI of data type {kind} holds no single intensity per voxel; give its "
                                "magnitude (complex data) or one channel as a real-valued NIfTI")
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except (ImageFileError, EOFError, gzip.BadGzipFile, zlib.error, OSError, ValueError) as exc:
        raise ScanReadError(f"{path}: not a readable NIfTI file ({exc.__class__.__name__}: {exc})") from None
    core = shape
    while len(core) > 2 and core[-1] == 1:
        core = core[:-1]
    if len(core) > 3:
        raise ScanReadError(f"{path}: {len(core)}D NIfTI of shape {shape}; cfgen needs one 2D image or "
                            "3D volume (select one volume first)")
    data = data.reshape(core)
    if data.ndim == 2:
        pixels = np.flipud(data.T)[None]
    else:
        pixels = data[None]
    zooms = tuple(float(z) for z in img.header.get_zooms()[: data.ndim])
    return Scan(path=path, format="nifti", pixels=np.ascontiguousarray(pixels, dtype=np.float32),
                source_dtype=str(img.get_data_dtype()), spacing=zooms,
                meta={"header": img.header.copy(), "shape": shape, "image_class": type(img),
                      "scaling": _scaling(img), "suffix": ".nii" if path.name.lower().endswith(".nii") else ".nii.gz"})


def _scaling(img) -> tuple[float, float]:
    """(scl_slope, scl_inter) the file's values were stored with ((1, 0) when unscaled)."""
    slope, inter = getattr(img.dataobj, "slope", 1.0), getattr(img.dataobj, "inter", 0.0)
    return (float(slope) if np.isfinite(slope) and slope != 0 else 1.0, float(inter) if np.isfinite(inter) else 0.0)


def stored_values(values: np.ndarray, dtype: np.dtype, scaling: tuple[float, float]) -> tuple[np.ndarray, float, float]:
    """``values`` in an integer on-disk ``dtype``: with the input's scaling where the values fit
    its range, else with a new slope and intercept spanning them (scl_slope/scl_inter)."""
    info = np.iinfo(dtype)
    slope, inter = scaling
    lo, hi = float(np.min(values)), float(np.max(values))
    if not (info.min <= (lo - inter) / slope <= info.max and info.min <= (hi - inter) / slope <= info.max):
        slope = (hi - lo) / (info.max - info.min) if hi > lo else 1.0
        inter = lo - slope * info.min
    stored = np.clip(np.round((values.astype(np.float64) - inter) / slope), info.min, info.max)
    return stored.astype(dtype), slope, inter


def write_nifti(template: Scan, pixels: np.ndarray, target: Path, description: str, window=None) -> Path:
    import nibabel as nib

    if pixels.shape[0] != 1:
        pixels = pixels.mean(axis=0, keepdims=True)
    if template.format == "nifti":
        header = template.meta["header"].copy()
        data = np.flipud(pixels[0]).T if template.spatial_dims == 2 else pixels[0]
        data = np.ascontiguousarray(data.reshape(template.meta["shape"]), dtype=np.float32)
        dtype, slope, inter = np.dtype(template.source_dtype), 1.0, 0.0
        if dtype.kind in "iu":  # the input's own on-disk type, its scaling where the values fit
            data, slope, inter = stored_values(data, dtype, template.meta.get("scaling", (1.0, 0.0)))
        elif dtype.kind != "f":
            dtype = np.dtype(np.float32)
        header.set_data_dtype(dtype)
        # affine=None keeps the header's qform and sform (codes included) exactly as they were
        img = template.meta["image_class"](data.astype(dtype), None, header=header)
        img.header.set_slope_inter(slope, inter)
    else:  # from another format: DICOM's patient geometry, else the pixel spacing on a plain affine
        data = np.flipud(pixels[0]).T if template.spatial_dims == 2 else pixels[0]
        affine, scanner = _affine(template)
        img = nib.Nifti1Image(np.ascontiguousarray(data, dtype=np.float32), affine)
        img.header.set_slope_inter(1.0, 0.0)
        if scanner:  # qform = sform = the patient geometry, code 1 (scanner anatomical)
            img.set_qform(affine, code=1)
            img.set_sform(affine, code=1)
    img.header["descrip"] = f"cfgen {__version__} SYNTHETIC: {description}"[:79].encode("ascii", "replace")
    with atomic_path(target) as tmp:
        nib.save(img, tmp)
    return target


INT_SCALE = 30000


def _affine(template: Scan) -> tuple[np.ndarray, bool]:
    """(RAS affine, whether it is patient geometry) for a scan read from another format: a DICOM
    input's position in the patient (cfgen/io/geometry.py), else the pixel spacing at origin 0."""
    from cfgen.io.geometry import dicom_file_affine, itk_affine

    if template.format == "dicom-series":
        m = template.meta
        return itk_affine(m["origin"], m["direction"], template.spacing), True
    if template.format == "dicom" and template.spatial_dims == 2:
        affine = dicom_file_affine(template.meta["dataset"], template.pixels.shape[1])
        if affine is not None:
            return affine, True
    spacing = list(template.spacing or [])
    if template.spatial_dims == 2 and len(spacing) == 2:
        spacing = [spacing[1], spacing[0]]  # DICOM (row, column) spacing -> NIfTI (x, y)
    return np.diag([*(spacing + [1.0] * 3)[:3], 1.0]), False


def centred_affine(size: int, spacing: float) -> np.ndarray:
    """RAS voxel-to-world matrix of a cubic grid whose origin is the volume centre."""
    a = np.diag([spacing, spacing, spacing, 1.0])
    a[:3, 3] = -(size - 1) / 2 * spacing
    return a


def write_volume(path: Path, volume: np.ndarray, affine: np.ndarray, note: str) -> Path:
    """A new (generated) volume: uint8 labels and int16 values (HU) as they are; intensities in [0, 1] as int16 with a
    scale factor (half the size of float32); qform = sform = ``affine`` (scanner), mm, marked synthetic."""
    import nibabel as nib

    if volume.dtype in (np.uint8, np.int16):  # label maps; CT in HU
        img = nib.Nifti1Image(volume, affine)
    else:
        img = nib.Nifti1Image(np.round(np.clip(volume, 0, 1) * INT_SCALE).astype(np.int16), affine)
        img.header.set_slope_inter(1.0 / INT_SCALE, 0.0)
    img.header["descrip"] = f"SYNTHETIC cfgen {note}"[:79].encode("ascii", "replace")
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path
