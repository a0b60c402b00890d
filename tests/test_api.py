"""The Python API (cfgen/api.py): the README's snippet runs, numpy arrays in and out, options
checked as the CLI checks them, and the API's edit equals the CLI's."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import cfgen

ROOT = Path(__file__).resolve().parents[1]


def test_import_is_cheap():
    code = "import sys, cfgen; cfgen.__all__; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.split() == ["False", "False"]


def test_readme_snippet_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- api-snippet[^>]*-->\n```python\n(.*?)```", text, re.S).group(1)
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    written = sorted(p.name for p in (tmp_path / "runs" / "api-demo").iterdir())
    assert written == ["counterfactual.png", "difference.png", "mask.png", "panel.png"]


def test_api_edit_equals_the_cli(cli, tiny_model, tmp_path):
    from PIL import Image

    img = np.random.default_rng(1).uniform(0, 255, (40, 48)).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    res = cli("edit", tmp_path / "x.png", "-p", "Chest X-ray showing Cardiomegaly", "-m", tiny_model, "--steps", "3",
              "--seed", "2", "-o", tmp_path / "cli", "-q")
    assert res.exit_code == 0
    model = cfgen.load_model(tiny_model)
    r = cfgen.edit(tmp_path / "x.png", "Chest X-ray showing Cardiomegaly", model=model, steps=3, seed=2)
    files = r.save(tmp_path / "api")
    a = np.asarray(Image.open(files["counterfactual"]))
    b = np.asarray(Image.open(tmp_path / "cli" / "x" / "counterfactual.png"))
    assert np.array_equal(a, b)
    item = json.loads((tmp_path / "cli" / "x" / "item.json").read_text())
    assert r.metrics["l1"] == pytest.approx(item["metrics"]["l1"], rel=1e-6)
    assert r.difference.shape == (1, 40, 48) and r.mask is None


def test_numpy_volume_with_an_affine_keeps_its_shape(tmp_path):
    from cfgen.models.ldm3d import LDM3DSpec, build_ldm3d

    folder = build_ldm3d(tmp_path / "m3", LDM3DSpec(ae_channels=None), seed=0)
    vol = np.random.default_rng(0).uniform(0, 1, (12, 16, 10)).astype(np.float32)
    r = cfgen.invert(vol, "Brain MRI", model=str(folder), affine=np.diag([2.0, 2.0, 3.0, 1.0]), steps=2,
                     window="0,1")
    assert r.counterfactual.shape == (1, 12, 16, 10) and np.isfinite(r.counterfactual).all()
    assert r.scan.spacing == (2.0, 2.0, 3.0)
    files = r.save(tmp_path / "out")
    import nibabel as nib

    assert np.allclose(nib.load(files["reconstruction"]).affine, np.diag([2.0, 2.0, 3.0, 1.0]))


def test_bad_options_are_usage_errors(tiny_model):
    model = cfgen.load_model(tiny_model)
    img = np.zeros((32, 32), np.float32)
    with pytest.raises(cfgen.CfgenError, match="unknown option"):
        cfgen.edit(img, "x", model=model, stepz=3)
    with pytest.raises(cfgen.CfgenError, match="--steps 0: must be between 1 and 500"):
        cfgen.edit(img, "x", model=model, steps=0)
    with pytest.raises(cfgen.CfgenError, match="must be 2D"):
        cfgen.edit(np.zeros((2, 2, 2, 2)), "x", model=model)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cfgen.edit(img, "a very long prompt " * 4, model=model, steps=1)
    assert any("the text encoder reads" in str(w.message) for w in seen)


def test_api_numpy_array_and_nifti_path_give_the_cli_pixels(cli, tiny_model, tmp_path):
    """The notebook case: a numpy array (2D) and a NIfTI path (3D) through the API, against the CLI
    on the same data (the same window, so both map the same intensities to the model)."""
    import nibabel as nib
    from PIL import Image

    from cfgen.models.ldm3d import LDM3DSpec, build_ldm3d

    img = np.random.default_rng(3).uniform(0, 255, (40, 48)).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    res = cli("edit", tmp_path / "x.png", "-p", "Cardiomegaly", "-m", tiny_model, "--steps", "3",
              "--window", "0,255", "-o", tmp_path / "cli", "-q")
    assert res.exit_code == 0, res.output
    r = cfgen.edit(img, "Cardiomegaly", model=tiny_model, steps=3, window="0,255")
    png = np.asarray(Image.open(tmp_path / "cli" / "x" / "counterfactual.png")).astype(np.float32)
    assert r.counterfactual.shape == (40, 48)
    assert np.abs(np.clip(np.round(r.counterfactual), 0, 255) - png).max() <= 1  # PNG quantisation only

    folder = build_ldm3d(tmp_path / "m3", LDM3DSpec(ae_channels=None), seed=0)
    vol = np.random.default_rng(0).uniform(0, 100, (12, 16, 10)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.diag([2.0, 2.0, 3.0, 1.0])), tmp_path / "v.nii.gz")
    res = cli("edit", tmp_path / "v.nii.gz", "-p", "older", "-m", folder, "--steps", "2", "-o", tmp_path / "cli3",
              "-q")
    assert res.exit_code == 0, res.output
    r3 = cfgen.edit(tmp_path / "v.nii.gz", "older", model=str(folder), steps=2)
    cf = nib.load(tmp_path / "cli3" / "v" / "counterfactual.nii.gz").get_fdata()
    np.testing.assert_allclose(r3.counterfactual[0], cf, rtol=0, atol=1e-4)
    assert np.abs(r3.difference).max() > 0
