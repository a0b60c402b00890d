"""Hierarchical text-to-volume synthesis (MedSyn, section IV): the base stage samples a
low-resolution volume (with anatomy label channels when the model has them) under classifier-free
guidance; the super-resolution stage samples the full-resolution volume given the upsampled base.

Anatomy-controlled synthesis (MedSyn IV.D, "fix the mask channels and generate the rest"): after
every sampling step the label channels are replaced by the given labels noised to the level of
the next step (the forward process of the model's own scheduler, DDIM or rectified flow), and by
the labels themselves after the last step; the image channels are generated around them. A model
trained with labels given clean can be label-guided (LabelGuided): its prediction with the given
labels extrapolated away from the one with the labels on their forward trajectory.
No printing, no files: tensors and numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TYPE_CHECKING

import numpy as np
import torch

from cfgen.errors import ModelError, UsageError
from cfgen.models.synth import label_encoding, label_names

if TYPE_CHECKING:
    from cfgen.models.loader import LoadedModel


@dataclass
class SynthParams:
    prompt: str
    num: int = 1
    seed: int = 0
    steps: int | None = None  # None: the base model's default, else the edit default (editing.params)
    guidance: float | None = None  # None: the base model's default, else the edit default
    sr_steps: int | None = None  # None: the SR stage's default, else 20
    size: int | None = None  # output side in voxels [default: base resolution x the SR stage's scale]
    patch: int | None = None  # SR window [default: the stage's]
    overlap: float | None = None
    label_guidance: float | None = None  # --mask-from only; None: [synth] label_guidance, else 1 (none)

    def resolved(self, base_defaults: dict, sr_defaults: dict) -> SynthParams:
        """Options left unset take the models' [defaults]."""
        from dataclasses import replace

        from cfgen.editing.params import DEFAULTS

        return replace(self, steps=self.steps or int(base_defaults.get("steps", DEFAULTS["steps"])),
                       guidance=self.guidance if self.guidance is not None
                       else float(base_defaults.get("guidance", DEFAULTS["guidance"])),
                       sr_steps=self.sr_steps or int(sr_defaults.get("steps", 20)),
                       label_guidance=self.label_guidance if self.label_guidance is not None
                       else float(base_defaults.get("label_guidance", 1.0)))

    def check(self) -> None:
        if not self.prompt.strip():
            raise UsageError("--prompt: the prompt is empty")
        for name, v, lo in (("--num", self.num, 1), ("--steps", self.steps, 1), ("--sr-steps", self.sr_steps, 1)):
            if v is not None and v < lo:
                raise UsageError(f"{name} {v}: must be at least {lo}")
        if self.guidance is not None and self.guidance < 1:
            raise UsageError(f"--guidance {self.guidance}: must be at least 1 (1 = no guidance)")
        if self.label_guidance is not None and self.label_guidance < 1:
            raise UsageError(f"--label-guidance {self.label_guidance}: must be at least 1 (1 = none)")
        if self.size is not None and not 8 <= self.size <= 1024:
            raise UsageError(f"--size {self.size}: must be within 8..1024 voxels")


@dataclass
class Volume:
    image: np.ndarray  # (X, Y, Z) in [0, 1] (the model's intensity window)
    labels: np.ndarray | None  # (X, Y, Z) uint8: 0 background, k = the k-th label name
    base: np.ndarray  # the base stage's image, (r, r, r) in [0, 1]
    seed: int


def base_defaults(entry) -> dict:
    """The base stage's [defaults], its [synth] guidance and label_guidance (synthesis's own, where
    set) over theirs."""
    return {**entry.defaults, **{k: entry.synth[k] for k in ("guidance", "label_guidance") if k in entry.synth}}


def output_size(p: SynthParams, base, sr) -> int:
    """--size, else the base's resolution times the super-resolution stage's scale."""
    return p.size or base.entry.resolution * (int(sr.entry.synth["scale"]) if sr is not None else 1)


def check_base(model: LoadedModel) -> None:
    from cfgen.editing.labelled import check_lossless

    check_lossless(model)
    if "scale" in model.entry.synth:
        raise UsageError(f"--model {model.name}: a super-resolution stage; synth3d needs a base stage first")


def check_label_guidance(model: LoadedModel) -> None:
    if model.entry.synth.get("given_labels") != "clean":
        raise UsageError(f"--label-guidance: model '{model.name}' was not trained with labels given clean "
                         "([synth] given_labels = \"clean\", cfgen finetune --label-condition); it has no "
                         "label-free prediction to guide against")


def guidance_map(model: LoadedModel, fixed: torch.Tensor, weight: float) -> float | torch.Tensor:
    """Label guidance's weight per latent cell: ``weight`` in the cells that hold a given voxel of a
    [synth] label_guidance_labels label, 1 elsewhere (guided everywhere, the lungs of demo-ct's
    candidates roughened: lobe voxels above -400 HU 0.06 -> 0.17 at weight 3); ``weight`` everywhere
    when the table names none."""
    names = model.entry.synth.get("label_guidance_labels")
    if not names:
        return weight
    known = label_names(model.entry)
    labels = torch.from_numpy(label_map(fixed[0], model.entry).astype(np.int64))
    hit = torch.zeros(labels.shape, dtype=torch.bool)
    for name in names:
        hit |= labels == known.index(name) + 1
    f = model.vae_scale_factor
    cells = torch.nn.functional.max_pool3d(hit[None, None].float(), f, f)
    return (1 + (weight - 1) * cells).to(fixed.device, fixed.dtype)


def _fixer(model: LoadedModel, sched, fixed: torch.Tensor, timesteps: torch.Tensor, gen: torch.Generator):
    """(start(z), blend(z, i), labelled, noised(t)) for ddim.sample: the label channels' latents
    (labelled_latents) follow the given labels' forward trajectory (noised(t)), or, for a model trained
    with labels given clean ([synth] given_labels = "clean", `cfgen finetune --label-condition`), are
    the clean labels at every step."""
    from cfgen.editing.components import encode_images
    from cfgen.models.synth import labelled_latents

    image = model.entry.channels
    x = torch.cat([torch.zeros((1, image) + tuple(fixed.shape[2:]), dtype=fixed.dtype, device=fixed.device), fixed], 1)
    clean = encode_images(model, x).to(fixed.dtype)
    labelled = torch.tensor(labelled_latents(clean.shape[1], image, model.entry.synth), device=clean.device)
    clean = clean[:, labelled]
    noise = torch.randn(clean.shape, generator=gen).to(clean.device, clean.dtype)
    given_clean = model.entry.synth.get("given_labels") == "clean"

    def noised(t) -> torch.Tensor:
        t = torch.as_tensor(t, device=clean.device).reshape(1)
        return sched.add_noise(clean, noise, t).to(clean.dtype)

    def put(z: torch.Tensor, i: int) -> torch.Tensor:
        z = z.clone()
        z[:, labelled] = (clean if i >= len(timesteps) or given_clean else noised(timesteps[i])).to(z.dtype)
        return z

    return (lambda z: put(z, 0)), (lambda z, i: put(z, i + 1)), labelled, noised


class LabelGuided(torch.nn.Module):
    """The UNet under label guidance (--mask-from, a model trained with labels given clean): the
    prediction with the labels given clean pushed away from the one with the same labels on their
    forward trajectory (the model's joint mode, where it draws the image for labels it generates
    itself): joint + w * (given - joint), as classifier-free guidance does for the text."""

    def __init__(self, unet, labelled: torch.Tensor, noised: Callable, weight: float | torch.Tensor):
        super().__init__()
        self.unet, self.labelled, self.noised, self.weight = unet, labelled, noised, weight

    def forward(self, z: torch.Tensor, t, encoder_hidden_states: torch.Tensor):
        from types import SimpleNamespace

        joint = z.clone()
        joint[:, self.labelled] = self.noised(t).to(z.dtype).expand(z.shape[0], -1, *z.shape[2:])
        both = self.unet(torch.cat([z, joint]), t, encoder_hidden_states=torch.cat([encoder_hidden_states] * 2)).sample
        given, joint = both.chunk(2)
        return SimpleNamespace(sample=joint + self.weight * (given - joint))


@torch.no_grad()
def sample_base(model: LoadedModel, prompt: str, seed: int, steps: int, guidance: float, fixed: torch.Tensor | None = None,
                on_step: Callable[[], None] | None = None, label_guidance: float = 1.0) -> torch.Tensor:
    """(1, C + labels, r, r, r) in the model's range from the base stage; ``label_guidance`` > 1 with
    ``fixed`` labels: LabelGuided (a model trained with labels given clean only)."""
    from cfgen.editing import ddim
    from cfgen.editing.components import decode_latents, encode_prompts

    e = model.entry
    sched = ddim.make_scheduler(e.scheduler, steps)
    gen = torch.Generator().manual_seed(int(seed))
    side = e.resolution // model.vae_scale_factor
    shape = (1, model.unet.config.in_channels) + (side,) * 3
    z = (torch.randn(shape, generator=gen) * sched.init_noise_sigma).to(model.device, model.dtype)
    cond, uncond = encode_prompts(model, [prompt, ""]).chunk(2)
    blend, unet = None, model.unet
    if fixed is not None:
        start, blend, labelled, noised = _fixer(model, sched, fixed.to(model.device, model.dtype), sched.timesteps, gen)
        z = start(z)
        if label_guidance != 1.0:
            check_label_guidance(model)
            unet = LabelGuided(unet, labelled, noised, guidance_map(model, fixed, label_guidance))
    z = ddim.sample(unet, sched, z, cond, sched.timesteps, uncond=uncond, guidance=guidance,
                    blend=blend, on_step=on_step)
    return decode_latents(model, z)


def label_map(channels: torch.Tensor, entry) -> np.ndarray:
    """(label channels, ...) in the model's range -> uint8 map (value k = the k-th label name),
    decoded as the model encodes its labels (cfgen.models.label_codes)."""
    from cfgen.models.label_codes import decode

    mid = (entry.value_range[0] + entry.value_range[1]) / 2
    return decode(channels.float().cpu().numpy(), len(label_names(entry)), label_encoding(entry.synth), mid)


def _nearest(labels: np.ndarray, size: int) -> np.ndarray:
    """A label map on the output grid (nearest neighbour: labels are not blended)."""
    if labels.shape[0] == size:
        return labels
    x = torch.from_numpy(labels.astype(np.float32))[None, None]
    return torch.nn.functional.interpolate(x, size=(size,) * 3, mode="nearest-exact")[0, 0].numpy().astype(np.uint8)


def _unit(x: torch.Tensor, value_range) -> np.ndarray:
    from cfgen.editing.prepare import unit

    return unit(x.float().cpu(), value_range).numpy()


def synthesize(base, sr, p: SynthParams, fixed: torch.Tensor | None = None,
               on_step: Callable[[], None] | None = None) -> list[Volume]:
    """``p.num`` volumes (seeds p.seed, p.seed + 1, ...); ``sr`` None: the base stage only
    (resized to ``p.size`` when one is asked)."""
    from cfgen.synthesis.superres import super_resolve, upsample

    p = p.resolved(base_defaults(base.entry), sr.entry.defaults if sr is not None else {})
    p.check()
    check_base(base)
    e = base.entry
    size = output_size(p, base, sr)
    if sr is not None:
        levels = len(sr.unet.config.channels) - 1
        if size % 2 ** levels:
            raise UsageError(f"--size {size}: the super-resolution stage needs a multiple of {2 ** levels}")
        if sr.entry.channels != e.channels:
            raise ModelError(f"--sr {sr.name}: takes {sr.entry.channels}-channel volumes; the base stage makes {e.channels}")
    out = []
    for k in range(p.num):
        seed = p.seed + k
        x = sample_base(base, p.prompt, seed, p.steps, p.guidance, fixed, on_step, p.label_guidance or 1.0).float()
        low, lab = x[:, :e.channels], x[:, e.channels:]
        if sr is not None:
            high = _between(super_resolve(sr, _between(low, e, sr.entry), size, p.sr_steps, seed, p.patch, p.overlap,
                                          on_step), sr.entry, e)
        else:
            high = upsample(low, size) if size != e.resolution else low
        labels = _nearest(label_map(lab[0], e), size) if lab.shape[1] else None
        out.append(Volume(image=_unit(high, e.value_range)[0].mean(axis=0), labels=labels,
                          base=_unit(low, e.value_range)[0].mean(axis=0), seed=seed))
    return out


def _between(x: torch.Tensor, src, dst) -> torch.Tensor:
    """A volume in stage ``src``'s model units -> stage ``dst``'s, through their fixed windows (e.g.
    a base with a knee in its HU window before a linear super-resolution stage); as it is when
    either has no fixed window or both map the same."""
    from cfgen.io.intensity import window_map

    a, b = (window_map(en.defaults.get("window"), en.value_range) for en in (src, dst))
    if a is None or b is None or a == b:
        return x
    return torch.from_numpy(b.to_model(a.from_model(x.detach().float().cpu().numpy()))).to(x.device, x.dtype)


def read_anatomy(path, model) -> torch.Tensor:
    """--mask-from: an integer label NIfTI (value k = the k-th label) -> (1, L, r, r, r) in the model's range."""
    from cfgen.editing.grid import ModelGrid
    from cfgen.editing.prepare import label_channels, to_model
    from cfgen.io.scan import read_scan

    names = label_names(model.entry)
    if not names:
        raise UsageError(f"--mask-from {path}: model '{model.name}' generates no anatomy label channels "
                         "(its [synth] table names no labels)")
    scan = read_scan(path)
    if scan.spatial_dims != 3:
        raise UsageError(f"--mask-from {path}: needs a 3D label volume")
    e = model.entry
    prep = to_model(scan, ModelGrid.of(e), 1, e.value_range, "minmax")
    return label_channels(scan.pixels[0], path, scan, prep, len(names), e.value_range, label_encoding(e.synth))[None]
