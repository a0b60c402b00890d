"""Prompt-to-prompt attention control (Hertz et al. 2022), as PRISM's public code edits.

The source branch and one target branch per variant are sampled together in one batch from
the inverted noise. In the conditional half of every UNet forward, through diffusers' attention
processors, each target branch takes from the source branch:
  cross-attention  for the first ``cross`` fraction of the steps, the source's attention maps
                   for the tokens the prompts share (``refine``: equal tokens after aligning the
                   two token sequences; new and changed words keep their own maps), or for every
                   token position (``replace``: a word swap, both prompts the same token count);
  self-attention   for the first ``self`` fraction of the steps (the variant's), the source's
                   self-attention maps, on layers of at most 32 x 32 tokens (the original's rule).
So the layout of the scan stays and the new words act where the old ones did. The source branch
follows the inverted trajectory exactly (replaced by it after every step, as Direct Inversion,
Ju et al. 2024, does), so its maps are those of the scan whatever the inversion's drift; a
target branch is blended with that trajectory outside its edit mask, as without attention
control. The unconditional half is left alone (as the original).
"""
from __future__ import annotations

import contextlib
import difflib
from dataclasses import dataclass

import torch

from cfgen.editing import ddim
from cfgen.errors import UsageError

#: self-attention maps are injected on layers with at most this many query tokens (prompt-to-prompt)
MAX_SELF_TOKENS = 32 ** 2


def token_map(ids_src: list[int], ids_tgt: list[int], mode: str, lengths: tuple[int, int] | None = None
              ) -> tuple[list[int], list[float]]:
    """Per target token: the source token whose cross-attention map it takes, and 1 where it takes
    it (0: keeps its own). ``ids_*``: the padded token ids the text encoder reads; ``lengths``:
    the prompts' own tokens (start and end included) of each."""
    n = len(ids_tgt)
    if mode == "replace":
        if lengths is not None and lengths[0] != lengths[1]:
            raise UsageError("--attention replace swaps words token for token: the source and target prompts "
                             f"must have as many tokens ({lengths[0]} and {lengths[1]}); use --attention refine")
        return list(range(n)), [1.0] * n
    index, alpha = list(range(n)), [0.0] * n
    for a, b, size in difflib.SequenceMatcher(None, ids_src, ids_tgt, autojunk=False).get_matching_blocks():
        for k in range(size):
            index[b + k], alpha[b + k] = a + k, 1.0
    return index, alpha


@dataclass
class Control:
    """What every attention layer does to the probabilities of the current step."""

    n: int  # items
    selfs: list[float]  # per variant: fraction of the steps with the source's self-attention
    cross: float  # fraction of the steps with the source's cross-attention maps
    index: torch.Tensor  # (n, K) long: per target token, the source token it takes the map of
    alpha: torch.Tensor  # (n, K) float: 1 where it does
    steps: int
    step: int = 0

    def edit(self, probs: torch.Tensor, heads: int, is_cross: bool) -> torch.Tensor:
        groups = 1 + len(self.selfs)
        batch = probs.shape[0] // heads
        p = probs.view(batch, heads, *probs.shape[1:])
        start = batch - groups * self.n  # the conditional half under guidance, else everything
        base = p[start:start + self.n]
        for g, frac in enumerate(self.selfs, start=1):
            rows = slice(start + g * self.n, start + (g + 1) * self.n)
            if is_cross and self.step < self.cross * self.steps:
                idx = self.index.to(p.device)[:, None, None, :].expand(-1, heads, p.shape[2], -1)
                a = self.alpha.to(p.device, p.dtype)[:, None, None, :]
                p[rows] = a * torch.gather(base, 3, idx) + (1 - a) * p[rows]
            elif not is_cross and self.step < frac * self.steps and p.shape[2] <= MAX_SELF_TOKENS:
                p[rows] = base
        return probs


class _Probed:
    """An Attention module whose attention probabilities pass through the control."""

    def __init__(self, attn, control: Control, is_cross: bool):
        self._attn, self._control, self._is_cross = attn, control, is_cross

    def __getattr__(self, name):
        return getattr(self._attn, name)

    def get_attention_scores(self, query, key, attention_mask=None):
        probs = self._attn.get_attention_scores(query, key, attention_mask)
        return self._control.edit(probs, self._attn.heads, self._is_cross)


class ControlledProcessor:
    """diffusers' plain AttnProcessor on the module seen through the control."""

    def __init__(self, control: Control):
        from diffusers.models.attention_processor import AttnProcessor

        self.control, self.plain = control, AttnProcessor()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        probed = _Probed(attn, self.control, encoder_hidden_states is not None)
        return self.plain(probed, hidden_states, encoder_hidden_states, attention_mask, temb)


def supported(model) -> str | None:
    """Why ``model`` cannot take attention control, or None."""
    if model.fields is not None or model.tokenizer is None:
        return f"model {model.entry.name}: prompt-to-prompt needs a text-conditioned model (this one reads fields)"
    if not hasattr(model.unet, "set_attn_processor"):
        return (f"model {model.entry.name}: prompt-to-prompt needs a diffusers UNet with attention processors "
                "(2D models); this one has none")
    return None


@contextlib.contextmanager
def controlled(unet, control: Control):
    """The UNet with every attention layer under ``control``; the original processors after."""
    saved = unet.attn_processors
    unet.set_attn_processor(ControlledProcessor(control))
    try:
        yield
    finally:
        unet.set_attn_processor(saved)


def make_control(model, ps, selfs: list[float], steps: int) -> Control:
    from cfgen.editing.components import max_tokens

    tok, length = model.tokenizer, max_tokens(model)
    ids = lambda text: tok(text, padding="max_length", max_length=length, truncation=True).input_ids  # noqa: E731
    own = lambda text: len(tok(text, max_length=length, truncation=True).input_ids)  # noqa: E731
    maps = [token_map(ids(p.source_prompt), ids(p.prompt), p.attention, (own(p.source_prompt), own(p.prompt)))
            for p in ps]
    return Control(n=len(ps), selfs=selfs, cross=ps[0].cross_attention, steps=steps,
                   index=torch.tensor([m[0] for m in maps], dtype=torch.long),
                   alpha=torch.tensor([m[1] for m in maps], dtype=torch.float32))


@torch.no_grad()
def sample(model, scheduler, traj: list[torch.Tensor], src, tgt, ts, uncond, guidance: float, control: Control,
           mask: torch.Tensor | None, on_step=None) -> torch.Tensor:
    """Source branch plus one target branch per variant from ``traj[-1]``; returns the target
    branches' final latents, (variants * n, ...), variant-major."""
    n, k, groups = control.n, len(control.selfs), 1 + len(control.selfs)
    rep = lambda t: torch.cat([t] * groups)  # noqa: E731
    z = rep(traj[-1])
    cond = torch.cat([src] + [tgt] * k)
    un = [rep(u) for u in uncond] if isinstance(uncond, list) else rep(uncond)
    keep = None if mask is None else torch.cat([mask] * k).to(z.dtype)
    with controlled(model.unet, control):
        for i, t in enumerate(ts.tolist()):
            control.step = i
            out = ddim.predict(model.unet, z, t, cond, un[i] if isinstance(un, list) else un, guidance).float()
            z = scheduler.step(out, t, z.float()).prev_sample.to(z.dtype)
            ref = traj[len(traj) - 2 - i]
            edited = z[n:] if keep is None else keep * z[n:] + (1 - keep) * torch.cat([ref] * k)
            z = torch.cat([ref, edited])
            if on_step:
                on_step()
    return z[n:]
