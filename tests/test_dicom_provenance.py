"""Derived DICOM outputs say where they came from, masks of DICOM inputs are DICOM Segmentations
that reference the input, and dciodvfy (dicom3tools, the test extra) finds no error in any output
that it does not also find in the input. highdicom reads the SEG back as the reference."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from test_io import _series

from cfgen.io.provenance import DERIVATION_CODE, SERIES_NUMBER_OFFSET
from cfgen.models.ldm3d import LDM3DSpec, build_ldm3d

TEST_FILES = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent
#: the test extra's dicom3tools (beside this Python) first: Debian's 2022 build predates Synthetic Data
DCIODVFY = next((str(p) for p in [Path(sys.executable).parent / "dciodvfy"] if p.is_file()), shutil.which("dciodvfy"))
FAST = ["--steps", "3", "-q", "--mask", "auto"]


def _errors(path: Path) -> set[str]:
    """dciodvfy's error lines, without the values that differ between two files (UIDs, numbers)."""
    res = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    lines = (res.stdout + res.stderr).splitlines()
    return {re.sub(r"\[[^\]]*\]|<[^>]*>", "", ln).strip() for ln in lines if "Error" in ln}


def _check_derived(out, src) -> None:
    (ref,) = out.SourceImageSequence
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (src.SOPClassUID, src.SOPInstanceUID)
    assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    code = out.DerivationCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == DERIVATION_CODE[:2]
    assert "cfgen" in out.DerivationDescription and out.SyntheticData == "YES"
    assert out.SOPInstanceUID != src.SOPInstanceUID == ref.ReferencedSOPInstanceUID
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.SeriesInstanceUID != src.SeriesInstanceUID
    assert int(out.SeriesNumber) == int(src.get("SeriesNumber") or 0) + SERIES_NUMBER_OFFSET
    assert out.SeriesDescription.startswith("SYNTHETIC cfgen")
    assert out.Manufacturer == "cfgen" and out.SoftwareVersions.startswith("cfgen")
    assert out.PatientID == src.PatientID and out.StudyInstanceUID == src.StudyInstanceUID  # kept


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_derived_file_references_its_source_and_its_mask_is_a_seg(cli, tiny_model, tmp_path, name):
    import highdicom as hd

    src = TEST_FILES / name
    res = cli("edit", src, "-p", "x", "-m", tiny_model, "-o", tmp_path / "out", *FAST)
    assert res.exit_code == 0, res.output
    item = tmp_path / "out" / Path(name).stem
    out, orig = pydicom.dcmread(item / "counterfactual.dcm"), pydicom.dcmread(src)
    _check_derived(out, orig)
    seg = hd.seg.segread(item / "mask.dcm")
    assert seg.SegmentationType == "FRACTIONAL" and seg.SyntheticData == "YES"
    refd = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert refd.ReferencedSOPInstanceUID == orig.SOPInstanceUID and seg.FrameOfReferenceUID == orig.FrameOfReferenceUID
    weights = seg.get_pixels_by_source_instance([orig.SOPInstanceUID], segment_numbers=[1])[0, ..., 0]
    png = np.asarray(Image.open(item / "mask.png")) / 255.0
    assert weights.shape == png.shape and np.abs(weights - png).max() <= 1 / 255 + 1e-6
    assert 0 < (png > 0.5).mean() < 1


def test_32_bit_output_gets_a_new_instance_uid(cli, tiny_model, tmp_path):
    src = TEST_FILES / "rtdose_1frame.dcm"
    res = cli("edit", src, "-p", "x", "-m", tiny_model, "--steps", "1", "-q", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    _check_derived(pydicom.dcmread(tmp_path / "out" / "rtdose_1frame" / "counterfactual.dcm"), pydicom.dcmread(src))


@pytest.fixture(scope="module")
def tiny3d(tmp_path_factory):
    return build_ldm3d(tmp_path_factory.mktemp("models3d") / "tiny3d", LDM3DSpec(), seed=0)


def test_derived_series_references_each_slice(cli, tiny3d, ct_small, tmp_path):
    import highdicom as hd

    folder = _series(tmp_path / "series", ct_small, n=5)
    res = cli("edit", folder, "-p", "x", "-m", tiny3d, "-o", tmp_path / "out", *FAST)
    assert res.exit_code == 0, res.output
    sources = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))}
    outs = sorted((tmp_path / "out" / "series" / "counterfactual").glob("*.dcm"))
    assert len(outs) == 5
    series = {pydicom.dcmread(f).SeriesInstanceUID for f in outs}
    assert len(series) == 1
    for f in outs:
        out = pydicom.dcmread(f)
        _check_derived(out, sources[out.SourceImageSequence[0].ReferencedSOPInstanceUID])
    seg = hd.seg.segread(tmp_path / "out" / "series" / "mask.dcm")
    refs = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refs == set(sources) and int(seg.NumberOfFrames) == 5


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy not installed (pip install 'cfgen[test]' installs dicom3tools)")
def test_dciodvfy_finds_no_new_errors(cli, tiny_model, tiny3d, ct_small, tmp_path):
    checked = 0
    for name in ("CT_small.dcm", "MR_small.dcm"):
        res = cli("edit", TEST_FILES / name, "-p", "x", "-m", tiny_model, "-o", tmp_path / "out", *FAST)
        assert res.exit_code == 0, res.output
        item = tmp_path / "out" / Path(name).stem
        assert _errors(item / "counterfactual.dcm") <= _errors(TEST_FILES / name), name
        assert _errors(item / "mask.dcm") == set(), name
        checked += 2
    folder = _series(tmp_path / "series", ct_small, n=3)
    res = cli("edit", folder, "-p", "x", "-m", tiny3d, "-o", tmp_path / "out3", *FAST)
    assert res.exit_code == 0, res.output
    for f in sorted((tmp_path / "out3" / "series" / "counterfactual").glob("*.dcm")):
        assert _errors(f) <= _errors(folder / f.name), f.name
        checked += 1
    assert _errors(tmp_path / "out3" / "series" / "mask.dcm") == set()
    assert checked == 7
    # the check can fail: a file that breaks the IOD is reported
    broken = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    del broken.SOPInstanceUID
    broken.save_as(tmp_path / "broken.dcm", enforce_file_format=False)
    assert _errors(tmp_path / "broken.dcm") - _errors(TEST_FILES / "CT_small.dcm")
