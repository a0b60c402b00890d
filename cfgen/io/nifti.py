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
                meta={"header": img.header.copy(), "shape": shape, "image_class": type(img)})


def write_nifti(template: Scan, pixels: np.ndarray, target: Path, description: str, window=None) -> Path:
    import nibabel as nib

    if template.format == "nifti":
        header = template.meta["header"].copy()
        shape = template.meta["shape"]
        cls = template.meta["image_class"]
    else:  # from another format: a plain header with the scan's spacing
        cls = nib.Nifti1Image
        header = nib.Nifti1Header()
        shape = tuple(pixels.shape[1:]) if template.spatial_dims == 3 else (pixels.shape[2], pixels.shape[1])
        header.set_zooms(tuple(template.spacing or (1.0,) * len(shape))[: len(shape)])
    if pixels.shape[0] != 1:
        pixels = pixels.mean(axis=0, keepdims=True)
    data = np.flipud(pixels[0]).T if template.spatial_dims == 2 else pixels[0]
    data = np.ascontiguousarray(data.reshape(shape), dtype=np.float32)
    header.set_data_dtype(np.float32)
    # affine=None keeps the header's qform and sform (codes included) exactly as they were
    img = cls(data, None, header=header)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["descrip"] = f"cfgen {__version__} SYNTHETIC: {description}"[:79].encode("ascii", "replace")
    with atomic_path(target) as tmp:
        nib.save(img, tmp)
    return target
