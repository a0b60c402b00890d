"""Rectified flow (MONAI RFlowScheduler) through the same invert/edit loop and finetune as DDIM."""
from __future__ import annotations

import json
import tomllib

import nibabel as nib
import pytest
import torch

from cfgen.editing import ddim
from cfgen.editing.flow import FlowSchedule, training_pair
from cfgen.errors import UsageError
from cfgen.models.ldm3d import LDM3DSpec, build_ldm3d


@pytest.fixture(scope="session")
def flow3d(tmp_path_factory):
    return build_ldm3d(tmp_path_factory.mktemp("models3d") / "flow3d", LDM3DSpec(scheduler="rflow"), seed=0)


def test_schedule_matches_the_forward_process_and_steps_to_the_data():
    s = FlowSchedule({"kind": "rflow", "num_train_timesteps": 1000}, 4)
    assert s.timesteps.tolist() == [1000, 750, 500, 250]
    assert [s.next_timestep(t) for t in s.timesteps.tolist()] == [750, 500, 250, 0]
    z0, noise = torch.randn(2, 1, 4, 4, 4), torch.randn(2, 1, 4, 4, 4)
    t, noisy, target = training_pair(z0, noise, torch.Generator().manual_seed(0), 1000)
    assert torch.allclose(noisy, s.add_noise(z0, noise, t), atol=1e-6)  # same process as MONAI's
    z = noise.clone()  # with the exact velocity, sampling lands on the data in any number of steps
    for tt in s.timesteps.tolist():
        z = s.step(z0 - noise, tt, z).prev_sample
    assert torch.allclose(z, z0, atol=1e-5)
    with pytest.raises(UsageError, match="stochastic sampling is DDIM's"):
        s.step(z0, 1000, z0, eta=0.5)


def test_flow_inversion_converges_with_steps_on_a_nonzero_velocity_field(flow3d):
    from cfgen.models.loader import load_model

    m = load_model(str(flow3d), device="cpu")
    torch.manual_seed(0)
    for p in m.unet.net.out.parameters():  # MONAI zero-initialises the output: give it a real field
        p.data.normal_(0, 0.05)
    z0 = torch.randn(1, 2, 8, 8, 8)
    cond = torch.zeros(1, 4, 16)
    errors = []
    for steps in (5, 40):
        sched = ddim.make_scheduler(m.entry.scheduler, steps)
        traj = ddim.invert(m.unet, sched, z0, cond, sched.timesteps)
        rec = ddim.sample(m.unet, sched, traj[-1], cond, sched.timesteps)
        errors.append(float((rec - z0).norm() / z0.norm()))
    assert errors[1] < errors[0] / 3 and errors[1] < 0.05  # Euler: error shrinks with the step


def test_flow_model_finetunes_and_edits_through_the_cli(flow3d, cli, tmp_path):
    assert tomllib.loads((flow3d / "cfgen.toml").read_text())["scheduler"]["kind"] == "rflow"
    data = tmp_path / "brain"
    assert cli("phantoms", "brain", "-n", "3", "--size", "16", "--spacing", "10", "--no-counterfactuals",
               "-o", data, "-q").exit_code == 0
    assert cli("caption", data / "labels.csv", "--template", "brain", "-o", data / "train.csv").exit_code == 0
    out = tmp_path / "ft"
    common = ("finetune", data / "train.csv", "-m", flow3d, "-o", out, "--batch-size", "3", "--max-steps", "4",
              "--learning-rate", "1e-3", "--device", "cpu", "-q")
    res = cli(*common, "--snr-gamma", "5")
    assert res.exit_code != 0 and "Min-SNR weighting is for DDPM models" in res.output
    res = cli(*common)
    assert res.exit_code == 0, res.output
    training = json.loads((out / "report.json").read_text())["training"]
    assert training["eval_loss_end"] < training["eval_loss_start"]
    model = out / "model"
    # only what rectified flow runs with: DDIM's betas and timestep spacing would mislead a reader
    assert tomllib.loads((model / "cfgen.toml").read_text())["scheduler"] == {"kind": "rflow", "num_train_timesteps": 1000}
    src = data / "images" / "brain_00000.nii.gz"
    res = cli("edit", src, "-p", "Brain MRI of a 90 year old", "-m", model, "--steps", "6", "-o", tmp_path / "e", "-q")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert report["items"][0]["status"] == "ok"
    assert nib.load(tmp_path / "e" / "brain_00000" / "counterfactual.nii.gz").shape == (16, 16, 16)


def test_dpm_solver_is_refused_for_a_flow_model_before_any_work(flow3d, cli, tmp_path):
    import numpy as np

    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), tmp_path / "v.nii.gz")
    res = cli("edit", tmp_path / "v.nii.gz", "-p", "x", "-m", flow3d, "--solver", "dpm++", "-o", tmp_path / "o", "-q")
    assert res.exit_code == 2 and "samples by rectified flow" in res.stderr, res.output
    assert not (tmp_path / "o" / "v").exists()


def test_a_2d_wavelet_model_built_for_rectified_flow_loads_and_inverts_through_it(tmp_path, ct_small, cli):
    """LDM2DSpec(kind="rflow"): cfgen.toml's [scheduler] kind, the loader's schedule, and invert at
    strength 1 through the flow loop (the recipe wavelet-flow-cpu of scripts/train_demo_cxr.py)."""
    from dataclasses import replace

    from cfgen.models.build import PRESETS, build_ldm2d
    from cfgen.models.loader import load_model

    folder = build_ldm2d(tmp_path / "wflow", replace(PRESETS["tiny-wavelet"], kind="rflow"), seed=0)
    assert tomllib.loads((folder / "cfgen.toml").read_text())["scheduler"]["kind"] == "rflow"
    m = load_model(str(folder), device="cpu")
    assert m.entry.scheduler["kind"] == "rflow"
    assert isinstance(ddim.make_scheduler(m.entry.scheduler, 4), FlowSchedule)
    res = cli("invert", ct_small, "-m", folder, "--steps", "8", "-o", tmp_path / "inv", "-q")
    assert res.exit_code == 0, res.output
    item = json.loads((tmp_path / "inv" / "report.json").read_text())["items"][0]
    assert item["status"] == "ok" and item["metrics"]["inversion_psnr"] > 30  # near-exact Euler round trip
