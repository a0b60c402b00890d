"""Tabular conditioning (age, sex, diagnosis, lesion load) for the 3D family: prompt parsing,
the embedding, training through `cfgen finetune` and editing through the same loop."""
from __future__ import annotations

import csv
import json
import re

import nibabel as nib
import pytest
import torch

from cfgen.errors import ModelError, UsageError
from cfgen.models.ldm3d import LDM3DSpec, build_ldm3d
from cfgen.models.tabular import BRAIN_FIELDS, CT_FIELDS, TabularEmbedding, drop_fields, encode_values, parse_fields, parse_prompt

FIELDS = parse_fields(BRAIN_FIELDS, "test")


@pytest.fixture(scope="session")
def tab3d(tmp_path_factory):
    return build_ldm3d(tmp_path_factory.mktemp("models3d") / "tab3d", LDM3DSpec(conditioning=BRAIN_FIELDS), seed=0)


def test_key_value_prompts_and_brain_captions_parse_to_the_same_values():
    from cfgen.captions.templates import brain_template

    cap = brain_template(["Age", "Sex", "Diagnosis", "lesion_load"], "t")(
        {"Age": "85", "Sex": "F", "Diagnosis": "AD", "lesion_load": "20"})
    assert cap == "Brain MRI of a 85 year old female with Alzheimer's disease, lesion load 20 mL"
    from_text = parse_prompt(cap, FIELDS)
    from_pairs = parse_prompt("age=85; sex=F, diagnosis=ad, lesion_load=20", FIELDS)
    assert from_text == from_pairs == {"age": 0.85, "sex": 0.0, "diagnosis": 2.0, "lesion_load": 0.5}
    assert parse_prompt("Brain MRI of a 30 year old male with no cognitive impairment, no lesions", FIELDS) == \
        {"age": 0.3, "sex": 1.0, "diagnosis": 0.0, "lesion_load": 0.0}
    assert parse_prompt("high lesion load", FIELDS) == {"lesion_load": 25 / 40}
    assert parse_prompt("", FIELDS) == {}  # unconditional
    v = encode_values(["age=50", ""], FIELDS)
    assert v.shape == (2, 4, 2) and v[0, 0].tolist() == [0.5, 1.0] and v[0, 1:, 1].sum() == 0 and v[1, :, 1].sum() == 0


def test_ct_captions_of_every_label_combination_and_free_prompts_parse_back():
    """The ct template's captions (what a CT model trains on) give back every attribute."""
    import itertools

    from cfgen.captions.templates import caption_rows

    fields = parse_fields(CT_FIELDS, "ct")
    rows = []
    for i, (eff, emph, cm, nod) in enumerate(itertools.product(["none", "small", "large"], ["none", "mild", "severe"],
                                                              ["0", "1"], ["0", "1", "3"])):
        rows.append({"Age": str(30 + i), "Sex": "female" if i % 2 else "male", "effusion": eff,
                     "effusion_side": "" if eff == "none" else ["left", "right", "both"][i % 3], "emphysema": emph,
                     "emphysema_type": "" if emph == "none" else ["centrilobular", "panlobular"][i % 2],
                     "Cardiomegaly": cm, "nodules": nod})
    captions = caption_rows(rows, list(rows[0]), "ct", "labels.csv")
    for row, cap in zip(rows, captions):
        got = parse_prompt(cap, fields)
        want = {"age": (float(row["Age"])) / 100, "sex": float(row["Sex"] == "male"),
                "effusion": ["none", "small", "large"].index(row["effusion"]),
                "emphysema": ["none", "mild", "severe"].index(row["emphysema"]),
                "cardiomegaly": float(row["Cardiomegaly"]), "nodules": float(row["nodules"]) / 10}
        assert got == pytest.approx(want), cap
    assert parse_prompt("CT with a large right pleural effusion", fields) == {"effusion": 2.0}
    assert parse_prompt("chest CT, severe emphysema, normal heart size", fields) == {"emphysema": 2.0, "cardiomegaly": 0.0}
    assert parse_prompt("Chest CT with cardiomegaly and no effusion", fields) == {"cardiomegaly": 1.0, "effusion": 0.0}


@pytest.mark.parametrize("prompt, message", [
    ("age=140", "age 140 is outside [0, 100]"),
    ("height=3", "'height=3' is not <field>=<value>"),
    ("sex=other", "sex 'other' is not one of female, male"),
    ("age=old", "age 'old' is not a number"),
    ("a photo of a cat", "names none of this model's fields"),
])
def test_unreadable_prompts_say_why(prompt, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_prompt(prompt, FIELDS)


def test_bad_conditioning_configs_are_refused():
    with pytest.raises(ModelError, match="non-empty 'fields'"):
        parse_fields({"fields": []}, "cfg")
    with pytest.raises(ModelError, match="max must exceed min"):
        parse_fields({"fields": [{"name": "a", "type": "numeric", "min": 1, "max": 1}]}, "cfg")
    with pytest.raises(ModelError, match="names repeat"):
        parse_fields({"fields": [{"name": "a", "type": "numeric", "min": 0, "max": 1}] * 2}, "cfg")


def test_embedding_uses_values_and_missing_tokens_and_dropout_masks_fields():
    torch.manual_seed(0)
    emb = TabularEmbedding(FIELDS, 16)
    v = encode_values(["age=20, sex=male", "age=90, sex=male", "sex=male"], FIELDS)
    out = emb(v)
    assert out.shape == (3, 4, 16)
    assert not torch.allclose(out[0, 0], out[1, 0])  # age moves the age token
    assert torch.allclose(out[0, 1], out[1, 1])  # and nothing else
    assert torch.allclose(out[2, 0], emb.missing[0] + emb.field[0])  # a missing field: its learned token
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(drop_fields(v, 0.0, gen), v)
    assert drop_fields(v, 1.0, gen)[..., 1].sum() == 0
    half = drop_fields(encode_values(["age=1, sex=f, diagnosis=CN, lesion_load=1"] * 400, FIELDS), 0.3, gen)
    kept = float(half[..., 1].mean())  # P(kept) = 0.7 (field) x 0.7 (row)
    assert 0.44 < kept < 0.54


def test_tabular_model_loads_without_a_text_encoder_and_refuses_broken_folders(tab3d, tmp_path):
    import shutil

    from cfgen.models.loader import load_model

    assert not (tab3d / "text_encoder").exists()
    m = load_model(str(tab3d), device="cpu")
    assert [f.name for f in m.fields] == ["age", "sex", "diagnosis", "lesion_load"]
    broken = tmp_path / "broken"
    shutil.copytree(tab3d, broken)
    (broken / "unet" / "conditioner.safetensors").unlink()
    with pytest.raises(ModelError, match="conditioner.safetensors: cannot load the tabular conditioner"):
        load_model(str(broken), device="cpu")
    cfg = json.loads((broken / "unet" / "config.json").read_text())
    del cfg["conditioning"]
    (broken / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="neither text_encoder/"):
        load_model(str(broken), device="cpu")


def test_finetune_trains_the_conditioner_with_the_unet_and_the_model_edits_by_values(tab3d, cli, tmp_path):
    from safetensors.torch import load_file

    data = tmp_path / "brain"
    assert cli("phantoms", "brain", "-n", "4", "--size", "16", "--spacing", "10", "--no-counterfactuals",
               "-o", data, "-q").exit_code == 0
    assert cli("caption", data / "labels.csv", "--template", "brain", "-o", data / "train.csv").exit_code == 0
    with open(data / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows[1]["caption"] = "a photo of a cat"  # line 3: a caption the model cannot read
    with open(data / "train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "ft"
    res = cli("finetune", data / "train.csv", "-m", tab3d, "-o", out, "--batch-size", "3", "--learning-rate", "1e-2",
              "--max-steps", "3", "--caption-dropout", "0.2", "--device", "cpu", "-q")
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    bad = [i for i in report["items"] if i["status"] == "error"]
    assert len(bad) == 1 and "line 3" in bad[0]["error"] and "names none of this model's fields" in bad[0]["error"]
    before = load_file(tab3d / "unet" / "conditioner.safetensors")
    after = load_file(out / "model" / "unet" / "conditioner.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the embedding trained
    assert json.loads((out / "model" / "unet" / "config.json").read_text())["conditioning"] == BRAIN_FIELDS
    src = data / "images" / "brain_00000.nii.gz"
    res = cli("edit", src, "-s", "age=60", "-p", "Brain MRI of a 85 year old", "-m", out / "model", "--steps", "4",
              "-o", tmp_path / "e", "-q")
    assert res.exit_code == 0, res.output
    cf = nib.load(tmp_path / "e" / "brain_00000" / "counterfactual.nii.gz")
    assert cf.shape == (16, 16, 16) and (cf.affine == nib.load(src).affine).all()
    res = cli("edit", src, "-p", "age=185", "-m", out / "model", "--steps", "4", "-o", tmp_path / "e2", "-q")
    assert res.exit_code != 0 and "age 185 is outside [0, 100]" in res.output
