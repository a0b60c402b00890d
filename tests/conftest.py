"""Shared fixtures: tiny diffusers models saved to disk and loaded through cfgen's loader,
real medical files that ship with pydicom and nibabel, and a CLI runner."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cfgen.cli.main import app


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """1-channel, 32 px latent diffusion model in diffusers format (random, small outputs)."""
    from cfgen.models.build import PRESETS, build_ldm2d

    return build_ldm2d(tmp_path_factory.mktemp("models") / "tiny", PRESETS["tiny"], seed=0)


@pytest.fixture(scope="session")
def tiny_rgb_model(tmp_path_factory) -> Path:
    """3-channel variant: gray scans must be replicated to RGB and back."""
    from dataclasses import replace

    from cfgen.models.build import PRESETS, build_ldm2d

    return build_ldm2d(tmp_path_factory.mktemp("models") / "tiny_rgb",
                       replace(PRESETS["tiny"], image_channels=3), seed=1)


@pytest.fixture
def model_copy(tiny_model, tmp_path) -> Path:
    """A private copy of the tiny model that a test may damage."""
    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


@pytest.fixture(scope="session")
def ct_small() -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm"))


@pytest.fixture(scope="session")
def mr_small() -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("MR_small.dcm"))


@pytest.fixture(scope="session")
def anatomical() -> Path:
    import nibabel

    return Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"


@pytest.fixture
def cli():
    runner = CliRunner()

    def run(*args: str, env: dict | None = None, input: str | None = None):
        return runner.invoke(app, [str(a) for a in args], env=env, input=input, catch_exceptions=False)

    return run


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPModel

    from cfgen.models.build import char_clip_tokenizer

    folder = tmp_path_factory.mktemp("clip")
    tok = char_clip_tokenizer(77)
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config={"vocab_size": len(tok), "eos_token_id": tok.eos_token_id,
                                  "bos_token_id": tok.bos_token_id, "pad_token_id": tok.pad_token_id, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                  "num_attention_heads": 2, "max_position_embeddings": 77},
                     vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                    "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                     projection_dim=16)
    CLIPModel(cfg).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder
