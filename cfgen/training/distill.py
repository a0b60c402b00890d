"""Latent consistency distillation (Luo et al. 2023, LCM; the recipe of diffusers' LCM training
scripts) as a `cfgen finetune` objective: `cfgen distill` makes a few-step student of a trained
model, a UNet of the same architecture that inverts and edits through the same DDIM loop with
--steps 4 and guidance 1 (the teacher's guidance is distilled into it).

For a batch with latents z0, conditions c and the teacher's DDIM grid of N steps (skip k = T / N):

  t          a grid timestep per sample; t' = t - k (the clean end when t' < 0)
  z_t        the forward process (z0, noise, t)
  z^_t'      one DDIM step of the frozen teacher from z_t to t' under classifier-free guidance w
             (the teacher's guided probability-flow ODE, one solver step)
  f(z, t)    c_skip(t) z + c_out(t) x^0(z, t): the consistency function, x^0 from the network's output
             (c_skip, c_out as LCM: sigma_data 0.5, timestep scaling 10, so f(z, 0) = z and f is the
             plain x^0 estimate to within 3e-3 for t >= 1: the saved UNet is an ordinary DDIM model)
  L          pseudo-Huber(f_student(z_t, t) - sg[f_student(z^_t', t')]), c = huber_c; at the clean end
             the target is z^_0 itself.

The target network is the student under stop-gradient (as diffusers' LCM-LoRA recipe; no second
EMA). The student's saved model says guidance 1 and the few steps in its [defaults].
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch

from cfgen.errors import UsageError

if TYPE_CHECKING:
    from cfgen.models.loader import LoadedModel

SIGMA_DATA, TIMESTEP_SCALING = 0.5, 10.0


def boundary_scalings(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LCM's (c_skip, c_out) at integer timesteps t: f(z, 0) = z exactly, f = x^0 for large t."""
    scaled = t.float() * TIMESTEP_SCALING
    c_skip = SIGMA_DATA ** 2 / (scaled ** 2 + SIGMA_DATA ** 2)
    c_out = scaled / (scaled ** 2 + SIGMA_DATA ** 2) ** 0.5
    return c_skip, c_out


def _col(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.reshape((-1,) + (1,) * (like.ndim - 1)).to(like.device)


def consistency(noise_scheduler, z: torch.Tensor, out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """f(z, t) from a network output ``out`` at ``z``."""
    from cfgen.training.objectives import x0_estimate

    c_skip, c_out = boundary_scalings(t)
    return _col(c_skip, z) * z + _col(c_out, z) * x0_estimate(noise_scheduler, z, out, t)


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    return (torch.sqrt((a.float() - b.float()) ** 2 + c ** 2) - c).mean()


class ConsistencyDistillation:
    """Loss for `finetune(objective=...)`: latent consistency distillation of the loaded model
    (the teacher, frozen at ``check``) into the UNet that trains (the student, starting as its copy)."""

    command = "distill"  # the run report's command

    def __init__(self, guidance: float | None = None, teacher_steps: int = 50, student_steps: int = 4,
                 huber_c: float = 1e-3):
        if guidance is not None and guidance < 1:
            raise UsageError(f"--distill-guidance {guidance}: must be at least 1 (1 = no guidance)")
        if not 2 <= teacher_steps <= 1000:
            raise UsageError(f"--teacher-steps {teacher_steps}: must be within 2..1000")
        if not 1 <= student_steps <= teacher_steps:
            raise UsageError(f"--student-steps {student_steps}: must be within 1..--teacher-steps ({teacher_steps})")
        if huber_c <= 0:
            raise UsageError(f"--huber-c {huber_c}: must be positive")
        self.guidance, self.teacher_steps, self.student_steps, self.huber_c = guidance, teacher_steps, student_steps, huber_c
        self.teacher = None
        self.grid = None

    def check(self, model: LoadedModel, cfg) -> None:
        from cfgen.editing import ddim
        from cfgen.editing.flow import is_flow

        if is_flow(model.entry.scheduler):
            raise UsageError(f"--model {model.name}: a rectified-flow model; consistency distillation here follows "
                             "the DDIM solver (DDPM-trained models)")
        if cfg.snr_gamma is not None or cfg.noise_offset:
            raise UsageError("--snr-gamma / --noise-offset: not part of the consistency loss; leave them out")
        if self.guidance is None:
            self.guidance = float(model.entry.defaults.get("guidance", 7.5))
        self.grid = ddim.make_scheduler(model.entry.scheduler, self.teacher_steps)
        self.teacher = copy.deepcopy(model.unet).eval().requires_grad_(False)

    def describe(self) -> dict:
        return {"name": "latent consistency distillation (LCM)", "guidance": self.guidance,
                "teacher_steps": self.teacher_steps, "student_steps": self.student_steps, "huber_c": self.huber_c,
                "target": "the student under stop-gradient"}

    def model_defaults(self) -> dict:
        """What the saved student's [defaults] say: its few steps, and no second guidance."""
        return {"steps": self.student_steps, "guidance": 1.0}

    def _teacher_step(self, noise_scheduler, z_t, t, t_prev, cond, uncond) -> torch.Tensor:
        """One guided DDIM step of the teacher from z_t at t to t' (z^_0 where t' < 0)."""
        from cfgen.editing.ddim import _to_eps

        both = self.teacher(torch.cat([z_t, z_t]), torch.cat([t, t]), encoder_hidden_states=torch.cat([uncond, cond]))
        out_u, out_c = both.sample.float().chunk(2)
        out = out_u + self.guidance * (out_c - out_u)
        ac = noise_scheduler.alphas_cumprod.to(z_t.device).float()
        a_t = _col(ac[t], z_t)
        final = torch.as_tensor(float(self.grid.final_alpha_cumprod), device=z_t.device)
        a_prev = _col(torch.where(t_prev >= 0, ac[t_prev.clamp(min=0)], final), z_t)
        eps = _to_eps(out, z_t, a_t, noise_scheduler.config.prediction_type)
        x0 = (z_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps

    def __call__(self, model: LoadedModel, unet, noise_scheduler, pixels, captions, gen, cfg, eval_mode=False):
        from cfgen.editing.components import encode_images, encode_prompts

        z0 = encode_images(model, pixels).float()
        b = z0.shape[0]
        grid = self.grid.timesteps.long()
        t = grid[torch.randint(len(grid), (b,), generator=gen)].to(z0.device)
        t_prev = t - noise_scheduler.config.num_train_timesteps // self.teacher_steps
        noise = torch.randn(z0.shape, generator=gen).to(z0.device)
        z_t = noise_scheduler.add_noise(z0, noise, t)
        cond, uncond = encode_prompts(model, list(captions) + [""] * b).float().chunk(2)
        with torch.no_grad():
            z_prev = self._teacher_step(noise_scheduler, z_t, t, t_prev, cond, uncond)
            at = t_prev.clamp(min=0)
            f_prev = consistency(noise_scheduler, z_prev, unet(z_prev, at, encoder_hidden_states=cond).sample.float(), at)
            target = torch.where(_col(t_prev < 0, z0), z_prev, f_prev)
        f = consistency(noise_scheduler, z_t, unet(z_t, t, encoder_hidden_states=cond).sample.float(), t)
        return pseudo_huber(f, target, self.huber_c)
