"""The shipped demo model: loads offline through the registry (sha256 verified) and edits the
example phantom from the README."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from cfgen.models.files import pinned_files
from cfgen.models.registry import load_registry

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "cxr_demo.png"
# demo-ct with --mask-from held-out phantoms 90000/2-4 at 20 steps: aerated lung about 760 HU below the
# heart (median -758 vs 20 HU on subject 2); the phantoms' own gap is about 840 HU
LUNG_HEART_GAP_HU = 400
VESSEL_HU = -400  # halfway between lung (-860) and blood (40), as benchmarks/synth3d.py


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


def test_wavelet_demo_ships_without_a_vae_and_reconstructs_a_held_out_phantom(cli, tmp_path):
    from cfgen.models.loader import load_model
    from cfgen.models.wavelet import HaarWavelet
    from cfgen.phantoms.dataset import write_cxr_dataset

    e = load_registry().get("demo-cxr-wavelet")
    weights = sorted(e.path.rglob("*.safetensors"))
    assert {w.relative_to(e.path).as_posix() for w in weights} == set(e.sha256)  # no vae/ weights
    assert sum(w.stat().st_size for w in weights) <= 30 * 1024 * 1024
    assert isinstance(load_model("demo-cxr-wavelet").vae, HaarWavelet)
    write_cxr_dataset(tmp_path / "ph", 1, seed=90000, size=128, counterfactuals=False, workers=1)  # held out
    res = cli("invert", tmp_path / "ph" / "images" / "cxr_00000.png", "-m", "demo-cxr-wavelet", "-s",
              "Chest X-ray showing Cardiomegaly, Pleural Effusion", "-o", tmp_path / "inv", "-q")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "inv" / "report.json").read_text())["items"][0]["metrics"]
    # lossless first stage; the reconstruction far above a VAE's ceiling (demo-cxr: about 28 dB). The
    # issue's 38 dB bar is the benchmark's figure over held-out phantoms (README); this image gives
    # 39.2 dB with the newest tested versions and 37.7 dB at the dependency floors (diffusers 0.31,
    # transformers 4.56): DDIM inversion is that sensitive to the libraries' arithmetic
    assert m["vae_psnr_capped"] == 100.0 and m["psnr"] >= 36.0


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


def test_demo_synth3d_stages_ship_within_budget_and_super_resolve_a_phantom(cli, tmp_path):
    """demo-brain (base) + demo-brain-sr: within the 30 MB budget together; the stage brings a held-out
    phantom region back from half resolution close to the truth; synth3d chains the two by name."""
    import nibabel as nib
    import torch.nn.functional as F

    from cfgen.editing.prepare import to_model
    from cfgen.io.nifti import write_volume
    from cfgen.io.scan import read_scan
    from cfgen.models.loader import load_model
    from cfgen.editing.grid import ModelGrid
    from cfgen.phantoms import brain
    from cfgen.synthesis.superres import super_resolve, upsample

    reg = load_registry()
    base, sr = reg.get(reg.default_synth3d), reg.get("demo-brain-sr")
    assert base.synth["super_resolution"] == "demo-brain-sr" and sr.synth["scale"] == 2
    weights = {e.name: sorted(e.path.rglob("*.safetensors")) for e in (base, sr)}
    assert {w.relative_to(sr.path).as_posix() for w in weights[sr.name]} == set(sr.sha256)
    assert sum(w.stat().st_size for ws in weights.values() for w in ws) <= 30 * 1024 * 1024
    exo, attrs = brain.subject(90000, 1)
    truth = brain.acquire(brain.compose(brain.tissue_maps(exo, attrs, 128, 1.5)), exo, 1.5)
    write_volume(tmp_path / "truth.nii.gz", truth, brain.affine(128, 1.5), "test")
    x = to_model(read_scan(tmp_path / "truth.nii.gz"), ModelGrid.of(sr), 1, (-1.0, 1.0), "auto").x  # as training reads it
    x = x[..., 40:72, 40:72, 48:80]  # a central 32^3 region (the stage is convolutional; 128^3 takes minutes on CPU)
    low = F.avg_pool3d(x, 2)
    stage = load_model("demo-brain-sr", device="cpu")
    y = super_resolve(stage, low, 32, 4, seed=0)
    err_sr = (y - x).abs().mean().item()
    err_tri = (upsample(low, 32) - x).abs().mean().item()
    psnr = lambda a: 10 * math.log10(4 / (a - x).pow(2).mean().item())  # noqa: E731 (range 2: [-1, 1])
    # the residual stage (200 CPU steps) beats trilinear upsampling on squared error and stays near
    # its absolute error (measured here: PSNR 25.5 vs 24.5 dB, MAE 0.067 vs 0.062; the earlier,
    # non-residual stage had MAE 0.086); a stage ignoring its input would be off by ~0.7
    assert psnr(y) > psnr(upsample(low, 32)) + 0.5 and err_sr < 1.1 * err_tri, (err_sr, err_tri)
    # the default chain (demo-brain, then demo-brain-sr by name), kept small: one SR step in one 64^3 window
    res = cli("synth3d", "-p", "brain MRI of an 85 year old", "--steps", "3", "--sr-steps", "1", "--size", "64",
              "--patch", "64", "-o", tmp_path / "s", "-q", env={"HF_HUB_OFFLINE": "1"})
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["params"]["model"] == "demo-brain" and report["params"]["sr"] == "demo-brain-sr"
    img = nib.load(tmp_path / "s" / "sample-000" / "volume.nii.gz")
    assert img.shape == (64, 64, 64) and np.allclose(img.header.get_zooms(), 3.0)


def test_demo_brain_labels_generates_image_and_anatomy_and_follows_a_given_anatomy(cli, tmp_path):
    """demo-brain-labels: the three 3D demo stages within 30 MB; --mask-from a held-out phantom's
    ventricles and lesions: the labels come back as given and the image is darker where they are."""
    import nibabel as nib

    from cfgen.phantoms import brain

    reg = load_registry()
    e = reg.get("demo-brain-labels")
    assert e.synth["labels"] == ["ventricles", "lesions"] and e.path.is_relative_to(ROOT / "cfgen")
    stages = [reg.get(n) for n in ("demo-brain", "demo-brain-sr", "demo-brain-labels")]
    weights = {s.name: sorted(s.path.rglob("*.safetensors")) for s in stages}
    assert {w.relative_to(e.path).as_posix() for w in weights[e.name]} == set(e.sha256)
    assert sum(w.stat().st_size for ws in weights.values() for w in ws) <= 30 * 1024 * 1024
    exo, attrs = brain.subject(90000, 3, brain.BrainPrevalence(ms=1.0))
    maps = brain.tissue_maps(exo, attrs, 32, 6.0)
    given = brain.anatomy_labels(maps, e.synth["labels"])
    nib.save(nib.Nifti1Image(given, brain.affine(32, 6.0)), tmp_path / "anatomy.nii.gz")
    res = cli("synth3d", "-p", "Brain MRI of a 70 year old female", "-m", "demo-brain-labels", "--steps", "10",
              "--mask-from", tmp_path / "anatomy.nii.gz", "-o", tmp_path / "s", "-q")
    assert res.exit_code == 0, res.output
    img = nib.load(tmp_path / "s" / "sample-000" / "volume.nii.gz")
    assert img.shape == (32, 32, 32) and np.allclose(img.header.get_zooms(), 6.0)
    got = np.asarray(nib.load(tmp_path / "s" / "sample-000" / "labels.nii.gz").dataobj)
    assert np.array_equal(got, given)
    x = img.get_fdata()
    brain_wm = maps["wm"] >= 0.5
    # the CPU-trained base couples image and labels only weakly (here 0.64 vs 0.68 at 10 steps): the
    # given ventricles come out darker than white matter, not yet CSF-dark (benchmarks/synth3d.py)
    assert x[given == 1].mean() < x[brain_wm & (given == 0)].mean()


def test_shipped_model_metadata_names_no_path_of_the_machine_that_trained_it():
    """training.json and configs travel with the package: no absolute paths in them (tokenizer
    vocabularies hold "/" as a token and are left out)."""
    import re

    weights = Path(__file__).parents[1] / "cfgen" / "models" / "weights"
    files = [f for f in weights.rglob("*") if f.suffix in (".json", ".toml") and "tokenizer" not in f.parent.name]
    assert len(files) >= 5
    for f in files:
        found = re.findall(r'"(/[^"]*|[A-Za-z]:\\\\[^"]*)"', f.read_text(encoding="utf-8"))
        assert not found, (f, found)


def test_demo_ct_chain_ships_within_budget_and_synthesizes_ct_in_hu_around_a_given_anatomy(cli, tmp_path):
    """demo-ct (base with the nine lung-anatomy labels as analog bits through one Haar level,
    rectified flow) + demo-ct-sr: within 30 MB each; --mask-from a held-out CT phantom's label map
    gives the labels back exactly, the volume is int16 HU, and the generated image follows the given
    anatomy (aerated lung darker than the heart; the labels of a free volume are anatomy, not noise)."""
    import nibabel as nib

    from cfgen.phantoms import ct

    reg = load_registry()
    base, sr = reg.get("demo-ct"), reg.get("demo-ct-sr")
    assert base.synth["super_resolution"] == "demo-ct-sr" and base.defaults["window"] == "-1024,-700,600"
    assert base.synth["given_labels"] == "clean"  # trained with --label-condition
    assert base.synth["labels"] == list(ct.LABELS) and base.scheduler["kind"] == "rflow"
    for e in (base, sr):
        weights = sorted(e.path.rglob("*.safetensors"))
        assert {w.relative_to(e.path).as_posix() for w in pinned_files(e.path)} == set(e.sha256)
        assert sum(w.stat().st_size for w in weights) <= 30 * 1024 * 1024
    assert "autoencoder/config.json" in base.sha256  # the band scales are pinned with the weights
    # band scales on the image's seven detail bands only (band order: input channel fastest; channel 0
    # is the image, 1-5 the label bits, whose bands stay as they are: scripts/train_demo_ct.py cpu-image-bands;
    # the fifth bit is the vessel's own, cfgen.training.recode)
    assert base.synth["label_codes"] == [1, 2, 3, 4, 5, 6, 16, 8, 9]
    scales = np.reshape(json.loads((base.path / "autoencoder" / "config.json").read_text())["band_scales"], (8, 6))
    # (the knee window's detail bands are scaled x2.9-20.7: a CT's detail is a small share of its range)
    assert scales[0, 0] == 1 and np.all(scales[1:, 0] > 2) and np.all(scales[:, 1:] == 1)
    exo, attrs = ct.subject(90000, 3)
    given = ct.label_map(ct.tissue_maps(exo, attrs, 32, 12.0))
    nib.save(nib.Nifti1Image(given, ct.affine(32, 12.0)), tmp_path / "anatomy.nii.gz")
    res = cli("synth3d", "-p", "Chest CT: no pleural effusion", "-m", "demo-ct", "--sr", "none", "--steps", "20",
              "--mask-from", tmp_path / "anatomy.nii.gz", "-o", tmp_path / "s", "-q", env={"HF_HUB_OFFLINE": "1"})
    assert res.exit_code == 0, res.output
    img = nib.load(tmp_path / "s" / "sample-000" / "volume.nii.gz")
    assert img.shape == (32, 32, 32) and np.allclose(img.header.get_zooms(), 12.0) and img.get_data_dtype() == np.int16
    got = np.asarray(nib.load(tmp_path / "s" / "sample-000" / "labels.nii.gz").dataobj)
    assert np.array_equal(got, given)
    hu = img.get_fdata()
    lung = np.isin(given, [1, 2, 3, 4, 5])
    assert -1024 <= hu.min() and hu.max() <= 600
    assert np.median(hu[lung]) < np.median(hu[given == ct.LABELS["heart"]]) - LUNG_HEART_GAP_HU
    # the given vessels (12 voxels here) rendered as blood under the default label guidance (5), more than
    # without it (held out, 32 maps: 0.82 against 0.47, benchmarks/synth3d.py)
    vessel = given == ct.LABELS["vessel"]
    res = cli("synth3d", "-p", "Chest CT: no pleural effusion", "-m", "demo-ct", "--sr", "none", "--steps", "20",
              "--mask-from", tmp_path / "anatomy.nii.gz", "--label-guidance", "1", "-o", tmp_path / "g1", "-q")
    assert res.exit_code == 0, res.output
    plain = nib.load(tmp_path / "g1" / "sample-000" / "volume.nii.gz").get_fdata()
    assert (hu[vessel] > VESSEL_HU).mean() >= 0.75 and (plain[vessel] > VESSEL_HU).mean() < 0.25
    free = cli("synth3d", "-p", "Chest CT: no pleural effusion", "-m", "demo-ct", "--sr", "none", "--steps", "20",
               "-o", tmp_path / "f", "-q")
    assert free.exit_code == 0, free.output
    labels = np.asarray(nib.load(tmp_path / "f" / "sample-000" / "labels.nii.gz").dataobj)
    share = np.bincount(labels.ravel(), minlength=10) / labels.size
    # the phantoms hold 85-97% background at this grid; noise decoded as labels spreads over all ten
    assert share[0] > 0.8 and share[8] > 0.002, share


def test_a_changed_band_scale_in_a_shipped_model_is_refused_like_a_changed_weight(tmp_path):
    """demo-ct's band scales are part of what its weights mean: a copy whose Haar config lost one is
    a sha256 mismatch naming that file, as a corrupt weight file would be."""
    import shutil

    import pytest

    from cfgen.errors import ModelError
    from cfgen.models.files import verify_sha256

    e = load_registry().get("demo-ct")
    copy = tmp_path / "demo-ct"
    shutil.copytree(e.path, copy)
    verify_sha256(copy, e.sha256, "demo-ct")  # the untouched copy passes
    cfg = copy / "autoencoder" / "config.json"
    data = json.loads(cfg.read_text())
    scaled = next(i for i, v in enumerate(data["band_scales"]) if v != 1.0)  # an image detail band's
    data["band_scales"][scaled] = 1.0
    cfg.write_text(json.dumps(data, indent=2) + "\n")
    with pytest.raises(ModelError, match=r"autoencoder/config.json: sha256 mismatch"):
        verify_sha256(copy, e.sha256, "demo-ct")
