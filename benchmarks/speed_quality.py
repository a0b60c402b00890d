"""Speed against quality of the edit's configurations, on held-out chest phantoms.

For each configuration (solver, steps, inversion) it runs benchmarks/phantom_edits.py's protocol
(every edit type, N phantoms each, the factual caption as source, the counterfactual's as target)
and prints, pooled over all edit types:

  forwards   UNet evaluations per edit (one per image row of each UNet call: a guided step
             counts 2, the auto mask's 5 draws count 10), counted by a forward hook
  s/edit     wall time of the edit itself (model loaded, no files), mean over items
  ratio      pooled error ratio to the true counterfactual (sum of errors / sum of do-nothing errors)
  flip       share of edits the scoring classifier calls the target class
  outside    mean |change| outside the true-difference region
and the same relative to the first configuration (the reference, by default 50+50 DDIM steps).
The fast-path bar (issue 22): at least 5x fewer forwards than the reference with ratio and flip
within 10% of it.

    python benchmarks/speed_quality.py --model demo-cxr --n 6 --seed 93000 \\
        --configs ddim:50 ddim:10 dpm++:10 dpm++:7 dpm++:7:negative-prompt

A configuration may name its own model after an @, e.g. a distilled student (`cfgen distill`)
against its teacher: --configs ddim:50 ddim:4 ddim:4@runs/distill/model (its guidance is the
model's default: 1 for a student, whose teacher's guidance is distilled into it).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from phantom_edits import run as run_edits  # noqa: E402


def parse_config(text: str) -> dict:
    """SOLVER:STEPS[:INVERSION][@MODEL], e.g. dpm++:7:negative-prompt or ddim:4@runs/distill/model."""
    text, _, model = text.partition("@")
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[1].isdigit():
        raise SystemExit(f"--configs {text}: use SOLVER:STEPS[:INVERSION][@MODEL], e.g. dpm++:10 or "
                         "ddim:10:negative-prompt or ddim:4@runs/distill/model")
    return {"solver": parts[0], "steps": int(parts[1]), "inversion": parts[2] if len(parts) == 3 else None,
            "model": model or None}


class Counter:
    """UNet evaluations: image rows through the UNet's forward."""

    def __init__(self, unet):
        self.rows = 0
        self.handle = unet.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        x = args[0] if args else kwargs["sample"]
        self.rows += int(x.shape[0])


def pooled(table: list[dict]) -> dict:
    """All edit types together (equal n per type): summed errors, item-weighted means."""
    n = sum(r["n"] for r in table)
    w = lambda key: sum(r["n"] * r[key] for r in table if r[key] is not None) / n  # noqa: E731
    return {"n": n, "ratio": sum(r["n"] * r["err_cf"] for r in table) / sum(r["n"] * r["err_none"] for r in table),
            "flip": w("flip"), "outside": w("outside"), "seconds": w("edit_seconds")}


def measure(model, cfg: dict, n: int, seed: int, mask: str) -> dict:
    counter = Counter(model.unet)
    try:
        res = run_edits(model, n, seed, [mask], cfg["steps"], None, None, 0,
                        edit_options={"solver": cfg["solver"], "inversion": cfg["inversion"]})
    finally:
        counter.handle.remove()
    out = pooled(res["table"])
    out.update(config=cfg, forwards=counter.rows / out["n"],
               per_type={r["edit"]: {"ratio": r["ratio"], "flip": r["flip"]} for r in res["table"]})
    return out


def print_rows(rows: list[dict]) -> None:
    ref = rows[0]
    print(f"{'solver':<7}{'steps':>6}{'inversion':>17}{'forwards':>10}{'s/edit':>8}{'ratio':>7}{'flip':>6}"
          f"{'outside':>9}{'fwd x':>7}{'ratio rel':>10}{'flip rel':>9}  model")
    for r in rows:
        c = r["config"]
        rel_f = ref["flip"] and r["flip"] / ref["flip"]
        print(f"{c['solver']:<7}{c['steps']:>6}{c['inversion'] or 'model default':>17}{r['forwards']:>10.1f}"
              f"{r['seconds']:>8.2f}{r['ratio']:>7.3f}{r['flip']:>6.2f}{r['outside']:>9.4f}"
              f"{ref['forwards'] / r['forwards']:>7.1f}{r['ratio'] / ref['ratio']:>10.2f}{rel_f:>9.2f}  "
              f"{c['model'] or '--model'}")
    print("fwd x: the reference's forwards / this one's; rel: this / the reference (first row). "
          "Bar: fwd x >= 5 with ratio rel <= 1.10 and flip rel >= 0.90")


def main(argv: list[str] | None = None) -> list[dict]:
    from cfgen.models.loader import load_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo-cxr")
    ap.add_argument("--n", type=int, default=6, help="phantoms per edit type")
    ap.add_argument("--seed", type=int, default=93000, help="held-out phantom seed (never used in training)")
    ap.add_argument("--mask", default="auto", help="mask mode of every configuration")
    ap.add_argument("--configs", nargs="+", default=["ddim:50", "ddim:10", "dpm++:10", "dpm++:7"],
                    help="SOLVER:STEPS[:INVERSION]; the first is the reference")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    cfgs = [parse_config(c) for c in args.configs]
    model = load_model(args.model, device=args.device)
    print(f"model {args.model}, held-out seed {args.seed}, {args.n} phantoms per edit type (6 types), "
          f"mask {args.mask}")
    models = {None: model}
    for c in cfgs:
        if c["model"] not in models:
            models[c["model"]] = load_model(c["model"], device=args.device)
    rows = [measure(models[c["model"]], c, args.n, args.seed, args.mask) for c in cfgs]
    print_rows(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
