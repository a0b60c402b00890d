"""Inputs whose stored values are not intensities (issue 18, item 5), on pydicom's own test files:
a PALETTE COLOR image is edited as the colours it shows, a 32-bit RT dose grid is written back as
32-bit, and a complex NIfTI is refused with one line before it is edited."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from cfgen.io.scan import read_scan

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def test_a_palette_image_is_read_as_the_rgb_its_table_gives_and_written_as_rgb(cli, tiny_rgb_model, tmp_path):
    from pydicom.pixels import apply_color_lut

    src = TEST_FILES / "examples_palette.dcm"
    ds = pydicom.dcmread(src)
    want = apply_color_lut(ds.pixel_array, ds)  # (rows, cols, 3): pydicom's own reading of the table
    scan = read_scan(src)
    assert scan.channels == 3
    np.testing.assert_array_equal(np.moveaxis(scan.pixels, 0, -1), want.astype(np.float32))
    res = cli("edit", src, "-p", "x", "-m", tiny_rgb_model, "--steps", "1", "-q", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    out = pydicom.dcmread(tmp_path / "out" / "examples_palette" / "counterfactual.dcm")
    assert out.PhotometricInterpretation == "RGB" and out.SamplesPerPixel == 3
    assert "RedPaletteColorLookupTableData" not in out and out.pixel_array.shape == want.shape


def test_a_32_bit_dose_grid_is_edited_and_written_as_32_bit(cli, tiny_model, tmp_path):
    src = TEST_FILES / "rtdose_1frame.dcm"
    res = cli("edit", src, "-p", "x", "-m", tiny_model, "--steps", "1", "-q", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    out = pydicom.dcmread(tmp_path / "out" / "rtdose_1frame" / "counterfactual.dcm")
    orig = pydicom.dcmread(src)
    assert (out.BitsAllocated, out.BitsStored) == (32, int(orig.BitsStored))
    assert out.pixel_array.dtype == orig.pixel_array.dtype and out.pixel_array.shape == orig.pixel_array.shape
    assert out.pixel_array.max() > 2 ** 16  # the values keep their 32-bit range (no wrap to 16 bits)
    assert out.SyntheticData == "YES"


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_a_complex_nifti_is_refused_before_it_is_edited(cli, tiny_model, tmp_path, dtype):
    path = tmp_path / "phase.nii.gz"
    data = (np.ones((8, 8, 4)) + 1j * np.arange(256).reshape(8, 8, 4)).astype(dtype)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    res = cli("edit", path, "-p", "x", "-m", tiny_model, "-q", "-o", tmp_path / "out")
    assert res.exit_code == 1 and "holds no single intensity per voxel" in res.stderr
    assert res.stderr.count("\n") == 1 and not list((tmp_path / "out").glob("*/counterfactual*"))
