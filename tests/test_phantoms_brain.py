"""Brain phantoms: determinism, causal mechanisms acting where they should, files and labels."""
from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest

from cfgen.phantoms import brain as B


def _meas(exo, attrs, size=48, spacing=4.0):
    return B.measurements(B.tissue_maps(exo, attrs, size, spacing), spacing)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_same_seed_same_volume_and_independent_indices():
    e1, a1 = B.subject(3, 7)
    e2, a2 = B.subject(3, 7)
    assert e1 == e2 and a1 == a2
    v1, v2 = B.render(e1, a1, 32, 6.0), B.render(e2, a2, 32, 6.0)
    assert v1.dtype == np.float32 and np.array_equal(v1, v2)
    e3, a3 = B.subject(3, 8)
    assert not np.array_equal(B.render(e3, a3, 32, 6.0), v1)
    assert B.subject(4, 7)[0] != e1


def test_age_grows_ventricles_and_shrinks_brain_monotonically_over_0_to_100():
    for index in range(3):
        exo, attrs = B.subject(11, index)
        ms = [_meas(exo, attrs.with_value("age", age)) for age in (0, 25, 50, 75, 100)]
        vent = [m["ventricle_ml"] for m in ms]
        brain = [m["brain_ml"] for m in ms]
        assert all(b > a for a, b in zip(vent, vent[1:])), vent
        assert all(b < a for a, b in zip(brain, brain[1:])), brain
        assert len({round(m["icv_ml"], 3) for m in ms}) == 1  # age leaves the skull alone


def test_lesion_load_sets_lesion_volume_and_changes_only_white_matter_near_the_ventricles():
    exo, attrs = B.subject(2, 0)
    attrs = attrs.with_value("lesion_load", 0.0)
    vols = [_meas(exo, attrs.with_value("lesion_load", load), 64, 3.0)["lesion_ml"] for load in (0, 2, 8, 20)]
    assert vols[0] == 0.0 and all(b > a for a, b in zip(vols, vols[1:])), vols
    assert 0.5 * 20 < vols[-1] <= 20 * 1.05  # the label is the volume drawn (less partial volume at edges)
    clean = B.render_clean(exo, attrs, 64, 3.0)
    alt = B.render_clean(exo, attrs.with_value("lesion_load", 20.0), 64, 3.0)
    mask = B.mask_between(clean, alt)
    assert 0 < mask.mean() < 0.02
    assert (alt[mask] < clean[mask]).mean() > 0.95  # T1-dark lesions
    x, y, z = B.grid_mm(64, 3.0)
    r = np.sqrt((x[mask] - exo.centre[0]) ** 2 + (z[mask] - exo.centre[2] - 10) ** 2)
    assert np.percentile(r, 95) < 45  # periventricular, not cortical


@pytest.mark.parametrize("attribute", ["age", "sex", "diagnosis", "lesion_load"])
def test_each_counterfactual_changes_the_volume_and_the_true_measure_moves_the_right_way(attribute):
    exo, attrs = B.subject(5, 1)
    alt = B.counterfactual_attributes(exo, attrs)[attribute]
    assert getattr(alt, attribute) != getattr(attrs, attribute)
    assert all(getattr(alt, a) == getattr(attrs, a) for a in B.ATTRIBUTES if a != attribute)
    mask = B.mask_between(B.render_clean(exo, attrs, 48, 4.0), B.render_clean(exo, alt, 48, 4.0))
    assert mask.any()
    m0, m1 = _meas(exo, attrs), _meas(exo, alt)
    if attribute == "age":
        assert np.sign(m1["ventricle_ml"] - m0["ventricle_ml"]) == np.sign(alt.age - attrs.age)
    elif attribute == "sex":
        assert (m1["icv_ml"] > m0["icv_ml"]) == (alt.sex == "M")
    elif attribute == "diagnosis":
        assert (m1["hippocampus_ml"] < m0["hippocampus_ml"]) == (alt.diagnosis == "AD")
    else:
        assert (m1["lesion_ml"] > m0["lesion_ml"]) == (alt.lesion_load > attrs.lesion_load)
    if attribute != "sex":  # everything but head size is local
        assert mask.mean() < 0.25


def test_anatomy_does_not_depend_on_the_grid():
    exo, attrs = B.subject(9, 4)
    coarse, fine = _meas(exo, attrs, 48, 4.0), _meas(exo, attrs, 96, 2.0)
    for k in ("icv_ml", "brain_ml", "ventricle_ml"):
        assert fine[k] == pytest.approx(coarse[k], rel=0.12), k


def test_interventions_are_checked():
    a = B.BrainAttributes()
    with pytest.raises(ValueError, match="age 120"):
        a.with_value("age", 120)
    with pytest.raises(ValueError, match="diagnosis"):
        a.with_value("diagnosis", "XYZ")
    with pytest.raises(ValueError, match="unknown attribute"):
        a.with_value("height", 1)


def test_dataset_files_labels_and_jobs(tmp_path, cli):
    out = tmp_path / "brain"
    res = cli("phantoms", "brain", "-n", "2", "--size", "40", "--spacing", "5", "--seed", "21", "-o", out, "-q")
    assert res.exit_code == 0, res.output
    labels, cfs, jobs = (_rows(out / f) for f in ("labels.csv", "counterfactuals.csv", "edit_jobs.csv"))
    assert len(labels) == 2
    for i, row in enumerate(labels):
        exo, attrs = B.subject(21, i)
        assert (float(row["Age"]), row["Sex"], row["Diagnosis"], float(row["lesion_load"])) == \
            (attrs.age, attrs.sex, attrs.diagnosis, attrs.lesion_load)
        img = nib.load(out / row["Path"])
        assert img.shape == (40, 40, 40)
        assert np.allclose(img.affine, B.affine(40, 5.0)) and nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert b"SYNTHETIC" in img.header["descrip"].tobytes()
        np.testing.assert_allclose(img.get_fdata(), B.render(exo, attrs, 40, 5.0), atol=2e-5)
        assert float(row["ventricle_ml"]) == pytest.approx(_meas(exo, attrs, 40, 5.0)["ventricle_ml"], abs=0.01)
    assert len(cfs) == len(jobs) == 8
    for cf, job in zip(cfs, jobs):
        vol = nib.load(out / cf["counterfactual"]).get_fdata()
        mask = np.asarray(nib.load(out / cf["mask"]).dataobj)
        assert mask.dtype == np.uint8 and mask.any() and float(cf["mask_fraction"]) == pytest.approx(mask.mean(), abs=1e-5)
        orig = nib.load(out / cf["image"]).get_fdata()
        assert np.abs(vol - orig)[mask == 0].max() < 0.05  # outside the mask only noise-level change
        assert job["true_counterfactual"] == cf["counterfactual"] and float(job["target"]) == float(cf["target"])
        assert job["source_prompt"].startswith("Brain MRI of a ") and job["prompt"] != job["source_prompt"]
    age_job = next(j for j in jobs if j["label"] == "Age")
    assert f"{float(age_job['target']):g} year old" in age_job["prompt"]


def test_brain_phantom_option_errors(cli, tmp_path):
    res = cli("phantoms", "brain", "--size", "32", "--spacing", "3", "-o", tmp_path / "x")
    assert res.exit_code == 2 and "field of view" in res.output
    res = cli("phantoms", "brain", "--ms", "1.5", "-o", tmp_path / "x")
    assert res.exit_code == 2 and "--ms 1.5" in res.output
    res = cli("phantoms", "brain", "--anatomy", "ventricles,skull", "-o", tmp_path / "x")
    assert res.exit_code == 2 and "'skull' is unknown" in res.output
    res = cli("phantoms", "brain", "--anatomy", "lesions,lesions", "-o", tmp_path / "x")
    assert res.exit_code == 2 and "'lesions' is unknown or repeated" in res.output
    assert not (tmp_path / "x").exists()


def test_anatomy_label_maps_follow_the_true_volumes(tmp_path, cli):
    out = tmp_path / "brain"
    res = cli("phantoms", "brain", "-n", "3", "--size", "48", "--spacing", "4", "--seed", "3", "--ms", "1",
              "--no-counterfactuals", "--anatomy", "brain,ventricles,lesions", "-o", out, "-q")
    assert res.exit_code == 0, res.output
    rows = _rows(out / "labels.csv")
    ml = 4.0 ** 3 / 1000
    for row in rows:
        img, lab = nib.load(out / row["Path"]), nib.load(out / row["labels"])
        assert row["labels"].startswith("anatomy/") and lab.shape == img.shape and np.allclose(lab.affine, img.affine)
        v = np.asarray(lab.dataobj)
        assert v.dtype == np.uint8 and set(np.unique(v)) <= {0, 1, 2, 3}
        # partial volume >= 0.5 against the soft volumes in labels.csv (the thin ventricles lose ~15%
        # of their soft edge to the threshold)
        assert (v == 2).sum() * ml == pytest.approx(float(row["ventricle_ml"]), rel=0.25)
        assert (v == 3).sum() * ml == pytest.approx(float(row["lesion_ml"]), rel=0.35, abs=0.5)
        # later structures paint over earlier ones: brain is what is left inside it
        assert ((v >= 1).sum() * ml) == pytest.approx(float(row["brain_ml"]), rel=0.1)
        # the label map is where the image shows the structure: ventricles are CSF-dark
        t1 = img.get_fdata()
        assert t1[v == 2].mean() < 0.5 * t1[v == 1].mean()
    assert float(rows[0]["lesion_ml"]) > 0 and (np.asarray(nib.load(out / rows[0]["labels"]).dataobj) == 3).any()
    report = __import__("json").loads((out / "report.json").read_text())
    assert report["params"]["anatomy"] == ["brain", "ventricles", "lesions"]


def test_counterfactuals_come_with_their_own_anatomy(tmp_path, cli):
    """With --anatomy, each true counterfactual has the label map of its own anatomy: removing
    lesions removes their label, ageing moves the ventricle label by the counterfactual's volume."""
    out = tmp_path / "brain"
    res = cli("phantoms", "brain", "-n", "2", "--size", "48", "--spacing", "4", "--seed", "5", "--ms", "1",
              "--anatomy", "ventricles,lesions", "-o", out, "-q")
    assert res.exit_code == 0, res.output
    ml = 4.0 ** 3 / 1000
    rows = _rows(out / "counterfactuals.csv")
    assert len(rows) == 8 and all(r["labels"].endswith(".anatomy.nii.gz") for r in rows)
    factual = {r["Path"]: np.asarray(nib.load(out / r["labels"]).dataobj) for r in _rows(out / "labels.csv")}
    for r in rows:
        cf, lab = nib.load(out / r["counterfactual"]), nib.load(out / r["labels"])
        assert lab.shape == cf.shape and np.allclose(lab.affine, cf.affine)
        v, f = np.asarray(lab.dataobj), factual[r["image"]]
        assert (v == 1).sum() * ml == pytest.approx(float(r["cf_ventricle_ml"]), rel=0.25)
        if r["attribute"] == "lesion_load":  # MS phantoms: lesions removed
            assert (f == 2).any() and not (v == 2).any() and float(r["cf_lesion_ml"]) == 0
        if r["attribute"] == "sex":  # head size changes with sex; the labels follow, and differ
            assert not np.array_equal(v, f)
        if r["attribute"] == "age":
            older = float(r["counterfactual_value"]) > float(r["factual"])
            assert ((v == 1).sum() > (f == 1).sum()) == older
