"""Recipe for a few-step student of a chest model (issue 22's fast path): `cfgen distill` (latent
consistency distillation, cfgen/training/distill.py) of the teacher on the teacher's own training
phantoms, resumable.

Steps:
  1. phantoms: `cfgen phantoms cxr -n 3000 --seed 1000 --size 128 --no-counterfactuals` (demo-cxr's
     training set; held-out evaluation uses seeds 90000 / 93000: benchmarks/speed_quality.py)
  2. captions: PRISM's CheXpert template (`cfgen caption`)
  3. `cfgen distill` from the teacher: DDIM grid of 50 steps, the teacher's guidance (7.5 for
     demo-cxr) distilled in, student default 4 steps at guidance 1, EMA; re-run to resume

    python scripts/distill_demo_cxr.py --work runs/distill --recipe cpu     # 1000 steps on 2 CPU cores
    python scripts/distill_demo_cxr.py --work /tmp/distill --recipe quick   # seconds: checks the recipe runs

Then measure the student against its teacher on held-out phantoms:

    python benchmarks/speed_quality.py --model demo-cxr --n 6 --seed 93000 --mask refine \\
        --configs ddim:50 ddim:4 ddim:4@runs/distill/student/model ddim:2@runs/distill/student/model
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from cfgen.training.recipes import CFGEN, sh

RECIPES = {
    "cpu": {"n": 3000, "steps": 1000, "batch": 8, "lr": 1e-4, "ema_decay": 0.99, "checkpoint_every": 100},
    "quick": {"n": 8, "steps": 2, "batch": 4, "lr": 1e-4, "ema_decay": 0.9, "checkpoint_every": 1},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--teacher", default="demo-cxr", help="models.toml entry or model folder")
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="cpu")
    ap.add_argument("--student-steps", type=int, default=4)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    cfg, w = RECIPES[args.recipe], args.work
    t0 = time.time()
    data = w / "phantoms"
    if not (data / "labels.csv").is_file():
        sh(*CFGEN, "phantoms", "cxr", "-n", str(cfg["n"]), "--seed", "1000", "--size", "128", "--no-counterfactuals",
           "-o", str(data), "-q")
    if not (data / "train.csv").is_file():
        sh(*CFGEN, "caption", str(data / "labels.csv"), "-o", str(data / "train.csv"))
    out = w / "student"
    sh(*CFGEN, "distill", str(data / "train.csv"), "-m", args.teacher, "-o", str(out), "--learning-rate", str(cfg["lr"]),
       "--batch-size", str(cfg["batch"]), "--max-steps", str(cfg["steps"]), "--ema", "--ema-decay", str(cfg["ema_decay"]),
       "--teacher-steps", "50", "--student-steps", str(args.student_steps), "--seed", "0",
       "--checkpoint-every", str(cfg["checkpoint_every"]), "--device", args.device, "-q",
       *(["--resume"] if (out / "checkpoints").is_dir() else []))
    print(f"recipe finished in {time.time() - t0:.0f} s; student: {out / 'model'}")


if __name__ == "__main__":
    main()
