"""Tuning `--mask refine` on chest phantoms: first-pass threshold x change threshold x growth.

For N phantoms per edit type it runs each first pass once (DiffEdit's mask at every
``--first`` threshold, then the edit) and refines its result at every ``--change`` threshold
and ``--grow`` (pixels) without running the model again: the second step is pixels only
(cfgen.editing.masks.refined_mask). Per setting and edit type it prints the pooled error ratio
to the true counterfactual (summed error / summed error of doing nothing), the flip rate by the
scoring classifier and the mask's recall/precision against the true-difference region; ``-`` in
the change column is the first pass alone (plain ``--mask auto`` at that threshold).

Tune on a seed that neither the recipes (1000) nor the held-out benchmarks (90000) use; the
held-out figures come from benchmarks/phantom_edits.py with the chosen defaults:

    python benchmarks/refine_mask.py --model demo-cxr --n 10 --seed 70000
    python benchmarks/phantom_edits.py --model demo-cxr --n 20 --seed 90000 --masks refine
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def run(model_name: str | None, n: int, seed: int, firsts: list[float], changes: list[float], grows: list[int],
        device: str = "auto", classifier: str | None = "cxr-classifier") -> dict:
    from phantom_edits import phantom_case, score_edit  # benchmarks/, beside this script

    from cfgen.editing import core, masks
    from cfgen.editing.params import EditParams
    from cfgen.models.loader import load_model
    from cfgen.phantoms import cxr
    from cfgen.phantoms.dataset import caption_of

    model = load_model(model_name, device=device)
    clf = load_model(classifier, device=device, family="classifier").classifier if classifier else None
    size = model.entry.resolution
    rows: dict[tuple, list[dict]] = defaultdict(list)
    t0 = time.perf_counter()
    grow0 = masks.REFINE_GROW
    try:
        for kind, exo, fa, cf in cxr.edit_cases(n, seed):
            _, _, fact, true, inside, scan = phantom_case(kind, exo, fa, cf, size)
            for first in firsts:
                p = EditParams.resolve(model.entry.defaults, prompt=caption_of(exo, cf),
                                       source_prompt=caption_of(exo, fa), mask="refine", mask_threshold=first)
                c = core.compute_edits(model, [scan], [p])[0]
                for change in [None, *changes]:
                    for grow in ([grow0] if change is None else grows):
                        masks.REFINE_GROW = grow
                        c.refine_change = change
                        rows[(kind, first, change, grow)].append(
                            score_edit(core.finish_edit(model, scan, c), fact, true, inside, clf, kind))
    finally:
        masks.REFINE_GROW = grow0
    return {"model": model.report_info()["name"], "seed": seed, "n_per_type": n,
            "seconds": round(time.perf_counter() - t0, 1), "table": [_row(k, v) for k, v in sorted(
                rows.items(), key=lambda kv: (kv[0][0], kv[0][1], -1 if kv[0][2] is None else kv[0][2], kv[0][3]))]}


def _row(key: tuple, vals: list[dict]) -> dict:
    from cfgen.metrics.stats import pooled_ratio

    def mean(key: str) -> float | None:  # precision is None where a mask came out empty
        got = [v[key] for v in vals if v.get(key) is not None]
        return float(np.mean(got)) if got else None

    ratio = pooled_ratio([v["err_cf"] for v in vals], [v["err_none"] for v in vals])["value"]
    return {"edit": key[0], "first": key[1], "change": key[2], "grow": key[3], "n": len(vals), "ratio": ratio,
            "flip": mean("flip"), "recall": mean("mask_recall"), "precision": mean("mask_precision")}


def print_table(res: dict) -> None:
    print(f"model {res['model']}, seed {res['seed']}, {res['n_per_type']} phantoms per edit type, {res['seconds']} s")
    print(f"{'edit':<22}{'first':>6}{'change':>7}{'grow':>5}{'ratio':>7}{'flip':>6}{'recall':>7}{'prec':>6}")
    f = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
    for r in res["table"]:
        print(f"{r['edit']:<22}{r['first']:>6.2f}{f(r['change'], '.2f'):>7}{r['grow']:>5}{r['ratio']:>7.2f}"
              f"{f(r['flip'], '.2f'):>6}{f(r['recall'], '.2f'):>7}{f(r['precision'], '.2f'):>6}")
    print("ratio: pooled over items; change '-': the first pass alone (--mask auto at that threshold)")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=10, help="phantoms per edit type")
    ap.add_argument("--seed", type=int, default=70000, help="phantom seed (tuning: 70000; held-out: 90000)")
    ap.add_argument("--first", type=float, nargs="+", default=[0.15, 0.2, 0.3], help="first-pass DiffEdit thresholds")
    ap.add_argument("--change", type=float, nargs="+", default=[0.06, 0.09, 0.12, 0.15, 0.2],
                    help="change thresholds (units of the intensity window)")
    ap.add_argument("--grow", type=int, nargs="+", default=[1, 2], help="pixels the kept region grows by")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--classifier", default="cxr-classifier", help="scoring classifier for the flip rate ('' to skip)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    res = run(args.model, args.n, args.seed, args.first, args.change, args.grow, args.device, args.classifier or None)
    print_table(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
