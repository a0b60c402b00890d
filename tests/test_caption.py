"""`cfgen caption`: PRISM's CheXpert template, uncertainty policies, brain and user templates."""
from __future__ import annotations

import csv
import io

import pytest

from cfgen.captions.templates import NORMAL_CAPTION, UncertainPolicy, caption_rows
from cfgen.errors import InputError

COLS = ["Path", "No Finding", "Cardiomegaly", "Pleural Effusion", "Support Devices"]


def _cap(rows, **kw):
    return caption_rows(rows, COLS, "chexpert", "labels.csv", **kw)


def _row(nf="", cm="", pe="", sd=""):
    return {"Path": "p.jpg", "No Finding": nf, "Cardiomegaly": cm, "Pleural Effusion": pe, "Support Devices": sd}


def test_prism_listing_1():
    rows = [_row(cm="1.0", pe="1.0"), _row(nf="1.0"), _row(pe="0.0", sd="1"), _row()]
    assert _cap(rows) == ["Chest X-ray showing Cardiomegaly, Pleural Effusion", NORMAL_CAPTION,
                          "Chest X-ray showing Support Devices", NORMAL_CAPTION]


@pytest.mark.parametrize("policy, expected", [
    (UncertainPolicy.ignore, "Chest X-ray with no definite findings"),
    (UncertainPolicy.negative, NORMAL_CAPTION),
    (UncertainPolicy.positive, "Chest X-ray showing Pleural Effusion"),
    (UncertainPolicy.possible, "Chest X-ray showing possible Pleural Effusion"),
])
def test_uncertain_policy(policy, expected):
    assert _cap([_row(pe="-1.0")], uncertain=policy) == [expected]


def test_uncertain_is_listed_after_certain_findings():
    assert _cap([_row(pe="-1", sd="1")], uncertain=UncertainPolicy.possible) == [
        "Chest X-ray showing Support Devices, possible Pleural Effusion"]


def test_blank_policy_is_separate():
    assert _cap([_row(cm="1")], blank=UncertainPolicy.ignore) == ["Chest X-ray showing Cardiomegaly"]
    assert _cap([_row()], blank=UncertainPolicy.ignore) == ["Chest X-ray with no definite findings"]


def test_bad_label_value_names_line_and_column():
    with pytest.raises(InputError, match=r"labels.csv line 3: column 'Cardiomegaly' has value 'maybe'"):
        _cap([_row(), _row(cm="maybe")])


def test_missing_columns_lists_the_columns_found():
    with pytest.raises(InputError, match="columns found|found Path, Age"):
        caption_rows([{"Path": "x", "Age": "3"}], ["Path", "Age"], "chexpert", "t.csv")


def test_brain_template():
    cols = ["subject", "Age", "Sex", "Diagnosis", "lesion_load"]
    rows = [{"subject": "s1", "Age": "72", "Sex": "F", "Diagnosis": "AD", "lesion_load": "0"},
            {"subject": "s2", "Age": "31.5", "Sex": "male", "Diagnosis": "", "lesion_load": "high"}]
    assert caption_rows(rows, cols, "brain", "b.csv") == [
        "Brain MRI of a 72 year old female with Alzheimer's disease, no lesions",
        "Brain MRI of a 31.5 year old male with high lesion load"]


def test_user_template_and_unknown_field():
    cols = ["Sex", "Age"]
    rows = [{"Sex": "F", "Age": "40"}]
    assert caption_rows(rows, cols, "chest x-ray of a {Age} year old, sex {Sex}", "u.csv") == [
        "chest x-ray of a 40 year old, sex F"]
    with pytest.raises(InputError, match=r"unknown column\(s\) 'Weight'; columns found: Sex, Age"):
        caption_rows(rows, cols, "{Weight} kg", "u.csv")


def test_cli_pipes_csv_to_stdout_and_writes_file(cli, tmp_path):
    src = tmp_path / "labels.csv"
    src.write_text("Path,Cardiomegaly,Pleural Effusion\na.jpg,1.0,\nb.jpg,,-1.0\n\n")
    before = src.read_bytes()
    res = cli("caption", src, "--uncertain", "possible")
    assert res.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["caption"] for r in rows] == ["Chest X-ray showing Cardiomegaly",
                                            "Chest X-ray showing possible Pleural Effusion"]
    assert rows[0]["Path"] == "a.jpg"
    out = tmp_path / "captions.csv"
    assert cli("caption", src, "-o", out).exit_code == 0
    assert "caption" in out.read_text().splitlines()[0]
    assert src.read_bytes() == before
    res = cli("caption", src, "-o", src)
    assert res.exit_code == 2 and "overwrite the input" in res.stderr


def test_cli_errors_are_one_line(cli, tmp_path):
    res = cli("caption", tmp_path / "missing.csv")
    assert res.exit_code == 1 and res.stderr.count("\n") == 1 and "missing.csv: CSV file not found" in res.stderr
    bad = tmp_path / "latin.csv"
    bad.write_bytes("Path,Cardiomegaly\nr\xe9sum\xe9.jpg,1\n".encode("latin-1"))
    res = cli("caption", bad)
    assert res.exit_code == 1 and "not UTF-8" in res.stderr
