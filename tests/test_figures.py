"""Figures for a paper, checked for their elements in the files themselves: SVG text elements
(prompts, units; view names in test_edit3d), the colour bar and the mask outline (their SVG ids), one colour
scale for every item of a run, PDF output, and the HTML page that links or embeds them."""
from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

FAST = ["--steps", "6", "-q"]


def svg_content(path: Path) -> tuple[str, set[str]]:
    """All text of an SVG and the ids of its elements."""
    root = ET.parse(path).getroot()
    text = " ".join(t.strip() for t in root.itertext() if t.strip())
    ids = {el.get("id") for el in root.iter() if el.get("id")}
    return text, ids


@pytest.fixture(scope="module")
def ct_run(tiny_model, ct_small, tmp_path_factory):
    """Two CT edits in one batch (automatic masks), figures as SVG."""
    from typer.testing import CliRunner

    from cfgen.cli.main import app

    def cli(*args):
        return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)

    tmp = tmp_path_factory.mktemp("figs")
    second = tmp / "second.dcm"
    shutil.copy(ct_small, second)
    csv = tmp / "jobs.csv"
    csv.write_text("image,prompt,source_prompt,output\n"
                   f"{ct_small},large pleural effusion,no findings,a\n"
                   f"{second},cardiomegaly,no findings,b\n")
    out = tmp / "out"
    res = cli("edit", "--batch", csv, "-m", tiny_model, "--mask", "auto", "--guidance", "5",
              "--figure-format", "svg", "-o", out, *FAST)
    assert res.exit_code == 0, res.output
    return out, json.loads((out / "report.json").read_text())


def test_ct_panel_has_prompts_hu_colour_bar_and_mask_outline(ct_run):
    out, rep = ct_run
    item = next(it for it in rep["items"] if it["name"] == "a")
    assert item["outputs"]["panel"].endswith("panel.svg") and item["outputs"]["difference"].endswith(".svg")
    text, ids = svg_content(out / item["outputs"]["panel"])
    assert "'no findings' -> 'large pleural effusion'" in text
    assert "original" in text and "difference (counterfactual - original)" in text
    assert "change (HU)" in text and "\u00b1500 for every item of the run" in text
    assert "colour-bar" in ids
    mask = np.asarray(Image.open(out / item["outputs"]["mask"])) > 127
    assert mask.any() and not mask.all()  # a region: its outline is drawn
    assert "mask-outline" in ids and "green outline: edit mask" in text
    dtext, dids = svg_content(out / item["outputs"]["difference"])
    assert "colour-bar" in dids and "mask-outline" in dids and "change (HU)" in dtext


def test_one_colour_scale_for_every_item_of_the_run(ct_run):
    out, rep = ct_run
    ranges = {it["figure"]["difference_range"] for it in rep["items"]}
    assert ranges == {500.0} and {it["figure"]["units"] for it in rep["items"]} == {"HU"}
    ticks = []
    for it in rep["items"]:
        root = ET.parse(out / it["outputs"]["difference"]).getroot()
        bar = next(el for el in root.iter() if el.get("id") == "colour-bar")
        ticks.append(sorted(t.strip() for t in bar.itertext() if t.strip()))
    assert ticks[0] == ticks[1] and "400" in ticks[0]  # the same tick labels, +-500 HU
    # the HU scale is the CT's: the item's window spans its pixel range in HU (pydicom's rescale)
    ds = pydicom.dcmread(out.parent / "second.dcm")
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    b = next(it for it in rep["items"] if it["name"] == "b")
    assert b["preprocessing"]["window"]["low"] == pytest.approx(hu.min())


def test_invert_panel_in_window_units_with_its_own_default_range(cli, tiny_model, mr_small, tmp_path):
    out = tmp_path / "inv"
    res = cli("invert", mr_small, "-s", "t2 weighted", "-m", tiny_model, "--figure-format", "svg", "-o", out, *FAST)
    assert res.exit_code == 0, res.output
    item = json.loads((out / "report.json").read_text())["items"][0]
    assert "difference" not in item["outputs"]
    text, ids = svg_content(out / item["outputs"]["panel"])
    assert "difference (reconstruction - original)" in text and "counterfactual" not in text
    assert "change (window fraction," in text and "\u00b10.1 for every item" in text
    assert "inversion and reconstruction under 't2 weighted'" in text
    assert "mask-outline" not in ids and item["figure"] == {"format": "svg", "difference_range": 0.1,
                                                             "units": item["figure"]["units"]}


def test_difference_range_and_pdf_and_the_page_links_it(cli, tiny_model, mr_small, tmp_path):
    out = tmp_path / "pdf"
    res = cli("edit", mr_small, "-p", "t1 weighted", "-m", tiny_model, "--figure-format", "pdf",
              "--difference-range", "0.25", "-o", out, *FAST)
    assert res.exit_code == 0, res.output
    item = json.loads((out / "report.json").read_text())["items"][0]
    for key in ("panel", "difference"):
        assert (out / item["outputs"][key]).read_bytes()[:5] == b"%PDF-"
    assert item["figure"]["difference_range"] == 0.25
    page = (out / "report.html").read_text()
    assert f'<a href="{item["outputs"]["panel"]}">panel.pdf</a>' in page


def test_bad_figure_options_fail_before_any_work(cli, tiny_model, mr_small, tmp_path):
    for args, word in ((["--figure-format", "bmp"], "--figure-format bmp"),
                       (["--difference-range", "-1"], "--difference-range -1")):
        out = tmp_path / word.split()[0].strip("-")
        res = cli("edit", mr_small, "-p", "x", "-m", tiny_model, *args, "-o", out, *FAST)
        assert res.exit_code == 2 and word in res.stderr, res.output
        assert not out.exists()


def test_evaluate_examples_have_one_colour_bar_per_column(cli, ct_run, tmp_path):
    run, _ = ct_run
    out = tmp_path / "ev"
    res = cli("evaluate", run, "--classifier", "none", "--figure-format", "svg", "-o", out, "-q")
    assert res.exit_code == 0, res.output
    text, ids = svg_content(out / "examples.svg")
    assert {"colour-bar-0", "colour-bar-1", "colour-bar-2"} <= ids and "colour-bar-3" not in ids
    assert "for all rows" in text and "difference (CF - original)" in text
    htext, _ = svg_content(out / "histograms.svg")
    assert "l1 (n=2)" in htext and "mean" in htext
