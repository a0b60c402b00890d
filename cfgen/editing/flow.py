"""Rectified flow (MONAI's ``RFlowScheduler``, as MAISI) behind the interface the DDIM loop uses.

Notation (s = t / T, T = num_train_timesteps):
  forward:   z_s = (1 - s) z0 + s * noise                      (RFlowScheduler.add_noise)
  the network predicts the velocity v = z0 - noise            (the training target)
  sampling:  z_{s'} = z_s + (s - s') * v(z_s, t)             (RFlowScheduler.step, s' < s)
  inversion: z_s = z_{s'} - (s - s') * v(z_{s'}, t')          (Euler backwards, on the same timesteps)
Inversion walks the sampler's timesteps in reverse, so invert-then-sample with the same
condition and guidance 1 reconstructs up to the Euler error of the step size.

A model selects it with ``kind = "rflow"`` in its ``[scheduler]`` table (cfgen.toml or models.toml).
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from cfgen.errors import UsageError

KINDS = ("ddim", "rflow")


def is_flow(config: dict) -> bool:
    return config.get("kind", "ddim") == "rflow"


class FlowSchedule:
    """Sampling timesteps (high to low), ``step`` and ``add_noise`` for a rectified-flow model."""

    is_flow = True

    def __init__(self, config: dict, steps: int):
        from monai.networks.schedulers import RFlowScheduler

        total = int(config.get("num_train_timesteps", 1000))
        self.rf = RFlowScheduler(num_train_timesteps=total, use_discrete_timesteps=True)
        self.rf.set_timesteps(steps)
        self.timesteps = self.rf.timesteps.long()
        self.num_inference_steps = steps
        self.init_noise_sigma = 1.0
        self.config = SimpleNamespace(num_train_timesteps=total, prediction_type="flow")

    def next_timestep(self, t: int) -> int:
        """The timestep the sampler reaches from ``t`` (0 after the last)."""
        later = [int(x) for x in self.timesteps if int(x) < int(t)]
        return max(later) if later else 0

    def add_noise(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.rf.add_noise(z0, noise, t.to(z0.device))

    def step(self, out: torch.Tensor, t: int, z: torch.Tensor, eta: float = 0.0, generator=None):
        if eta:
            raise UsageError(f"--eta {eta}: stochastic sampling is DDIM's; this model samples by rectified flow "
                             "(deterministic), use --eta 0")
        return SimpleNamespace(prev_sample=self.rf.step(out, int(t), z, self.next_timestep(t))[0])

    def invert_step(self, out: torch.Tensor, t: int, z: torch.Tensor) -> torch.Tensor:
        """From the level after ``t`` back up to ``t``, with ``out`` the velocity at the lower level."""
        return z - out * (int(t) - self.next_timestep(t)) / self.config.num_train_timesteps


def training_pair(latents: torch.Tensor, noise: torch.Tensor, gen: torch.Generator, total: int):
    """(timesteps, noisy latents, velocity target) for one training batch; t uniform on [0, T)."""
    t = (torch.rand(latents.shape[0], generator=gen) * total).long().to(latents.device)
    s = (t.float() / total).reshape((-1,) + (1,) * (latents.ndim - 1))
    return t, (1 - s) * latents + s * noise, latents - noise
