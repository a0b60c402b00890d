"""`cfgen cycle-train`: the Cycle Diffusion Model objective (Eq. 2) on 2D and 3D models."""
from __future__ import annotations

import json

import pytest
import torch

from cfgen.errors import UsageError
from cfgen.models.tabular import BRAIN_FIELDS, encode_values, parse_fields
from cfgen.training.cycle import counterfactual_captions, counterfactual_values, cycle_terms, parse_rules

FIELDS = parse_fields(BRAIN_FIELDS, "test")


class _Oracle(torch.nn.Module):
    """Predicts the true noise of a fixed (z0, noise) pair whatever the condition: a perfect denoiser."""

    def __init__(self, sched, z0, noise):
        super().__init__()
        self.sched, self.z0, self.noise = sched, z0, noise

    def forward(self, z, t, encoder_hidden_states=None):
        a = self.sched.alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
        return type("Out", (), {"sample": (z - a.sqrt() * self.z0) / (1 - a).sqrt()})()


def test_cycle_terms_vanish_for_a_perfect_denoiser_and_not_for_a_real_model(tiny_model):
    from diffusers import DDPMScheduler

    from cfgen.models.loader import load_model
    from cfgen.models.registry import DEFAULT_SCHEDULER

    sched = DDPMScheduler.from_config({k: v for k, v in DEFAULT_SCHEDULER.items() if k not in ("set_alpha_to_one", "steps_offset")})
    gen = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([100, 600])
    cond = torch.zeros(2, 3, 16)
    terms = cycle_terms(_Oracle(sched, z0, noise), sched, z0, noise, t, cond, cond)  # c' = c
    assert all(float(v) < 1e-5 for v in terms.values()), terms
    m = load_model(str(tiny_model), device="cpu")
    real = cycle_terms(m.unet, sched, z0, noise, t, torch.randn(2, 16, 16), torch.randn(2, 16, 16))
    assert float(real["cycle"]) > 1e-3 and float(real["ldm_cf"]) > 1e-3


def test_counterfactual_rules_stay_in_range_and_change_one_field():
    rules = parse_rules(["age:10,30,60", "sex"])
    gen = torch.Generator().manual_seed(0)
    v = encode_values(["age=95, sex=female, lesion_load=3"] * 200, FIELDS)
    cf = counterfactual_values(v, FIELDS, rules, gen)
    changed = (cf[..., 0] != v[..., 0])
    assert (changed.sum(dim=1) == 1).all()  # exactly one field per sample
    ages = cf[changed[:, 0], 0, 0] * 100
    assert set(torch.round(ages).tolist()) == {85.0, 65.0, 35.0}  # 95 + 10 > 100: only the minus side
    assert torch.equal(cf[..., 1], v[..., 1]) and torch.equal(cf[:, 3], v[:, 3])
    caps = counterfactual_captions(["Chest X-ray showing Support Devices", "Normal chest X-ray"],
                                   parse_rules(["Support Devices=>no Support Devices"]), gen)
    assert caps == ["Chest X-ray showing no Support Devices", "Normal chest X-ray"]
    for bad, msg in [(["age:ten"], "deltas must be numbers"), (["=>x"], "text on both sides"), ([], "at least one rule")]:
        with pytest.raises(UsageError, match=msg):
            parse_rules(bad)


def test_finding_rule_toggles_one_finding_in_the_chexpert_template_sentence(tmp_path):
    """c' of a CheXpert-captioned set is the caption `cfgen caption` writes for the toggled labels."""
    import csv

    from cfgen.captions.templates import caption_rows

    cols = ["Path", "No Finding", "Cardiomegaly", "Pleural Effusion", "Support Devices"]
    combos = [(c, e, d) for c in "01" for e in "01" for d in "01"]
    rows = [dict(zip(cols, ["x.png", "1" if (c, e, d) == ("0", "0", "0") else "0", c, e, d])) for c, e, d in combos]
    caption = dict(zip(combos, caption_rows(rows, cols, "chexpert", "labels.csv")))
    rule = parse_rules(["finding:pleural effusion,Support Devices"])
    assert rule[0].findings == ("Pleural Effusion", "Support Devices")
    gen = torch.Generator().manual_seed(0)
    for (c, e, d), cap in caption.items():
        seen = set(counterfactual_captions([cap] * 40, rule, gen))
        flip_e, flip_d = str(1 - int(e)), str(1 - int(d))
        assert seen == {caption[(c, flip_e, d)], caption[(c, e, flip_d)]}, (cap, seen)  # both moves, nothing else
    other = ["", "Chest X-ray showing possible Pleural Effusion", "a chest film with a pacemaker"]
    assert counterfactual_captions(other, parse_rules(["finding:Pleural Effusion"]), gen) == other
    with pytest.raises(UsageError, match="not CheXpert findings: pacemaker"):
        parse_rules(["finding:Pleural Effusion,pacemaker"])


def test_cycle_train_runs_resumes_and_refuses_rules_the_model_cannot_take(cli, tmp_path):
    from cfgen.models.ldm3d import LDM3DSpec, build_ldm3d

    model = build_ldm3d(tmp_path / "tab", LDM3DSpec(conditioning=BRAIN_FIELDS), seed=0)
    data = tmp_path / "brain"
    assert cli("phantoms", "brain", "-n", "4", "--size", "16", "--spacing", "10", "--no-counterfactuals",
               "-o", data, "-q").exit_code == 0
    assert cli("caption", data / "labels.csv", "--template", "brain", "-o", data / "train.csv").exit_code == 0
    out = tmp_path / "cdm"
    common = ("cycle-train", data / "train.csv", "-m", model, "-o", out, "--batch-size", "2", "--learning-rate",
              "1e-3", "--checkpoint-every", "2", "--device", "cpu", "-q")
    res = cli(*common, "--counterfactual", "height:10")
    assert res.exit_code != 0 and "no such field" in res.output
    res = cli(*common, "--counterfactual", "Alzheimer=>no Alzheimer")
    assert res.exit_code != 0 and "text swaps and findings need a text model" in res.output
    res = cli(*common, "--max-steps", "2", "--counterfactual", "age:10,30,60", "--counterfactual", "sex",
              "--cycle-weight", "0.5")
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["command"] == "cycle-train"
    assert report["params"]["objective"]["rules"] == ["age:10,30,60", "sex"]
    assert report["params"]["objective"]["cycle_weight"] == 0.5
    res = cli(*common, "--max-steps", "4", "--resume")
    assert res.exit_code == 0, res.output
    tr = json.loads((out / "report.json").read_text())["training"]
    assert tr["start_step"] == 2 and tr["final_step"] == 4
    assert (out / "model" / "unet" / "conditioner.safetensors").is_file()


def test_cycle_train_on_chexpert_captions_toggles_findings_and_refuses_them_on_tabular_models(cli, tiny_model, tmp_path):
    from cfgen.models.ldm3d import LDM3DSpec, build_ldm3d

    data = tmp_path / "cxr"
    assert cli("phantoms", "cxr", "-n", "4", "--size", "32", "--no-counterfactuals", "-o", data, "-q").exit_code == 0
    assert cli("caption", data / "labels.csv", "-o", data / "train.csv").exit_code == 0
    out = tmp_path / "cdm"
    rule = "finding:Pleural Effusion,Cardiomegaly,Support Devices"
    res = cli("cycle-train", data / "train.csv", "-m", tiny_model, "-o", out, "--batch-size", "2", "--max-steps", "2",
              "--counterfactual", rule, "--device", "cpu", "-q")
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["params"]["objective"]["rules"] == [rule]
    assert report["training"]["final_step"] == 2
    tab = build_ldm3d(tmp_path / "tab", LDM3DSpec(conditioning=BRAIN_FIELDS), seed=0)
    res = cli("cycle-train", data / "train.csv", "-m", tab, "-o", tmp_path / "x", "--counterfactual", rule, "-q")
    assert res.exit_code != 0 and "findings need a text model" in res.output
