"""The Haar wavelet representation (cfgen/models/wavelet.py): against PyWavelets, exactly
invertible, loaded by the one loader for 2D and 3D, finetuned and edited by the same loop."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cfgen.errors import ModelError
from cfgen.models.wavelet import HaarWavelet, haar_forward, haar_inverse

pywt = pytest.importorskip("pywt")


def _pywt_bands(x: np.ndarray, levels: int) -> list[np.ndarray]:
    """PyWavelets' Haar packet, level by level with pywt.dwtn, in cfgen's band order: the bands
    of the level before fastest, then the sub-band code (bit i: detail along axis i)."""
    bands = [x]
    for _ in range(levels):
        per = []
        for b in bands:
            d = pywt.dwtn(b, "haar")
            keys = sorted(d, key=lambda k: sum((c == "d") << i for i, c in enumerate(k)))
            per.append([d[k] for k in keys])
        # cfgen: for each sub-band code (first axis fastest), all bands of the previous level
        bands = [per[j][code] for code in range(len(per[0])) for j in range(len(per))]
    return bands


@pytest.mark.parametrize("shape,levels", [((8, 12), 1), ((16, 8), 2), ((8, 8, 4), 1), ((8, 4, 8), 2)])
def test_haar_equals_pywavelets_and_inverts_exactly(shape, levels):
    x = np.random.default_rng(3).normal(size=shape)
    y = haar_forward(torch.tensor(x)[None, None], levels)[0].numpy()
    want = _pywt_bands(x, levels)
    assert y.shape == (len(want),) + want[0].shape
    for got, ref in zip(y, want):
        np.testing.assert_allclose(got, ref, atol=1e-12)
    back = haar_inverse(torch.tensor(y)[None], levels)[0, 0].numpy()
    np.testing.assert_allclose(back, x, atol=1e-12)
    assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x), rel=1e-12)  # orthonormal


def test_channels_stay_apart():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    y = HaarWavelet(1, 3).encode(x).latent_dist.mean
    one = haar_forward(x[:, 1:2], 1)
    torch.testing.assert_close(y[:, 1::3], one)


def test_sizes_not_divisible_are_refused():
    with pytest.raises(ValueError, match="divisible by 4"):
        HaarWavelet(2, 1).encode(torch.zeros(1, 1, 6, 8))


@pytest.fixture(scope="module")
def wavelet2d(tmp_path_factory) -> Path:
    from cfgen.models.build import PRESETS, build_ldm2d

    return build_ldm2d(tmp_path_factory.mktemp("models") / "wav2d", PRESETS["tiny-wavelet"], seed=0)


def test_2d_folder_has_no_vae_weights_and_loads(wavelet2d):
    from cfgen.models.loader import load_model

    assert sorted(p.name for p in (wavelet2d / "vae").iterdir()) == ["config.json"]
    m = load_model(str(wavelet2d))
    assert isinstance(m.vae, HaarWavelet) and m.vae_scale_factor == 2 and m.entry.resolution == 32
    assert m.unet.config.in_channels == 4 and m.unet.config.sample_size == 16
    assert not any(k.startswith("vae/") for k in m.sha256)


def test_invert_reports_a_lossless_first_stage(cli, wavelet2d, ct_small, tmp_path):
    res = cli("invert", ct_small, "-m", wavelet2d, "-o", tmp_path / "inv", "--steps", "4", "-q")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "inv" / "report.json").read_text())["items"][0]["metrics"]
    assert m["vae_psnr_capped"] == 100.0  # float rounding only (the AutoencoderKL: tens of dB)
    assert m["psnr"] == pytest.approx(m["inversion_psnr"], abs=1e-3)


def test_finetune_then_edit_in_wavelet_space(cli, wavelet2d, tmp_path, ct_small):
    from cfgen.models.loader import load_model
    from cfgen.phantoms.dataset import write_cxr_dataset

    write_cxr_dataset(tmp_path / "ph", 4, seed=5, size=32, counterfactuals=False, workers=1)
    out = tmp_path / "run"
    res = cli("finetune", tmp_path / "ph" / "labels.csv", "-m", wavelet2d, "-o", out, "--template", "chexpert",
              "--batch-size", "2", "--max-steps", "3", "-q")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "model" / "vae" / "config.json").read_text())["_class_name"] == "HaarWavelet"
    assert isinstance(load_model(str(out / "model")).vae, HaarWavelet)
    res = cli("edit", ct_small, "-p", "Chest X-ray showing Cardiomegaly", "-m", out / "model", "-o", tmp_path / "e",
              "--steps", "3", "--mask", "none", "-q")
    assert res.exit_code == 0, res.output


def test_training_a_wavelet_is_refused(wavelet2d, tmp_path):
    from cfgen.errors import UsageError
    from cfgen.training.vae import train_vae

    with pytest.raises(UsageError, match="no weights to train"):
        train_vae(tmp_path / "none.csv", wavelet2d, tmp_path / "out", steps=1)


@pytest.mark.parametrize("change,message", [
    ({"levels": 9}, "levels: expected an integer 0..4"),
    ({"levels": "2"}, "levels: expected an integer"),
    ({"scaling_factor": -1}, "scaling_factor: expected a positive number"),
    ({"levels": 2}, "in_channels 4, but vae/ is a 2-level Haar transform"),
    ({"band_scales": [1.0, 2.0]}, "band_scales: expected a list of 4 or 8 positive numbers"),
    ({"band_scales": [1.0, 2.0, 0.0, 1.0]}, "band_scales: expected a list"),
])
def test_bad_wavelet_configs_are_one_line_model_errors(wavelet2d, tmp_path, change, message):
    import shutil

    from cfgen.models.loader import load_model

    folder = Path(shutil.copytree(wavelet2d, tmp_path / "m"))
    cfg = folder / "vae" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), **change}))
    with pytest.raises(ModelError, match=message) as err:
        load_model(str(folder))
    assert "\n" not in str(err.value)


def test_3d_wavelet_model_edits_a_volume(cli, tmp_path):
    import nibabel as nib

    from cfgen.models.ldm3d import LDM3DSpec, build_ldm3d
    from cfgen.models.loader import load_model

    folder = build_ldm3d(tmp_path / "w3", LDM3DSpec(ae_channels=None, wavelet_levels=1), seed=0)
    m = load_model(str(folder))
    assert isinstance(m.vae, HaarWavelet) and m.unet.config.in_channels == 8 and m.vae_scale_factor == 2
    vol = np.random.default_rng(0).uniform(0, 1, (16, 16, 16)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "v.nii.gz")
    res = cli("invert", tmp_path / "v.nii.gz", "-m", folder, "-o", tmp_path / "inv", "--steps", "3", "-q")
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "inv" / "report.json").read_text())["items"][0]["metrics"]
    assert metrics["vae_psnr_capped"] == 100.0


def test_a_wavelet_folder_claims_no_diffusers_pipeline(wavelet2d):
    # diffusers has no Haar first stage: a model_index.json naming AutoencoderKL would be a lie
    assert not (wavelet2d / "model_index.json").exists()


def test_band_scales_multiply_the_bands_and_are_divided_out_exactly():
    scales = [1.0, 1.0] + [float(v) for v in range(2, 16)]  # 2 channels x 8 bands (3D, one level)
    wav = HaarWavelet(1, 2, band_scales=scales)
    x = torch.randn(3, 2, 8, 4, 6, dtype=torch.float64)
    y = wav.encode(x).latent_dist.mean
    torch.testing.assert_close(y, haar_forward(x, 1) * torch.tensor(scales, dtype=torch.float64).reshape(1, -1, 1, 1, 1))
    torch.testing.assert_close(wav.decode(y).sample, x, atol=1e-12, rtol=0)
    assert wav.config_dict()["band_scales"] == scales and "band_scales" not in HaarWavelet(1, 2).config_dict()


def test_unit_band_scales_bring_detail_bands_to_unit_std_within_the_cap():
    from cfgen.models.wavelet import unit_band_scales

    std = torch.tensor([1.6, 0.9, 0.25, 0.1, 0.05, 0.001, 2.0, 0.5])  # 1 channel: band 0 is the low band
    y = torch.randn(64, 8, 6, 6, 6, generator=torch.Generator().manual_seed(0)) * std.reshape(1, -1, 1, 1, 1)
    got = unit_band_scales(y, channels=1, cap=32.0)
    assert got[0] == 1.0  # the low band is left as it is
    assert got[5] == 32.0 and got[6] == 1.0  # a near-constant band is capped, a wide one never shrunk
    for band in (1, 2, 3, 4, 7):
        assert got[band] == pytest.approx(1 / float(std[band]), rel=0.05)


def test_unit_band_scales_can_leave_the_label_channels_alone():
    from cfgen.models.wavelet import unit_band_scales

    # 2 input channels (image, one label bit), 2D one level: bands [aa, da, ad, dd] x channels, channel fastest
    std = torch.tensor([1.5, 1.0, 0.1, 0.3, 0.2, 0.3, 0.05, 0.3])
    y = torch.randn(256, 8, 8, 8, generator=torch.Generator().manual_seed(1)) * std.reshape(1, -1, 1, 1)
    every, image = unit_band_scales(y, channels=2), unit_band_scales(y, channels=2, scaled=1)
    assert image[1::2] == [1.0] * 4  # the label channel's bands: untouched
    assert image[0::2] == every[0::2] and image[0] == 1.0  # the image's: as when all are scaled
    assert [round(v, 1) for v in (image[2], image[4], image[6])] == pytest.approx([10.0, 5.0, 20.0], rel=0.05)
    assert every[3] == pytest.approx(1 / 0.3, rel=0.05)


def test_fit_band_scales_on_ct_phantoms_gives_unit_detail_bands_and_stays_lossless(cli, tmp_path):
    """cfgen/training/bands.py on a labelled CT wavelet base: the scales are written into the
    folder's transform config, the loader reads them, the training items' detail bands come out
    with unit std (numpy over pywt-checked bands) and decode gives the items back."""
    import nibabel as nib

    from cfgen.models.ldm3d import LDM3DSpec, build_ldm3d
    from cfgen.models.loader import load_model
    from cfgen.models.tabular import CT_FIELDS
    from cfgen.phantoms.ct import LABELS
    from cfgen.training.bands import training_batch, fit_band_scales

    data = tmp_path / "ph"
    assert cli("phantoms", "ct", "-n", "3", "--size", "32", "--spacing", "12", "--no-counterfactuals", "-o", data,
               "-q").exit_code == 0
    folder = build_ldm3d(tmp_path / "ct", LDM3DSpec(
        resolution=32, ae_channels=None, wavelet_levels=1, unet_channels=(8, 16), conditioning=CT_FIELDS,
        window="-1024,600", synth={"spacing": 12.0, "labels": list(LABELS), "label_encoding": "bits"}), seed=5)
    scales = fit_band_scales(data / "labels.csv", folder)
    assert json.loads((folder / "autoencoder" / "config.json").read_text())["band_scales"] == scales
    assert len(scales) == 40 and scales[:5] == [1.0] * 5 and all(s > 1 for s in scales[5:])
    model = load_model(str(folder), device="cpu")
    assert model.vae.config.band_scales == scales
    x = training_batch(data / "labels.csv", model, 8, 0)
    hu = np.asarray(nib.load(data / "images" / "ct_00000.nii.gz").dataobj)
    assert x.shape == (3, 5, 32, 32, 32) and float(x[:, 0].min()) == pytest.approx(-1, abs=1e-3)  # -1024 HU: -1
    assert hu.min() <= -1000
    y = model.vae.encode(x).latent_dist.mean.numpy()
    for band, s in enumerate(scales[5:], start=5):
        if s < 32:  # not capped
            assert y[:, band].std() == pytest.approx(1.0, rel=0.02)
    torch.testing.assert_close(model.vae.decode(torch.from_numpy(y)).sample, x, atol=1e-5, rtol=0)
    # image_only: the four label-bit channels' detail bands keep 1, the image's are the same as above
    config = folder / "autoencoder" / "config.json"
    config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "band_scales"}))
    image = fit_band_scales(data / "labels.csv", folder, image_only=True)
    assert [image[b] for b in range(40) if b % 5] == [1.0] * 32
    assert [image[b] for b in range(5, 40, 5)] == [scales[b] for b in range(5, 40, 5)]
