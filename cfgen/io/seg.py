"""An edit mask of a DICOM input as a DICOM Segmentation (highdicom) that references the input.

One FRACTIONAL segment of type OCCUPANCY: the mask's blend weights (1 = regenerated, 0 = the
input kept, in between: the feathered edge), 0..255. The Segmentation IOD needs a Frame of
Reference, so an input without one (e.g. a secondary capture without patient geometry) gets no
SEG: ``seg_possible`` says so before anything is written.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cfgen import __version__
from cfgen.io.atomic import atomic_path
from cfgen.io.provenance import derived_series_number
from cfgen.io.scan import Scan


def _sources(scan: Scan) -> list:
    import pydicom

    if scan.format == "dicom-series":
        return [pydicom.dcmread(f) for f in scan.meta["files"]]
    return [scan.meta["dataset"]]


def seg_possible(scan: Scan) -> bool:
    if scan.format == "dicom":
        ds = scan.meta["dataset"]
        single = int(getattr(ds, "NumberOfFrames", 1) or 1) == 1
        return single and all(k in ds for k in ("FrameOfReferenceUID", "ImageOrientationPatient",
                                                  "ImagePositionPatient", "PixelSpacing"))
    return scan.format == "dicom-series"


def _frames(scan: Scan, mask: np.ndarray) -> np.ndarray:
    """(1, *scan grid) weights in [0, 1] -> (frames, rows, columns) as the source images store them."""
    if scan.spatial_dims == 3:  # a series: (X, Y, Z) -> one (rows, cols) frame per source slice
        return np.transpose(mask[0], (2, 1, 0))
    return mask[0][None]


def _description(automatic: bool):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(name="cfgen --mask auto", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence) if automatic else None
    return hd.seg.SegmentDescription(
        segment_number=1, segment_label="edited region",
        segmented_property_category=codes.SCT.SpatialAndRelationalConcept,
        segmented_property_type=codes.DCM.ImageRegion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC if automatic else hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        algorithm_identification=algorithm)


def write_seg(scan: Scan, mask: np.ndarray, target: Path, automatic: bool, description: str) -> Path:
    """``mask``: (1, *scan grid) in [0, 1]; ``automatic``: made by cfgen (--mask auto or refine), else given."""
    import highdicom as hd

    sources = _sources(scan)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=_frames(scan, np.clip(mask, 0, 1).astype(np.float32)),
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.OCCUPANCY,
        segment_descriptions=[_description(automatic)], series_instance_uid=hd.UID(),
        series_number=derived_series_number(sources[0]) + 1, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="cfgen", manufacturer_model_name="cfgen", software_versions=f"cfgen {__version__}",
        device_serial_number="none", series_description=f"SYNTHETIC cfgen mask: {description}"[:64],
        content_description="where the counterfactual may differ from the input"[:64], omit_empty_frames=False)
    seg.SyntheticData = "YES"  # the region belongs to a synthetic image
    with atomic_path(target) as tmp:
        seg.save_as(tmp)
    return target
