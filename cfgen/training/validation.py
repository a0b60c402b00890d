"""Validation grids during training: one image per prompt from fixed noise (DDIM, guided), side
by side in a PNG, so that runs and checkpoints can be compared by eye."""
from __future__ import annotations

from typing import TYPE_CHECKING

import json
from pathlib import Path

import torch

from cfgen.training.config import derived_seed

if TYPE_CHECKING:
    from cfgen.models.loader import LoadedModel


@torch.no_grad()
def _sample(model: LoadedModel, unet, prompt: str, sched, guidance: float, seed: int):
    from cfgen.editing import ddim
    from cfgen.editing.components import decode_latents, encode_prompts
    from cfgen.editing.prepare import unit

    e = model.entry
    side = e.resolution // model.vae_scale_factor
    gen = torch.Generator().manual_seed(seed)
    shape = (1, unet.config.in_channels) + (side,) * e.spatial_dims
    z = torch.randn(shape, generator=gen).to(model.device) * sched.init_noise_sigma
    cond, uncond = encode_prompts(model, [prompt, ""]).float().chunk(2)
    z = ddim.sample(unet, sched, z, cond, sched.timesteps, uncond=uncond, guidance=guidance)
    return unit(decode_latents(model, z)[0], e.value_range).cpu().numpy()


def render_validation(model: LoadedModel, unet, prompts: list[str], steps: int, guidance: float, seed: int,
                      target: Path) -> Path:
    """One image per prompt from fixed noise, side by side, as a PNG grid (+ a JSON of its settings)."""
    import numpy as np
    from PIL import Image

    from cfgen.editing import ddim
    from cfgen.io.atomic import atomic_path
    from cfgen.viz.figures import as_2d

    sched = ddim.make_scheduler(model.entry.scheduler, steps)
    tiles = []
    for i, prompt in enumerate(prompts):
        img = _sample(model, unet, prompt, sched, guidance, derived_seed(seed, i))
        tiles.append(np.round(as_2d(img) * 255).astype(np.uint8))  # volumes: orthogonal mid-slices
    grid = np.concatenate(tiles, axis=1) if tiles else np.zeros((8, 8), np.uint8)
    with atomic_path(target) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    (target.with_suffix(".json")).write_text(json.dumps({"prompts": prompts, "steps": steps, "guidance": guidance}))
    return target
