"""A tabular model's `[defaults] unreliable_fields`: edits that change such a field are refused (its
benchmark measured them wrong), per row in a batch and before anything is computed; the names are
checked against the model's conditioning fields when it loads."""
from __future__ import annotations

import csv
import json

import pytest

from cfgen.errors import ModelError, UsageError
from test_label_resampling import write_jobs

SOURCE = "Chest CT of a 60 year old male: no pleural effusion, no emphysema, normal heart size, no pulmonary nodules"


def _fields():
    from cfgen.models.tabular import CT_FIELDS, parse_fields

    return parse_fields(CT_FIELDS, "ct")


@pytest.mark.parametrize("target, changed", [
    (SOURCE, []),
    (SOURCE.replace("no pulmonary nodules", "3 pulmonary nodules"), ["nodules"]),
    (SOURCE.replace("no pleural effusion", "large bilateral pleural effusion"), ["effusion"]),
    ("nodules=0", []),  # the same value, given as field=value
    ("nodules=2, effusion=small", ["nodules", "effusion"]),
])
def test_changed_fields_are_the_target_values_the_source_does_not_have(target, changed):
    from cfgen.models.tabular import changed_fields

    assert sorted(changed_fields(SOURCE, target, _fields())) == sorted(changed)


def test_an_edit_of_an_unreliable_field_is_refused_and_others_are_not():
    from cfgen.models.tabular import check_editable

    defaults = {"unreliable_fields": ["nodules"]}
    check_editable("m", defaults, SOURCE, SOURCE.replace("no pleural effusion", "small pleural effusion"), _fields())
    with pytest.raises(UsageError, match="changes nodules, which model 'm' does not render faithfully"):
        check_editable("m", defaults, SOURCE, SOURCE.replace("no pulmonary nodules", "3 pulmonary nodules"), _fields())
    check_editable("m", {}, SOURCE, "nodules=3", _fields())  # a model that lists nothing edits anything


def test_unreliable_edits_refuse_edits_and_leave_synthesis_alone():
    from cfgen.models.tabular import check_editable, check_synthesizable

    defaults = {"unreliable_edits": ["effusion"]}
    target = SOURCE.replace("no pleural effusion", "large bilateral pleural effusion")
    with pytest.raises(UsageError, match="changes effusion, .* unreliable_edits lists it"):
        check_editable("m", defaults, SOURCE, target, _fields())
    check_synthesizable("m", defaults, target, _fields())


@pytest.mark.parametrize("prompt, refused", [
    (SOURCE, False), ("nodules=0, effusion=large", False), ("CT with a large right pleural effusion", False),
    (SOURCE.replace("no pulmonary nodules", "3 pulmonary nodules"), True), ("nodules=2", True)])
def test_synthesis_asking_for_an_unreliable_field_is_refused_at_its_lowest_value_not(prompt, refused):
    from cfgen.models.tabular import check_synthesizable

    defaults = {"unreliable_fields": ["nodules"]}
    if not refused:
        check_synthesizable("m", defaults, prompt, _fields())
        return
    with pytest.raises(UsageError, match="asks for nodules, which model 'm' does not render faithfully"):
        check_synthesizable("m", defaults, prompt, _fields())
    check_synthesizable("m", {}, prompt, _fields())


def test_demo_ct_synth3d_refuses_nodules_before_generating(cli, tmp_path):
    res = cli("synth3d", "-m", "demo-ct", "-p", "CT of a 60 year old male with 3 pulmonary nodules", "--sr", "none",
              "--steps", "2", "--device", "cpu", "-q", "-o", tmp_path / "out")
    assert res.exit_code == 2, res.output
    assert "asks for nodules, which model 'demo-ct' does not render faithfully" in res.output
    assert not list((tmp_path / "out").rglob("*.nii.gz"))


def test_demo_ct_refuses_a_nodule_edit_row_and_goes_on(cli, tmp_path):
    data = tmp_path / "ph"
    assert cli("phantoms", "ct", "-n", "1", "-o", data, "-q").exit_code == 0
    rows = [r for r in csv.DictReader((data / "edit_jobs.csv").open()) if r["label"] in ("nodules", "effusion_ml")]
    assert [r["label"] for r in rows] == ["effusion_ml", "nodules"]
    write_jobs(rows, data, tmp_path / "jobs.csv")
    res = cli("edit", "--batch", tmp_path / "jobs.csv", "-m", "demo-ct", "--steps", "2", "--device", "cpu", "-q",
              "-o", tmp_path / "out")
    assert res.exit_code != 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    ok, bad = report["items"]
    assert ok["status"] == "ok" and bad["status"] == "error"
    assert "changes nodules, which model 'demo-ct' does not render faithfully" in bad["error"]
    assert not list((tmp_path / "out").glob(f"{rows[1]['output']}*"))  # nothing written for the refused row


def test_an_unreliable_field_the_model_does_not_have_is_refused_at_load(tmp_path, monkeypatch):
    from cfgen.models.loader import load_model
    from cfgen.models.registry import load_registry

    reg = tmp_path / "models.toml"
    entry = load_registry().get("demo-ct")
    body = (f'[models.ct]\nfamily = "latent-diffusion-3d"\nresolution = 32\nchannels = 1\nspacing = 12.0\n'
            f'source = {{ kind = "local", path = "{entry.path.as_posix()}" }}\n[models.ct.scheduler]\nkind = "rflow"\n'
            f'[models.ct.defaults]\nwindow = "-1024,-700,600"\n')
    synth = ('[models.ct.synth]\nspacing = 12.0\nlabels = ["RUL", "RML", "RLL", "LUL", "LLL", "airway", "vessel", '
             '"heart", "effusion"]\nlabel_encoding = "bits"\nlabel_codes = [1, 2, 3, 4, 5, 6, 16, 8, 9]\n'
             'given_labels = "clean"\n')
    monkeypatch.setenv("CFGEN_MODELS_TOML", str(reg))
    reg.write_text(body + 'unreliable_fields = ["nodule"]\n' + synth)
    with pytest.raises(ModelError, match="unreliable_fields names 'nodule', which is not a conditioning field"):
        load_model("ct", device="cpu")
    reg.write_text(body + 'unreliable_fields = "nodules"\n' + synth)
    with pytest.raises(ModelError, match="defaults.unreliable_fields: expected a list of names"):
        load_model("ct", device="cpu")


def test_a_saved_model_keeps_its_unreliable_fields_as_a_list(tmp_path):
    """A model fine-tuned from demo-ct inherits its [defaults] (the refusal too), written as TOML a
    registry reads back (tomllib, not cfgen's writer, parses it)."""
    import tomllib
    from dataclasses import replace

    from cfgen.models.registry import load_registry
    from cfgen.training.export import model_toml

    entry = load_registry().get("demo-ct")
    text = model_toml(replace(entry, defaults={**entry.defaults, "unreliable_fields": ["nodules", "age"]}))
    assert tomllib.loads(text)["defaults"]["unreliable_fields"] == ["nodules", "age"]


def test_demo_brain_refuses_lesion_edits_and_synthesis(cli, tmp_path):
    """demo-brain lists lesion_load (held out: no lesion addition moved the lesion volume the right way) and,
    for edits, diagnosis (its AD is an old brain's at any age): an edit that changes either fails naming
    the field, with nothing written; age edits go on; synthesis refuses lesions."""
    import nibabel as nib

    from pathlib import Path

    volume = Path(__file__).parents[1] / "examples" / "brain_demo.nii.gz"
    src = "Brain MRI of a 48 year old male with no lesions"
    res = cli("edit", volume, "-m", "demo-brain", "-s", src, "-p", src.replace("no lesions", "high lesion load"),
              "--steps", "2", "-q", "--figure-format", "none", "-o", tmp_path / "lesions")
    assert res.exit_code == 1
    item = json.loads((tmp_path / "lesions" / "report.json").read_text())["items"][0]
    assert item["status"] == "error" and "changes lesion_load, which model 'demo-brain'" in item["error"]
    assert not list((tmp_path / "lesions").rglob("*.nii.gz"))
    res = cli("edit", volume, "-m", "demo-brain", "-s", src, "-p", src.replace("48", "78"), "--steps", "2", "-q",
              "--figure-format", "none", "-o", tmp_path / "age")
    assert res.exit_code == 0, res.output
    assert nib.load(tmp_path / "age" / "brain_demo" / "counterfactual.nii.gz").shape == nib.load(volume).shape
    res = cli("edit", volume, "-m", "demo-brain", "-s", src, "-p", src.replace("male", "male with Alzheimer's disease"),
              "--steps", "2", "-q", "--figure-format", "none", "-o", tmp_path / "dx")
    item = json.loads((tmp_path / "dx" / "report.json").read_text())["items"][0]
    assert res.exit_code == 1 and "changes diagnosis, which model 'demo-brain'" in item["error"]
    res = cli("synth3d", "-m", "demo-brain", "-p", "brain MRI, high lesion load", "--sr", "none", "--steps", "2",
              "-q", "-o", tmp_path / "synth")
    assert res.exit_code == 2 and "asks for lesion_load, which model 'demo-brain'" in res.output


def test_brain_benchmark_records_refused_edits_and_measures_them_when_asked():
    import brain_edits

    args = ["--model", "demo-brain", "--n", "1", "--seed", "90000", "--steps", "2", "--kinds", "lesion", "diagnosis",
            "--recon", "0", "--device", "cpu"]
    res = brain_edits.main(args)
    assert res["table"] == [] and sorted(res["refused"]) == ["add lesions", "diagnosis to AD"]  # subject 0: CN, none
    assert "lesion_load" in res["refused"]["add lesions"]["reason"]
    assert "unreliable_edits" in res["refused"]["diagnosis to AD"]["reason"]
    measured = brain_edits.main(args + ["--measure-refused"])
    assert measured["refused"] == {} and sorted(r["edit"] for r in measured["table"]) == sorted(res["refused"])
