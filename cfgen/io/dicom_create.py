"""A new CT series from a volume in HU (no template): the phantoms' DICOM output.

One CT Image Storage file per slice (PS3.3 A.3: Patient, General Study, General Series, Frame of
Reference, General Equipment, General Image, Image Plane, Image Pixel, CT Image, VOI LUT, SOP
Common), stored unsigned with RescaleIntercept -1024 and RescaleType HU, a mediastinal and a
lung window, Synthetic Data YES. Geometry: ``volume[i, j, k]`` (cfgen's voxel order) is column i,
row j of slice k, at the RAS ``affine`` position converted to DICOM's LPS, so cfgen's and
SimpleITK's series readers give the same array and affine back.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np

from cfgen import __version__
from cfgen.io.atomic import atomic_dir
from cfgen.io.geometry import LPS_TO_RAS

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
INTERCEPT = -1024
WINDOWS = ((40, 400), (-600, 1500))  # mediastinum, lung: (center, width)


def _base(study: dict, description: str, rows: int, cols: int):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.PatientName, ds.PatientID = study["patient_name"], study["patient_id"]
    ds.PatientBirthDate, ds.PatientSex = "", study.get("sex", "")
    if study.get("age"):
        ds.PatientAge = f"{int(round(float(study['age']))):03d}Y"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study["study_uid"], study["series_uid"]
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = study["frame_uid"], ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study["date"]
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = study["time"]
    ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "1", ""
    ds.Modality, ds.SeriesNumber, ds.AcquisitionNumber, ds.KVP = "CT", 1, 1, ""
    ds.PatientPosition, ds.BodyPartExamined = "HFS", "CHEST"  # supine, head first
    ds.Manufacturer, ds.SoftwareVersions = "cfgen", __version__
    ds.SeriesDescription = f"SYNTHETIC cfgen {description}"[:64]
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.SyntheticData = "YES"
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = INTERCEPT, 1, "HU"
    ds.WindowCenter = [c for c, _ in WINDOWS]
    ds.WindowWidth = [w for _, w in WINDOWS]
    return ds


def _geometry(affine: np.ndarray) -> tuple[list[float], float, float, np.ndarray, np.ndarray]:
    """Image orientation (row then column direction, LPS), column and row spacing, origin and
    slice step (LPS mm) of cfgen's voxel grid."""
    lps = np.linalg.inv(LPS_TO_RAS) @ np.asarray(affine, dtype=float)
    col_step, row_step = lps[:3, 0], lps[:3, 1]  # along i (a row's columns), along j (rows)
    dc, dr = float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))
    iop = [*(col_step / dc).tolist(), *(row_step / dr).tolist()]
    return iop, dc, dr, lps[:3, 3], lps[:3, 2]


def write_ct_series(volume_hu: np.ndarray, affine: np.ndarray, target: Path, description: str,
                    patient: dict | None = None) -> Path:
    """``volume_hu`` (X, Y, Z) in HU -> ``target/slice_0000.dcm ...`` (written atomically)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    vol = np.clip(np.round(volume_hu), INTERCEPT, INTERCEPT + 65535).astype(np.int32)
    iop, dc, dr, origin, step = _geometry(affine)
    now = _dt.datetime.now()
    study = {"patient_name": "Phantom^CT", "patient_id": "PHANTOM", **(patient or {}), "study_uid": generate_uid(),
             "series_uid": generate_uid(), "frame_uid": generate_uid(), "date": now.strftime("%Y%m%d"),
             "time": now.strftime("%H%M%S")}
    thickness = float(np.linalg.norm(step))
    with atomic_dir(target) as tmp:
        for k in range(vol.shape[2]):
            ds = _base(study, description, vol.shape[1], vol.shape[0])
            ds.SOPInstanceUID = generate_uid()
            ds.InstanceNumber = k + 1
            ds.ImageOrientationPatient = [round(v, 8) for v in iop]
            ds.ImagePositionPatient = [round(float(v), 4) for v in origin + k * step]
            ds.PixelSpacing = [round(dr, 6), round(dc, 6)]
            ds.SliceThickness = ds.SpacingBetweenSlices = round(thickness, 6)
            ds.SliceLocation = round(float((origin + k * step)[2]), 4)
            ds.PixelData = (vol[:, :, k].T - INTERCEPT).astype(np.uint16).tobytes()  # (rows = j, cols = i)
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CT_IMAGE_STORAGE, ds.SOPInstanceUID
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta = meta
            ds.save_as(tmp / f"slice_{k:04d}.dcm", enforce_file_format=True)
    return target
