"""Build a 2D latent diffusion model folder from architecture sizes (random weights).

Used to start training from scratch (the demo models), for tests (tiny models saved in
diffusers format, loaded through the same loader users use) and for cost benchmarks
(SD v1.5-architecture components, whose cost does not depend on the weight values).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cfgen.models.registry import DEFAULT_SCHEDULER


@dataclass(frozen=True)
class LDM2DSpec:
    resolution: int = 32
    image_channels: int = 1
    latent_channels: int = 4
    vae_channels: tuple[int, ...] = (8, 16)
    unet_channels: tuple[int, ...] = (16, 32)
    layers_per_block: int = 1
    attention_head_dim: int = 4
    text_hidden: int = 16
    text_layers: int = 1
    text_heads: int = 2
    max_tokens: int = 16
    intensity: str = "minus1_1"
    #: scale of the UNet's last convolution at initialisation; small values keep a fresh
    #: model's noise predictions small and smooth (ADM zero-initialises this layer)
    unet_out_scale: float = 1.0
    #: latent multiplier (SD v1.5: 0.18215, chosen so that latents have unit variance)
    vae_scaling_factor: float = 0.18215
    #: per down level, whether it has cross-attention (None: all but the first, the small models'
    #: layout; SD v1.5: all but the last, the 64x64 level included)
    attention: tuple[bool, ...] | None = None
    #: the representation: None, a trained AutoencoderKL of ``vae_channels``; L, the lossless Haar
    #: wavelet packet transform of L levels (cfgen/models/wavelet.py: C * 4^L bands of side / 2^L)
    wavelet_levels: int | None = None
    #: scheduler settings over DEFAULT_SCHEDULER (e.g. DDPM's linear betas for pixel-like spaces)
    scheduler: tuple[tuple[str, object], ...] = ()
    #: "ddim" (the DDPM family above) or "rflow": rectified flow (cfgen/editing/flow.py; the
    #: scheduler settings above then do not apply), written as [scheduler] kind in cfgen.toml
    kind: str = "ddim"

    def latent_shape(self) -> tuple[int, int]:
        """(channels, side) of what the UNet sees."""
        if self.wavelet_levels is not None:
            return self.image_channels * 4 ** self.wavelet_levels, self.resolution // 2 ** self.wavelet_levels
        return self.latent_channels, self.resolution // 2 ** (len(self.vae_channels) - 1)


def char_clip_tokenizer(max_tokens: int):
    """A CLIP BPE tokenizer over single characters: small, offline and deterministic."""
    import json
    import tempfile

    from transformers import CLIPTokenizer

    chars = [chr(c) for c in range(33, 127)]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    # through files: the one constructor transformers 4.x (file paths) and 5.x (dicts) share
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=max_tokens)


def _first_stage(spec: LDM2DSpec):
    """The untrained AutoencoderKL, or the Haar transform (nothing to train)."""
    if spec.wavelet_levels is not None:
        from cfgen.models.wavelet import HaarWavelet

        return HaarWavelet(spec.wavelet_levels, spec.image_channels)
    from diffusers import AutoencoderKL

    n_vae = len(spec.vae_channels)
    return AutoencoderKL(
        in_channels=spec.image_channels, out_channels=spec.image_channels,
        latent_channels=spec.latent_channels, block_out_channels=spec.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * n_vae, up_block_types=("UpDecoderBlock2D",) * n_vae,
        layers_per_block=spec.layers_per_block, norm_num_groups=min(spec.vae_channels[0], 32),
        sample_size=spec.resolution, scaling_factor=spec.vae_scaling_factor,
    )


def build_ldm2d(folder: Path, spec: LDM2DSpec = LDM2DSpec(), seed: int = 0) -> Path:
    """Write vae/, unet/, text_encoder/, tokenizer/, scheduler/ and cfgen.toml into folder."""
    import torch
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from cfgen.models.hf import quiet_hf

    quiet_hf()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vae = _first_stage(spec)
    n_unet = len(spec.unet_channels)
    attn = spec.attention or (False,) + (True,) * (n_unet - 1)
    latent, side = spec.latent_shape()
    unet = UNet2DConditionModel(
        sample_size=side, in_channels=latent, out_channels=latent, block_out_channels=spec.unet_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        layers_per_block=spec.layers_per_block, cross_attention_dim=spec.text_hidden,
        attention_head_dim=spec.attention_head_dim, norm_num_groups=min(spec.unet_channels[0], 32),
    )
    with torch.no_grad():
        unet.conv_out.weight.mul_(spec.unet_out_scale)
        unet.conv_out.bias.mul_(spec.unet_out_scale)
    tokenizer = char_clip_tokenizer(spec.max_tokens)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()), hidden_size=spec.text_hidden,
        intermediate_size=spec.text_hidden * 2, num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads, max_position_embeddings=spec.max_tokens,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = DDIMScheduler(**{**DEFAULT_SCHEDULER, **dict(spec.scheduler)})
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(folder / "tokenizer")
    scheduler.save_pretrained(folder / "scheduler")
    from cfgen.models.pipeline_index import write_model_index

    write_model_index(folder)
    (folder / "cfgen.toml").write_text(
        'family = "latent-diffusion-2d"\n'
        f"resolution = {spec.resolution}\nchannels = {spec.image_channels}\n"
        f'intensity = "{spec.intensity}"\n'
        + (f'\n[scheduler]\nkind = "{spec.kind}"\n' if spec.kind != "ddim" else "")
    )
    return folder


#: Architecture presets. ``tiny``: what the tests use (seconds on a CPU). ``sd15``: the
#: Stable Diffusion v1.5 architecture (512 px, 860M-parameter UNet) for cost benchmarks;
#: its tokenizer is character-level, which changes no cost that matters.
PRESETS: dict[str, LDM2DSpec] = {
    "tiny": LDM2DSpec(unet_out_scale=0.05, vae_scaling_factor=3.0),
    "tiny-wavelet": LDM2DSpec(unet_out_scale=0.05, wavelet_levels=1),
    "sd15": LDM2DSpec(resolution=512, image_channels=3, vae_channels=(128, 256, 512, 512),
                      unet_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8,
                      text_hidden=768, text_layers=12, text_heads=12, max_tokens=77,
                      attention=(True, True, True, False)),
}


def main(argv: list[str] | None = None) -> None:
    """python -m cfgen.models.build OUT [--preset tiny|sd15] [--seed N]: a new, untrained model folder."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m cfgen.models.build", description=main.__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    build_ldm2d(args.out, PRESETS[args.preset], seed=args.seed)
    print(f"wrote an untrained {args.preset} model to {args.out}")


if __name__ == "__main__":  # pragma: no cover
    main()
