"""Does cycle training (CDM, paper 002) make counterfactual edits better than plain fine-tuning?

From one starting model (default: the shipped demo-brain) two arms train on the same brain
phantoms (training seed 1000) with the same optimiser, batch, seed and number of steps:

  plain  `cfgen finetune`     the LDM loss
  cycle  `cfgen cycle-train`  LDM loss under c' + LDM loss back under c + lambda * L1 cycle loss

then both (and the starting model) edit the same held-out phantoms (seed 90000) with
benchmarks/brain_edits.py: direction, error to the true counterfactual (ratio to doing
nothing), and the age error of a phantom age regressor (the paper's Tables 1-2).

    python benchmarks/cycle_vs_plain.py --work runs/cycle-vs-plain --steps 300 --n 8 --edit-steps 25

Re-running with the same --work resumes training and reuses finished arms.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def train_arm(arm: str, train_csv: Path, model: str, out: Path, args) -> float:
    """One arm through the CLI; returns its wall time (0 when it had finished before)."""
    if (out / "model" / "cfgen.toml").is_file():
        return 0.0
    cmd = [sys.executable, "-m", "cfgen.cli.main", "finetune" if arm == "plain" else "cycle-train", str(train_csv),
           "-m", model, "-o", str(out), "--learning-rate", str(args.lr), "--batch-size", str(args.batch),
           "--max-steps", str(args.steps), "--seed", "0", "--checkpoint-every", "50",
           "--device", args.device, "-q"]
    if arm == "cycle":
        cmd += [a for r in args.counterfactual for a in ("--counterfactual", r)]
        cmd += ["--cycle-weight", str(args.cycle_weight)]
    if (out / "checkpoints").is_dir():
        cmd.append("--resume")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--model", default="demo-brain", help="starting model (a latent-diffusion-3d entry or folder)")
    ap.add_argument("--phantoms", type=int, default=200, help="training phantoms (seed 1000)")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps per arm")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--counterfactual", action="append", default=None,
                    help="cycle rules [default: age:10,30,60 and lesion_load:10,20]")
    ap.add_argument("--cycle-weight", type=float, default=1.0)
    ap.add_argument("--n", type=int, default=8, help="held-out phantoms edited per model")
    ap.add_argument("--edit-steps", type=int, default=25)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    args.counterfactual = args.counterfactual or ["age:10,30,60", "lesion_load:10,20"]

    from cfgen.models.loader import entry_for
    from cfgen.training.recipes import brain_phantoms

    size = entry_for(args.model).resolution  # the phantoms' grid: no weights need loading
    data = brain_phantoms(args.work / "phantoms", args.phantoms, 1000, size, 3.0)
    train_csv = data / "train.csv"
    if not train_csv.is_file():
        subprocess.run([sys.executable, "-m", "cfgen.cli.main", "caption", str(data / "labels.csv"), "--template",
                        "brain", "-o", str(train_csv)], check=True)
    arms = {"start": (args.model, 0.0)}
    for arm in ("plain", "cycle"):
        out = args.work / arm
        secs = train_arm(arm, train_csv, args.model, out, args)
        arms[arm] = (str(out / "model"), secs)
    results = {}
    for arm, (model, secs) in arms.items():
        cached = args.work / f"edits-{arm}-n{args.n}-s{args.edit_steps}.json"
        print(f"\n== {arm}: {model} (training {secs:.0f} s this run)", flush=True)
        if not cached.is_file():  # the edit benchmark prints its table and writes its results
            subprocess.run([sys.executable, str(HERE / "brain_edits.py"), "--model", model, "--n", str(args.n),
                            "--seed", "90000", "--steps", str(args.edit_steps), "--spacing", "3.0",
                            "--device", args.device, "--json", str(cached)], check=True)
        res = json.loads(cached.read_text())
        res["train_seconds"] = round(secs, 1)
        results[arm] = res
    print(f"\n== summary ({args.steps} steps each, batch {args.batch}, lr {args.lr:g}; "
          f"{args.n} held-out phantoms, {args.edit_steps}+{args.edit_steps} edit steps)")
    print(f"{'arm':<8}{'direction':>10}{'ratio':>8}{'age_err':>9}{'age_err_true':>13}")
    for arm, res in results.items():
        t = res["table"]
        w = [r["n"] for r in t]
        mean = lambda k, rows=t: sum(r[k] * r["n"] for r in rows) / max(sum(r["n"] for r in rows), 1)  # noqa: E731
        ages = [r for r in t if "age_err" in r]
        print(f"{arm:<8}{mean('direction'):>10.2f}{mean('ratio'):>8.2f}{mean('age_err', ages):>9.1f}"
              f"{mean('age_err_true', ages):>13.1f}")
        res["summary"] = {"direction": mean("direction"), "ratio": mean("ratio"), "age_err": mean("age_err", ages),
                          "edits": sum(w)}
    return results


if __name__ == "__main__":
    main()
