"""Prompt-to-prompt attention control and PRISM's sweep: the maps diffusers' own attention computes
are the ones injected, a control that injects nothing is diffusers' attention, a sweep variant
is the edit run alone with its fraction, and bad requests fail before any work."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cfgen.editing.attention import Control, controlled, token_map
from cfgen.errors import UsageError
from cfgen.io.scan import read_scan

FAST = ["--steps", "6", "--guidance", "5", "-q"]
SRC, TGT = "axial ct", "axial ct with a bright lesion"


def test_token_map_shares_equal_tokens_and_swaps_token_for_token():
    idx, alpha = token_map([0, 5, 6, 7, 9, 9], [0, 5, 8, 7, 9, 9], "refine", (5, 5))
    assert idx == [0, 1, 2, 3, 4, 5] and alpha == [1, 1, 0, 1, 1, 1]  # the swapped word keeps its own map
    idx, alpha = token_map([0, 5, 7, 9, 9, 9], [0, 5, 8, 8, 7, 9], "refine", (4, 6))  # two tokens inserted
    assert idx[4] == 2 and idx[5] == 3 and alpha == [1, 1, 0, 0, 1, 1]
    assert token_map([0, 5, 6, 9], [0, 5, 8, 9], "replace", (4, 4)) == ([0, 1, 2, 3], [1.0] * 4)
    with pytest.raises(UsageError, match="as many tokens"):
        token_map([0, 5, 9, 9], [0, 5, 8, 9], "replace", (3, 4))


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from cfgen.editing.components import encode_prompts
    from cfgen.models.loader import load_model

    model = load_model(str(tiny_model), device="cpu")
    cond = encode_prompts(model, [SRC, TGT, TGT, ""])
    g = torch.Generator().manual_seed(0)
    size = model.entry.resolution // model.vae_scale_factor
    z = torch.randn(3, model.unet.config.in_channels, size, size, generator=g)
    return model, z, cond[:3], cond[3:]


class Recording(Control):
    """Control that also notes, per attention call, which branches' maps equal the source's."""

    def edit(self, probs, heads, is_cross):
        out = super().edit(probs, heads, is_cross)
        p = out.view(-1, heads, *out.shape[1:])
        start = p.shape[0] - (1 + len(self.selfs)) * self.n
        self.calls.append((is_cross, [torch.equal(p[i], p[start]) for i in range(p.shape[0])]))
        self.first.append([torch.equal(p[i], p[0]) for i in range(p.shape[0])])
        return out


def _control(cls, selfs, cross, n_tokens):
    c = cls(n=1, selfs=selfs, cross=cross, index=torch.arange(n_tokens)[None], alpha=torch.ones(1, n_tokens), steps=10)
    c.calls, c.first = [], []
    return c


def test_a_control_that_injects_nothing_is_diffusers_attention(tiny):
    model, z, cond, _ = tiny
    with torch.no_grad():
        plain = model.unet(z, 500, encoder_hidden_states=cond).sample
        with controlled(model.unet, _control(Control, [0.0, 0.0], 0.0, cond.shape[1])):
            ours = model.unet(z, 500, encoder_hidden_states=cond).sample
        again = model.unet(z, 500, encoder_hidden_states=cond).sample  # processors restored
    assert torch.allclose(ours, plain, atol=1e-5) and torch.equal(again, plain)


def test_injected_maps_are_the_source_branch_maps(tiny):
    """Branches [source, variant self=1, variant self=0]; at step 0 with cross 1 every target branch
    takes the source's cross-attention maps, only the first its self-attention maps."""
    model, z, cond, _ = tiny
    c = _control(Recording, [1.0, 0.0], 1.0, cond.shape[1])
    with torch.no_grad(), controlled(model.unet, c):
        model.unet(z, 500, encoder_hidden_states=cond)
    selfs = [eq for cross, eq in c.calls if not cross]
    crosses = [eq for cross, eq in c.calls if cross]
    assert selfs and crosses
    assert all(eq == [True, True, False] for eq in selfs)
    assert all(eq == [True, True, True] for eq in crosses)
    c = _control(Recording, [1.0, 0.0], 1.0, cond.shape[1])
    c.step = 5  # past cross 0.5 and self 0.5: nothing injected
    c.cross, c.selfs = 0.5, [0.5, 0.0]
    with torch.no_grad(), controlled(model.unet, c):
        model.unet(z, 500, encoder_hidden_states=cond)
    assert all(eq == [True, False, False] for _, eq in c.calls)


def test_guidance_layout_leaves_the_unconditional_half_alone(tiny):
    model, z, cond, empty = tiny
    c = _control(Recording, [1.0, 1.0], 1.0, cond.shape[1])
    both = torch.cat([empty.expand(3, -1, -1), cond])  # [uncond x3, cond x3], as ddim.predict batches
    with torch.no_grad(), controlled(model.unet, c):
        model.unet(torch.cat([z, z]), 500, encoder_hidden_states=both)
    for (_, eq), eq0 in zip(c.calls, c.first):
        assert eq[3:] == [True, True, True] and eq0[:3] == [True, False, False]


def _edit(cli, model, scan, out, *args):
    res = cli("edit", scan, "-s", SRC, "-p", TGT, "-m", model, "-o", out, "--figure-format", "none", *FAST, *args)
    assert res.exit_code == 0, res.output
    item = json.loads((out / "report.json").read_text())["items"][0]
    return item, read_scan(out / item["outputs"]["counterfactual"]).pixels


def test_prompt_to_prompt_through_the_cli(cli, tiny_model, ct_small, tmp_path):
    _, plain = _edit(cli, tiny_model, ct_small, tmp_path / "plain")
    item, off = _edit(cli, tiny_model, ct_small, tmp_path / "off", "--attention", "refine", "--cross-attention", "0",
                      "--self-attention", "0")
    assert item["attention"] == {"mode": "refine", "cross_attention": 0.0, "self_attention": 0.0}
    assert np.abs(off - plain).max() <= 2  # HU: nothing injected is the plain edit (int16 rounding)
    item, p2p = _edit(cli, tiny_model, ct_small, tmp_path / "p2p", "--attention", "refine", "--self-attention", "1")
    assert np.abs(p2p - plain).max() > 20  # the source's maps changed the edit


def test_sweep_keeps_the_best_variant_and_it_is_the_edit_run_alone(cli, tiny_model, ct_small, tiny_clip, tmp_path):
    item, best = _edit(cli, tiny_model, ct_small, tmp_path / "sweep", "--attention", "refine",
                       "--sweep", "self-attention=0,1", "--select-by", tiny_clip)
    att = item["attention"]
    scores = {v["self_attention"]: v["score"] for v in att["variants"]}
    assert set(scores) == {0.0, 1.0} and scores[0.0] != scores[1.0]
    assert att["self_attention"] == max(scores, key=scores.get) and "S_CLIP" in att["selected_by"]
    _, alone = _edit(cli, tiny_model, ct_small, tmp_path / "alone", "--attention", "refine",
                     "--self-attention", str(att["self_attention"]))
    assert np.abs(best - alone).max() <= 2
    rep = json.loads((tmp_path / "sweep" / "report.json").read_text())
    assert rep["selector"]["name"] and rep["params"]["sweep"] == "self-attention=0,1"


def test_sweep_scores_the_variants_as_they_will_be_written(cli, tiny_model, ct_small, tmp_path):
    """The sweep scores each variant as finish_edit will write it (composited onto the scan,
    refined for --mask refine), not the raw regeneration: with a refine threshold no change
    reaches, every variant is delivered as the scan itself, so their scores agree, where the same
    first pass's variants under --mask auto do not."""
    args = ["-s", "Chest X-ray", "-p", "Chest X-ray showing Pleural Effusion", "-m", tiny_model, "--attention",
            "refine", "--sweep", "self-attention=0,1", "--select-by", "cxr-classifier", "--mask-threshold", "0.3",
            "--figure-format", "none", *FAST]

    def scores(out, *more):
        res = cli("edit", ct_small, *args, "-o", out, *more)
        assert res.exit_code == 0, res.output
        item = json.loads((out / "report.json").read_text())["items"][0]
        return [v["score"] for v in item["attention"]["variants"]], item

    auto, _ = scores(tmp_path / "auto", "--mask", "auto")
    none, item = scores(tmp_path / "refine", "--mask", "refine", "--refine-change", "0.95")
    assert item["metrics"]["mask_fraction"] == 0 and item["metrics"]["mask_first_fraction"] > 0
    assert any("--mask refine kept nothing" in w for w in item["warnings"])  # said, not silent
    assert abs(none[0] - none[1]) < 1e-6 < abs(auto[0] - auto[1])


def test_sweep_scores_a_mask_file_on_its_own_pixels(cli, tiny_model, tmp_path):
    """With --mask FILE only the file's pixels are written, so only they are scored: a one-pixel
    mask and the whole latent cell around it regenerate alike (same cell) but are delivered, and
    scored, differently (before: both scored as the whole feathered cell, the same scores)."""
    from PIL import Image

    yy, xx = np.mgrid[0:32, 0:32]
    scan = tmp_path / "scan.png"
    Image.fromarray((40 + xx * 4 + yy * 2).astype(np.uint8)).save(scan)
    pixel, cell = np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint8)
    pixel[10, 11] = 255
    cell[10:12, 10:12] = 255  # the model's own grid (32 px), latent cells of 2 px: the one cell of the pixel
    scores = {}
    for name, m in (("pixel", pixel), ("cell", cell)):
        Image.fromarray(m).save(tmp_path / f"{name}.png")
        res = cli("edit", scan, "-s", "Chest X-ray", "-p", "Chest X-ray showing Pleural Effusion", "-m", tiny_model,
                  "--mask", tmp_path / f"{name}.png", "--attention", "refine", "--sweep", "self-attention=0,1",
                  "--select-by", "cxr-classifier", "-o", tmp_path / name, "--figure-format", "none", *FAST)
        assert res.exit_code == 0, res.output
        item = json.loads((tmp_path / name / "report.json").read_text())["items"][0]
        scores[name] = [v["score"] for v in item["attention"]["variants"]]
    assert scores["pixel"] != scores["cell"]
    assert abs(scores["pixel"][0] - scores["pixel"][1]) < abs(scores["cell"][0] - scores["cell"][1])


def test_sweep_with_a_classifier_takes_the_label_the_prompts_change(cli, tiny_model, ct_small, tmp_path):
    out = tmp_path / "clf"
    res = cli("edit", ct_small, "-s", "Chest X-ray", "-p", "Chest X-ray showing Pleural Effusion", "-m", tiny_model,
              "-o", out, "--attention", "refine", "--sweep", "self-attention=0.2,0.8", "--select-by", "cxr-classifier",
              "--figure-format", "none", *FAST)
    assert res.exit_code == 0, res.output
    att = json.loads((out / "report.json").read_text())["items"][0]["attention"]
    scores = [v["score"] for v in att["variants"]]
    assert all(0 <= s <= 1 for s in scores) and att["self_attention"] == [0.2, 0.8][int(np.argmax(scores))]
    res = cli("edit", ct_small, "-s", "Chest X-ray", "-p", "Chest X-ray, frontal", "-m", tiny_model,
              "-o", tmp_path / "nolabel", "--attention", "refine", "--sweep", "self-attention=0.2,0.8",
              "--select-by", "cxr-classifier", "--figure-format", "none", *FAST)
    assert res.exit_code == 1 and "cannot tell which of its labels" in res.output


@pytest.mark.parametrize("args, message", [
    (["--sweep", "self-attention=0.4,0.6"], "give --attention refine"),
    (["--attention", "refine", "--sweep", "cross=0.4"], "use self-attention=F,F"),
    (["--attention", "refine", "--sweep", "self-attention=0.4,1.5"], "use self-attention=F,F"),
    (["--attention", "both"], "--attention both: use one of"),
    (["--self-attention", "2"], "must be in [0, 1]"),
])
def test_bad_attention_options_fail_before_work(cli, tiny_model, ct_small, tmp_path, args, message):
    res = cli("edit", ct_small, "-s", SRC, "-p", TGT, "-m", tiny_model, "-o", tmp_path / "o", *FAST, *args)
    assert res.exit_code == 2 and message in res.stderr, res.output
    assert not (tmp_path / "o").exists()


def test_select_by_must_score_and_swaps_need_equal_lengths(cli, tiny_model, ct_small, tmp_path):
    res = cli("edit", ct_small, "-s", SRC, "-p", TGT, "-m", tiny_model, "-o", tmp_path / "a", "--attention", "refine",
              "--sweep", "self-attention=0.4,0.6", "--select-by", tiny_model, *FAST)
    assert res.exit_code == 2 and "family clip or classifier" in res.stderr
    res = cli("edit", ct_small, "-s", SRC, "-p", TGT, "-m", tiny_model, "-o", tmp_path / "b", "--attention", "replace",
              "--figure-format", "none", *FAST)
    assert res.exit_code == 1 and "as many tokens" in res.output
