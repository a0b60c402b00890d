"""DPM-Solver++(2M) sampling and its matching inversion (Lu et al. 2022), on DDIM's timesteps.

Notation (data prediction, the multistep second-order solver):
  a_t = alphas_cumprod[t],  alpha_t = sqrt(a_t),  sigma_t = sqrt(1 - a_t),  lambda_t = log(alpha_t / sigma_t)
  x0_t = (z_t - sigma_t * eps(z_t, t)) / alpha_t
  from level s to level u, h = lambda_u - lambda_s:
    z_u = (sigma_u / sigma_s) z_s - alpha_u (exp(-h) - 1) D
    D = x0_s (first order: exactly DDIM), or D = (1 + 1 / (2r)) x0_s - 1 / (2r) x0_prev with
    r = h_prev / h, x0_prev from the solver's previous step (second order).
Sampling walks the timesteps high to low; inversion walks the same levels low to high with the
same formula (h < 0) and the x0 of the previous, less noisy level, so that the two match as DDIM
inversion and DDIM sampling do (the network evaluated at the level the step starts from, as in
ddim.invert). The first step of a pass and the step onto the clean end are first order (DPM-Solver's
``lower_order_final``).

The solver's memory is one x0 per timestep of the current pass: a call at ``t`` uses the entry of
the level it comes from and forgets the levels of an earlier pass, so a repeated call at the same
``t`` (null-text's inner optimisation) and a new pass over the same timesteps (the inversion gate's
reconstruction, then the edit) stay correct.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from cfgen.editing import ddim
from cfgen.errors import UsageError

SOLVERS = ("ddim", "dpm++")


class DPMSolverSchedule:
    """``step`` / ``invert_step`` of DPM-Solver++(2M) over a configured DDIMScheduler's timesteps."""

    multistep = True

    def __init__(self, base):
        self.base = base  # DDIMScheduler with timesteps set: levels, alphas, final alpha
        self.timesteps = base.timesteps
        self.num_inference_steps = base.num_inference_steps
        self.config = base.config
        self.alphas_cumprod = base.alphas_cumprod
        self.final_alpha_cumprod = base.final_alpha_cumprod
        self._down: dict[int, torch.Tensor] = {}  # sampling: x0 per timestep of this pass
        self._up: dict[int, torch.Tensor] = {}  # inversion: x0 used for the step that reached this level

    def add_noise(self, z0, noise, t):
        return self.base.add_noise(z0, noise, t)

    def _a(self, t: int) -> torch.Tensor:
        return self.alphas_cumprod[t].float() if t >= 0 else torch.as_tensor(self.final_alpha_cumprod).float()

    def _lower(self, t: int) -> int:
        """The level sampling reaches from ``t`` (-1: the clean end)."""
        return t - self.config.num_train_timesteps // self.num_inference_steps

    def _higher(self, t: int) -> int:
        return t + self.config.num_train_timesteps // self.num_inference_steps

    def _x0(self, out: torch.Tensor, z: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eps = ddim._to_eps(out, z, a, self.config.prediction_type)
        return (z - (1 - a).sqrt() * eps) / a.sqrt(), eps

    @staticmethod
    def _move(a_s, a_u, x0, eps, prev: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """From level a_s to level a_u; ``prev`` = (a of the previous step's start, its x0) or None.
        Written as the DDIM step plus the second-order correction, alpha_u (1 - exp(-h)) (D - x0_s),
        which is the formula above and stays finite at a clean end (sigma = 0)."""
        z = a_u.sqrt() * x0 + (1 - a_u).sqrt() * eps
        if prev is None:
            return z
        lam = lambda a: 0.5 * (torch.log(a) - torch.log1p(-a))  # noqa: E731
        h = lam(a_u) - lam(a_s)
        r = (lam(a_s) - lam(prev[0])) / h
        return z - a_u.sqrt() * torch.expm1(-h) * (0.5 / r) * (x0 - prev[1])

    def step(self, out: torch.Tensor, t: int, z: torch.Tensor, eta: float = 0.0, generator=None):
        if eta:
            raise UsageError(f"--eta {eta}: --solver dpm++ is deterministic; use --eta 0 or --solver ddim")
        t = int(t)
        for k in [k for k in self._down if k < t]:
            del self._down[k]  # an earlier pass's
        a_s, lo = self._a(t), self._lower(t)
        x0, eps = self._x0(out.float(), z.float(), a_s)
        hi = self._higher(t)
        prev = (self._a(hi), self._down[hi]) if hi in self._down and lo >= 0 else None
        self._down[t] = x0
        return SimpleNamespace(prev_sample=self._move(a_s, self._a(lo), x0, eps, prev))

    def invert_step(self, out: torch.Tensor, t: int, z: torch.Tensor) -> torch.Tensor:
        """From the level below ``t`` up to ``t``; ``out`` the network's output at (z, t), as ddim.invert."""
        t = int(t)
        for k in [k for k in self._up if k > t]:
            del self._up[k]
        lo = self._lower(t)
        a_s, a_u = self._a(lo), self._a(t)
        # at the clean end an x0-prediction implies no noise direction: take it at t (as ddim.invert)
        clean_x0 = self.config.prediction_type == "sample" and 1 - a_s < 1e-4
        x0, eps = self._x0(out.float(), z.float(), a_u if clean_x0 else a_s)
        prev = (self._a(self._lower(lo)), self._up[lo]) if lo in self._up else None
        self._up[t] = x0
        return self._move(a_s, a_u, x0, eps, prev)


def make_scheduler(config: dict, steps: int, solver: str = "ddim"):
    """The sampler for ``--solver``: DDIM's (or the flow model's own) or DPM-Solver++ on DDIM's timesteps."""
    check_solver(solver, config)
    sched = ddim.make_scheduler(config, steps)
    return DPMSolverSchedule(sched) if solver == "dpm++" else sched


def check_solver(solver: str, config: dict, where: str = "") -> None:
    from cfgen.editing.flow import is_flow

    if solver not in SOLVERS:
        raise UsageError(f"{where}--solver {solver}: use one of {', '.join(SOLVERS)}")
    if solver == "dpm++" and is_flow(config):
        raise UsageError(f"{where}--solver dpm++ is for noise-prediction (DDPM-trained) models; this one samples "
                         "by rectified flow: use --solver ddim")
