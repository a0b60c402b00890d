"""What a derived DICOM instance says about where it came from (PS3.3 C.7.6.1 General Image,
C.7.5.1 General Equipment): the source image it was made from, how, by what, in a new series.

``mark_derived`` runs on a copy of the source header before its pixels are replaced.
"""
from __future__ import annotations

import datetime as _dt

from cfgen import __version__

#: CID 7203 (Image Derivation): the pixel data were edited
DERIVATION_CODE = ("113077", "DCM", "Volume editing")
#: CID 7202 (Source Image Purposes of Reference)
PURPOSE_CODE = ("121322", "DCM", "Source image for image processing operation")
#: added to the source's SeriesNumber: a series number that says "derived" and stays an IS (< 2^31)
SERIES_NUMBER_OFFSET = 1000


def _code(value: str, scheme: str, meaning: str):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def source_reference(ds):
    """A SourceImageSequence item naming ``ds`` (its SOP Class and Instance UIDs)."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = [_code(*PURPOSE_CODE)]
    return item


def derived_series_number(ds) -> int:
    try:
        number = int(ds.get("SeriesNumber") or 0)
    except (TypeError, ValueError):
        number = 0
    return (abs(number) + SERIES_NUMBER_OFFSET) % 2 ** 31


def mark_derived(ds, description: str, series_uid: str) -> None:
    """Mark ``ds`` (a copy of the source header) as a synthetic, derived image of a new series."""
    from pydicom.uid import generate_uid

    ds.SourceImageSequence = [source_reference(ds)]
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    image_type = list(getattr(ds, "ImageType", []) or [])
    ds.ImageType = ["DERIVED", "SECONDARY"] + image_type[2:]
    ds.SyntheticData = "YES"
    ds.DerivationDescription = f"cfgen {__version__} synthetic counterfactual: {description}"[:1024]
    ds.DerivationCodeSequence = [_code(*DERIVATION_CODE)]
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = derived_series_number(ds)
    ds.SeriesDescription = ("SYNTHETIC cfgen " + str(getattr(ds, "SeriesDescription", "") or "")).strip()[:64]
    ds.Manufacturer = "cfgen"
    ds.ManufacturerModelName = "cfgen"
    ds.SoftwareVersions = f"cfgen {__version__}"
    now = _dt.datetime.now()
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
