"""DICOM: single files through pydicom, series folders through SimpleITK.

Counterfactuals are written as derived copies of the source header (cfgen/io/provenance.py):
ImageType DERIVED, new SOP Instance and Series UIDs, Synthetic Data (0008,001C) = YES, the source
image referenced, and the source's geometry (spacing, orientation, position) untouched.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from cfgen.errors import InputError, ScanReadError
from cfgen.io.atomic import atomic_dir, atomic_path
from cfgen.io.provenance import mark_derived
from cfgen.io.series_check import check_series
from cfgen.io.scan import Scan, check_size

CODECS_HINT = ("install the decoders with `pip install 'cfgen[dicom-codecs]'` "
               "(pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg)")


def _dcmread(path: Path, **kw):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, **kw)
    except InvalidDicomError:
        raise ScanReadError(f"{path}: not a DICOM file (no DICM header)") from None
    except Exception as exc:  # truncated files raise EOFError, ValueError, struct.error ...
        raise ScanReadError(f"{path}: corrupt DICOM ({exc.__class__.__name__}: {exc})") from None


def number(ds, keyword: str, path: Path, default: float | None = None, kind=float):
    """A numeric header value: ``default`` when absent or empty, a one-line error naming the tag
    when it is missing without a default or holds no number."""
    raw = ds.get(keyword)
    value = getattr(raw, "value", raw)
    if value is None or value == "":
        if default is None:
            raise ScanReadError(f"{path}: DICOM has no {keyword}, which an image needs")
        return default
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ScanReadError(f"{path}: DICOM {keyword} {str(value)[:40]!r} is not a number") from None


def _modality_values(ds, path: Path) -> tuple[np.ndarray, dict]:
    """Decoded pixels with the modality rescale applied; (frames?, rows, cols[, samples])."""
    if "PixelData" not in ds:
        raise ScanReadError(f"{path}: DICOM has no pixel data (not an image object)")
    frames = number(ds, "NumberOfFrames", path, 1, int) or 1
    rows, cols = number(ds, "Rows", path, kind=int), number(ds, "Columns", path, kind=int)
    check_size((rows, cols, frames), path, channels=number(ds, "SamplesPerPixel", path, 1, int) or 1)
    try:
        arr = ds.pixel_array
    except Exception as exc:
        ts = ds.file_meta.get("TransferSyntaxUID")
        if ts is not None and ts.is_compressed:
            raise ScanReadError(f"{path}: compressed DICOM ({ts.name}) cannot be decoded here: {CODECS_HINT}") from None
        raise ScanReadError(f"{path}: cannot decode DICOM pixel data ({exc})") from None
    if "ModalityLUTSequence" in ds:
        raise ScanReadError(f"{path}: DICOM Modality LUT Sequence is not supported (only linear rescale)")
    if str(ds.PhotometricInterpretation) == "PALETTE COLOR":  # indices into a colour table, not intensities
        return _palette_to_rgb(ds, arr, path)
    slope = number(ds, "RescaleSlope", path, 1.0) or 1.0
    intercept = number(ds, "RescaleIntercept", path, 0.0)
    values = arr.astype(np.float32) * slope + intercept
    bits = number(ds, "BitsStored", path, kind=int)
    signed = number(ds, "PixelRepresentation", path, 0, int) == 1
    smin, smax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    info = {"slope": slope, "intercept": intercept, "bits_stored": bits, "signed": signed,
            "stored_range": (smin, smax), "dtype": str(arr.dtype),
            "photometric": str(ds.PhotometricInterpretation)}
    if info["photometric"].startswith("YBR"):
        info["photometric"] = "RGB"  # pydicom converts YBR to RGB when decoding
    # MONOCHROME1 displays high values dark: flip so that every image the model sees is
    # MONOCHROME2-like, and flip back on writing.
    info["mono1_sum"] = (smin * slope + intercept) + (smax * slope + intercept)
    if info["photometric"] == "MONOCHROME1":
        values = info["mono1_sum"] - values
    return values, info


def _palette_to_rgb(ds, arr: np.ndarray, path: Path) -> tuple[np.ndarray, dict]:
    """PALETTE COLOR pixels through their colour table (pydicom's apply_color_lut): what the image
    shows, as RGB; the output is written as an RGB derived image."""
    from pydicom.pixels import apply_color_lut

    try:
        rgb = apply_color_lut(arr, ds)
    except Exception as exc:  # pydicom raises several types for a broken or segmented table
        raise ScanReadError(f"{path}: PALETTE COLOR image whose colour table cannot be applied ({exc})") from None
    bits = 8 if rgb.dtype.itemsize == 1 else 16
    info = {"slope": 1.0, "intercept": 0.0, "bits_stored": bits, "signed": False, "stored_range": (0, 2 ** bits - 1),
            "dtype": str(rgb.dtype), "photometric": "RGB", "mono1_sum": 0.0, "from_palette": True}
    return rgb.astype(np.float32), info


def _pixel_spacing(ds, path: Path) -> tuple[float, float] | None:
    from pydicom.multival import MultiValue

    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        raw = ds.get(keyword)
        if raw is None or raw == "":
            continue
        try:
            values = tuple(float(v) for v in (raw if isinstance(raw, (list, tuple, MultiValue)) else [raw]))
        except (TypeError, ValueError):
            values = ()
        if len(values) != 2 or not all(np.isfinite(v) and v > 0 for v in values):
            raise ScanReadError(f"{path}: DICOM {keyword} {str(raw)[:40]!r} is not two positive numbers (mm)")
        return values
    return None


def read_dicom(path: Path) -> Scan:
    ds = _dcmread(path)
    values, info = _modality_values(ds, path)
    samples = 3 if info.get("from_palette") else int(getattr(ds, "SamplesPerPixel", 1))
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        if samples > 1:
            raise ScanReadError(f"{path}: multi-frame colour DICOM is not supported")
        pixels = np.transpose(values, (2, 1, 0))[None]  # (frames, rows, cols) -> (1, X, Y, Z)
    else:
        pixels = values[None] if samples == 1 else np.moveaxis(values, -1, 0)
    spacing = _pixel_spacing(ds, path)
    return Scan(path=path, format="dicom", pixels=pixels.astype(np.float32), source_dtype=info["dtype"],
                spacing=spacing, meta={"dataset": ds, "pixel": info, "units": intensity_units(ds)})


def _stored(values: np.ndarray, info: dict) -> np.ndarray:
    if info["photometric"] == "MONOCHROME1":
        values = info["mono1_sum"] - values
    stored = np.round((values.astype(np.float64) - info["intercept"]) / info["slope"])
    smin, smax = info["stored_range"]
    bits = 8 if info["bits_stored"] <= 8 else 16 if info["bits_stored"] <= 16 else 32  # as BitsAllocated
    dtype = np.dtype(f"{'int' if info['signed'] else 'uint'}{bits}")
    return np.clip(stored, smin, smax).astype(dtype)


PALETTE_TAGS = ("RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
                "BluePaletteColorLookupTableDescriptor", "RedPaletteColorLookupTableData",
                "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData",
                "SegmentedRedPaletteColorLookupTableData", "SegmentedGreenPaletteColorLookupTableData",
                "SegmentedBluePaletteColorLookupTableData", "PaletteColorLookupTableUID")


def _set_pixels(ds, arr: np.ndarray, info: dict) -> None:
    from pydicom.uid import ExplicitVRLittleEndian

    if info.get("from_palette"):  # written as the RGB it showed: the colour table no longer applies
        for tag in PALETTE_TAGS:
            if tag in ds:
                delattr(ds, tag)
    if not ds.file_meta.TransferSyntaxUID.is_little_endian:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if arr.dtype.itemsize == 4:  # e.g. RT dose grids; pydicom's set_pixel_data stops at 16 bits
        _set_32bit_pixels(ds, arr, info)
        return
    ds.set_pixel_data(arr, info["photometric"], info["bits_stored"], generate_instance_uid=False)


def _set_32bit_pixels(ds, arr: np.ndarray, info: dict) -> None:
    """Uncompressed 32-bit monochrome pixel data with the tags that describe it."""
    from pydicom.uid import ExplicitVRLittleEndian

    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, info["bits_stored"], info["bits_stored"] - 1
    ds.PixelRepresentation = 1 if info["signed"] else 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, info["photometric"]
    ds.PixelData = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"))).tobytes()
    ds["PixelData"].VR = "OW"


def _save(ds, path: Path) -> None:
    import pydicom

    # the encoding follows the (possibly changed) transfer syntax, not the file read
    pydicom.dcmwrite(path, ds, enforce_file_format=True, little_endian=True,
                     implicit_vr=ds.file_meta.TransferSyntaxUID.is_implicit_VR)


def write_dicom(template: Scan, pixels: np.ndarray, target: Path, description: str, window=None) -> Path:
    from pydicom.uid import generate_uid

    ds = copy.deepcopy(template.meta["dataset"])
    info = template.meta["pixel"]
    stored = _stored(pixels, info)
    if template.spatial_dims == 3:
        arr = np.transpose(stored[0], (2, 1, 0))  # (X, Y, Z) -> (frames, rows, cols)
    else:
        arr = stored[0] if stored.shape[0] == 1 else np.moveaxis(stored, 0, -1)
    mark_derived(ds, description, generate_uid())
    _set_pixels(ds, arr, info)
    with atomic_path(target) as tmp:
        _save(ds, tmp)
    return target


def intensity_units(ds) -> str | None:
    """"HU" for CT whose rescale gives Hounsfield units (RescaleType absent or HU), else None."""
    if str(ds.get("Modality", "")).upper() != "CT":
        return None
    rescale_type = str(ds.get("RescaleType", "HU") or "HU").upper()
    return "HU" if rescale_type in ("HU", "HOUNSFIELD") else None


def read_dicom_series(folder: Path) -> Scan:
    import SimpleITK as sitk

    from cfgen.io.noise import quiet_itk

    quiet_itk()

    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise ScanReadError(f"{folder}: no DICOM series found in this folder")
    if len(ids) > 1:
        raise ScanReadError(f"{folder}: folder holds {len(ids)} DICOM series; point to one series' folder")
    files = list(reader.GetGDCMSeriesFileNames(str(folder), ids[0]))
    check_series(files, folder)
    first = _dcmread(Path(files[0]), stop_before_pixels=True)
    check_size((int(first.Rows), int(first.Columns), len(files)), folder)
    reader.SetFileNames(files)
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise ScanReadError(f"{folder}: cannot read DICOM series ({str(exc).strip().splitlines()[-1]})") from None
    arr = sitk.GetArrayFromImage(img).astype(np.float32)  # (Z, Y, X), rescale applied
    if arr.ndim != 3:
        raise ScanReadError(f"{folder}: only single-channel DICOM series are supported")
    pixels = np.transpose(arr, (2, 1, 0))[None]
    bits = int(first.get("BitsAllocated", 16))
    signed = int(first.get("PixelRepresentation", 0)) == 1
    source_dtype = f"{'int' if signed else 'uint'}{8 if bits <= 8 else 16}"
    return Scan(path=folder, format="dicom-series", pixels=pixels, source_dtype=source_dtype,
                spacing=tuple(float(s) for s in img.GetSpacing()),
                meta={"files": files, "origin": img.GetOrigin(), "direction": img.GetDirection(),
                      "units": intensity_units(first)})


def write_dicom_series(template: Scan, pixels: np.ndarray, target: Path, description: str, window=None) -> Path:
    from pydicom.uid import generate_uid

    series_uid = generate_uid()
    files = template.meta["files"]
    with atomic_dir(target) as tmp:
        for z, f in enumerate(files):
            ds = _dcmread(Path(f))
            _, info = _modality_values(ds, Path(f))
            if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
                raise InputError(f"{f}: multi-frame files inside a series are not supported")
            arr = _stored(pixels[:, :, :, z], info)[0].T  # (X, Y) -> (rows, cols)
            mark_derived(ds, description, series_uid)
            _set_pixels(ds, arr, info)
            _save(ds, tmp / Path(f).name)
    return target
