"""Recipe for the shipped scoring classifier `cxr-classifier` (chest phantoms).

Labels: Pleural Effusion, Cardiomegaly, Support Devices (binary) and ctr (the cardiothoracic
ratio, regression). Trained on phantoms whose devices do NOT follow effusion
(--device-effusion-corr 0), so that the classifier cannot score effusion by looking at devices:
the spurious correlation PRISM is about must not leak into the metric.

    python scripts/train_cxr_classifier.py --work runs/clf            # about 15 min on 2 CPU cores
    python scripts/train_cxr_classifier.py --work runs/clf --export   # and copy into the package

Held-out figures are written into the model's config.json and printed.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LABELS = ["Pleural Effusion", "Cardiomegaly", "Support Devices", "ctr"]
KINDS = ["binary", "binary", "binary", "regression"]


def phantoms(out: Path, n: int, seed: int) -> None:
    if not (out / "labels.csv").is_file():
        subprocess.run([sys.executable, "-m", "cfgen.cli.main", "phantoms", "cxr", "-n", str(n), "--seed", str(seed),
                        "--size", "128", "--device-effusion-corr", "0", "--no-counterfactuals", "-o", str(out), "-q"],
                       check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--export", action="store_true", help="copy into cfgen/models/weights/cxr-classifier")
    args = ap.parse_args()
    from cfgen.training.classifier import train_classifier

    phantoms(args.work / "train", args.n, 2000)
    phantoms(args.work / "heldout", 500, 90001)
    log = lambda s, loss: print(f"step {s} loss {loss:.4f}", flush=True) if s % 100 == 0 else None  # noqa: E731
    cfg = train_classifier(args.work / "train" / "labels.csv", args.work / "model", LABELS, KINDS,
                           heldout_csv=args.work / "heldout" / "labels.csv", steps=args.steps, device=args.device,
                           on_step=log)
    print(json.dumps({"training": cfg["training"], "evaluation": cfg.get("evaluation")}, indent=2))
    if args.export:
        from cfgen.models.files import hashes, weight_files

        target = ROOT / "cfgen" / "models" / "weights" / "cxr-classifier"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(args.work / "model", target)
        for rel, digest in hashes(target, weight_files(target)).items():
            print(f'"{rel}" = "{digest}"')


if __name__ == "__main__":
    main()
