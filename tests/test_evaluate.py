"""cfgen evaluate: metric values, ground truth, classifier gain, CLIP scores, reports and figures."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cfgen.evaluation.distribution import diversity, fid, mmd
from cfgen.evaluation.pairwise import identity_metrics, truth_metrics
from cfgen.metrics.stats import describe


from schema import validate_report as _schema_validate


def test_identical_images_give_perfect_identity_scores():
    x = torch.rand(1, 1, 64, 64)
    m = identity_metrics(x, x.clone())
    assert m["l1"] == 0.0
    assert m["psnr"] is None and m["psnr_capped"] == 100.0
    assert m["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert m["ms_ssim"] == pytest.approx(1.0, abs=1e-6)


def test_a_known_shift_gives_known_values():
    x = torch.full((1, 1, 64, 64), 0.4)
    m = identity_metrics(x, x + 0.1)
    assert m["l1"] == pytest.approx(0.1, abs=1e-6)
    assert m["psnr"] == pytest.approx(20.0, abs=1e-3)  # MSE 0.01 -> 10 log10(1 / 0.01)


def test_truth_metrics_measure_how_much_of_the_required_change_was_made():
    x = torch.zeros(1, 1, 32, 32)
    t = x.clone()
    t[..., 8:16, 8:16] = 1.0
    exact = truth_metrics(x, t, t)
    assert exact["gt_l1"] == 0 and exact["gt_error_ratio"] == 0 and exact["gt_achieved"] == pytest.approx(1.0)
    nothing = truth_metrics(x, x, t)
    assert nothing["gt_error_ratio"] == pytest.approx(1.0) and nothing["gt_achieved"] == 0.0
    half = truth_metrics(x, x + (t - x) / 2, t)
    assert half["gt_achieved"] == pytest.approx(0.5) and half["gt_error_ratio"] == pytest.approx(0.5)
    assert half["change_inside"] == pytest.approx(0.5) and half["change_outside"] == 0.0
    assert half["region_fraction"] == pytest.approx(64 / 1024)
    wrong_place = x.clone()
    wrong_place[..., 20:28, 20:28] = 1.0
    w = truth_metrics(x, wrong_place, t)
    assert w["change_inside"] == 0.0 and w["change_outside"] > 0 and w["gt_error_ratio"] == pytest.approx(2.0)


def test_fid_and_mmd_are_zero_for_a_set_with_itself_and_grow_with_a_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 8, generator=g)
    b = torch.randn(300, 8, generator=g)
    assert abs(fid(a, a)) < 1e-6
    assert fid(a, b) < fid(a, b + 0.5) < fid(a, b + 2.0)
    assert mmd(a, b + 0.5) < mmd(a, b + 2.0)
    assert fid(a[:1], b) is None


def test_diversity_is_one_for_copies_and_lower_for_different_images():
    x = torch.rand(1, 1, 64, 64)
    assert diversity([x, x.clone(), x.clone()])["value"] == pytest.approx(1.0, abs=1e-5)
    assert diversity([torch.rand(1, 1, 64, 64) for _ in range(4)])["value"] < 0.5


def test_bootstrap_interval_contains_the_mean_and_is_reproducible():
    rng = np.random.default_rng(1)
    v = rng.normal(3.0, 1.0, size=200)
    d = describe(v)
    assert d["n"] == 200 and d["ci95"][0] < d["mean"] < d["ci95"][1]
    assert d["std"] == pytest.approx(float(np.std(v, ddof=1)))
    assert d["ci95"][1] - d["ci95"][0] == pytest.approx(2 * 1.96 / np.sqrt(200), rel=0.25)
    assert describe(v) == d
    assert describe([None, True, float("nan")])["n"] == 0
    assert describe([2.0]) == {"mean": 2.0, "std": 0.0, "ci95": [2.0, 2.0], "n": 1}


@pytest.fixture(scope="module")
def phantom_pairs(tmp_path_factory) -> Path:
    """Held-out chest phantoms (128 px) with their true counterfactuals."""
    from cfgen.phantoms.dataset import write_cxr_dataset

    root = tmp_path_factory.mktemp("evalph")
    write_cxr_dataset(root, 8, seed=90000, size=128, workers=1)
    return root


def _pairs_csv(root: Path, name: str, counterfactual_of) -> Path:
    with open(root / "edit_jobs.csv", newline="") as f:
        jobs = list(csv.DictReader(f))
    path = root / name
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["name", "original", "counterfactual", "label", "target",
                                          "true_counterfactual", "mask", "source_prompt", "prompt"])
        w.writeheader()
        for j in jobs:
            w.writerow({"name": j["output"], "original": j["image"], "counterfactual": counterfactual_of(j),
                        "label": j["label"], "target": j["target"], "true_counterfactual": j["true_counterfactual"],
                        "mask": j["true_mask"], "source_prompt": j["source_prompt"], "prompt": j["prompt"]})
    return path


@pytest.mark.slow
def test_shipped_classifier_gives_high_gain_to_true_counterfactuals_and_none_to_copies(cli, phantom_pairs, tmp_path):
    truth = _pairs_csv(phantom_pairs, "truth.csv", lambda j: j["true_counterfactual"])
    same = _pairs_csv(phantom_pairs, "same.csv", lambda j: j["image"])
    r1 = cli("evaluate", truth, "-o", tmp_path / "truth", "-q")
    r2 = cli("evaluate", same, "-o", tmp_path / "same", "-q", "--no-figures")
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.stderr + r2.stderr
    t = json.loads((tmp_path / "truth" / "report.json").read_text())
    s = json.loads((tmp_path / "same" / "report.json").read_text())
    for rep in (t, s):
        _schema_validate(rep)
        assert rep["sources"]["classifier"]["model"]["name"] == "cxr-classifier"
    tm, sm = t["summary"]["metrics"], s["summary"]["metrics"]
    assert tm["cpg"]["n"] == 24 and tm["cpg"]["mean"] > 0.6 and tm["flip"]["mean"] > 0.75
    assert sm["cpg"]["mean"] == 0.0 and sm["flip"]["mean"] < 0.1
    # ground truth: the true counterfactual is exact; returning the input changes nothing
    assert tm["gt_l1"]["mean"] == 0.0 and tm["gt_achieved"]["mean"] == pytest.approx(1.0)
    assert sm["gt_error_ratio"]["mean"] == pytest.approx(1.0) and sm["gt_achieved"]["mean"] == 0.0
    assert t["sets"]["fid_vs_truth"] == pytest.approx(0.0, abs=1e-6)
    assert s["sets"]["fid_vs_originals"] == pytest.approx(0.0, abs=1e-6)
    assert (tmp_path / "truth" / "examples.png").stat().st_size > 0
    assert (tmp_path / "truth" / "histograms.png").stat().st_size > 0
    assert not (tmp_path / "same" / "examples.png").exists()


def test_label_and_target_are_inferred_from_chexpert_prompts():
    from cfgen.evaluation.pairs import Pair
    from cfgen.evaluation.run import infer_label

    labels = ["Pleural Effusion", "Cardiomegaly", "Support Devices"]
    p = Pair(name="a", original=Path("a"), counterfactual=Path("b"),
             source_prompt="Chest X-ray showing Pleural Effusion, Support Devices",
             prompt="Chest X-ray showing Pleural Effusion")
    assert infer_label(p, labels) == ("Support Devices", 0.0, "from prompts")
    p.prompt = "Chest X-ray showing Cardiomegaly, Pleural Effusion, Support Devices"
    assert infer_label(p, labels) == ("Cardiomegaly", 1.0, "from prompts")
    p.prompt = "Normal chest X-ray with no significant findings"
    assert infer_label(p, labels)[0] is None  # two labels removed: ambiguous


def test_evaluate_an_edit_run_report_with_carried_ground_truth(cli, tiny_model, tmp_path):
    """edit --batch on phantom jobs carries label/target/true_* into report.json; evaluate reads them."""
    from cfgen.phantoms.dataset import write_cxr_dataset

    ph = tmp_path / "ph"
    write_cxr_dataset(ph, 2, seed=3, size=32, workers=1)
    r = cli("edit", "--batch", ph / "edit_jobs.csv", "-m", tiny_model, "-o", tmp_path / "run", "--steps", "2", "-q")
    assert r.exit_code == 0, r.stderr
    run = json.loads((tmp_path / "run" / "report.json").read_text())
    _schema_validate(run)
    item = run["items"][0]
    assert item["columns"]["label"] in ("Pleural Effusion", "Cardiomegaly", "Support Devices")
    assert (tmp_path / "run" / item["columns"]["true_counterfactual"]).is_file()
    assert (tmp_path / "run" / item["input_file"]).resolve() == (ph / item["input"]).resolve()
    r = cli("evaluate", tmp_path / "run", "-o", tmp_path / "ev", "--classifier", "none", "-q")
    assert r.exit_code == 0, r.stderr
    ev = json.loads((tmp_path / "ev" / "report.json").read_text())
    _schema_validate(ev)
    assert ev["summary"]["ok"] == 6 and ev["sources"]["classifier"].startswith("not computed")
    first = ev["items"][0]
    assert set(first["metrics"]) >= {"l1", "psnr_capped", "ssim", "ms_ssim", "gt_l1", "gt_error_ratio", "gt_achieved"}
    assert first["metrics"]["gt_l1_nothing"] > 0
    assert ev["params"]["rank_by"] == "gt_error_ratio"
    assert ev["sets"]["diversity_ms_ssim"]["pairs"] == 15


def test_failed_edits_are_recorded_not_scored(tmp_path):
    from cfgen.evaluation.pairs import pairs_from_report
    from cfgen.evaluation.run import evaluate

    (tmp_path / "run").mkdir()
    rep = {"command": "edit", "items": [{"name": "x", "input": "x.png", "status": "error", "error": "x.png: bad",
                                         "outputs": {}}]}
    (tmp_path / "run" / "report.json").write_text(json.dumps(rep))
    report = evaluate(pairs_from_report(tmp_path / "run" / "report.json"), tmp_path / "ev")
    assert report.failed == 1 and "edit failed: x.png: bad" in report.data["items"][0]["error"]


def test_clip_scores_through_the_loader(tiny_clip, tmp_path):
    from cfgen.models.loader import load_model

    m = load_model(str(tiny_clip), family="clip")
    assert m.entry.family == "clip"
    x = torch.rand(1, 1, 48, 48)
    same = m.clip.scores(x, x.clone(), "a chest x-ray", "a chest x-ray with a pacemaker")
    assert same["clip_image_image"] == pytest.approx(1.0, abs=1e-5)
    assert same["clip_direction"] == 0.0  # no image change: no direction
    other = m.clip.scores(x, torch.rand(1, 1, 48, 48), "a chest x-ray", "a chest x-ray with a pacemaker")
    assert -1.0 <= other["clip_direction"] <= 1.0 and other["clip_image_image"] < 1.0


def test_evaluate_with_clip_marks_items_below_the_threshold(cli, tiny_clip, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for n in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(tmp_path / f"{n}.png")
    (tmp_path / "p.csv").write_text("original,counterfactual,source_prompt,prompt\na.png,a.png,x,y\na.png,b.png,x,y\n")
    r = cli("evaluate", tmp_path / "p.csv", "-o", tmp_path / "ev", "--classifier", "none", "--clip", tiny_clip,
            "--clip-threshold", "0.1", "-q")
    assert r.exit_code == 0, r.stderr
    ev = json.loads((tmp_path / "ev" / "report.json").read_text())
    first, second = ev["items"]
    assert first["passed_filter"] is False  # an unchanged image has S_CLIP 0 < 0.1
    assert second["passed_filter"] == (second["metrics"]["clip_direction"] >= 0.1)
    assert ev["sources"]["clip"]["network"] == "transformers CLIPModel"


def test_classifier_training_writes_a_loadable_model(tmp_path):
    from cfgen.models.loader import load_model
    from cfgen.phantoms.dataset import write_cxr_dataset
    from cfgen.training.classifier import train_classifier

    write_cxr_dataset(tmp_path / "ph", 12, seed=1, size=32, counterfactuals=False, workers=1)
    labels = ["Pleural Effusion", "ctr"]
    cfg = train_classifier(tmp_path / "ph" / "labels.csv", tmp_path / "clf", labels, ["binary", "regression"],
                           heldout_csv=tmp_path / "ph" / "labels.csv", image_size=32, steps=30, batch_size=8, lr=3e-3,
                           init_features=8, growth_rate=4, block_config=(1, 1))
    assert cfg["evaluation"]["n"] == 12 and 0.0 <= cfg["evaluation"]["Pleural Effusion"]["accuracy"] <= 1.0
    ctr_mean = np.mean([float(r["ctr"]) for r in csv.DictReader(open(tmp_path / "ph" / "labels.csv"))])
    m = load_model(str(tmp_path / "clf"), family="classifier")
    out, feats = m.classifier.predict(torch.rand(3, 1, 50, 40))
    assert out["Pleural Effusion"].shape == (3,) and bool(((out["Pleural Effusion"] >= 0) & (out["Pleural Effusion"] <= 1)).all())
    assert feats.shape[0] == 3
    # 30 steps of MSE move the regression output from ~0 towards the labels' mean
    assert cfg["evaluation"]["ctr"]["mae"] < ctr_mean


def test_brain_masks_of_zeros_and_ones_are_regions(cli, tmp_path):
    """The brain phantoms' uint8 0/1 masks mark the true-difference region (one rule, nonzero,
    as an edit's --mask): change inside and outside are measured there, checked with nibabel."""
    import nibabel as nib

    root = tmp_path / "brain"
    assert cli("phantoms", "brain", "-n", "1", "--size", "16", "--spacing", "10", "-o", root, "-q").exit_code == 0
    jobs = _pairs_csv(root, "truth.csv", lambda j: j["true_counterfactual"])
    res = cli("evaluate", jobs, "-o", tmp_path / "ev", "--classifier", "none", "--no-figures", "-q")
    assert res.exit_code == 0, res.output
    items = json.loads((tmp_path / "ev" / "report.json").read_text())["items"]
    with open(jobs, newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    checked = 0
    for it in items:
        row = rows[it["name"]]
        mask = np.asarray(nib.load(root / row["mask"]).dataobj)
        assert set(np.unique(mask)) <= {0, 1}
        m = it["metrics"]
        if not mask.any():
            continue
        x = nib.load(root / row["original"]).get_fdata()
        t = nib.load(root / row["true_counterfactual"]).get_fdata()
        assert m["region_fraction"] == pytest.approx(float(mask.mean()))
        assert m["change_inside"] is not None and m["change_inside"] > 0
        lo, hi = float(x.min()), float(x.max())  # evaluate's window: the original's min..max
        want = float(np.abs(t - x)[mask > 0].mean()) / (hi - lo)
        assert m["change_inside"] == pytest.approx(want, rel=1e-3)
        checked += 1
    assert checked >= 2
    gt = json.loads((tmp_path / "ev" / "report.json").read_text())["sets"]["ground_truth"]
    assert gt["pooled_error_ratio"]["value"] == 0.0  # the true counterfactuals themselves
    assert set(gt["by_edit_type"]) >= {"Age", "Sex -> 1"}


def test_pooled_ratio_is_the_ratio_of_sums_with_a_bootstrap_interval():
    from cfgen.metrics.stats import pooled_ratio

    r = pooled_ratio([1.0, 0.1, 3.0], [2.0, 0.01, 3.0])
    assert r["value"] == pytest.approx(4.1 / 5.01) and r["n"] == 3
    assert r["ci95"][0] <= r["value"] <= r["ci95"][1]
    assert pooled_ratio([1.0, None], [0.0, 2.0])["n"] == 0  # no usable pair: nothing to report
    assert pooled_ratio([1.0, 2.0], [2.0, 4.0])["ci95"] == pytest.approx([0.5, 0.5])


def test_the_report_heads_ground_truth_with_pooled_ratios_per_edit_type(tmp_path):
    """Two items of one edit type: 0.1/0.01 and 1/2. The mean of per-item ratios is 5.25, the
    pooled ratio 1.1/2.01: the one to read."""
    from cfgen.evaluation.run import ground_truth_summary

    items = [{"status": "ok", "label": "Pleural Effusion", "target": 1.0,
              "metrics": {"gt_l1": a, "gt_l1_nothing": b, "gt_error_ratio": a / b}}
             for a, b in ((0.1, 0.01), (1.0, 2.0))]
    items.append({"status": "ok", "label": "Age", "target": 43.0,
                  "metrics": {"gt_l1": 0.2, "gt_l1_nothing": 0.4, "gt_error_ratio": 0.5}})
    items.append({"status": "error", "label": "Age", "target": 43.0, "metrics": {}})
    s = ground_truth_summary(items)
    eff = s["by_edit_type"]["Pleural Effusion -> 1"]
    assert eff["value"] == pytest.approx(1.1 / 2.01) and eff["mean_of_item_ratios"] == pytest.approx(5.25)
    assert s["by_edit_type"]["Age"]["value"] == pytest.approx(0.5) and s["by_edit_type"]["Age"]["n"] == 1
    assert s["pooled_error_ratio"]["value"] == pytest.approx(1.3 / 2.41) and s["pooled_error_ratio"]["n"] == 3


def test_mask_recall_and_precision_of_the_edit_mask_against_the_true_region(cli, tmp_path):
    """True region: a 10x10 square (100 px); the edit's mask: a 10x20 block that covers 60 of them
    (120 px of 200 outside). Recall 0.6, precision 0.3, from files as an edit run writes them."""
    from PIL import Image

    x = np.full((64, 64), 100, np.uint8)
    t = x.copy()
    t[10:20, 10:20] = 200
    true_mask = np.zeros((64, 64), np.uint8)
    true_mask[10:20, 10:20] = 1  # 0/1, as the brain phantoms write them
    edit_mask = np.zeros((64, 64), np.uint8)
    edit_mask[14:24, 10:30] = 255  # 0/255, as mask.png
    for name, arr in (("x", x), ("t", t), ("m", true_mask), ("e", edit_mask)):
        Image.fromarray(arr).save(tmp_path / f"{name}.png")
    (tmp_path / "pairs.csv").write_text("name,original,counterfactual,true_counterfactual,mask,edit_mask\n"
                                        "a,x.png,t.png,t.png,m.png,e.png\n")
    res = cli("evaluate", tmp_path / "pairs.csv", "-o", tmp_path / "ev", "--classifier", "none", "--no-figures", "-q")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "ev" / "report.json").read_text())["items"][0]["metrics"]
    assert m["mask_recall"] == pytest.approx(0.6) and m["mask_precision"] == pytest.approx(0.3)
    assert m["mask_fraction"] == pytest.approx(200 / 64 ** 2)


def test_the_phantoms_floor_is_the_true_change_with_other_noise_and_evaluate_reports_it(cli, tmp_path):
    """The ideal editor (true noise-free change, exposure known, quantum noise not): equal to the
    factual outside the mask, differing from the truth only by noise inside; evaluate reports its
    error per item and as a pooled floor ratio beside the editor's."""
    from PIL import Image

    root = tmp_path / "ph"
    assert cli("phantoms", "cxr", "-n", "2", "--size", "64", "-o", root, "-q").exit_code == 0
    with open(root / "edit_jobs.csv", newline="") as f:
        jobs = list(csv.DictReader(f))
    px = lambda rel: np.asarray(Image.open(root / rel), dtype=np.float64)  # noqa: E731
    for j in jobs:
        x, t, fl, m = (px(j[k]) for k in ("image", "true_counterfactual", "floor_counterfactual", "true_mask"))
        inside = m > 0
        assert np.array_equal(fl[~inside], x[~inside])
        assert 0 < np.abs(fl - t)[inside].mean() < 12  # noise only: a few 8-bit levels
    with open(root / "pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "original", "counterfactual", "true_counterfactual", "mask", "floor_counterfactual",
                    "sample_floor_counterfactual"])
        for j in jobs:  # the "editor" here returns the input: the floor must come out far below it
            w.writerow([j["output"], j["image"], j["image"], j["true_counterfactual"], j["true_mask"],
                        j["floor_counterfactual"], j["sample_floor_counterfactual"]])
    res = cli("evaluate", root / "pairs.csv", "-o", tmp_path / "ev", "--classifier", "none", "--no-figures", "-q")
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "ev" / "report.json").read_text())
    for it, j in zip(rep["items"], jobs):
        want = float(np.abs(px(j["floor_counterfactual"]) - px(j["true_counterfactual"])).mean()) / 255
        assert it["metrics"]["gt_floor_l1"] == pytest.approx(want, rel=1e-4, abs=1e-7)
        want = float(np.abs(px(j["sample_floor_counterfactual"]) - px(j["true_counterfactual"])).mean()) / 255
        assert it["metrics"]["gt_sample_floor_l1"] == pytest.approx(want, rel=1e-4, abs=1e-7)
    gt = rep["sets"]["ground_truth"]["pooled_error_ratio"]
    assert gt["value"] == pytest.approx(1.0) and gt["floor"]["value"] < 0.5 and gt["floor"]["n"] == len(jobs)
    assert gt["floor"]["value"] <= gt["sample_floor"]["value"] and gt["sample_floor"]["n"] == len(jobs)


def test_histograms_drop_capped_twins_and_use_strips_for_few_items(tmp_path, monkeypatch):
    from cfgen.viz import figures

    assert figures._plotted({"psnr": [30.0, 31.0], "psnr_capped": [30.0, 31.0], "vae_psnr_capped": [100.0],
                             "vae_psnr": [], "l1": [0.1]}) == ["psnr", "vae_psnr_capped", "l1"]
    drawn = []
    import matplotlib.axes

    monkeypatch.setattr(matplotlib.axes.Axes, "hist", lambda self, v, **kw: drawn.append(("hist", len(v))))
    figures.write_histograms({"few": [1.0, 2.0, 3.0], "many": list(np.linspace(0, 1, 12))}, tmp_path / "h.png")
    assert drawn == [("hist", 12)] and (tmp_path / "h.png").stat().st_size > 0
