"""Reading and writing scans (PNG/JPEG/TIFF, DICOM file or series, NIfTI) with their geometry.

Entry points: ``cfgen.io.scan.read_scan`` and ``cfgen.io.scan.write_scan`` (imported lazily
here so that light modules such as ``cfgen.io.tables`` do not pull in NumPy).
"""
from __future__ import annotations


def __getattr__(name: str):
    if name in ("Scan", "read_scan", "write_scan"):
        from cfgen.io import scan

        return getattr(scan, name)
    raise AttributeError(name)
