"""`--mask refine`: a generous DiffEdit pass, then only where that edit changed the scan."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cfgen.editing.masks import refined_mask
from cfgen.editing.params import EditParams
from cfgen.errors import UsageError
from cfgen.io.scan import read_scan

FAST = ["--steps", "8", "-q", "--guidance", "5", "--seed", "3"]


@pytest.mark.parametrize("dims", [2, 3])
def test_refined_mask_keeps_where_the_edit_changed_the_scan(dims):
    size = (24,) * dims
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(0.2, 0.8, size)).float()[None, None]
    block = (slice(8, 14),) * dims
    change = torch.zeros_like(x)
    change[(0, 0, *block)] = 0.4  # the edit: a block brighter by 0.4 of the window
    noise = torch.from_numpy(rng.normal(0, 0.02, size)).float()[None, None]  # what the decoder drifts
    y = x + change + noise
    first = torch.zeros_like(x)
    first[(0, 0, *(slice(2, 22),) * dims)] = 1.0  # the first pass's generous mask
    m = refined_mask(first, x, y, 0.12)[0, 0].numpy()
    assert m.shape == size and (m <= first[0, 0].numpy() + 1e-6).all() and m.min() >= 0
    assert m[(slice(9, 13),) * dims].min() > 0.9  # the changed block is kept
    far = np.ones(size, bool)
    far[(slice(5, 17),) * dims] = False  # beyond smoothing, growth and feathering
    assert m[far].max() < 0.01  # the rest of the generous mask is dropped: drift below 0.12 is not change
    assert refined_mask(first, x, x + noise, 0.12).max() < 0.01  # nothing changed: nothing kept


def test_mask_thresholds_resolve_per_mode_and_refine_change_needs_refine():
    assert EditParams(mask="auto").diffedit_threshold() == 0.5
    assert EditParams(mask="refine").diffedit_threshold() == 0.3  # the first pass is generous
    assert EditParams(mask="refine", mask_threshold=0.2).diffedit_threshold() == 0.2
    rec = EditParams(mask="refine").as_dict()
    assert rec["mask_threshold"] == 0.3 and rec["refine_change"] == 0.12  # the report records what was used
    assert EditParams(mask="auto").as_dict()["refine_change"] is None
    with pytest.raises(UsageError, match="only --mask refine uses it"):
        EditParams(prompt="x", mask="auto", refine_change=0.1).check()
    with pytest.raises(UsageError, match=r"--refine-change 1.5: must be in \(0, 1\)"):
        EditParams(prompt="x", mask="refine", refine_change=1.5).check()


def test_refine_edit_is_the_first_pass_kept_where_it_changed_the_scan(cli, tiny_model, tmp_path):
    yy, xx = np.mgrid[0:64, 0:64]
    src = tmp_path / "scan.png"
    Image.fromarray((40 + xx * 2 + yy).astype(np.uint8)).save(src)
    first, refine = tmp_path / "first", tmp_path / "refine"
    res = cli("edit", src, "-p", "large effusion", "-s", "normal", "-m", tiny_model, "--mask", "auto",
              "--mask-threshold", "0.3", "-o", first, *FAST)
    assert res.exit_code == 0, res.output
    res = cli("edit", src, "-p", "large effusion", "-s", "normal", "-m", tiny_model, "--mask", "refine",
              "--refine-change", "0.05", "-o", refine, *FAST)
    assert res.exit_code == 0, res.output
    item = json.loads((refine / "scan" / "item.json").read_text())
    rep = json.loads((refine / "report.json").read_text())
    assert rep["params"]["mask"] == "refine" and rep["params"]["mask_threshold"] == 0.3
    assert rep["params"]["refine_change"] == 0.05
    m1 = np.asarray(Image.open(first / "scan" / "mask.png")) / 255.0
    m2 = np.asarray(Image.open(refine / "scan" / "mask.png")) / 255.0
    assert (m2 <= m1 + 1 / 255).all() and m2.sum() < m1.sum()  # refining only takes away
    assert item["metrics"]["mask_first_fraction"] >= item["metrics"]["mask_fraction"]
    scan = read_scan(src).pixels[0]
    cf1 = read_scan(first / "scan" / "counterfactual.png").pixels[0]
    cf2 = read_scan(refine / "scan" / "counterfactual.png").pixels[0]
    # the same first pass, composited with the refined mask (8-bit rounding on both sides), where
    # the first mask is whole (elsewhere the first composite already mixed in the scan)
    whole = m1 == 1.0
    assert whole.mean() > 0.1 and np.abs(cf2 - (m2 * cf1 + (1 - m2) * scan))[whole].max() <= 1.5
    assert np.array_equal(cf2[m2 == 0], scan[m2 == 0]) and (m2 == 1).any()
    # where the first pass changed the scan by more than the threshold, the refined mask keeps it
    big = np.abs(cf1 - scan) / 255.0 > 0.3
    assert big.any() and m2[big].mean() > 0.9


def test_refine_keeps_where_the_output_moved_away_from_the_scan(tiny_model, ct_small):
    """finish_edit's mask is the first pass's feathered mask refined against the scan on the model
    grid (not against the VAE's reconstruction: what the VAE loses is part of what an edit changes)."""
    from cfgen.editing import core, masks
    from cfgen.editing.prepare import unit
    from cfgen.models.loader import load_model

    model = load_model(str(tiny_model), device="cpu")
    scan = read_scan(ct_small)
    p = EditParams(prompt="large effusion", source_prompt="normal", steps=6, guidance=5.0, mask="refine",
                   refine_change=0.05)
    c = core.compute_edits(model, [scan], [p])[0]
    assert c.refine_change == 0.05 and c.vae_out is None
    vo = model.entry.value_range
    first = masks.feathered_model_mask(c.latent_mask, model.entry.resolution)
    d = (first * (unit(c.model_out, vo) - unit(c.prepared.x.float(), vo))).abs()[0, 0].numpy()
    got = core.finish_edit(model, scan, c).mask
    want = masks.to_scan_mask(masks.refined_mask(first, unit(c.prepared.x.float(), vo), unit(c.model_out, vo), 0.05),
                              c.prepared)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert 0 < (got > 0.5).sum() < (masks.to_scan_mask(first, c.prepared) > 0.5).sum()
    assert d.max() > 0.05  # the edit changed something above the threshold, and not everywhere


def test_refine_change_with_another_mask_is_refused_before_loading(cli, tiny_model, ct_small, tmp_path):
    res = cli("edit", ct_small, "-p", "x", "-m", tiny_model, "--mask", "auto", "--refine-change", "0.1",
              "-o", tmp_path / "o", "-q")
    assert res.exit_code == 2 and "only --mask refine uses it" in res.stderr and not (tmp_path / "o").exists()


def test_refine_benchmark_scores_first_passes_and_refinements(tiny_model):
    import refine_mask  # benchmarks/ is on the tests' path (pyproject.toml)

    res = refine_mask.main(["--model", str(tiny_model), "--n", "1", "--first", "0.2", "--change", "0.05", "0.3",
                            "--grow", "1", "--device", "cpu", "--classifier", ""])
    rows = {(r["edit"], r["change"]): r for r in res["table"]}
    assert len(rows) == 18 and all(r["n"] == 1 for r in rows.values())
    for (kind, change), r in rows.items():
        assert 0 <= r["recall"] <= 1 and r["ratio"] > 0
        # refinement only takes away from the first mask, and a higher threshold takes more
        assert r["recall"] <= rows[(kind, None)]["recall"] + 1e-9
        if change == 0.3:
            assert r["recall"] <= rows[(kind, 0.05)]["recall"] + 1e-9


def test_a_models_refine_defaults_apply_to_refine_only_and_yield_to_the_command_line():
    """models.toml [defaults] refine_threshold / refine_change: the model's tuned refine, never an
    auto mask's threshold and never a refusal of --mask auto."""
    tuned = {"mask": "refine", "refine_threshold": 0.2, "refine_change": 0.15}
    p = EditParams.resolve(tuned, prompt="x")
    assert (p.diffedit_threshold(), p.change_threshold()) == (0.2, 0.15)
    p = EditParams.resolve(tuned, prompt="x", mask_threshold=0.4, refine_change=0.09)
    assert (p.diffedit_threshold(), p.change_threshold()) == (0.4, 0.09)
    p = EditParams.resolve(tuned, prompt="x", mask="auto")
    p.check()
    assert (p.diffedit_threshold(), p.change_threshold()) == (0.5, None)
    p = EditParams.resolve({"refine_threshold": 0.2}, prompt="x")  # the model's mask is none
    assert p.mask == "none" and p.mask_threshold is None
