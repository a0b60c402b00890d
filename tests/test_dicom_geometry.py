"""`--format nifti` from DICOM carries the patient geometry (issue 18, item 3): every voxel of the
NIfTI lies where SimpleITK (ITK/GDCM's reading of the DICOM) puts the same pixel, for an oblique,
non-square, anisotropic single file and an oblique series."""
from __future__ import annotations

import copy
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from cfgen.io.scan import read_scan, write_scan

#: an oblique frame: rotated 25 degrees about z, then 15 about x (orthonormal rows of a rotation)
_c, _s, _c2, _s2 = np.cos(np.radians(25)), np.sin(np.radians(25)), np.cos(np.radians(15)), np.sin(np.radians(15))
ROW = np.array([_c, _s, 0.0])
COL = np.array([-_s * _c2, _c * _c2, _s2])


def _oblique(ct_small, cols: int = 100):
    ds = pydicom.dcmread(ct_small)
    arr = ds.pixel_array[:, :cols].copy()
    ds.Columns = cols
    ds.PixelData = arr.tobytes()
    ds.ImageOrientationPatient = [float(v) for v in (*ROW, *COL)]
    ds.PixelSpacing = [0.8, 0.5]  # rows 0.8 mm apart, columns 0.5 mm
    ds.ImagePositionPatient = [-120.0, 35.5, 60.25]
    return ds


def _check(nifti_path, reference: sitk.Image, n: int = 300) -> None:
    img = nib.load(nifti_path)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    np.testing.assert_allclose(img.get_qform(), img.affine, atol=1e-4)
    data = np.asarray(img.dataobj, dtype=np.float64)
    data = data.reshape(data.shape[:2] + (-1,))
    ref = sitk.GetArrayFromImage(reference).astype(np.float64)  # (z, rows, cols)
    rng = np.random.default_rng(0)
    corners = [(0, 0, 0), (data.shape[0] - 1, data.shape[1] - 1, data.shape[2] - 1)]
    points = corners + [tuple(int(rng.integers(0, s)) for s in data.shape) for _ in range(n)]
    for ijk in points:
        ras = img.affine @ np.array([*ijk, 1.0])
        lps = (-ras[0], -ras[1], ras[2])
        idx = reference.TransformPhysicalPointToContinuousIndex(lps)
        assert np.allclose(idx, np.round(idx), atol=1e-3), (ijk, idx)  # lands on a voxel centre
        c, r, z = (int(round(v)) for v in idx)
        assert data[ijk] == pytest.approx(ref[z, r, c], abs=1e-3), (ijk, idx)


def test_nifti_from_an_oblique_dicom_file_keeps_its_patient_geometry(ct_small, tmp_path):
    src = tmp_path / "oblique.dcm"
    _oblique(ct_small).save_as(src)
    scan = read_scan(src)
    out = write_scan(scan, scan.pixels, tmp_path / "out", fmt="nifti")
    _check(out, sitk.ReadImage(str(src)))


def test_nifti_from_an_oblique_series_keeps_its_patient_geometry(ct_small, tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    base, uid = _oblique(ct_small, cols=90), generate_uid()
    normal = np.cross(ROW, COL)
    for k in range(4):
        ds = copy.deepcopy(base)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(v) for v in np.array([-120.0, 35.5, 60.25]) + 3.0 * k * normal]
        arr = base.pixel_array.copy()
        arr[: 10 + 5 * k, :7] = 200 * k  # each slice different
        ds.PixelData = arr.tobytes()
        ds.save_as(folder / f"s{k}.dcm")
    scan = read_scan(folder)
    out = write_scan(scan, scan.pixels, tmp_path / "out", fmt="nifti")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    _check(out, reader.Execute())


def test_nifti_from_a_dicom_without_geometry_falls_back_to_its_spacing(ct_small, tmp_path):
    ds = _oblique(ct_small)
    del ds.ImageOrientationPatient
    src = tmp_path / "noiop.dcm"
    ds.save_as(src)
    scan = read_scan(src)
    img = nib.load(write_scan(scan, scan.pixels, tmp_path / "out", fmt="nifti"))
    np.testing.assert_allclose(img.header.get_zooms()[:2], (0.5, 0.8))  # (x: columns, y: rows)


@pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="dcm2niix (Debian package) is not installed")
@pytest.mark.parametrize("oblique", [False, True])
def test_nifti_from_dicom_matches_dcm2niix(ct_small, tmp_path, oblique):
    """The same voxels at the same world positions as dcm2niix writes (a second reference)."""
    import subprocess

    src = tmp_path / "in" / "scan.dcm"
    src.parent.mkdir()
    (_oblique(ct_small) if oblique else pydicom.dcmread(ct_small)).save_as(src)
    subprocess.run(["dcm2niix", "-z", "n", "-f", "ref", "-o", str(tmp_path), str(src.parent)], check=True,
                   capture_output=True)
    ref = nib.load(tmp_path / "ref.nii")
    scan = read_scan(src)
    ours = nib.load(write_scan(scan, scan.pixels, tmp_path / "ours", fmt="nifti"))
    a = np.asarray(ours.dataobj, dtype=np.float64).reshape(ours.shape[:2])
    b = np.asarray(ref.dataobj, dtype=np.float64).reshape(ref.shape[:2])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(ours.affine[:3, :2], ref.affine[:3, :2], atol=1e-4)  # in-plane axes
    np.testing.assert_allclose(ours.affine[:3, 3], ref.affine[:3, 3], atol=1e-3)  # first voxel's centre
