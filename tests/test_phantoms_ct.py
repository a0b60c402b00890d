"""`cfgen phantoms ct`: chest CT phantoms in HU, their label maps and true counterfactuals, and the
CT measures of `cfgen evaluate` against the phantoms' known values."""
from __future__ import annotations

import csv
import nibabel as nib
import numpy as np
import pytest

from cfgen.phantoms import ct


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from typer.testing import CliRunner

    from cfgen.cli.main import app

    out = tmp_path_factory.mktemp("ct")
    res = CliRunner().invoke(app, ["phantoms", "ct", "-n", "4", "-o", str(out), "-q", "--workers", "1"])
    assert res.exit_code == 0, res.output
    return out


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_subject_depends_on_its_seed_and_index_alone():
    a = ct.render(*ct.subject(5, 2), 32, 12.0)
    assert np.array_equal(a, ct.render(*ct.subject(5, 2), 32, 12.0))
    assert not np.array_equal(a, ct.render(*ct.subject(5, 3), 32, 12.0))


def test_the_same_subject_on_two_grids():
    """Geometry is in mm: volumes and the heart's position agree between 6 mm and 4 mm voxels."""
    exo, attrs = ct.subject(0, 0)
    got = []
    for size, spacing in ((64, 6.0), (96, 4.0)):
        maps = ct.tissue_maps(exo, attrs, size, spacing)
        m = ct.measurements(maps, exo, attrs, spacing)
        lab = ct.label_map(maps)
        centre = nib.affines.apply_affine(ct.affine(size, spacing), np.argwhere(lab == ct.LABELS["heart"]).mean(0))
        got.append((m["lung_ml"], m["effusion_ml"], centre))
    assert got[0][0] == pytest.approx(got[1][0], rel=0.02) and got[0][1] == pytest.approx(got[1][1], rel=0.02)
    assert np.abs(got[0][2] - got[1][2]).max() < 6.0  # mm: within a coarse voxel


def test_hu_of_the_tissues(world):
    row = _rows(world / "labels.csv")[0]
    hu = np.asarray(nib.load(world / row["Path"]).dataobj)
    lab = np.asarray(nib.load(world / row["labels"]).dataobj)
    assert hu.dtype == np.int16 and hu.min() >= -1024 and hu.max() > 500  # bone
    lung = np.isin(lab, [1, 2, 3, 4, 5])
    assert -900 < np.median(hu[lung]) < -800 and set(np.unique(lab[lung])) == {1, 2, 3, 4, 5}
    assert 20 < np.median(hu[lab == ct.LABELS["heart"]]) < 60
    assert np.median(hu[0]) < -990  # air beyond the body (x = -189 mm)
    if row["effusion"] != "none":
        assert -10 < np.median(hu[lab == ct.LABELS["effusion"]]) < 30  # pleural fluid


def test_counterfactuals_change_only_inside_their_masks(world):
    for r in _rows(world / "counterfactuals.csv"):
        f = np.asarray(nib.load(world / r["image"]).dataobj).astype(np.float32)
        cf = np.asarray(nib.load(world / r["counterfactual"]).dataobj).astype(np.float32)
        mask = np.asarray(nib.load(world / r["mask"]).dataobj) > 0
        assert mask.any(), r["counterfactual"]
        assert np.abs(cf - f)[~mask].max() <= 21  # the same noise; below the mask's 20 HU threshold
        assert np.abs(cf - f)[mask].mean() > 20


def test_ct_measures_recover_the_phantoms_known_values(world):
    """evaluate's effusion, %LAA-950 and CTR (cfgen.evaluation.ct, as `cfgen evaluate` calls it with
    a pairs CSV's labels and counterfactual_labels: tests/test_ct_measures.py) on each true
    counterfactual with its label map, against the values the phantom was drawn with."""
    from cfgen.evaluation.ct import pair_measures, parse_labels
    from cfgen.io.scan import read_scan

    for r in _rows(world / "counterfactuals.csv"):
        m = pair_measures(read_scan(world / r["image"]), read_scan(world / r["counterfactual"]), world / r["labels"],
                          world / r["counterfactual_labels"], parse_labels(None))
        assert m["ctr_after"] == pytest.approx(float(r["cf_ctr"]), abs=0.03)
        assert m["laa950_pct_after"] == pytest.approx(float(r["cf_laa950_pct"]), abs=2.0)
        true_ml = float(r["cf_effusion_ml"])
        assert abs(m["effusion_ml_after"] - true_ml) <= 0.15 * true_ml + 15  # mL: partial volume at 6 mm


def test_edit_jobs_carry_the_label_map_and_ct_captions(world):
    jobs = _rows(world / "edit_jobs.csv")
    assert len(jobs) == 16 and all(j["labels"].startswith("anatomy/") for j in jobs)
    assert all(j["prompt"].startswith("Chest CT of a ") and j["prompt"] != j["source_prompt"] for j in jobs)


def test_ct_caption_template():
    from cfgen.captions.templates import caption_rows

    row = {"Age": "63", "Sex": "M", "effusion": "large", "effusion_side": "right", "emphysema": "severe",
           "emphysema_type": "centrilobular", "Cardiomegaly": "1", "nodules": "2"}
    assert caption_rows([row], list(row), "ct", "t")[0] == ("Chest CT of a 63 year old male: large right pleural "
                                                            "effusion, severe centrilobular emphysema, cardiomegaly, "
                                                            "2 pulmonary nodules")
    row = {"effusion": "none", "Cardiomegaly": "0", "nodules": "0"}
    assert caption_rows([row], list(row), "ct", "t")[0] == ("Chest CT: no pleural effusion, normal heart size, "
                                                            "no pulmonary nodules")


def test_bad_ct_phantom_options_are_usage_errors(cli, tmp_path):
    res = cli("phantoms", "ct", "-n", "1", "--size", "32", "--spacing", "6", "-o", tmp_path / "o", "-q")
    assert res.exit_code == 2 and "field of view of at least 380 mm" in res.stderr
    assert not (tmp_path / "o").exists()


def test_dicom_series_hold_the_same_hu_and_geometry(world, cli, tmp_path):
    """--format dicom: CT series that SimpleITK reads to the NIfTI world's values and affine, with
    CT tags, and that dciodvfy (when installed) finds no error in."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import pydicom
    import SimpleITK as sitk

    from cfgen.evaluation.ct import pair_measures, parse_labels
    from cfgen.io.scan import read_scan

    out = tmp_path / "dcm"
    res = cli("phantoms", "ct", "-n", "1", "--format", "dicom", "--no-counterfactuals", "-o", out, "-q")
    assert res.exit_code == 0, res.output
    ref = nib.load(world / "images" / "ct_00000.nii.gz")
    files = sitk.ImageSeriesReader_GetGDCMSeriesFileNames(str(out / "images" / "ct_00000"))
    img = sitk.ReadImage(files)
    assert np.array_equal(sitk.GetArrayFromImage(img).transpose(2, 1, 0), np.asarray(ref.dataobj))
    lps = np.diag([-1.0, -1.0, 1.0])  # SimpleITK's LPS against NIfTI's RAS
    assert np.allclose(lps @ np.array(img.GetOrigin()), ref.affine[:3, 3])
    assert np.allclose(np.array(img.GetSpacing()), nib.affines.voxel_sizes(ref.affine))
    ds = pydicom.dcmread(files[0])
    assert (ds.Modality, ds.RescaleIntercept, ds.RescaleType, ds.SyntheticData) == ("CT", -1024, "HU", "YES")
    assert [float(v) for v in ds.WindowCenter] == [40.0, -600.0]
    scan = read_scan(out / "images" / "ct_00000")  # evaluate's measures on the series with the NIfTI label map
    m = pair_measures(scan, scan, world / "anatomy" / "ct_00000.nii.gz", None, parse_labels(None))
    assert m["ctr"] == pytest.approx(float(_rows(world / "labels.csv")[0]["ctr"]), abs=0.03)
    tool = next((str(p) for p in [Path(sys.executable).parent / "dciodvfy"] if p.is_file()), shutil.which("dciodvfy"))
    if tool:
        r = subprocess.run([tool, files[0]], capture_output=True, text=True, timeout=60)
        assert "Error" not in r.stdout + r.stderr, r.stdout + r.stderr


def test_edit_jobs_run_through_edit_and_evaluate_with_the_ct_measures(world, cli, tmp_path):
    """The phantoms' edit_jobs.csv through `cfgen edit --batch` (a 3D model, the same loop) and
    `cfgen evaluate` of the run: the carried label map is found from the run's folder."""
    from cfgen.models.ldm3d import LDM3DSpec, build_ldm3d

    model = build_ldm3d(tmp_path / "m3", LDM3DSpec(), seed=0)
    jobs = _rows(world / "edit_jobs.csv")[:1]
    with open(world / "one_job.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(jobs[0]))
        w.writeheader()
        w.writerows(jobs)
    res = cli("edit", "--batch", world / "one_job.csv", "-m", model, "-o", tmp_path / "run", "--steps", "2",
              "--window=-1024,600", "--figure-format", "none", "-q")
    assert res.exit_code == 0, res.output
    res = cli("evaluate", tmp_path / "run", "-o", tmp_path / "ev", "--classifier", "none", "--figure-format", "none",
              "-q")
    assert res.exit_code == 0, res.output
    import json

    (item,) = json.loads((tmp_path / "ev" / "report.json").read_text())["items"]
    row = _rows(world / "labels.csv")[0]
    assert item["metrics"]["ctr"] == pytest.approx(float(row["ctr"]), abs=0.03)
    assert "effusion_ml_after" in item["metrics"] and "laa950_pct_after" in item["metrics"]
