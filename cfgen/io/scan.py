"""The Scan type and the format dispatch for reading and writing."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cfgen.errors import CfgenError, InputError, ScanReadError, UsageError

#: output format -> file suffix ("" = a folder)
SUFFIXES = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "dicom": ".dcm", "dicom-series": "",
            "nifti": ".nii.gz"}

#: what a reader raises on a file whose content is wrong (missing or non-numeric header values, a cut
#: file): an input problem, reported as one about that file, never as an internal error
READ_FAILURES = (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError, EOFError, OSError,
                 ArithmeticError, struct.error)

#: refuse before allocating: the most values (voxels x channels) cfgen will read from one scan
MAX_VOXELS = 512 * 1024 * 1024
#: ... and the most a scan may hold once padded to a square / cube on its way to the model grid
MAX_PADDED = 4 * MAX_VOXELS


@dataclass
class Scan:
    """A scan in memory.

    ``pixels`` is float32 in the scan's own intensity units (HU for CT, stored values for
    raster images), channels first: (C, H, W) for 2D in display orientation (rows top to
    bottom), (C, X, Y, Z) for volumes in voxel order. ``meta`` holds what the writer of the
    same format needs to give the output the input's geometry and header.
    """

    path: Path
    format: str
    pixels: np.ndarray
    source_dtype: str
    spacing: tuple[float, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spatial_dims(self) -> int:
        return self.pixels.ndim - 1

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[0])

    def info(self) -> dict[str, Any]:
        return {"format": self.format, "shape": list(self.pixels.shape[1:]), "channels": self.channels,
                "spatial_dims": self.spatial_dims, "dtype": self.source_dtype,
                "spacing": list(self.spacing) if self.spacing else None}


def region_of(mask: Scan) -> np.ndarray:
    """(1, *spatial) bool: where a mask scan is nonzero in any channel. The one rule for every mask
    cfgen reads (an edit's --mask, evaluate's true-difference region): 0/1 label volumes and
    0/255 PNGs alike."""
    return mask.pixels.max(axis=0, keepdims=True) > 0


def check_size(shape: tuple[int, ...], where: Path, channels: int = 1) -> None:
    """From the header, before anything is decoded: the scan's values (spatial size x channels)
    and its size padded to a square or cube (what preparing for the model allocates) are bounded."""
    spatial = tuple(int(s) for s in shape)
    while len(spatial) > 2 and spatial[-1] == 1:
        spatial = spatial[:-1]
    if not spatial or min(spatial) < 1 or channels < 1:
        raise InputError(f"{where}: image size {tuple(shape)} has an empty dimension")
    n = int(np.prod(spatial, dtype=np.int64)) * int(channels)
    if n > MAX_VOXELS:
        raise InputError(f"{where}: image size {tuple(shape)} x {channels} channel(s) is {n} values, outside "
                         f"what cfgen reads (at most {MAX_VOXELS})")
    padded = max(spatial) ** len(spatial) * int(channels)
    if padded > MAX_PADDED:
        side = " x ".join([str(max(spatial))] * len(spatial))
        raise InputError(f"{where}: image size {tuple(shape)} would be padded to {side} on its way to the model "
                         f"({padded} values, more than {MAX_PADDED}); crop it to a less elongated region first")


def check_output_format(input_format: str, fmt: str, where: Path | str) -> None:
    """Whether a scan of ``input_format`` can be written as ``fmt``: checked before any work."""
    if fmt not in SUFFIXES:
        raise UsageError(f"--format {fmt}: use one of {', '.join(SUFFIXES)}")
    if fmt.startswith("dicom") and fmt != input_format:
        raise UsageError(f"--format {fmt}: DICOM output needs a DICOM input of the same kind "
                         f"({where} is {input_format}); cfgen writes DICOM as a "
                         "derived copy of the source header")


def format_of(path: Path) -> str:
    """The scan format from the name (or the DICM magic), without decoding anything."""
    name = path.name.lower()
    if path.is_dir():
        return "dicom-series"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".png"):
        return "png"
    if name.endswith((".jpg", ".jpeg")):
        return "jpeg"
    if name.endswith((".tif", ".tiff")):
        return "tiff"
    if name.endswith((".dcm", ".dicom", ".ima")):
        return "dicom"
    with open(path, "rb") as fh:  # DICOM files often have no extension: look for the magic
        head = fh.read(132)
    if len(head) == 132 and head[128:132] == b"DICM":
        return "dicom"
    raise ScanReadError(f"{path}: unknown scan format (expected .png, .jpg, .tif, .dcm, "
                        ".nii/.nii.gz or a DICOM series folder)")


def header_shape(path: Path) -> tuple[str, tuple[int, ...]] | None:
    """(format, grid size without singleton axes) from a NIfTI or PNG header, decoding no pixels;
    None where that is not known cheaply (other formats, unreadable headers: the full read decides)."""
    try:
        fmt = format_of(path)
        if fmt == "nifti":
            import nibabel as nib

            shape = tuple(nib.load(str(path)).shape[:3])
        elif fmt == "png":
            from PIL import Image

            with Image.open(path) as im:
                shape = im.size[::-1]
        else:
            return None
    except Exception:  # noqa: BLE001 -- any header problem is left to the full read, which names it
        return None
    return fmt, tuple(int(n) for n in shape if n != 1)


def _readers() -> dict[str, Callable[[Path], Scan]]:
    from cfgen.io import dicom, nifti, raster

    return {"png": raster.read_raster, "jpeg": raster.read_raster, "tiff": raster.read_raster,
            "dicom": dicom.read_dicom, "dicom-series": dicom.read_dicom_series, "nifti": nifti.read_nifti}


def _writers() -> dict[str, Callable[..., Path]]:
    from cfgen.io import dicom, nifti, raster

    return {"png": raster.write_raster, "jpeg": raster.write_raster, "tiff": raster.write_raster,
            "dicom": dicom.write_dicom, "dicom-series": dicom.write_dicom_series, "nifti": nifti.write_nifti}


def read_scan(path: str | Path) -> Scan:
    """Read any supported scan; errors name the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise ScanReadError(f"{path}: file not found")
    if not path.is_file() and not path.is_dir():  # a FIFO or a device would block or never end
        raise ScanReadError(f"{path}: not a regular file (a pipe, socket or device); give the scan's file")
    if path.is_file() and path.stat().st_size == 0:
        raise ScanReadError(f"{path}: file is empty")
    fmt = format_of(path)
    from cfgen.io.noise import captured

    try:
        with captured() as notes:
            scan = _readers()[fmt](path)
    except CfgenError:
        raise
    except READ_FAILURES as exc:  # the file, not cfgen: a header value of the wrong kind, a cut file
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ScanReadError(f"{path}: cannot read this {fmt} file ({exc.__class__.__name__}: {first})") from None
    if notes:
        scan.meta["notes"] = list(dict.fromkeys(notes))[:20]  # what the libraries said while reading
    if not np.isfinite(scan.pixels).all():
        raise ScanReadError(f"{path}: scan has NaN/Inf values")
    return scan


def output_path(stem: Path, fmt: str) -> Path:
    return stem.with_name(stem.name + SUFFIXES[fmt])


def write_scan(template: Scan, pixels: np.ndarray, stem: Path, fmt: str | None = None,
               description: str = "cfgen synthetic image", window=None) -> Path:
    """Write ``pixels`` (same layout and units as ``template.pixels``) as a new synthetic scan.

    ``stem`` is the output path without suffix; the format defaults to the input's. The
    file is marked synthetic in its own format and written atomically.
    """
    fmt = fmt or template.format
    check_output_format(template.format, fmt, template.path)
    if pixels.shape != template.pixels.shape:
        raise ValueError(f"pixels {pixels.shape} do not match the template {template.pixels.shape}")
    target = output_path(stem, fmt)
    if fmt == template.format == "nifti":  # .nii stays .nii
        target = stem.with_name(stem.name + template.meta.get("suffix", SUFFIXES["nifti"]))
    return _writers()[fmt](template, pixels, target, description=description, window=window)
