"""Does cycle training (CDM, paper 002) make counterfactual edits better than plain fine-tuning?

From one starting model two arms train on the same phantoms of the recipes' training seed (1000)
with the same optimiser, batch, seed and number of steps:

  plain  `cfgen finetune`     the LDM loss
  cycle  `cfgen cycle-train`  LDM loss under c' + LDM loss back under c + lambda * L1 cycle loss

then both (and the starting model) edit the same held-out phantoms (seed 90000) with the world's
edit benchmark:

  --world brain (demo-brain)  benchmarks/brain_edits.py: direction, error ratio, phantom-regressor
                              age error (the paper's Tables 1-2); rules age:10,30,60, lesion_load:10,20
  --world cxr (demo-cxr)      benchmarks/phantom_edits.py --masks refine: pooled error ratio, flip
                              rate, achieved change per edit type; rule 'finding:Pleural Effusion,
                              Cardiomegaly,Support Devices' (c' = the caption with one finding toggled)

    python benchmarks/cycle_vs_plain.py --work runs/cycle-vs-plain --steps 300 --n 8 --edit-steps 25
    python benchmarks/cycle_vs_plain.py --world cxr --work runs/cycle-cxr --phantoms 3000 --steps 1000 \\
        --batch 16 --n 20

Re-running with the same --work resumes training and reuses finished arms and edit results.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "cfgen.cli.main"]
WORLDS = {
    "brain": {"model": "demo-brain", "rules": ["age:10,30,60", "lesion_load:10,20"]},
    "cxr": {"model": "demo-cxr", "rules": ["finding:Pleural Effusion,Cardiomegaly,Support Devices"]},
}


def train_arm(arm: str, train_csv: Path, model: str, out: Path, args) -> float:
    """One arm through the CLI; returns its wall time (0 when it had finished before)."""
    if (out / "model" / "cfgen.toml").is_file():
        return 0.0
    cmd = [*CLI, "finetune" if arm == "plain" else "cycle-train", str(train_csv),
           "-m", model, "-o", str(out), "--learning-rate", str(args.lr), "--batch-size", str(args.batch),
           "--max-steps", str(args.steps), "--seed", "0", "--checkpoint-every", "50",
           "--device", args.device, "-q"]
    if args.ema_decay:
        cmd += ["--ema", "--ema-decay", str(args.ema_decay)]
    if arm == "cycle":
        cmd += [a for r in args.counterfactual for a in ("--counterfactual", r)]
        cmd += ["--cycle-weight", str(args.cycle_weight)]
    if (out / "checkpoints").is_dir():
        cmd.append("--resume")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def training_set(args) -> Path:
    """The world's training phantoms (seed 1000) with captions: train.csv."""
    if args.world == "brain":
        from cfgen.models.loader import entry_for
        from cfgen.training.recipes import brain_phantoms

        size = entry_for(args.model).resolution  # the phantoms' grid: no weights need loading
        data = brain_phantoms(args.work / "phantoms", args.phantoms, 1000, size, 3.0)
    else:
        data = args.work / "phantoms"
        if not (data / "labels.csv").is_file():
            subprocess.run([*CLI, "phantoms", "cxr", "-n", str(args.phantoms), "--seed", "1000", "--size", "128",
                            "--no-counterfactuals", "-o", str(data), "-q"], check=True)
    train_csv = data / "train.csv"
    if not train_csv.is_file():
        template = ["--template", "brain"] if args.world == "brain" else []
        subprocess.run([*CLI, "caption", str(data / "labels.csv"), *template, "-o", str(train_csv)], check=True)
    return train_csv


def edit_benchmark(model: str, cached: Path, args) -> None:
    """The world's edit benchmark on the held-out seed; it prints its table and writes its results."""
    if args.world == "brain":
        cmd = [str(HERE / "brain_edits.py"), "--model", model, "--n", str(args.n), "--spacing", "3.0",
               "--steps", str(args.edit_steps)]
    else:
        cmd = [str(HERE / "phantom_edits.py"), "--model", model, "--n", str(args.n), "--masks", "refine",
               "--recon-per-type", "0", *(["--steps", str(args.edit_steps)] if args.edit_steps else [])]
    subprocess.run([sys.executable, *cmd, "--seed", "90000", "--device", args.device, "--json", str(cached)], check=True)


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] * r["n"] for r in rows) / max(sum(r["n"] for r in rows), 1)


def print_summary(results: dict, args) -> None:
    print(f"\n== summary ({args.world}: {args.steps} steps each, batch {args.batch}, lr {args.lr:g}; "
          f"{args.n} held-out phantoms per edit type, seed 90000)")
    if args.world == "brain":
        print(f"{'arm':<8}{'direction':>10}{'ratio':>8}{'age_err':>9}{'age_err_true':>13}")
        for arm, res in results.items():
            t = res["table"]
            ages = [r for r in t if "age_err" in r]
            res["summary"] = {"direction": _mean(t, "direction"), "ratio": _mean(t, "ratio"),
                              "age_err": _mean(ages, "age_err"), "edits": sum(r["n"] for r in t)}
            print(f"{arm:<8}{_mean(t, 'direction'):>10.2f}{_mean(t, 'ratio'):>8.2f}{_mean(ages, 'age_err'):>9.1f}"
                  f"{_mean(ages, 'age_err_true'):>13.1f}")
        return
    kinds = [r["edit"] for r in next(iter(results.values()))["table"]]
    print(f"{'arm':<8}" + "".join(f"{k:>22}" for k in kinds) + f"{'pooled':>10}")
    print(f"{'':<8}" + "".join(f"{'ratio/flip/achieved':>22}" for _ in kinds) + f"{'ratio':>10}")
    for arm, res in results.items():
        t = res["table"]
        cells = "".join(f"{r['ratio']:>10.2f}/{r['flip']:.2f}/{r['achieved']:.2f}" for r in t)
        pooled = sum(r["err_cf"] * r["n"] for r in t) / sum(r["err_none"] * r["n"] for r in t)
        res["summary"] = {"pooled_ratio": pooled, "flip": _mean(t, "flip"), "edits": sum(r["n"] for r in t)}
        print(f"{arm:<8}{cells}{pooled:>10.2f}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--world", choices=sorted(WORLDS), default="brain")
    ap.add_argument("--model", default=None, help="starting model [default: demo-brain / demo-cxr]")
    ap.add_argument("--phantoms", type=int, default=200, help="training phantoms (seed 1000)")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps per arm")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--ema-decay", type=float, default=0.0, help="train both arms with EMA at this decay (0: none)")
    ap.add_argument("--counterfactual", action="append", default=None,
                    help="cycle rules [default: the world's, see above]")
    ap.add_argument("--cycle-weight", type=float, default=1.0)
    ap.add_argument("--n", type=int, default=8, help="held-out phantoms edited per model (per edit type for cxr)")
    ap.add_argument("--edit-steps", type=int, default=None, help="edit steps [default: brain 25, cxr the model's]")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    world = WORLDS[args.world]
    args.model = args.model or world["model"]
    args.counterfactual = args.counterfactual or world["rules"]
    if args.edit_steps is None and args.world == "brain":
        args.edit_steps = 25
    train_csv = training_set(args)
    arms = {"start": (args.model, 0.0)}
    for arm in ("plain", "cycle"):
        out = args.work / arm
        arms[arm] = (str(out / "model"), train_arm(arm, train_csv, args.model, out, args))
    results = {}
    for arm, (model, secs) in arms.items():
        cached = args.work / f"edits-{arm}-n{args.n}-s{args.edit_steps or 'model'}.json"
        print(f"\n== {arm}: {model} (training {secs:.0f} s this run)", flush=True)
        if not cached.is_file():
            edit_benchmark(model, cached, args)
        res = json.loads(cached.read_text())
        res["train_seconds"] = round(secs, 1)
        results[arm] = res
    print_summary(results, args)
    return results


if __name__ == "__main__":
    main()
