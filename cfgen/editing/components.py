"""Text and image encoding with a loaded latent diffusion model."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from cfgen.models.loader import LoadedModel


def max_tokens(model: LoadedModel) -> int:
    """Tokens the text encoder reads (start and end tokens included); the rest is cut."""
    return min(int(model.tokenizer.model_max_length), int(model.entry.defaults.get("max_tokens", 77)))


def prompt_problems(model: LoadedModel, text: str) -> list[str]:
    """What the text encoder will not see of ``text``: words past its length, characters its
    tokenizer cannot represent. Tabular models parse prompts instead (their errors are their own)."""
    if model.fields is not None or model.tokenizer is None or not text.strip():
        return []
    tok, limit = model.tokenizer, max_tokens(model)
    ids = tok(text, truncation=False).input_ids
    found = []
    if len(ids) > limit:
        cut = tok.decode(ids[limit - 1:-1], skip_special_tokens=True).strip()
        found.append(f"prompt {text[:40]!r}... is {len(ids)} tokens; the text encoder reads {limit}, so "
                     f"{cut[:60]!r} is ignored")
    seen = set(tok.decode(ids, skip_special_tokens=True).replace(" ", "").lower())
    lost = sorted({c for c in text.lower() if not c.isspace() and c not in seen})
    if lost:
        found.append(f"prompt {text[:40]!r}: the tokenizer cannot represent {', '.join(repr(c) for c in lost)} "
                     "(dropped or replaced)")
    return found


@torch.no_grad()
def encode_prompts(model: LoadedModel, prompts: list[str]) -> torch.Tensor:
    """Per-token embeddings the UNet cross-attends to (last hidden state, as SD v1.5); for a
    tabular model, the [value, present] rows its UNet embeds (cfgen/models/tabular.py)."""
    fields = model.fields
    if fields is not None:
        from cfgen.models.tabular import encode_values

        return encode_values(prompts, fields).to(model.device)
    tok = model.tokenizer
    max_len = max_tokens(model)
    batch = tok(prompts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
    enc = model.text_encoder
    kwargs = {}
    if "attention_mask" in batch and enc.config.model_type != "clip_text_model":
        kwargs["attention_mask"] = batch["attention_mask"].to(model.device)
    out = enc(batch["input_ids"].to(model.device), **kwargs)
    return out.last_hidden_state.to(model.dtype)


def _factors(vae) -> tuple[float, float]:
    cfg = vae.config
    return float(getattr(cfg, "scaling_factor", 1.0) or 1.0), float(getattr(cfg, "shift_factor", 0.0) or 0.0)


def _chunked(fn, x: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """``fn`` over slices of at most ``chunk`` items (None: the whole batch at once)."""
    if not chunk or chunk >= x.shape[0]:
        return fn(x)
    return torch.cat([fn(part) for part in x.split(chunk)])


def to_device(model: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    """Host -> device; on CUDA through pinned memory without blocking the host."""
    if str(model.device).startswith("cuda") and x.device.type == "cpu":
        return (x if x.is_pinned() else x.pin_memory()).to(model.device, model.dtype, non_blocking=True)
    return x.to(model.device, model.dtype)


@torch.no_grad()
def encode_images(model: LoadedModel, x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Deterministic latents: the posterior mean (identity preservation needs no sampling noise).
    ``chunk``: items per VAE call (a run's memory plan, cfgen/editing/memory.py) [default: all]."""
    scale, shift = _factors(model.vae)
    enc = lambda part: (model.vae.encode(part).latent_dist.mean - shift) * scale  # noqa: E731
    return _chunked(enc, to_device(model, x), chunk)


@torch.no_grad()
def decode_latents(model: LoadedModel, z: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    scale, shift = _factors(model.vae)
    dec = lambda part: model.vae.decode(part / scale + shift).sample.float()  # noqa: E731
    return _chunked(dec, z, chunk)
