"""CT measures in `cfgen evaluate` (effusion mL, %LAA-950, CTR) on a volume built with known values,
written as real NIfTI files, in two orientations (nibabel's reorientation as the reference)."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from cfgen.evaluation import ct

SPACING = (2.0, 2.5, 3.0)  # mm; left-right is the first axis
VOXEL_ML = 2.0 * 2.5 * 3.0 / 1000


def _chest(effusion_top: int = 5, heart=(26, 34)):
    """HU volume and label map: two lungs (lobes 1, 3, 4), a vessel, the heart, an emphysema block
    of 400 voxels and a right basal effusion of 20 x 15 x (effusion_top - 2) voxels under a layer
    of 20 x 15 half-filled voxels."""
    hu = np.full((60, 40, 20), -1000.0, np.float32)
    lab = np.zeros(hu.shape, np.int16)
    hu[2:58, 2:38, :] = 40.0  # body
    for x0, top, low in ((5, 1, 3), (35, 4, 4)):
        hu[x0:x0 + 20, 5:35, 2:18] = -860.0  # aerated lung (evaluation.ct.LUNG_HU)
        lab[x0:x0 + 20, 5:35, 10:18] = top
        lab[x0:x0 + 20, 5:35, 2:10] = low
    lab[15, 5:35, 15], hu[15, 5:35, 15] = 7, 40.0  # a vessel inside the right lung
    hu[40:50, 10:20, 4:8] = -980.0  # emphysema, left lower lobe
    hu[5:25, 20:35, 2:effusion_top] = 10.0  # fluid at the right base
    hu[5:25, 20:35, effusion_top] = -425.0  # a partial-volume layer above it: half fluid, half lung
    lab[5:25, 20:35, 2:5] = 9  # the original's effusion label
    lab[heart[0]:heart[1], 10:25, 5:12], hu[heart[0]:heart[1], 10:25, 5:12] = 8, 40.0
    return hu, lab


def _save(folder, name, data, affine=None):
    path = folder / name
    nib.save(nib.Nifti1Image(data, np.diag([*SPACING, 1.0]) if affine is None else affine), path)
    return path


def test_measures_have_the_known_values():
    hu, lab = _chest()
    m = ct.measures(hu, lab, np.diag([*SPACING, 1.0]), ct.parse_labels(None))
    assert m["effusion_ml"] == pytest.approx((20 * 15 * 3 + 0.5 * 20 * 15) * VOXEL_ML)  # the layer counts half
    aerated = 2 * 20 * 30 * 16 - 30 - 20 * 15 * 3  # lungs without the vessel and the fluid
    assert m["laa950_pct"] == pytest.approx(100 * 400 / aerated)
    assert m["ctr"] == pytest.approx((8 * 2.0) / (50 * 2.0))  # heart 8 voxels wide, cavity 5..54
    lab[8, 30, 8] = lab[52, 12, 8] = 8  # two stray voxels labelled heart in its slices, far out in both lungs
    m2 = ct.measures(hu, lab, np.diag([*SPACING, 1.0]), ct.parse_labels(None))
    assert m2["ctr"] == pytest.approx(m["ctr"])  # the heart is its largest component
    assert ct._widest(lab == 8, 0, 2, 2.0) == pytest.approx(45 * 2.0)  # what the islands would have made it
    lab[0, 0, 8] = lab[59, 39, 8] = 1  # stray lung voxels in the air beside the body, in the heart's slices
    m3 = ct.measures(hu, lab, np.diag([*SPACING, 1.0]), ct.parse_labels(None))
    assert m3["ctr"] == pytest.approx(m["ctr"])  # the thorax is the lungs, not the islands
    assert ct._widest(np.isin(lab, [1, 3, 4, 9]), 0, 2, 2.0) == pytest.approx(60 * 2.0)


def test_measures_follow_the_patient_axes_not_the_voxel_order(tmp_path):
    """An LPS copy with permuted axes (nibabel's as_reoriented) measures the same."""
    from cfgen.io.scan import read_scan

    hu, lab = _chest()
    img, limg = (nib.Nifti1Image(a, np.diag([*SPACING, 1.0])) for a in (hu, lab))
    ornt = np.array([[2, 1], [0, -1], [1, -1]])  # voxel axes become (z, -x, -y)
    a = _save(tmp_path, "a.nii.gz", np.asarray(img.as_reoriented(ornt).dataobj), img.as_reoriented(ornt).affine)
    la = _save(tmp_path, "la.nii.gz", np.asarray(limg.as_reoriented(ornt).dataobj), limg.as_reoriented(ornt).affine)
    b = _save(tmp_path, "b.nii.gz", hu)
    lb = _save(tmp_path, "lb.nii.gz", lab)
    ids = ct.parse_labels(None)
    got = [ct.pair_measures(read_scan(v), read_scan(v), lv, None, ids) for v, lv in ((a, la), (b, lb))]
    assert got[0]["ctr"] == pytest.approx(got[1]["ctr"]) and got[0]["ctr"] == pytest.approx(0.16)
    assert got[0]["effusion_ml"] == pytest.approx(got[1]["effusion_ml"])
    assert got[0]["laa950_pct"] == pytest.approx(got[1]["laa950_pct"])


def _pairs(tmp_path, cf_labels: bool):
    hu, lab = _chest()
    hu_cf, lab_cf = _chest(effusion_top=8, heart=(25, 35))  # between the lungs
    rows = ["original,counterfactual,labels" + (",counterfactual_labels" if cf_labels else "")]
    _save(tmp_path, "ct.nii.gz", hu)
    _save(tmp_path, "cf.nii.gz", hu_cf)
    _save(tmp_path, "labels.nii.gz", lab)
    _save(tmp_path, "labels_cf.nii.gz", lab_cf)
    rows.append("ct.nii.gz,cf.nii.gz,labels.nii.gz" + (",labels_cf.nii.gz" if cf_labels else ""))
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "pairs.csv"


@pytest.mark.parametrize("cf_labels", [False, True])
def test_evaluate_reports_before_after_and_change(cli, tmp_path, cf_labels):
    csv = _pairs(tmp_path, cf_labels)
    res = cli("evaluate", csv, "-o", tmp_path / "ev", "--classifier", "none", "--figure-format", "none", "-q")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "ev" / "report.json").read_text())["items"][0]["metrics"]
    assert m["effusion_ml_change"] == pytest.approx(20 * 15 * 3 * VOXEL_ML)  # fluid grew by 3 slices
    aerated = 2 * 20 * 30 * 16 - 30 - 20 * 15 * 6  # the same emphysema in less aerated lung
    assert m["laa950_pct_after"] == pytest.approx(100 * 400 / aerated) and m["laa950_pct_change"] > 0
    if cf_labels:
        assert m["ctr_after"] == pytest.approx(20 / 100) and m["ctr_change"] == pytest.approx(0.04)
    else:  # the heart's size is read from a label map: without the counterfactual's, no CTR after
        assert m["ctr"] == pytest.approx(0.16) and "ctr_after" not in m


def test_bad_ct_inputs_fail_the_item_or_the_run(cli, tmp_path):
    csv = _pairs(tmp_path, False)
    _save(tmp_path, "labels.nii.gz", np.zeros((10, 10, 10), np.int16))
    res = cli("evaluate", csv, "-o", tmp_path / "ev", "--classifier", "none", "--figure-format", "none", "-q")
    assert res.exit_code == 1 and "labels.nii.gz" in res.stderr and "does not match the volume" in res.stderr
    hu, lab = _chest()
    _save(tmp_path, "labels.nii.gz", lab)
    _save(tmp_path, "ct.nii.gz", (hu + 1000) / 2000)  # intensities in [0, 1], not HU
    res = cli("evaluate", csv, "-o", tmp_path / "ev2", "--classifier", "none", "--figure-format", "none", "-q")
    assert res.exit_code == 1 and "need values in HU" in res.stderr
    res = cli("evaluate", csv, "-o", tmp_path / "ev3", "--ct-labels", "lungs=1-5", "-q")
    assert res.exit_code == 2 and "--ct-labels lungs=1-5" in res.stderr and not (tmp_path / "ev3").exists()
