"""Scan I/O on real files: values, geometry and synthetic markers survive a round trip."""
from __future__ import annotations

import copy

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from cfgen.errors import ScanReadError
from cfgen.io.scan import read_scan, write_scan


def _save_png(path, arr):
    Image.fromarray(arr).save(path)
    return path


@pytest.mark.parametrize("dtype, shape", [(np.uint8, (20, 30)), (np.uint16, (20, 30)), (np.uint8, (20, 30, 3))])
def test_png_round_trip_keeps_values_depth_and_marks_synthetic(tmp_path, dtype, shape):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)
    scan = read_scan(_save_png(tmp_path / "in.png", arr))
    assert scan.pixels.shape == ((3,) if len(shape) == 3 else (1,)) + shape[:2]
    assert scan.source_dtype == np.dtype(dtype).name
    out = write_scan(scan, scan.pixels, tmp_path / "out", description="test")
    assert out.name == "out.png"
    with Image.open(out) as im:
        assert im.text["cfgen:synthetic"] == "YES" and "SYNTHETIC" in im.text["Description"]
        back = np.asarray(im)
    np.testing.assert_array_equal(back.astype(np.int64), arr.astype(np.int64))


def test_jpeg_and_tiff_carry_the_marker(tmp_path):
    arr = (np.arange(64 * 48).reshape(48, 64) % 255).astype(np.uint8)
    for suffix, key in ((".jpg", "comment"), (".tif", None)):
        src = tmp_path / f"in{suffix}"
        Image.fromarray(arr).save(src)
        scan = read_scan(src)
        out = write_scan(scan, scan.pixels, tmp_path / f"out{suffix[1:]}", description="d")
        with Image.open(out) as im:
            text = im.info[key].decode() if key else im.tag_v2[270]
        assert "SYNTHETIC" in text and "cfgen" in text


def test_dicom_round_trip_keeps_geometry_and_marks_derived(tmp_path, ct_small):
    scan = read_scan(ct_small)
    src = pydicom.dcmread(ct_small)
    assert scan.spacing == tuple(float(v) for v in src.PixelSpacing)
    np.testing.assert_allclose(scan.pixels[0], src.pixel_array * float(src.RescaleSlope) + float(src.RescaleIntercept))
    out = write_scan(scan, scan.pixels - 100, tmp_path / "cf", description="x")
    ds = pydicom.dcmread(out)
    for tag in ("PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient", "SliceThickness",
                "StudyInstanceUID", "PatientID", "Rows", "Columns"):
        assert ds.get(tag) == src.get(tag), tag
    assert ds.SyntheticData == "YES" and list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"]
    assert ds.SOPInstanceUID != src.SOPInstanceUID and ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    np.testing.assert_allclose(read_scan(out).pixels, scan.pixels - 100)


def test_monochrome1_is_flipped_for_the_model_and_back(tmp_path, mr_small):
    ds = pydicom.dcmread(mr_small)
    ds.PhotometricInterpretation = "MONOCHROME1"
    src = tmp_path / "m1.dcm"
    ds.save_as(src)
    scan = read_scan(src)
    raw = ds.pixel_array.astype(np.float32)
    # display values decrease where stored values increase
    assert np.corrcoef(scan.pixels[0].ravel(), raw.ravel())[0, 1] == pytest.approx(-1.0)
    out = write_scan(scan, scan.pixels, tmp_path / "cf", description="x")
    back = pydicom.dcmread(out)
    assert back.PhotometricInterpretation == "MONOCHROME1"
    np.testing.assert_array_equal(back.pixel_array, ds.pixel_array)


def _series(folder, ct_small, n=4, skip=()):
    from pydicom.uid import generate_uid

    folder.mkdir()
    base = pydicom.dcmread(ct_small)
    series = generate_uid()
    for i in range(n):
        if i in skip:
            continue
        ds = copy.deepcopy(base)
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        pos = [float(v) for v in base.ImagePositionPatient]
        ds.ImagePositionPatient = [pos[0], pos[1], pos[2] + 5.0 * i]
        arr = base.pixel_array.copy()
        arr[:8, :8] = 100 * i  # mark each slice
        ds.PixelData = arr.tobytes()
        ds.save_as(folder / f"slice{i:03d}.dcm")
    return folder


def test_dicom_series_round_trip(tmp_path, ct_small):
    folder = _series(tmp_path / "series", ct_small)
    scan = read_scan(folder)
    assert scan.format == "dicom-series" and scan.pixels.shape == (1, 128, 128, 4)
    assert scan.spacing[2] == pytest.approx(5.0)
    corner = scan.pixels[0, :8, :8, :].mean(axis=(0, 1))
    slope, inter = 1.0, -1024.0
    np.testing.assert_allclose(corner, [100 * i * slope + inter for i in range(4)])
    out = write_scan(scan, scan.pixels + 7, tmp_path / "cf", description="x")
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [f"slice{i:03d}.dcm" for i in range(4)]
    dss = [pydicom.dcmread(f) for f in files]
    assert len({d.SeriesInstanceUID for d in dss}) == 1 and dss[0].SeriesInstanceUID != pydicom.dcmread(folder / "slice000.dcm").SeriesInstanceUID
    assert all(d.SyntheticData == "YES" for d in dss)
    assert [float(d.ImagePositionPatient[2]) for d in dss] == [float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in sorted(folder.iterdir())]
    back = read_scan(out)
    np.testing.assert_allclose(back.pixels, scan.pixels + 7)


def test_dicom_series_with_missing_slice_is_refused(tmp_path, ct_small):
    folder = _series(tmp_path / "series", ct_small, n=6, skip=(3,))
    with pytest.raises(ScanReadError, match="missing slices"):
        read_scan(folder)


def test_nifti_volume_keeps_affine_and_header(tmp_path, anatomical):
    scan = read_scan(anatomical)
    src = nib.load(anatomical)
    assert scan.pixels.shape == (1,) + src.shape and scan.spacing == (2.0, 2.0, 2.0)
    out = write_scan(scan, scan.pixels * 0.5, tmp_path / "cf", description="older")
    img = nib.load(out)
    assert out.name == "cf.nii" and img.get_data_dtype() == src.get_data_dtype()  # .nii and int16 kept
    np.testing.assert_array_equal(img.affine, src.affine)
    assert int(img.header["qform_code"]) == int(src.header["qform_code"])
    assert int(img.header["sform_code"]) == int(src.header["sform_code"])
    assert b"SYNTHETIC" in img.header["descrip"].tobytes()
    np.testing.assert_allclose(img.get_fdata(), src.get_fdata() * 0.5, atol=0.5)  # int16: rounded


def test_oblique_2d_nifti_keeps_its_affine_and_orientation(tmp_path, anatomical):
    data = nib.load(anatomical).get_fdata()[:, :, 12:13].astype(np.float32)
    theta = np.deg2rad(17)
    aff = np.array([[np.cos(theta) * 1.5, -np.sin(theta), 0, -20], [np.sin(theta) * 1.5, np.cos(theta), 0, 10],
                    [0, 0, 3.0, 4], [0, 0, 0, 1]])
    img = nib.Nifti1Image(data, aff)
    img.set_qform(aff, code=1)
    src = tmp_path / "slice.nii.gz"
    nib.save(img, src)
    scan = read_scan(src)
    assert scan.spatial_dims == 2 and scan.pixels.shape == (1, data.shape[1], data.shape[0])
    # display orientation: the first row is the highest j
    np.testing.assert_array_equal(scan.pixels[0, 0, :], data[:, -1, 0])
    out = write_scan(scan, scan.pixels, tmp_path / "cf", description="x")
    back = nib.load(out)
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-5)
    assert nib.aff2axcodes(back.affine) == nib.aff2axcodes(img.affine)
    np.testing.assert_array_equal(back.get_fdata(), data)


@pytest.mark.parametrize("name, content, message", [
    ("empty.png", b"", "file is empty"),
    ("trunc.png", None, "cannot decode image"),
    ("text.nii.gz", b"this is not a nifti file\n" * 20, "not a readable NIfTI"),
    ("notdicom.dcm", b"hello" * 100, "not a DICOM file"),
    ("notes.txt", b"hello", "unknown scan format"),
])
def test_bad_files_give_one_line_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:
        buf = tmp_path / "full.png"
        Image.fromarray(np.zeros((64, 64), np.uint8) + 9).save(buf)
        content = buf.read_bytes()[:60]
    path.write_bytes(content)
    with pytest.raises(ScanReadError) as err:
        read_scan(path)
    assert str(path) in str(err.value) and message in str(err.value) and "\n" not in str(err.value)


def test_compressed_dicom_without_decoder_names_the_package():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("JPEG-lossy.dcm")
    try:
        pydicom.dcmread(path).pixel_array
        pytest.skip("a JPEG decoder is installed here")
    except Exception:
        pass
    with pytest.raises(ScanReadError, match=r"cfgen\[dicom-codecs\]"):
        read_scan(path)


def test_4d_nifti_and_nan_values_are_refused(tmp_path):
    p4 = tmp_path / "4d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), p4)
    with pytest.raises(ScanReadError, match="4D NIfTI"):
        read_scan(p4)
    pn = tmp_path / "nan.nii.gz"
    arr = np.zeros((4, 4, 4), np.float32)
    arr[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(arr, np.eye(4)), pn)
    with pytest.raises(ScanReadError, match="NaN"):
        read_scan(pn)


def test_outputs_get_normal_permissions(tmp_path, ct_small):
    import os
    import stat

    scan = read_scan(ct_small)
    out = write_scan(scan, scan.pixels, tmp_path / "cf", description="x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask


def test_atomic_folders_get_normal_permissions_even_from_private_writers(tmp_path):
    """safetensors creates 0600 files; a saved model folder must not stay private."""
    import os
    import stat

    import torch
    from safetensors.torch import save_file

    from cfgen.io.atomic import atomic_dir

    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "sub").mkdir()
        save_file({"w": torch.zeros(2)}, str(tmp / "sub" / "model.safetensors"))
    mask = os.umask(0)
    os.umask(mask)
    f = tmp_path / "model" / "sub" / "model.safetensors"
    assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o777 & ~mask
