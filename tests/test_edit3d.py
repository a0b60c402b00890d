"""The 3D family (MONAI networks) through the same loader and editing loop as 2D: tiny models,
brain phantom NIfTI volumes and a DICOM series, geometry kept exactly."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from test_figures import svg_content
from test_io import _series

from cfgen.models.ldm3d import LDM3DSpec, build_ldm3d
from cfgen.phantoms import brain


@pytest.fixture(scope="session")
def tiny3d(tmp_path_factory):
    return build_ldm3d(tmp_path_factory.mktemp("models3d") / "tiny3d", LDM3DSpec(), seed=0)


@pytest.fixture(scope="session")
def tiny3d_voxel(tmp_path_factory):
    """No autoencoder: diffusion in voxel space."""
    return build_ldm3d(tmp_path_factory.mktemp("models3d") / "voxel", LDM3DSpec(ae_channels=None), seed=1)


@pytest.fixture(scope="session")
def volume(tmp_path_factory):
    """A brain phantom (24^3 at 8 mm) with an oblique affine (rotated 20 degrees about z)."""
    exo, attrs = brain.subject(7, 0)
    vol = brain.render(exo, attrs, 24, 8.0)
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    aff = np.array([[8 * c, -8 * s, 0, -90], [8 * s, 8 * c, 0, -100], [0, 0, 8, -92], [0, 0, 0, 1]])
    img = nib.Nifti1Image(vol, aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=4)
    path = tmp_path_factory.mktemp("vol") / "oblique.nii.gz"
    nib.save(img, path)
    return path


def _report(folder):
    return json.loads((folder / "report.json").read_text())


def test_loader_infers_the_3d_family_and_the_2d_path_refuses_volumes(tiny3d, tiny_model, volume, cli, tmp_path):
    from cfgen.models.loader import entry_for, load_model

    assert entry_for(str(tiny3d)).family == "latent-diffusion-3d"
    (tmp_path / "copy").mkdir()
    for sub in ("unet",):
        (tmp_path / "copy" / sub).mkdir()
        (tmp_path / "copy" / sub / "config.json").write_text((tiny3d / sub / "config.json").read_text())
    assert entry_for(str(tmp_path / "copy")).family == "latent-diffusion-3d"  # no cfgen.toml: from the UNet config
    m = load_model(str(tiny3d), device="cpu")
    assert m.entry.spatial_dims == 3 and m.vae_scale_factor == 2
    res = cli("edit", volume, "-p", "x", "-m", tiny_model, "-o", tmp_path / "o2", "-q")
    assert res.exit_code == 1 and "needs a 3D model; this model is 2D" in res.output
    res = cli("edit", volume, "-p", "x", "-m", tiny3d, "--attention", "refine", "-o", tmp_path / "o3", "-q")
    assert res.exit_code == 2 and "prompt-to-prompt needs a diffusers UNet" in res.stderr


def test_3d_inversion_reconstructs_with_guidance_1(tiny3d, tiny3d_voxel, volume, cli, tmp_path):
    for model in (tiny3d, tiny3d_voxel):
        out = tmp_path / model.name
        res = cli("invert", volume, "-s", "Brain MRI of a 60 year old", "-m", model, "--steps", "10", "-o", out, "-q")
        assert res.exit_code == 0, res.output
        m = _report(out)["items"][0]["metrics"]
        # DDIM inversion of the diffusion part is exact up to float error, whatever the weights
        assert m["latent_rel_error"] < 1e-3 and m["inversion_psnr"] > 60
        rec = nib.load(out / "oblique" / "reconstruction.nii.gz")
        assert rec.shape == (24, 24, 24)
    # voxel space has no autoencoder loss: the reconstruction is the input
    vm = _report(tmp_path / "voxel")["items"][0]["metrics"]
    assert vm["psnr"] > 60


def test_3d_edit_keeps_the_input_geometry_exactly(tiny3d, volume, cli, tmp_path):
    out = tmp_path / "edit"
    res = cli("edit", volume, "-s", "Brain MRI of a 60 year old", "-p", "Brain MRI of a 90 year old", "-m", tiny3d,
              "--steps", "8", "--guidance", "3", "-o", out, "-q")
    assert res.exit_code == 0, res.output
    src, cf = nib.load(volume), nib.load(out / "oblique" / "counterfactual.nii.gz")
    assert cf.shape == src.shape
    assert np.array_equal(cf.affine, src.affine) and nib.aff2axcodes(cf.affine) == nib.aff2axcodes(src.affine)
    assert np.array_equal(cf.header.get_qform(), src.header.get_qform()) and int(cf.header["sform_code"]) == 4
    assert b"SYNTHETIC" in cf.header["descrip"].tobytes()
    data = cf.get_fdata()
    assert np.isfinite(data).all() and np.abs(data - src.get_fdata()).mean() > 0
    rep = _report(out)
    assert rep["model"]["family"] == "latent-diffusion-3d"
    assert rep["items"][0]["preprocessing"]["model_size"] == [16, 16, 16]
    assert (out / "oblique" / "panel.png").stat().st_size > 0


def test_3d_edit_with_a_mask_file_changes_nothing_outside_it(tiny3d, volume, cli, tmp_path):
    src = nib.load(volume)
    mask = np.zeros(src.shape, dtype=np.uint8)
    mask[8:16, 8:16, 8:16] = 1
    mpath = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, src.affine), mpath)
    out = tmp_path / "masked"
    res = cli("edit", volume, "-p", "Brain MRI of a 90 year old", "-s", "Brain MRI", "-m", tiny3d, "--steps", "6",
              "--guidance", "5", "--mask", mpath, "--figure-format", "svg", "-o", out, "-q")
    assert res.exit_code == 0, res.output
    text, ids = svg_content(out / "oblique" / "panel.svg")  # three named views, edge letters, mask outline
    assert all(word in text for word in ("axial", "coronal", "sagittal"))
    assert {"R", "L", "A", "P", "S", "I"} <= set(text.split()) and {"mask-outline", "colour-bar"} <= ids
    cf = nib.load(out / "oblique" / "counterfactual.nii.gz").get_fdata()
    used = nib.load(out / "oblique" / "mask.nii.gz").get_fdata()
    assert used.shape == src.shape and used[mask == 1].min() > 0.5
    far = used == 0
    assert far.sum() > 0.5 * far.size
    np.testing.assert_allclose(cf[far], src.get_fdata()[far], atol=1e-5)


def test_3d_refine_mask_is_within_the_first_pass_and_keeps_the_rest(cli, tmp_path):
    """On the shipped demo-brain and the quickstart's held-out phantom."""
    volume = Path(__file__).parents[1] / "examples" / "brain_demo.nii.gz"
    args = ["-s", "Brain MRI of a 48 year old male with no lesions", "-p", "Brain MRI of a 85 year old male with "
            "no lesions", "-m", "demo-brain", "--steps", "6", "--mask-threshold", "0.3", "--figure-format", "none", "-q"]
    res = cli("edit", volume, *args, "--mask", "auto", "-o", tmp_path / "auto")
    assert res.exit_code == 0, res.output
    res = cli("edit", volume, *args, "--mask", "refine", "--refine-change", "0.1", "-o", tmp_path / "refine")
    assert res.exit_code == 0, res.output
    first = nib.load(tmp_path / "auto" / "brain_demo" / "mask.nii.gz").get_fdata()
    used = nib.load(tmp_path / "refine" / "brain_demo" / "mask.nii.gz").get_fdata()
    assert used.shape == first.shape and (used <= first + 1e-6).all() and used.max() > 0.5
    item = json.loads((tmp_path / "refine" / "brain_demo" / "item.json").read_text())
    assert item["metrics"]["mask_first_fraction"] > item["metrics"]["mask_fraction"] > 0
    cf = nib.load(tmp_path / "refine" / "brain_demo" / "counterfactual.nii.gz").get_fdata()
    far = used == 0
    np.testing.assert_allclose(cf[far], nib.load(volume).get_fdata()[far], atol=1e-4)


def test_3d_edit_of_a_dicom_series_writes_a_series_with_its_geometry(tiny3d, ct_small, cli, tmp_path):
    folder = _series(tmp_path / "series", ct_small, n=6)
    out = tmp_path / "out"
    res = cli("edit", folder, "-p", "CT", "-s", "CT", "-m", tiny3d, "--steps", "4", "-o", out, "-q")
    assert res.exit_code == 0, res.output
    written = sorted((out / "series" / "counterfactual").iterdir())
    src = sorted(folder.iterdir())
    assert len(written) == len(src) == 6
    for a, b in zip(src, written):
        da, db = pydicom.dcmread(a), pydicom.dcmread(b)
        assert db.ImagePositionPatient == da.ImagePositionPatient
        assert db.ImageOrientationPatient == da.ImageOrientationPatient and db.PixelSpacing == da.PixelSpacing
        assert db.SyntheticData == "YES" and db.pixel_array.shape == da.pixel_array.shape


def test_finetune_trains_a_3d_model_resumes_and_the_result_edits(tiny3d, cli, tmp_path):
    data = tmp_path / "brain"
    assert cli("phantoms", "brain", "-n", "4", "--size", "32", "--spacing", "6", "--no-counterfactuals",
               "-o", data, "-q").exit_code == 0
    assert cli("caption", data / "labels.csv", "--template", "brain", "-o", data / "train.csv").exit_code == 0
    out = tmp_path / "ft"
    common = ("finetune", data / "train.csv", "-m", tiny3d, "-o", out, "--batch-size", "4", "--learning-rate", "1e-3",
              "--checkpoint-every", "3", "--device", "cpu", "-q")
    res = cli(*common, "--max-steps", "3", "--validation-prompt", "Brain MRI of a 80 year old")
    assert res.exit_code == 0, res.output
    first = _report(out)["training"]
    assert first["final_step"] == 3 and first["eval_loss_end"] < first["eval_loss_start"]
    res = cli(*common, "--max-steps", "6", "--resume")
    assert res.exit_code == 0, res.output
    second = _report(out)["training"]
    assert second["start_step"] == 3 and second["final_step"] == 6
    model = out / "model"
    assert (model / "unet" / "model.safetensors").is_file() and (model / "autoencoder" / "model.safetensors").is_file()
    assert (out / "validation" / "final.png").stat().st_size > 0  # from the first run's validation prompt
    res = cli("edit", data / "images" / "brain_00000.nii.gz", "-s", "Brain MRI", "-p", "Brain MRI of a 90 year old",
              "-m", model, "--steps", "4", "-o", tmp_path / "e", "-q")
    assert res.exit_code == 0, res.output
    assert _report(tmp_path / "e")["model"]["family"] == "latent-diffusion-3d"
    assert nib.load(tmp_path / "e" / "brain_00000" / "counterfactual.nii.gz").shape == (32, 32, 32)


def test_3d_autoencoder_training_reduces_error_sets_the_scale_and_loads(tiny3d, cli, tmp_path):
    from cfgen.models.loader import load_model
    from cfgen.training.vae import train_vae

    data = tmp_path / "brain"
    assert cli("phantoms", "brain", "-n", "6", "--size", "32", "--spacing", "6", "--no-counterfactuals",
               "-o", data, "-q").exit_code == 0
    out = tmp_path / "ae"
    s = train_vae(data / "labels.csv", tiny3d, out, steps=20, batch_size=3, lr=3e-3, seed=0, device="cpu",
                  checkpoint_every=10)
    assert s["component"] == "autoencoder"
    first, last = np.mean([v for _, v in s["losses"][:3]]), np.mean([v for _, v in s["losses"][-3:]])
    assert last < first * 0.8
    cfg = json.loads((out / "autoencoder" / "config.json").read_text())
    assert cfg["scaling_factor"] == pytest.approx(1.0 / s["latent_std"])
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-0000010", "step-0000020"]
    # dropped into a model folder it loads through the registry loader with the new scale
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny3d, model)
    shutil.rmtree(model / "autoencoder")
    shutil.copytree(out / "autoencoder", model / "autoencoder")
    m = load_model(str(model), device="cpu")
    assert m.vae.config.scaling_factor == pytest.approx(s["scaling_factor"])


def test_brain_edit_benchmark_runs_on_any_3d_model(tiny3d, capsys):
    import brain_edits  # benchmarks/ is on the tests' path (pyproject.toml)

    res = brain_edits.main(["--model", str(tiny3d), "--n", "1", "--seed", "90000", "--spacing", "12", "--steps", "2",
                    "--device", "cpu"])
    names = [r["edit"] for r in res["table"]]
    assert any(n.startswith("age ") for n in names) and any(n.endswith("lesions") for n in names)
    for r in res["table"]:
        assert r["n"] == 1 and r["direction"] in (0.0, 1.0) and r["err_none"] > 0 and r["seconds"] > 0
    assert len(res["psnr_reconstruction"]) == 1 and 0 < res["psnr_reconstruction"][0] < 100
    assert "direction" in capsys.readouterr().out


def test_brain_edit_benchmark_oracle_mask_confines_the_edit_to_the_true_region(tiny3d):
    """--mask oracle hands each edit the true-difference region: an untrained model's edit then changes
    less outside it than the same edit without a mask, on every edit type."""
    import brain_edits

    args = ["--model", str(tiny3d), "--n", "1", "--seed", "90000", "--spacing", "12", "--steps", "2", "--device",
            "cpu", "--recon", "0"]
    free = {r["edit"]: r for r in brain_edits.main(args + ["--mask", "none"])["table"]}
    oracle = {r["edit"]: r for r in brain_edits.main(args + ["--mask", "oracle"])["table"]}
    assert oracle.keys() == free.keys() and oracle
    for name, r in oracle.items():
        assert r["outside"] < free[name]["outside"], name


def test_ct_edit_benchmark_measures_every_edit_type_of_a_ct_phantom(capsys, tmp_path):
    import ct_edits

    res = ct_edits.main(["--n", "1", "--steps", "2", "--masks", "refine", "--recon", "1", "--device", "cpu",
                         "--work", str(tmp_path)])
    table = res["masks"]["refine"]
    assert sorted({r["edit"].split()[0] for r in table}) == ["cardiomegaly", "effusion"]
    for r in table:
        assert r["n"] == 1 and r["ratio"] >= 0 and r["floor"] < 1 and r["mask_recall"] is not None
        assert r["direction"] is not None
    # demo-ct's models.toml lists nodules under unreliable_fields and emphysema under unreliable_edits: those
    # edits are refused, and said so
    refused = res["refused"]["refine"]
    assert sorted(name.split()[0] for name in refused) == ["emphysema", "nodules"]
    assert all(r["n"] == 1 and "does not render faithfully" in r["reason"] for r in refused.values())
    assert res["model"]["name"] == "demo-ct" and len(res["psnr_reconstruction"]) == 1
    assert "--mask refine" in capsys.readouterr().out
    row = table[0]  # one phantom: it carries all of the error, and its own errors are the pooled ones
    assert row["top_share"] == 1.0 and row["per_item"][0]["image"] == row["top_item"]
    assert row["per_item"][0]["err_cf"] / row["per_item"][0]["err_none"] == pytest.approx(row["ratio"])
    top = ct_edits._top_item([{"image": "a", "err_cf": 1.0, "err_none": 2.0}, {"image": "b", "err_cf": 3.0, "err_none": 1.0}])
    assert top["top_item"] == "b" and top["top_share"] == 0.75
