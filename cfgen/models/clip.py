"""CLIP-style scores (family ``clip``: a transformers CLIPModel folder with its tokenizer).

For a factual image x with caption T and its counterfactual x' for prompt T'
(E_I, E_T: the model's image and text embeddings, cos: cosine similarity):
  clip_image_text   cos(E_I(x'), E_T(T'))               does x' show T'?
  clip_image_image  cos(E_I(x'), E_I(x))                 is x' still the same scan?
  clip_direction    cos(E_I(x') - E_I(x), E_T(T') - E_T(T))   PRISM Eq. 1 (S_CLIP, directional
                    similarity of Gal et al.); PRISM drops edits with S_CLIP < 0.1.
Images are resized to the model's input size (gray replicated to RGB) and normalised with the
folder's preprocessor_config.json mean/std (OpenAI CLIP's when absent).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cfgen.errors import ModelError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
#: PRISM's filter threshold on S_CLIP
PRISM_THRESHOLD = 0.1


def _embedding(out):
    import torch

    return out if isinstance(out, torch.Tensor) else out.pooler_output


@dataclass
class ClipScorer:
    model: Any
    tokenizer: Any
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: str = "cpu"

    def image_embeddings(self, x):
        """(B, C, H, W) in [0, 1] -> (B, D) unit vectors."""
        import torch
        import torch.nn.functional as F

        size = int(self.model.config.vision_config.image_size)
        if x.ndim != 4:
            raise ModelError("CLIP scores need 2D images (use slices for volumes)")
        x = x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1)
        x = F.interpolate(x.float(), size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        with torch.no_grad():
            e = _embedding(self.model.get_image_features(pixel_values=((x - mean) / std).to(self.device)))
        return F.normalize(e.float(), dim=-1)

    def text_embeddings(self, texts: list[str]):
        import torch
        import torch.nn.functional as F

        tok = self.tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt",
                             max_length=int(self.model.config.text_config.max_position_embeddings))
        with torch.no_grad():
            e = _embedding(self.model.get_text_features(input_ids=tok.input_ids.to(self.device),
                                                        attention_mask=tok.attention_mask.to(self.device)))
        return F.normalize(e.float(), dim=-1)

    def describe(self) -> dict[str, Any]:
        cfg = self.model.config
        return {"network": "transformers CLIPModel", "image_size": int(cfg.vision_config.image_size),
                "projection_dim": int(cfg.projection_dim), "mean": list(self.mean), "std": list(self.std)}

    def scores(self, x, xcf, source_prompt: str, prompt: str) -> dict[str, float]:
        import torch.nn.functional as F

        ei, ecf = self.image_embeddings(x), self.image_embeddings(xcf)
        et, etcf = self.text_embeddings([source_prompt, prompt]).chunk(2)
        di, dt = ecf - ei, etcf - et
        direction = float(F.cosine_similarity(di, dt, dim=-1)) if di.norm() > 0 and dt.norm() > 0 else 0.0
        return {"clip_image_text": float((ecf * etcf).sum()), "clip_image_image": float((ecf * ei).sum()),
                "clip_direction": direction}


def load_family(entry, folder: Path, device: str, dtype) -> tuple[Any, dict[str, Any]]:
    """FAMILY_LOADERS hook for ``family = "clip"``."""
    from transformers import AutoTokenizer, CLIPModel

    from cfgen.models.hf import quiet_hf

    quiet_hf()
    try:
        model = CLIPModel.from_pretrained(folder, use_safetensors=True, trust_remote_code=False)
        tok_dir = folder / "tokenizer" if (folder / "tokenizer").is_dir() else folder
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, trust_remote_code=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ModelError(f"{folder}: cannot load CLIP model '{entry.name}' ({first})") from None
    mean, std = OPENAI_MEAN, OPENAI_STD
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        try:
            cfg = json.loads(pre.read_text(encoding="utf-8"))
            mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
        except ValueError:
            raise ModelError(f"{pre}: not valid JSON") from None
    model.eval().requires_grad_(False).to(device)
    return entry, {"clip": ClipScorer(model=model, tokenizer=tokenizer, mean=mean, std=std, device=device)}
