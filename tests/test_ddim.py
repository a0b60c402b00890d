"""The DDIM maths against a smooth noise predictor: inversion is the sampler run backwards."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cfgen.editing import ddim
from cfgen.models.registry import DEFAULT_SCHEDULER


def smooth_unet(z, t, encoder_hidden_states=None):
    """A noise predictor that depends smoothly on z and on the condition."""
    return SimpleNamespace(sample=torch.tanh(0.8 * z + encoder_hidden_states.mean()))


def _roundtrip(steps, strength=1.0, cond=0.1, prediction_type="epsilon"):
    z0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    c = torch.full((1, 3, 4), cond)
    s = ddim.make_scheduler({**DEFAULT_SCHEDULER, "prediction_type": prediction_type}, steps)
    ts = ddim.edit_timesteps(s, strength)
    traj = ddim.invert(smooth_unet, s, z0, c, ts)
    return z0, traj, ddim.sample(smooth_unet, s, traj[-1], c, ts)


def test_reconstruction_error_shrinks_with_steps():
    errs = [float((z - z0).abs().mean()) for z0, _, z in (_roundtrip(n) for n in (10, 50, 200))]
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.01


def test_timesteps_and_strength():
    s = ddim.make_scheduler(DEFAULT_SCHEDULER, 50)
    assert ddim.edit_timesteps(s, 1.0).tolist() == s.timesteps.tolist()
    half = ddim.edit_timesteps(s, 0.5)
    assert len(half) == 25 and half.tolist() == s.timesteps[25:].tolist() and int(half[-1]) == 1
    z0, traj, z = _roundtrip(50, strength=0.5)
    assert len(traj) == 26 and float((z - z0).abs().mean()) < 0.02


def test_inversion_moves_far_and_guidance_changes_sampling():
    z0, traj, _ = _roundtrip(50)
    s = ddim.make_scheduler(DEFAULT_SCHEDULER, 50)
    # at t=981 sqrt(alpha_bar) is ~0.07: the inverted latent is mostly predicted noise
    assert float((traj[-1] - z0).abs().mean()) > 0.3
    cond, uncond = torch.full((1, 3, 4), 0.1), torch.full((1, 3, 4), -0.5)
    a = ddim.sample(smooth_unet, s, traj[-1], cond, s.timesteps, uncond=uncond, guidance=1.0)
    b = ddim.sample(smooth_unet, s, traj[-1], cond, s.timesteps, uncond=uncond, guidance=3.0)
    assert float((a - b).abs().mean()) > 0.05


def test_v_prediction_is_converted():
    z, a = torch.randn(2, 3), torch.tensor(0.7)
    eps = torch.randn(2, 3)
    x0 = (z - (1 - a).sqrt() * eps) / a.sqrt()
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    assert torch.allclose(ddim._to_eps(v, z, a, "v_prediction"), eps, atol=1e-5)
    assert torch.allclose(ddim._to_eps(x0, z, a, "sample"), eps, atol=1e-5)  # x0-prediction
    with pytest.raises(ValueError):
        ddim._to_eps(v, z, a, "mu")


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_inversion_of_v_and_x0_prediction_models_converges_with_steps(prediction_type):
    """x0-prediction included (a stage trained with prediction_type "sample" can be edited):
    at the clean end, where an x0-prediction implies no noise, the step takes it at t."""
    errs = [float((z - z0).abs().mean()) for z0, _, z in (_roundtrip(n, prediction_type=prediction_type)
                                                         for n in (10, 50, 200))]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.06
