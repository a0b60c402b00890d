"""`cfgen invert` and `cfgen edit` end to end through the CLI, on real DICOM/NIfTI/PNG files."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from cfgen.io.scan import read_scan
from schema import validate_report

FAST = ["--steps", "8", "-q"]


def _report(out: Path) -> dict:
    """The run report, validated against the documented schema."""
    rep = json.loads((out / "report.json").read_text())
    validate_report(rep)
    return rep


def test_invert_reconstructs_with_guidance_1(cli, tiny_model, ct_small, tmp_path):
    out = tmp_path / "inv"
    res = cli("invert", ct_small, "-s", "axial ct", "-m", tiny_model, "--steps", "20", "-o", out, "-q")
    assert res.exit_code == 0, res.output
    rep = _report(out)
    item = rep["items"][0]
    assert item["status"] == "ok" and rep["command"] == "invert"
    m = item["metrics"]
    # the DDIM part alone (against the VAE's own reconstruction) and in latent space
    assert m["latent_rel_error"] < 0.05
    assert m["inversion_psnr"] > 28.0 and m["inversion_ssim"] > 0.8
    assert {"psnr", "ssim", "vae_psnr"} <= set(m)
    from safetensors import safe_open

    with safe_open(out / item["outputs"]["latents"], "pt") as f:
        assert set(f.keys()) == {"z0", "zT"} and f.get_tensor("zT").shape == (1, 4, 16, 16)
        assert f.metadata()["source_prompt"] == "axial ct" and f.metadata()["steps"] == "20"
    rec = pydicom.dcmread(out / item["outputs"]["reconstruction"])
    assert rec.SyntheticData == "YES"


def test_edit_dicom_keeps_geometry_and_changes_with_prompt(cli, tiny_model, ct_small, tmp_path):
    before = ct_small.read_bytes()
    outs = {}
    for key, prompt in (("a", "no devices"), ("b", "large pleural effusion with a pacemaker")):
        out = tmp_path / key
        res = cli("edit", ct_small, "-p", prompt, "-s", "ct", "-m", tiny_model, "--guidance", "5", "-o", out, *FAST)
        assert res.exit_code == 0, res.output
        outs[key] = out
    assert ct_small.read_bytes() == before
    item = _report(outs["a"])["items"][0]
    assert set(item["outputs"]) == {"counterfactual", "difference", "panel"}
    src, cf = pydicom.dcmread(ct_small), pydicom.dcmread(outs["a"] / item["outputs"]["counterfactual"])
    for tag in ("PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns"):
        assert cf.get(tag) == src.get(tag)
    assert cf.SyntheticData == "YES" and cf.ImageType[0] == "DERIVED"
    a = read_scan(outs["a"] / "CT_small" / "counterfactual.dcm").pixels
    b = read_scan(outs["b"] / "CT_small" / "counterfactual.dcm").pixels
    assert np.abs(a - b).mean() > 1.0  # HU: a different target prompt gives a different image
    diff = Image.open(outs["a"] / item["outputs"]["difference"])
    assert diff.format == "PNG" and item["figure"] == {"format": "png", "difference_range": 500.0, "units": "HU"}
    assert 0 < item["metrics"]["l1"] < 1


def test_seed_matters_with_eta_and_runs_are_deterministic(cli, tiny_model, mr_small, tmp_path):
    def run(name, seed):
        out = tmp_path / name
        res = cli("edit", mr_small, "-p", "t2 weighted", "-m", tiny_model, "--eta", "1", "--seed", seed,
                  "-o", out, *FAST)
        assert res.exit_code == 0, res.output
        assert _report(out)["items"][0]["seed"] == int(seed)
        return read_scan(out / "MR_small" / "counterfactual.dcm").pixels

    a, a2, b = run("a", "1"), run("a2", "1"), run("b", "2")
    np.testing.assert_array_equal(a, a2)
    assert np.abs(a - b).mean() > 0.5


def test_edit_2d_nifti_keeps_affine(cli, tiny_model, anatomical, tmp_path):
    img = nib.load(anatomical)
    src = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(img.get_fdata()[:, :, 12:13].astype(np.float32), img.affine, img.header), src)
    out = tmp_path / "out"
    res = cli("edit", src, "-p", "older", "-m", tiny_model, "-o", out, *FAST)
    assert res.exit_code == 0, res.output
    cf = nib.load(out / "slice" / "counterfactual.nii.gz")
    np.testing.assert_array_equal(cf.affine, nib.load(src).affine)
    assert cf.shape == nib.load(src).shape
    assert b"SYNTHETIC" in cf.header["descrip"].tobytes()


def test_3d_volume_with_2d_model_is_a_clear_error(cli, tiny_model, anatomical, tmp_path):
    res = cli("edit", anatomical, "-p", "x", "-m", tiny_model, "-o", tmp_path / "o", *FAST)
    assert res.exit_code == 1
    assert "3D volume" in res.stderr and "anatomical.nii" in res.stderr


def test_gray_png_through_rgb_model_stays_gray(cli, tiny_rgb_model, tmp_path):
    yy, xx = np.mgrid[0:48, 0:40]
    src = tmp_path / "xray.png"
    Image.fromarray(((xx + yy) * 2).astype(np.uint8)).save(src)
    out = tmp_path / "out"
    res = cli("edit", src, "-p", "x", "-m", tiny_rgb_model, "-o", out, *FAST)
    assert res.exit_code == 0, res.output
    item = json.loads((out / "xray" / "item.json").read_text())
    assert item["preprocessing"]["channels"] == "gray-to-rgb"
    r = item["preprocessing"]["model_size"][0]
    # 48 x 40: the long side fills the model's square, the short side keeps the aspect and is padded
    assert item["preprocessing"]["resized"] == [r, round(40 * r / 48)]
    short = r - round(40 * r / 48)
    assert item["preprocessing"]["pad"] == [0, 0, short // 2, short - short // 2]
    with Image.open(out / "xray" / "counterfactual.png") as im:
        assert im.mode == "L" and im.size == (40, 48) and im.text["cfgen:synthetic"] == "YES"


def _batch(tmp_path, ct_small, mr_small):
    data = tmp_path / "data"
    data.mkdir()
    (data / "ct.dcm").write_bytes(ct_small.read_bytes())
    (data / "mr.dcm").write_bytes(mr_small.read_bytes())
    csv = data / "jobs.csv"
    csv.write_text("image,prompt,caption,seed,output\n"
                   "ct.dcm,no devices,ct with devices,3,\n"
                   "missing.dcm,no devices,,,\n"
                   "mr.dcm,,mr,,mr_edit\n"
                   "mr.dcm,x,,,../escape\n")
    return csv


def test_batch_goes_on_past_bad_rows_and_resumes(cli, tiny_model, ct_small, mr_small, tmp_path):
    csv = _batch(tmp_path, ct_small, mr_small)
    out = tmp_path / "out"
    args = ("edit", "--batch", csv, "-p", "default prompt", "-m", tiny_model, "-o", out, *FAST)
    res = cli(*args)
    assert res.exit_code == 1
    rep = _report(out)
    status = {it["row"]: it["status"] for it in rep["items"]}
    assert status == {2: "ok", 3: "error", 4: "ok", 5: "error"}
    assert rep["summary"]["ok"] == 2 and rep["summary"]["error"] == 2
    errors = {it["row"]: it["error"] for it in rep["items"] if it["error"]}
    assert "missing.dcm: file not found" in errors[3]
    assert "line 5" in errors[5] and "plain folder name" in errors[5]
    assert not (tmp_path / "escape").exists()
    by_row = {it["row"]: it for it in rep["items"]}
    assert by_row[2]["seed"] == 3 and by_row[2]["params"]["source_prompt"] == "ct with devices"
    assert by_row[4]["params"]["prompt"] == "default prompt" and by_row[4]["name"] == "mr_edit"
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and p.name != ".journal") == ["ct", "mr_edit"]
    assert all(not p.name.startswith(".tmp") for p in out.rglob("*"))
    # re-run: finished rows are skipped (not recomputed), bad rows fail again
    mtime = (out / "ct" / "counterfactual.dcm").stat().st_mtime_ns
    res = cli(*args)
    assert res.exit_code == 1
    status = {it["row"]: it["status"] for it in _report(out)["items"]}
    assert status == {2: "skipped", 3: "error", 4: "skipped", 5: "error"}
    assert (out / "ct" / "counterfactual.dcm").stat().st_mtime_ns == mtime
    # fix the missing file: only that row runs
    (csv.parent / "missing.dcm").write_bytes(ct_small.read_bytes())
    cli(*args)
    status = {it["row"]: it["status"] for it in _report(out)["items"]}
    assert status == {2: "skipped", 3: "ok", 4: "skipped", 5: "error"}


def test_changed_parameters_do_not_silently_reuse_outputs(cli, tiny_model, ct_small, tmp_path):
    out = tmp_path / "out"
    assert cli("edit", ct_small, "-p", "a", "-m", tiny_model, "-o", out, *FAST).exit_code == 0
    res = cli("edit", ct_small, "-p", "b", "-m", tiny_model, "-o", out, *FAST)
    assert res.exit_code == 1 and "--overwrite" in _report(out)["items"][0]["error"]
    res = cli("edit", ct_small, "-p", "b", "-m", tiny_model, "-o", out, "--overwrite", *FAST)
    assert res.exit_code == 0 and _report(out)["items"][0]["params"]["prompt"] == "b"


def test_report_schema(cli, tiny_model, ct_small, tmp_path):
    out = tmp_path / "out"
    res = cli("edit", ct_small, "-p", "a", "-m", tiny_model, "-o", out, "--json", "--steps", "4")
    assert res.exit_code == 0
    printed = json.loads(res.stdout)
    rep = _report(out)
    assert printed == rep
    assert {"schema", "command", "cfgen_version", "created", "model", "params", "seed", "device", "timings",
            "items", "summary"} <= set(rep)
    assert rep["model"]["name"] == "tiny" and len(rep["model"]["sha256"]) == 3
    assert rep["params"]["steps"] == 4 and rep["params"]["guidance"] == 7.5 and rep["params"]["strength"] == 1.0
    assert rep["device"] == "cpu" and rep["timings"]["total_s"] > 0
    item = rep["items"][0]
    assert {"input", "status", "error", "outputs", "metrics", "seed"} <= set(item)
    assert all(not Path(p).is_absolute() and (out / p).is_file() for p in item["outputs"].values())
    assert rep["summary"]["ok"] == 1 and rep["summary"]["metrics"]["l1"]["n"] == 1


@pytest.mark.parametrize("args, code, message", [
    (("-p", "x", "--steps", "0"), 2, "--steps 0"),
    (("-p", "x", "--strength", "1.5"), 2, "--strength 1.5"),
    (("--steps", "4"), 2, "--prompt is required"),
    (("-p", "x", "--window", "nonsense"), 2, "--window nonsense"),
    (("-p", "x", "--window", "600,-1024"), 2, "HIGH must be above LOW"),
])
def test_usage_errors(cli, tiny_model, ct_small, tmp_path, args, code, message):
    res = cli("edit", ct_small, "-m", tiny_model, "-o", tmp_path / "o", "-q", *args)
    assert res.exit_code == code and message in res.stderr and not (tmp_path / "o").exists()


def test_mask_file_keeps_the_scan_outside_the_mask(cli, tiny_model, tmp_path):
    yy, xx = np.mgrid[0:64, 0:64]
    src = tmp_path / "scan.png"
    Image.fromarray((40 + xx * 2 + yy).astype(np.uint8)).save(src)
    mask = np.zeros((64, 64), np.uint8)
    mask[9:37, 11:39] = 255  # not on the latent cells' edges: the mask holds pixel by pixel all the same
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    res = cli("edit", src, "-p", "something else", "-m", tiny_model, "--mask", tmp_path / "mask.png",
              "--guidance", "5", "-o", out, *FAST)
    assert res.exit_code == 0, res.output
    item = json.loads((out / "scan" / "item.json").read_text())
    assert "mask" in item["outputs"] and 0.15 < item["metrics"]["mask_fraction"] < 0.45
    before = np.asarray(Image.open(src)).astype(int)
    after = np.asarray(Image.open(out / "scan" / "counterfactual.png")).astype(int)
    assert np.array_equal(after[mask == 0], before[mask == 0])
    assert np.abs(after[12:36, 14:38] - before[12:36, 14:38]).mean() > 2
    used = np.asarray(Image.open(out / "scan" / "mask.png"))
    assert used[20, 20] == 255 and not used[mask == 0].any()


def test_auto_mask_is_written_and_bounds_the_change(cli, tiny_model, ct_small, tmp_path):
    out = tmp_path / "out"
    res = cli("edit", ct_small, "-p", "large effusion", "-s", "normal", "-m", tiny_model, "--mask", "auto",
              "--guidance", "5", "-o", out, *FAST)
    assert res.exit_code == 0, res.output
    item = json.loads((out / "CT_small" / "item.json").read_text())
    m = np.asarray(Image.open(out / item["outputs"]["mask"])) / 255.0
    assert 0 < item["metrics"]["mask_fraction"] < 1 and m.shape == (128, 128)
    before = read_scan(ct_small).pixels[0]
    after = read_scan(out / "CT_small" / "counterfactual.dcm").pixels[0]
    # outside the saved mask (8-bit: below 1/255) only HU rounding and sub-1/255 feathering
    assert np.abs(after - before)[m == 0].max() <= 5.0


def test_missing_mask_file_is_refused_before_loading(cli, tiny_model, ct_small, tmp_path):
    res = cli("edit", ct_small, "-p", "x", "-m", tiny_model, "--mask", tmp_path / "nope.png", "-o", tmp_path / "o")
    assert res.exit_code == 1 and "nope.png: mask file not found" in res.stderr


def test_format_option_converts_with_the_window(cli, tiny_model, ct_small, tmp_path):
    out = tmp_path / "out"
    res = cli("edit", ct_small, "-p", "x", "-m", tiny_model, "--format", "png", "--window", "-1024,600", "-o", out, *FAST)
    assert res.exit_code == 0, res.output
    with Image.open(out / "CT_small" / "counterfactual.png") as im:
        arr = np.asarray(im)
        assert im.text["cfgen:synthetic"] == "YES" and arr.shape == (128, 128)
    head = (out / "CT_small" / "counterfactual.png").read_bytes()[:26]
    assert (head[24], head[25]) == (16, 0)  # IHDR: 16-bit grayscale (Pillow's mode for it varies by version)
    item = json.loads((out / "CT_small" / "item.json").read_text())
    assert item["preprocessing"]["window"]["low"] == -1024 and item["preprocessing"]["window"]["rule"] == "fixed"
    res = cli("edit", ct_small, "-p", "x", "-m", tiny_model, "--format", "nifti", "-o", tmp_path / "nii", *FAST)
    assert res.exit_code == 0
    img = nib.load(tmp_path / "nii" / "CT_small" / "counterfactual.nii.gz")
    assert img.shape == (128, 128) and tuple(img.header.get_zooms()) == pytest.approx((0.661468, 0.661468))
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(png)
    res = cli("edit", png, "-p", "x", "-m", tiny_model, "--format", "dicom", "-o", tmp_path / "d", *FAST)
    # refused before the model is loaded, from the scan's name: a usage error, no run folder
    assert res.exit_code == 2 and "DICOM output needs a DICOM input" in res.stderr and not (tmp_path / "d").exists()
