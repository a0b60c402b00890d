"""`cfgen synth3d`: does conditional synthesis follow the prompt, and what does it cost.

1. Conditional synthesis (MedSyn Tables II-IV style): N volumes per prompt of each pair
   ("high lesion load" vs "no lesions"; "85 year old" vs "25 year old"), seeds 0..N-1 for both
   prompts, the measured attribute of each generated volume:
     lesion   voxels below LESION_THRESHOLD inside the periventricular white-matter region where
              phantom lesions can be (union over held-out phantoms), mL
     ventricles  voxels below CSF_THRESHOLD inside the region where phantom ventricles can be, mL
   printed: mean of each side, Cohen's d (pooled SD), and P(A > B) over all pairs (AUC; 0.5 = no effect).
2. Cost: the 64^3 base volume through the CLI on this machine (process start included; bar on CPU:
   under 60 s), the two-stage volume (64^3 -> 128^3), and with --size 256 on a GPU the 256^3 run
   with its peak memory (bar: within 16 GB).

    python benchmarks/synth3d.py --n 32                 # the issue's sample size
    python benchmarks/synth3d.py --n 8 --steps 25       # a quick CPU look
    python benchmarks/synth3d.py --n 0 --size 256 --device cuda   # the GPU cost only
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from brain_edits import CSF_THRESHOLD, LESION_THRESHOLD, regions  # noqa: E402

PAIRS = (("lesion", "brain MRI, high lesion load", "brain MRI, no lesions"),
         ("ventricles", "brain MRI of an 85 year old", "brain MRI of a 25 year old"))


def search_regions(size: int, spacing: float, subjects: int = 8, seed: int = 90000):
    """Where ventricles / lesions can be in any phantom (union over held-out subjects)."""
    from cfgen.phantoms import brain

    vent = les = None
    for i in range(subjects):
        exo, attrs = brain.subject(seed, i)
        v, le = regions(exo, attrs, size, spacing)
        vent, les = (v, le) if vent is None else (vent | v, les | le)
    return vent, les & ~vent


def measure(volume: np.ndarray, vent: np.ndarray, les: np.ndarray, spacing: float) -> dict:
    ml = spacing ** 3 / 1000
    return {"ventricles": float(((volume < CSF_THRESHOLD) & vent).sum() * ml),
            "lesion": float(((volume < LESION_THRESHOLD) & les).sum() * ml)}


def effect(a: list[float], b: list[float]) -> dict:
    a_, b_ = np.asarray(a), np.asarray(b)
    pooled = np.sqrt((a_.var(ddof=1) + b_.var(ddof=1)) / 2) if len(a_) > 1 else float("nan")
    auc = float(np.mean([(x > y) + 0.5 * (x == y) for x in a_ for y in b_]))
    return {"mean_a": float(a_.mean()), "mean_b": float(b_.mean()),
            "cohens_d": float((a_.mean() - b_.mean()) / pooled) if pooled else float("inf"), "p_a_gt_b": auc}


def conditional(model: str, n: int, steps: int | None, device: str) -> dict:
    from cfgen.models.loader import load_model
    from cfgen.synthesis.generate import SynthParams, synthesize

    base = load_model(model, device=device, family="latent-diffusion-3d")
    spacing = float(base.entry.synth.get("spacing", 3.0))
    vent, les = search_regions(base.entry.resolution, spacing)
    out = {}
    for attribute, prompt_a, prompt_b in PAIRS:
        sides = []
        for prompt in (prompt_a, prompt_b):
            t0 = time.perf_counter()
            vols = synthesize(base, None, SynthParams(prompt=prompt, num=n, seed=0, steps=steps))
            sides.append([measure(v.image, vent, les, spacing)[attribute] for v in vols])
            print(f"  {prompt!r}: {n} volumes in {time.perf_counter() - t0:.0f} s", flush=True)
        out[attribute] = {"a": prompt_a, "b": prompt_b, "n": n, **effect(*sides)}
    return out


def cost(model: str, size: int | None, device: str) -> dict:
    cfgen = [sys.executable, "-m", "cfgen.cli.main", "synth3d", "-p", "brain MRI of an 85 year old, high lesion load",
             "-m", model, "--device", device, "-q", "--json"]
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("base 64^3 (--sr none)", ["--sr", "none"]), ("base + super-resolution", [])]
        if size:
            runs.append((f"base + super-resolution to {size}^3", ["--size", str(size)]))
        for label, extra in runs:
            t0 = time.perf_counter()
            proc = subprocess.run(cfgen + extra + ["-o", str(Path(tmp) / label.split()[0] / str(len(res)))],
                                  capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode:
                raise SystemExit(f"{label}: {proc.stderr.strip()[-500:]}")
            import json

            rep = json.loads(proc.stdout)
            res[label] = {"wall_s": round(wall, 1), "size": rep["params"]["size"],
                          "peak_gpu_memory_gib": rep["timings"].get("peak_gpu_memory_gib")}
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo-brain")
    ap.add_argument("--n", type=int, default=32, help="volumes per prompt (0: cost only)")
    ap.add_argument("--steps", type=int, default=None, help="base sampling steps [default: the model's]")
    ap.add_argument("--size", type=int, default=None, help="also time a run at this output size (GPU: 256)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    result = {}
    if args.n:
        print(f"conditional synthesis, {args.n} volumes per prompt, model {args.model}:")
        result["conditional"] = conditional(args.model, args.n, args.steps, args.device)
        for attr, r in result["conditional"].items():
            print(f"  {attr:10s} {r['a']!r} {r['mean_a']:.2f} mL vs {r['b']!r} {r['mean_b']:.2f} mL: "
                  f"Cohen's d {r['cohens_d']:+.2f}, P(A > B) {r['p_a_gt_b']:.2f}")
    print("cost (CLI, process start included):")
    result["cost"] = cost(args.model, args.size, args.device)
    for label, r in result["cost"].items():
        mem = f", peak GPU memory {r['peak_gpu_memory_gib']:.2f} GiB" if r["peak_gpu_memory_gib"] else ""
        print(f"  {label:40s} {r['size']}^3 in {r['wall_s']:.1f} s{mem}")
    return result


if __name__ == "__main__":
    main()
