"""Deterministic DDIM inversion and guided DDIM sampling on a configured diffusers scheduler.

Notation (Song et al., DDIM, Eq. 12 with sigma = 0; PRISM App. B; CDM App. A.1 Eq. 5-6):
  a_t      = alphas_cumprod[t]              (alpha-bar_t)
  x0_pred  = (z_t - sqrt(1 - a_t) * eps) / sqrt(a_t)
  sampling:  z_prev = sqrt(a_prev) * x0_pred + sqrt(1 - a_prev) * eps        (scheduler.step)
  inversion: z_t    = sqrt(a_t) * x0_pred(z_prev) + sqrt(1 - a_t) * eps(z_prev, t)
Inversion walks the *same* timesteps the sampler uses, in reverse, and takes a_prev from the
same rule as ``DDIMScheduler.step`` (t - T/steps, or final_alpha_cumprod below 0), so that
invert-then-sample with the same prompt and guidance 1 reconstructs: the classic off-by-one
of hand-written inversions cannot happen.
"""
from __future__ import annotations

from typing import Callable

import torch


def make_scheduler(config: dict, steps: int):
    """DDIM, or rectified flow for models whose scheduler says ``kind = "rflow"`` (editing/flow.py);
    editing/dpm.py's ``make_scheduler`` adds DPM-Solver++ on DDIM's timesteps."""
    from diffusers import DDIMScheduler

    from cfgen.editing.flow import FlowSchedule, is_flow

    if is_flow(config):
        return FlowSchedule(config, steps)
    sched = DDIMScheduler.from_config({k: v for k, v in config.items() if k != "kind"})
    sched.set_timesteps(steps)
    return sched


def edit_timesteps(scheduler, strength: float) -> torch.Tensor:
    """The last ``round(strength * steps)`` (least noisy) sampling timesteps, high to low."""
    n = scheduler.num_inference_steps
    k = max(1, min(n, int(round(strength * n))))
    return scheduler.timesteps[n - k:]


def _alpha_prev(scheduler, t: int) -> torch.Tensor:
    prev = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    return scheduler.alphas_cumprod[prev] if prev >= 0 else scheduler.final_alpha_cumprod


def _to_eps(out: torch.Tensor, z: torch.Tensor, a: torch.Tensor, prediction_type: str) -> torch.Tensor:
    if prediction_type == "epsilon":
        return out
    if prediction_type == "v_prediction":
        return a.sqrt() * out + (1 - a).sqrt() * z
    if prediction_type == "sample":  # x0-prediction: the noise that z at level a implies
        return (z - a.sqrt() * out) / (1 - a).sqrt()
    raise ValueError(f"prediction_type {prediction_type} is not supported for inversion")


def predict(unet, z: torch.Tensor, t, cond: torch.Tensor, uncond: torch.Tensor | None = None,
            guidance: float = 1.0) -> torch.Tensor:
    """UNet output with classifier-free guidance as one batched forward ([uncond, cond])."""
    if uncond is None or guidance == 1.0:
        return unet(z, t, encoder_hidden_states=cond).sample
    both = unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
    out_u, out_c = both.chunk(2)
    return out_u + guidance * (out_c - out_u)


@torch.no_grad()
def invert(unet, scheduler, z0: torch.Tensor, cond: torch.Tensor, timesteps: torch.Tensor,
           on_step: Callable[[], None] | None = None) -> list[torch.Tensor]:
    """DDIM-invert z0 through ``timesteps`` (given high to low, walked low to high).

    Returns the trajectory [z0, z_{t_k}, ..., z_{t_1}]; its last element is the inverted
    noise latent the sampler starts from. Guidance is 1 by design (REFERENCE: guidance > 1
    during inversion breaks reconstruction).
    """
    z, traj = z0, [z0]
    if getattr(scheduler, "is_flow", False):
        for t in reversed(timesteps.tolist()):
            out = predict(unet, z, scheduler.next_timestep(t), cond).float()
            z = scheduler.invert_step(out, t, z.float()).to(z0.dtype)
            traj.append(z)
            if on_step:
                on_step()
        return traj
    if getattr(scheduler, "multistep", False):
        for t in reversed(timesteps.tolist()):
            z = scheduler.invert_step(predict(unet, z, t, cond).float(), t, z.float()).to(z0.dtype)
            traj.append(z)
            if on_step:
                on_step()
        return traj
    ac = scheduler.alphas_cumprod.to(z0.device)
    ptype = scheduler.config.prediction_type
    for t in reversed(timesteps.tolist()):
        a_prev = _alpha_prev(scheduler, t).to(z0.device).float()
        a_t = ac[t].float()
        out = predict(unet, z, t, cond).float()
        # at a_prev = 1 (the clean end) an x0-prediction implies no noise direction: take it at t
        eps = _to_eps(out, z.float(), a_t if ptype == "sample" and 1 - a_prev < 1e-4 else a_prev, ptype)
        x0 = (z.float() - (1 - a_prev).sqrt() * eps) / a_prev.sqrt()
        z = (a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps).to(z0.dtype)
        traj.append(z)
        if on_step:
            on_step()
    return traj


@torch.no_grad()
def sample(unet, scheduler, zT: torch.Tensor, cond: torch.Tensor, timesteps: torch.Tensor,
           uncond: torch.Tensor | list[torch.Tensor] | None = None, guidance: float = 1.0, eta: float = 0.0,
           generator: torch.Generator | None = None,
           blend: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
           on_step: Callable[[], None] | None = None) -> torch.Tensor:
    """Guided DDIM sampling from zT through ``timesteps``; scheduler arithmetic in fp32.

    ``uncond``: one embedding, or one per step (null-text inversion). ``blend(z, i)`` (optional)
    may replace parts of the latent after step i, e.g. to keep the inverted trajectory outside an
    edit mask.
    """
    z = zT
    for i, t in enumerate(timesteps.tolist()):
        out = predict(unet, z, t, cond, uncond[i] if isinstance(uncond, list) else uncond, guidance).float()
        z = scheduler.step(out, t, z.float(), eta=eta, generator=generator).prev_sample.to(zT.dtype)
        if blend is not None:
            z = blend(z, i)
        if on_step:
            on_step()
    return z
