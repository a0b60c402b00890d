"""A DICOM series folder checked from its headers before SimpleITK reads it: every fault is named
by file. Refused: slices of other sizes or orientations, two slices at one position (a slice sent
twice), missing slices (a gap wider than 1.5 x the smallest spacing), slices too short for their
pixel data, and files of the series that GDCM left out (unreadable or cut)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cfgen.errors import ScanReadError


def _header(path: Path):
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types for a cut or garbled header
        raise ScanReadError(f"{path}: corrupt DICOM slice ({exc.__class__.__name__}: {str(exc)[:120]})") from None


def _pixel_bytes(ds) -> int | None:
    """Bytes the uncompressed pixel data of ``ds`` needs (None for compressed transfer syntaxes)."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and ts.is_compressed:
        return None
    try:
        n = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * int(ds.get("NumberOfFrames", 1) or 1)
        return n * int(ds.BitsAllocated) // 8
    except (AttributeError, TypeError, ValueError):
        return None


def _slice(path: Path, ds, size: tuple[int, int], first: tuple[Path, tuple[int, int]] | None) -> None:
    if first is not None and size != first[1]:
        raise ScanReadError(f"{path}: slice of {size[0]} x {size[1]} pixels in a series of "
                            f"{first[1][0]} x {first[1][1]} ({first[0].name}); give one series of one size")
    need = _pixel_bytes(ds)
    if need is not None and path.stat().st_size < need:
        raise ScanReadError(f"{path}: truncated slice ({path.stat().st_size} bytes; its pixel data alone needs {need})")


def _positions(slices: list[tuple[Path, np.ndarray, float]], folder: Path) -> None:
    normals = np.array([n for _, n, _ in slices])
    if len(slices) > 1 and not np.allclose(normals, normals[0], atol=1e-3):
        raise ScanReadError(f"{folder}: slices of the series have different orientations")
    order = sorted(slices, key=lambda s: s[2])
    gaps = np.diff([p for _, _, p in order])
    for (a, _, pa), (b, _, _), g in zip(order, order[1:], gaps):
        if g < 1e-3:
            raise ScanReadError(f"{folder}: {a.name} and {b.name} are at the same position ({pa:.2f} mm): a slice "
                                "sent twice? keep one of them")
    if len(gaps) > 1 and gaps.max() > 1.5 * gaps.min():
        k = int(gaps.argmax())
        raise ScanReadError(f"{folder}: DICOM series has missing slices (a gap of {gaps.max():.2f} mm between "
                            f"{order[k][0].name} and {order[k + 1][0].name} where slices are {gaps.min():.2f} mm apart)")


def _left_out(files: list[Path], folder: Path, series_uid: str | None) -> None:
    """Files GDCM did not put in the series although they belong to it or look like DICOM."""
    chosen = {f.resolve() for f in files}
    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.resolve() in chosen:
            continue
        with open(f, "rb") as fh:
            magic = fh.read(132)[128:]
        if magic != b"DICM" and f.suffix.lower() not in (".dcm", ".ima"):
            continue  # a README or a thumbnail beside the slices
        ds = _header(f)
        if series_uid is None or ds.get("SeriesInstanceUID") == series_uid:
            _slice(f, ds, (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)), None)
            raise ScanReadError(f"{f}: a slice of this series that could not be read with the others")


def check_series(files: list[str], folder: Path) -> None:
    first, slices, uid = None, [], None
    for name in files:
        path = Path(name)
        ds = _header(path)
        uid = uid or ds.get("SeriesInstanceUID")
        size = (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))
        _slice(path, ds, size, first)
        first = first or (path, size)
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
            iop = np.array(ds.ImageOrientationPatient, dtype=float)
            n = np.cross(iop[:3], iop[3:])
            slices.append((path, n, float(np.dot(n, np.array(ds.ImagePositionPatient, dtype=float)))))
    _left_out([Path(f) for f in files], folder, uid)  # first: a cut slice is the cause of the gap it leaves
    if len(slices) == len(files):
        _positions(slices, folder)
