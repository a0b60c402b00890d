"""Inversion methods (ddim, negative-prompt, null-text) and the inversion-fidelity gate, on a tiny
model through the CLI, with the reconstruction PSNR the report gives for each."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cfgen.io.scan import read_scan

GUIDED = ["--guidance", "6", "--steps", "6", "-q"]


def _invert(cli, model, scan, out, *args):
    res = cli("invert", scan, "-s", "axial ct", "-m", model, "-o", out, *args)
    assert res.exit_code == 0, res.output
    return json.loads((out / "report.json").read_text())["items"][0]


@pytest.fixture(scope="module")
def inversions(tiny_model, ct_small, tmp_path_factory):
    from typer.testing import CliRunner

    from cfgen.cli.main import app

    def cli(*args):
        return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)

    tmp = tmp_path_factory.mktemp("inv")
    items = {m: _invert(cli, tiny_model, ct_small, tmp / m, "--inversion", m, "--null-text-steps", "5", *GUIDED)
             for m in ("ddim", "negative-prompt", "null-text")}
    items["plain"] = _invert(cli, tiny_model, ct_small, tmp / "plain", "--steps", "6", "-q")  # guidance 1
    return tmp, items


def test_guided_reconstruction_per_method(inversions):
    tmp, items = inversions
    psnr = {m: it["metrics"]["inversion_psnr"] for m, it in items.items()}
    assert items["plain"]["inversion"] == {"method": "ddim", "steps": 6, "guidance": 1.0, "solver": "ddim"}
    assert items["null-text"]["inversion"]["method"] == "null-text"
    assert psnr["ddim"] < psnr["plain"] - 3  # guidance > 1 breaks plain DDIM's reconstruction
    assert psnr["negative-prompt"] > psnr["ddim"] + 3 and psnr["null-text"] > psnr["ddim"] + 1


def test_negative_prompt_inversion_is_ddim_at_guidance_one(inversions):
    """With the source prompt as the unconditional branch, guidance cancels: the reconstruction
    equals plain DDIM's (guidance 1) whatever the guidance."""
    tmp, _ = inversions
    a = read_scan(tmp / "negative-prompt" / "CT_small" / "reconstruction.dcm").pixels
    b = read_scan(tmp / "plain" / "CT_small" / "reconstruction.dcm").pixels
    assert np.abs(a - b).max() <= 2  # HU: float rounding before the int16 write


def test_gate_escalates_to_the_first_method_that_holds(cli, tiny_model, ct_small, inversions, tmp_path):
    _, items = inversions
    bar = (items["ddim"]["metrics"]["inversion_psnr"] + items["negative-prompt"]["metrics"]["inversion_psnr"]) / 2
    out = tmp_path / "gate"
    res = cli("edit", ct_small, "-s", "axial ct", "-p", "axial ct", "-m", tiny_model, "--min-inversion-psnr",
              f"{bar:.2f}", "-o", out, *GUIDED)
    assert res.exit_code == 0, res.output
    item = json.loads((out / "report.json").read_text())["items"][0]
    inv = item["inversion"]
    assert inv["method"] == "negative-prompt" and inv["gate"]["region"] == "whole scan"
    tries = inv["gate"]["tries"]
    assert [(t["method"], t["steps"]) for t in tries] == [("ddim", 6), ("ddim", 12), ("negative-prompt", 6)]
    assert tries[0]["psnr"] < bar <= tries[-1]["psnr"]


def test_gate_fails_the_item_when_no_inversion_holds(cli, tiny_model, ct_small, tmp_path):
    out = tmp_path / "never"
    res = cli("edit", ct_small, "-s", "axial ct", "-p", "big heart", "-m", tiny_model, "--min-inversion-psnr", "99",
              "--null-text-steps", "1", "--mask", "auto", "-o", out, "--guidance", "6", "--steps", "3", "-q")
    assert res.exit_code == 1
    assert "CT_small.dcm" in res.stderr and "--min-inversion-psnr 99" in res.stderr and "null-text 3 steps" in res.stderr
    item = json.loads((out / "report.json").read_text())["items"][0]
    assert item["status"] == "error" and not (out / "CT_small" / "counterfactual.dcm").exists()


@pytest.mark.parametrize("args, word", [(["--inversion", "exact"], "--inversion exact"),
                                        (["--inversion", "negative-prompt", "--negative-prompt", "blurry"],
                                         "--negative-prompt cannot be used"),
                                        (["--null-text-steps", "0"], "--null-text-steps 0"),
                                        (["--min-inversion-psnr", "0"], "--min-inversion-psnr 0")])
def test_bad_inversion_options_are_usage_errors(cli, tiny_model, ct_small, tmp_path, args, word):
    res = cli("edit", ct_small, "-p", "x", "-m", tiny_model, *args, "-o", tmp_path / "o", "-q")
    assert res.exit_code == 2 and word in res.stderr, res.output
    assert not (tmp_path / "o").exists()


def test_null_text_runs_through_a_3d_model(cli, tmp_path):
    """The optimisation backpropagates through MONAI's 3D UNet to the null embedding."""
    import nibabel as nib

    from cfgen.models.ldm3d import LDM3DSpec, build_ldm3d

    folder = build_ldm3d(tmp_path / "m3", LDM3DSpec(ae_channels=None), seed=0)
    vol = np.random.default_rng(0).uniform(0, 100, (16, 16, 12)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.diag([4.0, 4.0, 4.0, 1.0])), tmp_path / "v.nii.gz")
    res = cli("invert", tmp_path / "v.nii.gz", "-s", "Brain MRI", "-m", folder, "--guidance", "5", "--inversion",
              "null-text", "--null-text-steps", "2", "--steps", "3", "-o", tmp_path / "o", "-q")
    assert res.exit_code == 0, res.output
    item = json.loads((tmp_path / "o" / "report.json").read_text())["items"][0]
    assert item["inversion"] == {"method": "null-text", "steps": 3, "guidance": 5.0, "solver": "ddim"}
    assert item["metrics"]["inversion_psnr"] > 30


def test_a_negative_prompt_against_a_models_negative_prompt_inversion_says_what_to_add(cli, tmp_path):
    """demo-brain edits with --inversion negative-prompt by default (models.toml): a user's
    --negative-prompt is refused before any work, naming the option that lets it through."""
    scan = Path(__file__).resolve().parents[1] / "examples" / "brain_demo.nii.gz"
    res = cli("edit", scan, "-m", "demo-brain", "-p", "age=85", "--negative-prompt", "age=20", "-o", tmp_path / "o", "-q")
    assert res.exit_code == 2 and "add --inversion ddim" in res.stderr, res.output
    assert not (tmp_path / "o").exists()
