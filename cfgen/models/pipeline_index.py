"""``model_index.json`` for the 2D folders cfgen writes, so that diffusers'
``DiffusionPipeline.from_pretrained(folder)`` loads them as a StableDiffusionPipeline (no safety
checker, no feature extractor). The classes are read from the components' own saved configs."""
from __future__ import annotations

import json
from pathlib import Path

INDEX = "model_index.json"


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def bpe_files(tokenizer_dir: Path) -> None:
    """vocab.json and merges.txt beside a BPE tokenizer.json when they are missing: transformers 5
    saves only tokenizer.json, transformers 4's CLIPTokenizer (what model_index.json names) reads
    only the two files."""
    tok = _read(tokenizer_dir / "tokenizer.json").get("model") or {}
    if tok.get("type") != "BPE" or (tokenizer_dir / "vocab.json").is_file():
        return
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok.get("merges") or []]
    (tokenizer_dir / "vocab.json").write_text(json.dumps(tok.get("vocab") or {}, ensure_ascii=False), encoding="utf-8")
    (tokenizer_dir / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n", encoding="utf-8")


def write_model_index(folder: Path) -> Path | None:
    """Write ``folder/model_index.json`` from vae/, unet/, text_encoder/, tokenizer/, scheduler/.
    A folder whose vae/ is the Haar wavelet transform gets none (and loses a stale one): diffusers
    has no such first stage, so it is not a StableDiffusionPipeline."""
    import diffusers

    from cfgen.models.files import is_wavelet_config

    folder = Path(folder)
    bpe_files(folder / "tokenizer")
    if is_wavelet_config(folder / "vae" / "config.json"):
        (folder / INDEX).unlink(missing_ok=True)
        return None
    text_arch = (_read(folder / "text_encoder" / "config.json").get("architectures") or ["CLIPTextModel"])[0]
    tok_class = _read(folder / "tokenizer" / "tokenizer_config.json").get("tokenizer_class") or "CLIPTokenizer"
    sched_class = _read(folder / "scheduler" / "scheduler_config.json").get("_class_name") or "DDIMScheduler"
    index = {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
        "safety_checker": [None, None], "scheduler": ["diffusers", sched_class],
        "text_encoder": ["transformers", text_arch], "tokenizer": ["transformers", tok_class.removesuffix("Fast")],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }
    path = folder / INDEX
    path.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return path
