"""The 2D folders cfgen writes load in diffusers' own DiffusionPipeline (issue 18, item 7): the
models built for tests, the output of `cfgen finetune` and the shipped demo-cxr."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cfgen.models.loader import load_model


def _pipeline(folder):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder)
    assert isinstance(pipe, StableDiffusionPipeline)
    return pipe


def test_a_built_folder_is_a_stable_diffusion_pipeline_with_cfgens_weights(tiny_model):
    pipe = _pipeline(tiny_model)
    ours = load_model(str(tiny_model), device="cpu")
    assert torch.equal(pipe.unet.conv_in.weight, ours.unet.conv_in.weight)
    img = pipe("a chest x-ray", num_inference_steps=2, height=32, width=32, output_type="np",
               guidance_scale=2.0, generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 32, 32, 1) and np.isfinite(img).all()


def test_a_finetuned_folder_loads_in_diffusers(tiny_model, tmp_path):
    from cfgen.training.export import save_model

    model = load_model(str(tiny_model), device="cpu")
    folder = save_model(tmp_path, model, model.unet, {"steps": 0})
    pipe = _pipeline(folder)
    assert torch.equal(pipe.unet.conv_in.weight, model.unet.conv_in.weight)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"


@pytest.mark.parametrize("name", ["demo-cxr"])
def test_the_shipped_2d_model_loads_in_diffusers(name):
    entry_folder = load_model(name, device="cpu").folder
    assert _pipeline(entry_folder).unet.config.sample_size > 0
