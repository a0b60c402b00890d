"""The Cycle Diffusion Model objective (CDM, paper 002, Eq. 1-2) as a `cfgen finetune` objective.

For a batch with latents z0, conditions c, noise eps and timesteps t:

  z_t      = forward process (z0, eps, t)
  ~z0      = one-step estimate of z0 from z_t under the counterfactual condition c'
  ~z_t     = forward process (~z0, eps, t)                   ("the noisy version of ~z0")
  ^z0      = one-step estimate of z0 from ~z_t under the original condition c
  L_CDM    = l_LDM(eps, z_t, t, c') + l_LDM(eps, ~z_t, t, c) + lambda * |z0 - ^z0|_1

(the estimates are the DDIM x0-predictions, Eq. 5's \\hat z_0; for rectified flow z_t - s v).
Gradients flow through ~z0 into the factual pass, which is what ties the two directions.
With c' = c and a model that predicts the noise exactly, every term is zero.

Counterfactual conditions come from rules, one drawn per sample among those that apply:
  ``age:10,30,60``   numeric field of a tabular model: +-10/30/60 kept inside its range
  ``sex``            categorical field: another of its values
  ``TEXT=>OTHER``    text models: swap the phrase for the other (both ways)
  ``finding:A,B``    text models with chexpert-template captions: add or remove one of the named
                     CheXpert findings and write the caption again with the same template
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cfgen.errors import UsageError

if TYPE_CHECKING:
    from cfgen.models.loader import LoadedModel


@dataclass(frozen=True)
class Rule:
    field: str | None = None  # tabular rules
    deltas: tuple[float, ...] = ()  # numeric: +- each
    swap: tuple[str, str] | None = None  # text rules
    findings: tuple[str, ...] = ()  # text rules on chexpert-template captions


def _finding_rule(spec: str) -> Rule:
    from cfgen.captions.templates import CHEXPERT_CONDITIONS

    known = {c.lower(): c for c in CHEXPERT_CONDITIONS if c != "No Finding"}
    names = [x.strip() for x in spec.partition(":")[2].split(",") if x.strip()]
    bad = [n for n in names if n.lower() not in known]
    if not names or bad:
        raise UsageError(f"--counterfactual '{spec}': " + (f"not CheXpert findings: {', '.join(bad)}" if bad else
                         "name the findings to toggle") + f" (one or more of {', '.join(known.values())})")
    return Rule(findings=tuple(known[n.lower()] for n in names))


def parse_rules(specs: list[str]) -> list[Rule]:
    rules = []
    for spec in specs:
        if spec.strip().lower().startswith("finding:"):
            rules.append(_finding_rule(spec.strip()))
        elif "=>" in spec:
            a, b = (x.strip() for x in spec.split("=>", 1))
            if not a or not b:
                raise UsageError(f"--counterfactual '{spec}': a text swap needs text on both sides of =>")
            rules.append(Rule(swap=(a, b)))
        elif ":" in spec:
            name, _, raw = spec.partition(":")
            try:
                deltas = tuple(abs(float(x)) for x in raw.split(",") if x.strip())
            except ValueError:
                raise UsageError(f"--counterfactual '{spec}': deltas must be numbers, e.g. age:10,30,60") from None
            if not deltas or not all(deltas):
                raise UsageError(f"--counterfactual '{spec}': give non-zero deltas, e.g. age:10,30,60")
            rules.append(Rule(field=name.strip(), deltas=deltas))
        elif spec.strip():
            rules.append(Rule(field=spec.strip()))
    if not rules:
        raise UsageError("--counterfactual: give at least one rule (age:10,30,60 | sex | 'TEXT=>OTHER' | "
                         "'finding:Pleural Effusion,Cardiomegaly')")
    return rules


def check_rules(rules: list[Rule], fields) -> None:
    """Rules must suit the model: field rules for tabular models (fields it has), swaps and findings for text."""
    names = {f.name: f for f in fields} if fields is not None else {}
    for r in rules:
        if (r.swap is not None or r.findings) and fields is not None:
            raise UsageError("--counterfactual: text swaps and findings need a text model; this model takes field "
                             f"values ({', '.join(names)}): use e.g. age:10,30,60")
        if r.field is not None:
            if fields is None:
                raise UsageError(f"--counterfactual {r.field}: field rules need a tabular model; use 'TEXT=>OTHER' "
                                 "or 'finding:Pleural Effusion,Cardiomegaly'")
            f = names.get(r.field)
            if f is None:
                raise UsageError(f"--counterfactual {r.field}: the model has no such field ({', '.join(names)})")
            if f.type == "numeric" and not r.deltas:
                raise UsageError(f"--counterfactual {r.field}: a numeric field needs deltas, e.g. {r.field}:10,30,60")
            if f.type == "categorical" and r.deltas:
                raise UsageError(f"--counterfactual {r.field}: a categorical field takes no deltas")


def _choose(options: list, gen: torch.Generator):
    return options[int(torch.randint(len(options), (1,), generator=gen))] if options else None


def counterfactual_values(values: torch.Tensor, fields, rules: list[Rule], gen: torch.Generator) -> torch.Tensor:
    """Tabular c': per row one applicable rule applied to its [value, present] rows."""
    out = values.clone()
    index = {f.name: i for i, f in enumerate(fields)}
    for b in range(values.shape[0]):
        moves = []
        for r in rules:
            i = index[r.field]
            f = fields[i]
            if values[b, i, 1] < 0.5:
                continue  # the field is missing for this sample: nothing to change
            if f.type == "numeric":
                span = f.max - f.min
                for d in r.deltas:
                    for s in (d, -d):
                        v = float(values[b, i, 0]) + s / span
                        if 0.0 <= v <= 1.0:
                            moves.append((i, v))
            else:
                cur = int(round(float(values[b, i, 0])))
                moves += [(i, float(k)) for k in range(len(f.values)) if k != cur]
        move = _choose(moves, gen)
        if move is not None:
            out[b, move[0], 0] = move[1]
    return out


def counterfactual_captions(captions: list[str], rules: list[Rule], gen: torch.Generator) -> list[str]:
    """Text c': per caption one applicable move: a swap (either direction) or a toggled finding."""
    from cfgen.captions.templates import toggle_chexpert_finding

    out = []
    for cap in captions:
        moves = [cap.replace(a, b, 1) for r in rules if r.swap for a, b in (r.swap, r.swap[::-1]) if a in cap]
        moves += [m for r in rules for f in r.findings if (m := toggle_chexpert_finding(cap, f)) is not None]
        move = _choose(moves, gen)
        out.append(cap if move is None else move)
    return out


def cycle_terms(unet, noise_scheduler, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                cond: torch.Tensor, cond_cf: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three terms of Eq. 2 (mean over the batch)."""
    from cfgen.training.objectives import target, x0_estimate

    z_t = noise_scheduler.add_noise(z0, noise, t)  # DDPM forward process, or rectified flow's interpolation
    out_cf = unet(z_t, t, encoder_hidden_states=cond_cf).sample.float()
    z0_cf = x0_estimate(noise_scheduler, z_t, out_cf, t)
    z_t_cf = noise_scheduler.add_noise(z0_cf, noise, t)
    out_back = unet(z_t_cf, t, encoder_hidden_states=cond).sample.float()
    z0_back = x0_estimate(noise_scheduler, z_t_cf, out_back, t)
    return {"ldm_cf": F.mse_loss(out_cf, target(noise_scheduler, z0, noise, t)),
            "ldm_back": F.mse_loss(out_back, target(noise_scheduler, z0_cf, noise, t)),
            "cycle": (z0 - z0_back).abs().mean()}


def _describe(r: Rule) -> str:
    if r.swap:
        return "=>".join(r.swap)
    if r.findings:
        return "finding:" + ",".join(r.findings)
    return f"{r.field}:" + ",".join(f"{d:g}" for d in r.deltas) if r.deltas else r.field


class CycleObjective:
    """Loss for `finetune(objective=...)`: L_CDM with counterfactual conditions from ``rules``."""

    def __init__(self, rules: list[Rule], weight: float = 1.0):
        if weight < 0:
            raise UsageError(f"--cycle-weight {weight}: must be >= 0")
        self.rules, self.weight = rules, weight
        self.last: dict[str, float] = {}

    def check(self, model: LoadedModel, cfg) -> None:
        check_rules(self.rules, model.fields)
        if cfg.snr_gamma is not None or cfg.noise_offset:
            raise UsageError("--snr-gamma / --noise-offset: not part of the cycle objective (CDM Eq. 2); leave them out")

    def describe(self) -> dict:
        return {"name": "cycle (CDM Eq. 2)", "cycle_weight": self.weight,
                "rules": [_describe(r) for r in self.rules]}

    def __call__(self, model: LoadedModel, unet, noise_scheduler, pixels, captions, gen, cfg, eval_mode=False) -> torch.Tensor:
        from cfgen.editing.components import encode_images, encode_prompts

        z0 = encode_images(model, pixels).float()
        noise = torch.randn(z0.shape, generator=gen).to(z0.device)
        total = noise_scheduler.config.num_train_timesteps
        t = (torch.rand(z0.shape[0], generator=gen) * total).long().clamp(0, total - 1).to(z0.device)
        fields = model.fields
        drop = not eval_mode and cfg.caption_dropout > 0  # classifier-free guidance keeps working
        if fields is not None:
            from cfgen.models.tabular import drop_fields

            cond = encode_prompts(model, captions).float()
            cond_cf = counterfactual_values(cond, fields, self.rules, gen)
            if drop:  # the same fields missing in c and c'
                cond = drop_fields(cond, cfg.caption_dropout, gen)
                cond_cf[..., 1] = cond[..., 1]
        else:
            cf = counterfactual_captions(captions, self.rules, gen)
            if drop:
                gone = (torch.rand(len(captions), generator=gen) < cfg.caption_dropout).tolist()
                captions = ["" if g else c for c, g in zip(captions, gone)]
                cf = ["" if g else c for c, g in zip(cf, gone)]
            cond, cond_cf = encode_prompts(model, captions + cf).float().chunk(2)
        terms = cycle_terms(unet, noise_scheduler, z0, noise, t, cond, cond_cf)
        self.last = {k: float(v.detach()) for k, v in terms.items()}
        return terms["ldm_cf"] + terms["ldm_back"] + self.weight * terms["cycle"]
