"""The super-resolution stage against trilinear upsampling, on held-out brain phantoms.

For each phantom (seed 90000, never used in training) a central ``--region``^3 block of the
volume at the stage's output grid is the truth; its low-resolution version is the block
average-pooled by the stage's scale (what the stage is trained on). The stage's output
(`synthesis.superres.super_resolve`, the code `cfgen synth3d` runs) and trilinear upsampling of
the same input are scored against the truth in [0, 1] units:

  MAE, PSNR         voxel agreement (a sampler that adds detail in slightly wrong places pays
                    for it twice, so a generative stage may trail trilinear here);
  detail            the high-frequency content (volume minus its 3x3x3 mean) relative to the
                    truth's: 1 = as sharp as the truth, trilinear is below 1 (the truth's
                    includes its acquisition noise, so noise-like texture also scores);
  detail corr       correlation of that high-frequency content with the truth's: detail in
                    the right places (noise scores 0).

    python benchmarks/superres.py                                   # the shipped demo-brain-sr
    python benchmarks/superres.py --model runs/sr/train/model --n 8 # a trained folder
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def detail(x):
    import torch.nn.functional as F

    return x - F.avg_pool3d(x, 3, 1, 1, count_include_pad=False)


def scores(out, truth) -> dict:
    import torch

    err = (out - truth).abs()
    mse = float((err ** 2).mean())
    d_out, d_truth = detail(out).flatten(), detail(truth).flatten()
    return {"mae": float(err.mean()), "psnr": 10 * np.log10(1 / max(mse, 1e-12)),
            "detail": float(d_out.std() / d_truth.std()),
            "detail_corr": float(torch.corrcoef(torch.stack([d_out, d_truth]))[0, 1])}


def run(model_name: str, n: int, region: int, spacing: float, steps: int | None, device: str) -> dict:
    import torch
    import torch.nn.functional as F

    from cfgen.models.loader import load_model
    from cfgen.phantoms import brain
    from cfgen.synthesis.superres import super_resolve, upsample

    sr = load_model(model_name, device=device, family="latent-diffusion-3d")
    scale, size = int(sr.entry.synth["scale"]), sr.entry.resolution
    steps = steps or int(sr.entry.defaults.get("steps", 20))
    lo, hi = sr.entry.value_range
    rows = {"stage": [], "trilinear": []}
    t0 = time.perf_counter()
    for i in range(n):
        exo, attrs = brain.subject(90000, i, brain.BrainPrevalence())
        vol = brain.acquire(brain.compose(brain.tissue_maps(exo, attrs, size, spacing)), exo, spacing)
        c = (size - region) // 2
        truth = torch.from_numpy(np.ascontiguousarray(vol[c:c + region, c:c + region, c:c + region],
                                                      dtype=np.float32))[None, None]
        low = F.avg_pool3d(truth * (hi - lo) + lo, scale)  # model range, as in training
        out = super_resolve(sr, low, region, steps, seed=i).cpu()
        unit = lambda x: ((x - lo) / (hi - lo)).clamp(0, 1)  # noqa: E731
        rows["stage"].append(scores(unit(out), truth))
        rows["trilinear"].append(scores(unit(upsample(low, region)), truth))
    res = {k: {m: float(np.mean([r[m] for r in v])) for m in v[0]} for k, v in rows.items()}
    res["settings"] = {"model": model_name, "n": n, "region": region, "spacing": spacing, "steps": steps,
                       "scale": scale, "residual": bool(sr.entry.synth.get("residual")),
                       "seconds": round(time.perf_counter() - t0, 1)}
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo-brain-sr", help="a super-resolution stage: entry or folder")
    ap.add_argument("--n", type=int, default=4, help="held-out phantoms")
    ap.add_argument("--region", type=int, default=32, help="side of the scored central block, in output voxels")
    ap.add_argument("--spacing", type=float, default=1.5, help="mm per voxel of the output grid")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps [default: the stage's]")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    res = run(args.model, args.n, args.region, args.spacing, args.steps, args.device)
    s = res["settings"]
    print(f"{s['model']} (scale {s['scale']}, residual {s['residual']}, {s['steps']} steps): {s['n']} held-out "
          f"phantoms, central {s['region']}^3 at {s['spacing']} mm, {s['seconds']} s")
    for key in ("stage", "trilinear"):
        r = res[key]
        print(f"  {key:10s} MAE {r['mae']:.4f}  PSNR {r['psnr']:.2f} dB  detail {r['detail']:.2f}  "
              f"detail corr {r['detail_corr']:.2f}")
    return res


if __name__ == "__main__":
    main()
