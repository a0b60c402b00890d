"""Chest phantoms: determinism, local and attribute-specific counterfactuals, labels that match."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from cfgen.phantoms import cxr
from cfgen.phantoms.dataset import write_cxr_dataset


def test_same_seed_same_image_and_independent_indices():
    a = cxr.render(*cxr.subject(7, 3), size=64)
    b = cxr.render(*cxr.subject(7, 3), size=64)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - cxr.render(*cxr.subject(8, 3), size=64)).mean() > 0.01
    assert np.abs(a - cxr.render(*cxr.subject(7, 4), size=64)).mean() > 0.01
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("attribute", cxr.ATTRIBUTES)
def test_each_flip_changes_the_image_only_inside_its_mask(attribute):
    exo, attrs = cxr.subject(1, 0)
    exo = cxr.CXRExogenous(**{**cxr.exogenous_dict(exo), "pacemaker": True})
    alt = attrs.flipped(attribute, exo)
    assert getattr(alt, attribute) != getattr(attrs, attribute)
    assert all(getattr(alt, o) == getattr(attrs, o) for o in cxr.ATTRIBUTES if o != attribute)
    size = 128
    f, c = cxr.render(exo, attrs, size), cxr.render(exo, alt, size)
    mask = cxr.difference_mask(exo, attrs, alt, size)
    frac = mask.mean()
    assert 0.002 < frac < 0.35, frac  # non-empty and local
    diff = np.abs(f - c)
    assert diff[~mask].max() < 0.02  # same u: outside the mask only clipping-level differences
    assert diff[mask].mean() > 0.03


def test_attributes_act_where_they_should():
    exo, _ = cxr.subject(2, 5)
    exo = cxr.CXRExogenous(**{**cxr.exogenous_dict(exo), "effusion_side": 0})
    size = 128
    base = cxr.CXRAttributes()
    rows = np.nonzero(cxr.difference_mask(exo, base, cxr.CXRAttributes(effusion=2), size))[0]
    assert rows.min() > size * 0.3 and rows.mean() > size * 0.55  # fluid at the bases, climbing laterally
    eff = cxr.render_clean(exo, cxr.CXRAttributes(effusion=2), size)
    assert eff.mean() > cxr.render_clean(exo, base, size).mean()  # fluid is brighter than aerated lung
    small = cxr.difference_mask(exo, base, cxr.CXRAttributes(effusion=1), size).mean()
    large = cxr.difference_mask(exo, base, cxr.CXRAttributes(effusion=2), size).mean()
    assert 0 < small < large
    assert exo.ctr(cxr.CXRAttributes(cardiomegaly=1)) >= 0.56 and exo.ctr(base) <= 0.50
    dev = cxr.render_clean(exo, cxr.CXRAttributes(devices=1), size)
    assert dev.max() > 0.9 and cxr.render_clean(exo, base, size).max() < 0.9  # metal is the brightest thing


def test_the_sample_floor_redraws_only_what_the_scan_and_caption_do_not_show():
    """Removing devices or effusion hides nothing: the sample floor is the floor, pixel for pixel.
    Adding devices redraws where they sit (leads, pacemaker, tube) and nothing else, so an editor
    that samples them cannot match the truth: on 12 cases its pooled error is above doing nothing
    (wires at other places double the error), far above the floor's."""
    size = 64
    exo, attrs = cxr.subject(3, 0)
    with_dev = cxr.CXRAttributes(devices=1, effusion=2)
    fact = cxr.render(exo, with_dev, size)
    for attr in ("devices", "effusion"):  # removals
        clean_alt = cxr.render_clean(exo, with_dev.flipped(attr, exo), size)
        region = cxr.mask_between(cxr.render_clean(exo, with_dev, size), clean_alt)
        np.testing.assert_array_equal(cxr.sample_floor_edit(fact, cxr.render_clean(exo, with_dev, size), exo,
                                                            with_dev, attr),
                                      cxr.ideal_edit(fact, clean_alt, exo, region))
    none = cxr.CXRAttributes()
    alt = cxr.plausible_exogenous(exo, none, "devices")
    changed = {k for k, v in cxr.exogenous_dict(exo).items() if cxr.exogenous_dict(alt)[k] != v}
    assert changed and changed <= set(cxr.HIDDEN[("add", "devices")]), changed
    assert cxr.plausible_exogenous(exo, none, "devices") == alt  # deterministic per subject
    sums = np.zeros(3)
    for kind, e, fa, cf in cxr.edit_cases(12, 4242):
        if kind != "add devices":
            continue
        f, t = cxr.render(e, fa, size), cxr.render(e, cf, size)
        floor = cxr.ideal_edit(f, cxr.render_clean(e, cf, size), e, cxr.difference_mask(e, fa, cf, size))
        sample = cxr.sample_floor_edit(f, cxr.render_clean(e, fa, size), e, fa, "devices")
        sums += [np.abs(sample - t).mean(), np.abs(floor - t).mean(),
                 np.abs(f - t).mean()]
    assert sums[0] > sums[2] > 3 * sums[1], sums


def test_devices_follow_effusion_by_the_configured_amount():
    def rate(corr):
        prev = cxr.Prevalence(effusion=0.5, devices=0.5, device_effusion_corr=corr)
        att = [cxr.subject(3, i, prev)[1] for i in range(600)]
        with_eff = np.mean([a.devices for a in att if a.effusion])
        without = np.mean([a.devices for a in att if not a.effusion])
        return with_eff, without

    w, wo = rate(0.0)
    assert abs(w - wo) < 0.15
    w, wo = rate(0.8)
    assert w > 0.8 and wo < 0.2


def test_dataset_files_and_labels_match(tmp_path, cli):
    res = cli("phantoms", "cxr", "-n", "6", "-o", tmp_path / "ph", "--size", "64", "--seed", "4", "-q")
    assert res.exit_code == 0, res.output
    out = tmp_path / "ph"
    labels = list(csv.DictReader(open(out / "labels.csv")))
    assert len(labels) == 6
    for row in labels:
        exo, attrs = cxr.subject(4, int(row["index"]))
        assert row["Pleural Effusion"] == ("1.0" if attrs.effusion else "")
        assert row["Cardiomegaly"] == ("1.0" if attrs.cardiomegaly else "")
        assert row["Support Devices"] == ("1.0" if attrs.devices else "")
        assert row["No Finding"] == ("1.0" if not attrs.effusion and not attrs.cardiomegaly else "")
        with Image.open(out / row["Path"]) as im:
            assert im.size == (64, 64) and im.text["cfgen:synthetic"] == "YES"
            np.testing.assert_array_equal(np.asarray(im), np.round(cxr.render(exo, attrs, 64) * 255).astype(np.uint8))
    cfs = list(csv.DictReader(open(out / "counterfactuals.csv")))
    assert len(cfs) == 18 and {r["attribute"] for r in cfs} == set(cxr.ATTRIBUTES)
    for r in cfs:
        assert (out / r["counterfactual"]).is_file() and (out / r["mask"]).is_file()
        assert float(r["mask_fraction"]) > 0 and r["prompt"] != r["source_prompt"]
    jobs = list(csv.DictReader(open(out / "edit_jobs.csv")))
    assert len(jobs) == 18 and len({j["output"] for j in jobs}) == 18
    rep = json.loads((out / "report.json").read_text())
    assert rep["summary"]["images"] == 6 and rep["params"]["seed"] == 4


def test_parallel_and_serial_writers_agree(tmp_path):
    write_cxr_dataset(tmp_path / "a", 32, seed=9, size=48, counterfactuals=False, workers=1)
    write_cxr_dataset(tmp_path / "b", 32, seed=9, size=48, counterfactuals=False, workers=2)
    for i in (0, 17, 31):
        name = f"images/cxr_{i:05d}.png"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "labels.csv").read_text() == (tmp_path / "b" / "labels.csv").read_text()


def test_phantom_option_errors(cli, tmp_path):
    res = cli("phantoms", "cxr", "-n", "0", "-o", tmp_path / "x")
    assert res.exit_code == 2 and "-n 0" in res.stderr
    res = cli("phantoms", "cxr", "--device-effusion-corr", "1.5", "-o", tmp_path / "x")
    assert res.exit_code == 2 and "between 0 and 1" in res.stderr
