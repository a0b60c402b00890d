"""How a scan is inverted, what the regeneration's unconditional branch is, and the gate that
checks the inversion before an edit is trusted.

Methods (``--inversion``):
  ddim             the unconditional branch is the negative prompt's embedding (empty by default).
  negative-prompt  Miyake et al. 2023: the source prompt's embedding replaces the null text, so
                   that regenerating under the source prompt reconstructs whatever the guidance;
                   forward passes only.
  null-text        Mokady et al. 2023, Alg. 1: per sampling step, the null embedding optimised
                   (Adam, ``null_text_steps`` inner steps, lr 1e-2 decaying, early stop) so that
                   the guided step from the current latent lands on the DDIM pivot trajectory.
Under guidance 1 the unconditional branch is never used and the three are the same.

The gate (``--min-inversion-psnr``): before editing, regenerate under the source prompt at the
edit's guidance and measure PSNR against the first stage's own reconstruction of the scan (so
the figure is the inversion's alone, not the VAE's) in the region that must stay: outside the
edit mask, or the whole scan without one. Below the bar it escalates: twice the steps, then the
next methods in the order above; it records every try, and an item that no try brings over the
bar fails with the figures rather than giving an edit from an inversion that does not hold.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from cfgen.editing import ddim, dpm
from cfgen.errors import InputError

METHODS = ("ddim", "negative-prompt", "null-text")
#: Mokady et al.: early stop when the loss falls below EPS + i * EPS_STEP at outer step i
EPS, EPS_STEP, LR = 1e-5, 2e-5, 1e-2


@dataclass
class Inverted:
    sched: object
    ts: torch.Tensor
    traj: list[torch.Tensor]
    uncond: torch.Tensor | list[torch.Tensor]  # one embedding, or one per sampling step (null-text)
    method: str
    steps: int
    solver: str = "ddim"
    tries: list[dict] = field(default_factory=list)  # the gate's, in order (psnr: one per item)
    regions: list[str] = field(default_factory=list)  # the gate's region per item
    attention: list[dict] = field(default_factory=list)  # the regeneration's attention control, per item

    def record(self, i: int, guidance: float) -> dict:
        """What item ``i`` of the batch was inverted with, and the gate's tries for it."""
        rec = {"method": self.method, "steps": self.steps, "guidance": guidance, "solver": self.solver}
        if self.tries:
            rec["gate"] = {"region": self.regions[i], "tries": [{**t, "psnr": t["psnr"][i]} for t in self.tries]}
        return rec


def null_text(unet, sched, traj: list[torch.Tensor], cond: torch.Tensor, uncond0: torch.Tensor, ts: torch.Tensor,
              guidance: float, inner_steps: int) -> list[torch.Tensor]:
    """Per sampling step, the null embedding whose guided step from the current latent reaches the
    pivot ``traj`` (ddim.invert's, under ``cond``); items of a batch are optimised independently
    (the loss is a sum of per-item means)."""
    n, z, emb, out = len(ts), traj[-1], uncond0.detach().float().clone(), []
    for i, t in enumerate(ts.tolist()):
        target = traj[n - 1 - i].float()
        with torch.no_grad():
            out_c = unet(z, t, encoder_hidden_states=cond).sample.float()
        emb = emb.detach().requires_grad_(True)
        opt = torch.optim.Adam([emb], lr=LR * (1.0 - i / 100.0) if i < 100 else LR / 100)
        for _ in range(inner_steps):
            out_u = unet(z, t, encoder_hidden_states=emb.to(cond.dtype)).sample.float()
            prev = sched.step(out_u + guidance * (out_c - out_u), t, z.float()).prev_sample
            per_item = ((prev - target) ** 2).flatten(1).mean(dim=1)
            opt.zero_grad()
            per_item.sum().backward()
            opt.step()
            if float(per_item.detach().max()) < EPS + i * EPS_STEP:
                break
        emb = emb.detach()
        out.append(emb.to(cond.dtype))
        with torch.no_grad():
            out_u = unet(z, t, encoder_hidden_states=out[-1]).sample.float()
            z = sched.step(out_u + guidance * (out_c - out_u), t, z.float()).prev_sample.to(traj[-1].dtype)
    return out


def invert(model, z0: torch.Tensor, src: torch.Tensor, neg: torch.Tensor, p, guidance: float, method: str,
           steps: int, on_step: Callable[[], None] | None = None) -> Inverted:
    """DDIM inversion under ``src`` and the regeneration's unconditional branch for ``method``."""
    sched = dpm.make_scheduler(model.entry.scheduler, steps, p.solver)
    ts = ddim.edit_timesteps(sched, p.strength)
    traj = ddim.invert(model.unet, sched, z0, src, ts, on_step=on_step)
    if method == "negative-prompt":
        uncond = src
    elif method == "null-text" and guidance != 1.0:
        uncond = null_text(model.unet, sched, traj, src, neg, ts, guidance, p.null_text_steps)
    else:
        uncond = neg
    return Inverted(sched, ts, traj, uncond, method, steps, p.solver)


def _plan(method: str, steps: int) -> list[tuple[str, int]]:
    """The chosen method, then with twice the steps (at most 500), then each later method."""
    plan = [(method, steps)]
    if min(500, 2 * steps) > steps:
        plan.append((method, min(500, 2 * steps)))
    return plan + [(m, steps) for m in METHODS[METHODS.index(method) + 1:]]


def _psnr_keep(rec: torch.Tensor, ref: torch.Tensor, keep: torch.Tensor, value_range) -> list[float]:
    """Per item PSNR (dB, images scaled to [0, 1]) of ``rec`` against ``ref`` where ``keep`` > 0.5."""
    lo, hi = value_range
    d2 = (((rec.float() - ref.float()) / (hi - lo)) ** 2).mean(dim=1, keepdim=True)
    w = (keep > 0.5).float()
    mse = (d2 * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1.0)
    return [float(10 * torch.log10(1.0 / m.clamp_min(1e-12))) for m in mse]


def _keep(latent_masks: list, shape: tuple[int, ...]) -> torch.Tensor:
    """(N, 1, *pixels): 1 outside each item's edit mask (nearest-upsampled); the whole scan without
    a mask, or when the mask covers everything."""
    keep = [torch.ones((1, 1, *shape)) if m is None else
            1 - torch.nn.functional.interpolate(m.float().cpu(), size=shape, mode="nearest") for m in latent_masks]
    return torch.cat([k if (k > 0.5).any() else torch.ones_like(k) for k in keep])


def gated(model, z0, src, neg, p, guidance: float, latent_masks: list, decode: Callable,
          on_step: Callable[[], None] | None, where: list[str]) -> Inverted:
    """The first inversion of ``_plan`` whose reconstruction clears ``p.min_inversion_psnr`` on every
    item, in the region that must stay (``_keep``); InputError naming the items when none does."""
    ref = decode(z0)
    keep = _keep(latent_masks, tuple(ref.shape[2:])).to(ref.device)
    tries: list[dict] = []
    for k, (method, steps) in enumerate(_plan(p.inversion, p.steps)):
        inv = invert(model, z0, src, neg, p, guidance, method, steps, on_step if k == 0 else None)
        rec = decode(ddim.sample(model.unet, inv.sched, inv.traj[-1], src, inv.ts, uncond=inv.uncond,
                                 guidance=guidance))
        psnr = _psnr_keep(rec, ref, keep, model.entry.value_range)
        tries.append({"method": method, "steps": steps, "psnr": [round(v, 2) for v in psnr]})
        if min(psnr) >= p.min_inversion_psnr:
            inv.tries = tries
            inv.regions = ["whole scan" if m is None or bool(k.min() > 0.5) else "outside the edit mask"
                           for m, k in zip(latent_masks, keep)]
            return inv
    said = "; ".join(f"{t['method']} {t['steps']} steps {min(t['psnr']):.1f} dB" for t in tries)
    raise InputError(f"{', '.join(where)}: inversion does not reconstruct to --min-inversion-psnr "
                     f"{p.min_inversion_psnr:g} dB in the region that must stay ({said})")
