"""Recipe for `demo-brain-sr`, the super-resolution stage `cfgen synth3d` runs after demo-brain
(64^3 x 3 mm -> 128^3 x 1.5 mm on brain phantoms; MedSyn section IV.B: a light convolutional UNet
given the upsampled low-resolution volume, x0 prediction, no text).

Steps (reproducible from the seeds below):
  1. phantoms at the output grid: `cfgen phantoms brain -n N --seed 2000 --size 128 --spacing 1.5`
  2. an untrained stage (cfgen.models.ldm3d.build_ldm3d with [synth] scale = 2: voxel space,
     UNet input = noisy volume + low-res volume, no attention, DDIM with prediction_type "sample",
     residual: the UNet's output is added to the upsampled input)
  3. `cfgen finetune` on the phantoms: the stage's objective crops patch^3 windows; the low-res
     input is the volume average-pooled by 2 and upsampled back
  4. export to cfgen/models/weights/demo-brain-sr in fp16 safetensors, sha256 printed for models.toml
  5. score it against trilinear upsampling: `python benchmarks/superres.py --model WORK/train/model`

    python scripts/train_demo_brain_sr.py --work runs/demo-brain-sr --recipe cpu --export
    python scripts/train_demo_brain_sr.py --work /tmp/sr --recipe quick       # checks the recipe runs
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from cfgen.models.ldm3d import LDM3DSpec
from cfgen.training.recipes import brain_phantoms, export, finetune_sr

ROOT = Path(__file__).resolve().parents[1]

SYNTH = {"scale": 2, "patch": 32, "overlap": 0.25, "residual": True}
RECIPES = {
    "cpu": {"spec": LDM3DSpec(resolution=128, ae_channels=None, unet_channels=(16, 32, 64), prediction_type="sample",
                              synth=SYNTH),
            "n": 120, "spacing": 1.5, "steps": 200, "batch": 4, "lr": 1e-3, "warmup": 20, "ema_decay": 0.995},
    "gpu": {"spec": LDM3DSpec(resolution=128, ae_channels=None, unet_channels=(32, 64, 128), prediction_type="sample",
                              synth={**SYNTH, "patch": 64}),
            "n": 1000, "spacing": 1.5, "steps": 20000, "batch": 8, "lr": 2e-4, "warmup": 500, "ema_decay": 0.999},
    "quick": {"spec": LDM3DSpec(resolution=32, ae_channels=None, unet_channels=(8, 16), prediction_type="sample",
                                synth={**SYNTH, "patch": 16}),
              "n": 6, "spacing": 6.0, "steps": 4, "batch": 2, "lr": 1e-3, "warmup": 0, "ema_decay": 0.9},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="cpu")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--export", action="store_true", help="copy the result into cfgen/models/weights/demo-brain-sr")
    args = ap.parse_args()
    cfg, w = RECIPES[args.recipe], args.work
    spec = cfg["spec"]
    t0 = time.time()
    data = brain_phantoms(w / "phantoms", cfg["n"], 2000, spec.resolution, cfg["spacing"])
    from cfgen.models.ldm3d import build_ldm3d

    base = w / "base"
    if not (base / "unet").is_dir():
        build_ldm3d(base, replace(spec, spacing=cfg["spacing"]), seed=0)
    out = w / "train"
    finetune_sr(data / "labels.csv", base, out, cfg, args.device)
    print(f"recipe finished in {time.time() - t0:.0f} s; model: {out / 'model'}")
    if args.export:
        export(out / "model", ROOT / "cfgen" / "models" / "weights" / "demo-brain-sr", "scripts/train_demo_brain_sr.py")


if __name__ == "__main__":
    main()
