"""The shipped demo model: loads offline through the registry (sha256 verified) and edits the
example phantom from the README."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from cfgen.models.registry import load_registry

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "cxr_demo.png"


def test_demo_is_the_default_and_ships_in_the_package():
    reg = load_registry()
    e = reg.get("demo-cxr")
    assert reg.default == "demo-cxr" and e.source == "package" and e.path.is_dir()
    assert e.path.is_relative_to(ROOT / "cfgen")
    weights = sorted(e.path.rglob("*.safetensors"))
    assert {w.relative_to(e.path).as_posix() for w in weights} == set(e.sha256)
    assert sum(w.stat().st_size for w in weights) <= 30 * 1024 * 1024


def test_demo_edit_runs_offline(cli, tmp_path):
    out = tmp_path / "out"
    res = cli("edit", EXAMPLE, "-s", "Chest X-ray showing Pleural Effusion, Support Devices",
              "-p", "Chest X-ray showing Pleural Effusion", "-o", out, "--steps", "10", "-q",
              env={"HF_HUB_OFFLINE": "1"})
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["model"]["name"] == "demo-cxr"
    assert rep["model"]["sha256"] == load_registry().get("demo-cxr").sha256
    cf = np.asarray(Image.open(out / "cxr_demo" / "counterfactual.png")).astype(float)
    src = np.asarray(Image.open(EXAMPLE)).astype(float)
    assert cf.shape == src.shape == (128, 128)
    assert 0 < np.abs(cf - src).mean() / 255 < 0.3


BRAIN = ROOT / "examples" / "brain_demo.nii.gz"


def test_demo_brain_ships_within_budget_and_edits_a_volume_by_values(cli, tmp_path):
    import nibabel as nib

    reg = load_registry()
    e = reg.get("demo-brain")
    assert e.family == "latent-diffusion-3d" and e.source == "package" and e.path.is_relative_to(ROOT / "cfgen")
    weights = sorted(e.path.rglob("*.safetensors"))
    assert {w.relative_to(e.path).as_posix() for w in weights} == set(e.sha256)
    assert sum(w.stat().st_size for w in weights) <= 30 * 1024 * 1024
    out = tmp_path / "old"
    res = cli("edit", BRAIN, "-m", "demo-brain", "-s", "Brain MRI of a 48 year old male", "-p",
              "Brain MRI of a 85 year old male", "--steps", "5", "-o", out, "-q", env={"HF_HUB_OFFLINE": "1"})
    assert res.exit_code == 0, res.output
    src, cf = nib.load(BRAIN), nib.load(out / "brain_demo" / "counterfactual.nii.gz")
    assert cf.shape == src.shape == (64, 64, 64) and np.array_equal(cf.affine, src.affine)
    change = np.abs(cf.get_fdata() - src.get_fdata()).mean() / np.ptp(src.get_fdata())
    assert 0 < change < 0.3
