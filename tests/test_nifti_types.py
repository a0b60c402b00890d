"""NIfTI outputs keep the input's on-disk type and file name suffix (issue 18, item 4): int16 stays
int16 (with scl_slope/scl_inter where the values need them), .nii stays .nii, float stays float;
read back with nibabel."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from cfgen.io.scan import read_scan, write_scan


def _volume(tmp_path, name, dtype, slope=None, inter=None):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 900, (12, 10, 8)).astype(dtype)
    img = nib.Nifti1Image(raw, np.diag([2.0, 2.0, 3.0, 1.0]))
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    path = tmp_path / name
    nib.save(img, path)
    return path


@pytest.mark.parametrize("name, dtype", [("v.nii", np.int16), ("v.nii.gz", np.uint8), ("v.nii.gz", np.float32)])
def test_the_on_disk_type_and_suffix_are_kept(tmp_path, name, dtype):
    src = _volume(tmp_path, name, dtype)
    scan = read_scan(src)
    out = write_scan(scan, scan.pixels, tmp_path / "cf")
    assert out.name == "cf" + name[1:] and nib.load(out).get_data_dtype() == np.dtype(dtype)
    np.testing.assert_array_equal(nib.load(out).get_fdata(), nib.load(src).get_fdata())  # unchanged values exactly


def test_the_inputs_scaling_is_kept_where_the_values_fit(tmp_path):
    src = _volume(tmp_path, "ct.nii.gz", np.int16, slope=0.5, inter=-1024.0)
    scan = read_scan(src)
    edited = scan.pixels + 0.5  # one stored step
    img = nib.load(write_scan(scan, edited, tmp_path / "cf"))
    assert img.get_data_dtype() == np.int16
    assert (float(img.dataobj.slope), float(img.dataobj.inter)) == (0.5, -1024.0)
    np.testing.assert_allclose(img.get_fdata(), nib.load(src).get_fdata() + 0.5)


def test_values_beyond_the_type_get_a_new_scaling_instead_of_clipping(tmp_path):
    src = _volume(tmp_path, "u8.nii.gz", np.uint8)
    scan = read_scan(src)
    edited = scan.pixels * 10.0  # up to 8990: past uint8's 255
    img = nib.load(write_scan(scan, edited, tmp_path / "cf"))
    assert img.get_data_dtype() == np.uint8 and float(img.dataobj.slope) > 1
    step = float(img.dataobj.slope)
    np.testing.assert_allclose(img.get_fdata(), nib.load(src).get_fdata() * 10.0, atol=step / 2 + 1e-6)
