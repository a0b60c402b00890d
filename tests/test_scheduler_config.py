"""A model folder's own scheduler config is what cfgen inverts and samples with (issue 18, item 1):
`cfgen edit --mask none` on a plain diffusers folder equals a plain diffusers loop
(DDIMInverseScheduler, then DDIMScheduler with classifier-free guidance, both from the folder)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cfgen.models.loader import load_model

SOURCE, TARGET, STEPS, GUIDANCE = "a chest x-ray", "a chest x-ray with effusion", 5, 3.0


def _diffusers_folder(tiny_model, tmp_path, **scheduler):
    """The tiny model as a plain diffusers folder (no cfgen.toml) with a scheduler saved by diffusers."""
    from diffusers import DDIMScheduler

    from cfgen.models.registry import DEFAULT_SCHEDULER

    folder = tmp_path / "plain"
    shutil.copytree(tiny_model, folder)
    (folder / "cfgen.toml").unlink()
    shutil.rmtree(folder / "scheduler")
    DDIMScheduler(**{**DEFAULT_SCHEDULER, **scheduler}).save_pretrained(folder / "scheduler")
    return folder


@torch.no_grad()
def _plain_diffusers_edit(folder, pixels: np.ndarray, scheduler_folder=None) -> np.ndarray:
    """The textbook loop with diffusers' own classes; returns 8-bit pixels."""
    from diffusers import AutoencoderKL, DDIMInverseScheduler, DDIMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    tok = AutoTokenizer.from_pretrained(folder / "tokenizer")
    ids = tok([SOURCE, TARGET, ""], padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    src, tgt, neg = text_encoder(ids)[0].chunk(3)
    sched_dir = scheduler_folder or folder
    inverse = DDIMInverseScheduler.from_pretrained(sched_dir, subfolder="scheduler")
    sampler = DDIMScheduler.from_pretrained(sched_dir, subfolder="scheduler")
    inverse.set_timesteps(STEPS)
    sampler.set_timesteps(STEPS)
    x = torch.from_numpy(pixels.astype(np.float32) / 255 * 2 - 1)[None, None]
    z = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    for t in inverse.timesteps:
        z = inverse.step(unet(z, t, encoder_hidden_states=src).sample, t, z).prev_sample
    for t in sampler.timesteps:
        out_u, out_c = unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([neg, tgt])).sample.chunk(2)
        z = sampler.step(out_u + GUIDANCE * (out_c - out_u), t, z).prev_sample
    y = vae.decode(z / vae.config.scaling_factor).sample[0, 0].numpy()
    return np.round((np.clip(y, -1, 1) + 1) / 2 * 255)


@pytest.mark.parametrize("scheduler", [
    {"prediction_type": "v_prediction", "timestep_spacing": "trailing", "rescale_betas_zero_snr": True},
    {"prediction_type": "epsilon", "timestep_spacing": "trailing"},
])
def test_edit_on_a_diffusers_folder_equals_a_plain_diffusers_loop(tiny_model, cli, tmp_path, scheduler):
    folder = _diffusers_folder(tiny_model, tmp_path, **scheduler)
    rng = np.random.default_rng(3)
    pixels = (np.linspace(30, 220, 32)[None, :] + rng.normal(0, 12, (32, 32))).clip(0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "scan.png")
    res = cli("edit", tmp_path / "scan.png", "-m", folder, "-s", SOURCE, "-p", TARGET, "--steps", str(STEPS),
              "--guidance", str(GUIDANCE), "--mask", "none", "--device", "cpu", "-q", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    got = np.asarray(Image.open(tmp_path / "out" / "scan" / "counterfactual.png"), dtype=np.float64)
    want = _plain_diffusers_edit(folder, pixels)
    assert np.abs(got - want).max() <= 1  # float rounding, then 8-bit quantisation
    # the check can fail: the registry's defaults (epsilon, leading) give another image
    default = _diffusers_folder(tiny_model, tmp_path / "default")
    assert np.abs(_plain_diffusers_edit(folder, pixels, scheduler_folder=default) - want).max() > 5
    model = json.loads((tmp_path / "out" / "report.json").read_text())["model"]
    assert {k: model["scheduler"][k] for k in scheduler} == scheduler
    assert model["scheduler_source"]["file"] == "scheduler/scheduler_config.json"


def test_the_registry_only_adds_what_the_folder_lacks_and_the_report_says_so(tiny_model, tmp_path, monkeypatch):
    folder = _diffusers_folder(tiny_model, tmp_path, prediction_type="v_prediction")
    (tmp_path / "reg.toml").write_text(
        f'[models.mine]\nfamily = "latent-diffusion-2d"\nresolution = 32\nchannels = 1\n'
        f'source = {{ kind = "local", path = "{folder.as_posix()}" }}\n'
        '[models.mine.scheduler]\nprediction_type = "epsilon"\nkind = "ddim"\n')
    monkeypatch.setenv("CFGEN_MODELS_TOML", str(tmp_path / "reg.toml"))
    m = load_model("mine", device="cpu")
    assert m.entry.scheduler["prediction_type"] == "v_prediction"  # the folder's file wins
    src = m.report_info()["scheduler_source"]
    assert src["entry_values_overridden_by_file"] == {"prediction_type": "epsilon"}
    assert src["added_from_entry"] == {"kind": "ddim"}  # a key the file lacks


def test_cfgen_made_3d_folders_say_the_same_in_both_files(tmp_path):
    """A folder cfgen writes must not contradict itself now that the scheduler file comes first."""
    from cfgen.models.ldm3d import LDM3DSpec, build_ldm3d

    folder = build_ldm3d(tmp_path / "x0", LDM3DSpec(ae_channels=None, prediction_type="sample"), seed=0)
    assert json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == "sample"
    assert load_model(str(folder), device="cpu").entry.scheduler["prediction_type"] == "sample"
    shipped = load_model("demo-brain-sr", device="cpu")
    assert shipped.entry.scheduler["prediction_type"] == "sample"
    assert shipped.scheduler_source["entry_values_overridden_by_file"] == {}
