"""Do a Haar-wavelet model's samples carry the data's detail, or leave noise in it?

For a 3D Haar-wavelet base (demo-ct, demo-brain, a recipe's output): N held-out phantoms of its
world (seed 90000, never trained on; read as `cfgen finetune` reads training data) and N generated
volumes (seeds 0..N-1) of one prompt, clipped to the model's range as written, both through the plain Haar transform (no band scales); the
std of each band of the image channel, grouped by how many of its splits are high-pass (0: the low
band; 3 with one level, 6 with two: the finest detail), printed as generated / phantoms. A ratio
near 1 is the data's texture; well above 1 is sampling noise left in the volume (the reason for
band scales, cfgen/training/bands.py).

    python benchmarks/wavelet_bands.py --model demo-ct --n 3 --steps 25
    python benchmarks/wavelet_bands.py --model demo-brain --n 3 --steps 25
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

PROMPTS = {"ct": "Chest CT: no emphysema", "brain": "brain MRI of a 55 year old"}


def high_counts(bands: int, channels: int, levels: int) -> list[int]:
    """For each band: how many of its splits (axes x levels) are high-pass (cfgen's band order)."""
    out = []
    for b in range(bands):
        rest, n = b // channels, 0
        for _ in range(levels):
            rest, code = divmod(rest, 8)
            n += bin(code).count("1")
        out.append(n)
    return out


def band_std(x: torch.Tensor, levels: int) -> np.ndarray:
    """(N, C, X, Y, Z) -> (bands,) std over items and voxels of the plain transform."""
    from cfgen.models.wavelet import haar_forward

    y = haar_forward(x.float(), levels)
    return y.transpose(0, 1).reshape(y.shape[1], -1).std(dim=1).numpy()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo-ct")
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--prompt", default=None, help="[default: one without the attributes' extremes]")
    args = ap.parse_args(argv)
    from cfgen.models.loader import load_model
    from cfgen.synthesis.generate import sample_base
    from cfgen.training.bands import training_batch, wavelet_config

    model = load_model(args.model, family="latent-diffusion-3d")
    e = model.entry
    levels = model.vae.levels
    wavelet_config(model.folder)  # a Haar model, else a one-line error
    world = "ct" if "window" in e.defaults and str(e.defaults["window"]) != "auto" else "brain"
    spacing = float(e.synth.get("spacing", e.spacing[0] if e.spacing else 3.0))
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "cfgen.cli.main", "phantoms", world, "-n", str(args.n), "--seed", "90000",
                        "--size", str(e.resolution), "--spacing", str(spacing), "--no-counterfactuals", "-o", tmp,
                        "-q"], check=True)
        data = training_batch(Path(tmp) / "labels.csv", model, args.n, 0)[:, :e.channels]
    prompt = args.prompt or PROMPTS[world]
    gen = torch.cat([sample_base(model, prompt, seed, args.steps, float(e.defaults.get("guidance", 7.5)))[:, :e.channels]
                     for seed in range(args.n)])
    gen = gen.float().cpu().clamp(*e.value_range)  # as written: the volume within the model's range
    want, got = band_std(data, levels), band_std(gen, levels)
    counts = np.array(high_counts(len(want), e.channels, levels))
    print(f"{args.model}: {args.n} held-out {world} phantoms (seed 90000) vs {args.n} samples of {prompt!r} "
          f"({args.steps} steps), std of the image's Haar bands ({levels} level(s)):")
    result = {}
    for k in sorted(set(counts)):
        w, g = float(want[counts == k].mean()), float(got[counts == k].mean())
        result[k] = {"phantoms": w, "generated": g, "ratio": g / w}
        print(f"  {k} high-pass splits ({int((counts == k).sum()):2d} bands): phantoms {w:.3f}  generated {g:.3f}  "
              f"ratio {g / w:.2f}")
    return result


if __name__ == "__main__":
    main()
