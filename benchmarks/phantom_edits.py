"""Quality of counterfactual edits on held-out chest phantoms, against their true counterfactuals.

For each edit type (remove/add devices, effusion, cardiomegaly) it edits N phantoms whose seed
was never used in training, with the factual caption as source prompt and the counterfactual's
caption as target (PRISM's protocol), and prints per edit type and mask mode:

  err_cf     mean L1 to the true counterfactual (images in [0, 1])
  err_none   mean L1 of doing nothing (factual vs true counterfactual)
  ratio      err_cf / err_none          (bar: <= 0.5)
  outside    mean |change| outside the true-difference mask (bar: <= 0.02)
  achieved   fraction of the required change made (1 exact, 0 nothing)
  flip       fraction the scoring classifier calls the target class (--classifier, default cxr-classifier)
  psnr_rec   invert-then-reconstruct PSNR under the source prompt (bar: >= 30 dB)
The ground-truth numbers are cfgen evaluate's (cfgen.evaluation.pairwise.truth_metrics).

    python benchmarks/phantom_edits.py --model demo-cxr --n 100 --seed 90000 --masks none auto
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def edit_cases(n: int, seed: int, size: int):
    """(edit type, exo, factual attrs, counterfactual attrs) until every type has n cases."""
    from cfgen.phantoms import cxr

    want = {f"{verb} {a}": n for a in cxr.ATTRIBUTES for verb in ("remove", "add")}
    i = 0
    while any(want.values()):
        exo, attrs = cxr.subject(seed, i)
        for a in cxr.ATTRIBUTES:
            kind = f"{'remove' if getattr(attrs, a) else 'add'} {a}"
            if want[kind]:
                want[kind] -= 1
                yield kind, exo, attrs, attrs.flipped(a, exo)
        i += 1


def run(model_name: str | None, n: int, seed: int, masks: list[str], steps: int | None, guidance: float | None,
        strength: float | None, recon_per_type: int, device: str = "auto", classifier: str | None = "cxr-classifier",
        mask_threshold: float | None = None) -> dict:
    import torch

    from cfgen.editing import core
    from cfgen.evaluation.pairwise import truth_metrics
    from cfgen.editing.params import EditParams
    from cfgen.io.scan import Scan
    from cfgen.models.loader import load_model
    from cfgen.phantoms import cxr
    from cfgen.phantoms.dataset import caption_of

    model = load_model(model_name, device=device)
    clf = load_model(classifier, device=device, family="classifier").classifier if classifier else None
    t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))[None, None]  # noqa: E731
    size = model.entry.resolution
    rows: dict[tuple[str, str], list[dict]] = defaultdict(list)
    recon: dict[str, list[float]] = defaultdict(list)
    t0 = time.perf_counter()
    for kind, exo, fa, cf in edit_cases(n, seed, size):
        fact = cxr.render(exo, fa, size)
        true = cxr.render(exo, cf, size)
        inside = cxr.difference_mask(exo, fa, cf, size)
        scan = Scan(path=Path(f"phantom-{kind.replace(' ', '_')}.png"), format="png",
                    pixels=np.round(fact * 255)[None].astype(np.float32), source_dtype="uint8")
        src, tgt = caption_of(exo, fa), caption_of(exo, cf)
        for mode in masks:
            p = EditParams.resolve(model.entry.defaults, prompt=tgt, source_prompt=src, steps=steps,
                                   guidance=guidance, strength=strength, mask=mode, mask_threshold=mask_threshold)
            out = core.edit(model, scan, p).pixels[0] / 255.0
            m = truth_metrics(t(fact), t(out), t(true), t(inside).bool())
            row = {"err_cf": m["gt_l1"], "err_none": m["gt_l1_nothing"], "outside": m["change_outside"],
                   "achieved": m["gt_achieved"]}
            if clf is not None:
                attr = kind.split(" ", 1)[1]
                p_after = float(clf.predict(t(out))[0][cxr.LABEL_OF[attr]][0])
                row["flip"] = float((p_after >= 0.5) == kind.startswith("add"))
            rows[(kind, mode)].append(row)
        if len(recon[kind]) < recon_per_type:
            p = EditParams.resolve(model.entry.defaults, source_prompt=src, steps=steps, strength=strength)
            psnr = core.invert(model, scan, p).metrics["psnr"]
            recon[kind].append(float(psnr) if psnr is not None else 100.0)
    table = []
    for (kind, mode), vals in sorted(rows.items()):
        e_cf = float(np.mean([v["err_cf"] for v in vals]))
        e_no = float(np.mean([v["err_none"] for v in vals]))
        table.append({"edit": kind, "mask": mode, "n": len(vals), "err_cf": e_cf, "err_none": e_no,
                      "ratio": e_cf / max(e_no, 1e-12), "outside": float(np.mean([v["outside"] for v in vals])),
                      "achieved": float(np.mean([v["achieved"] for v in vals])),
                      "flip": float(np.mean([v["flip"] for v in vals])) if "flip" in vals[0] else None,
                      "psnr_rec": float(np.mean(recon[kind])) if recon[kind] else None})
    return {"model": model.report_info(), "seed": seed, "n_per_type": n, "size": size,
            "params": {"steps": steps, "guidance": guidance, "strength": strength, "mask_threshold": mask_threshold},
            "seconds": round(time.perf_counter() - t0, 1), "table": table}


def print_table(res: dict) -> None:
    print(f"model {res['model']['name']} ({res['model']['source']}), held-out seed {res['seed']}, "
          f"{res['n_per_type']} phantoms per edit type at {res['size']} px, {res['seconds']} s")
    print(f"{'edit':<22}{'mask':<6}{'n':>4}{'err_cf':>9}{'err_none':>10}{'ratio':>7}{'outside':>9}{'achieved':>9}"
          f"{'flip':>6}{'psnr_rec':>10}")
    for r in res["table"]:
        psnr = f"{r['psnr_rec']:.1f}" if r["psnr_rec"] is not None else "-"
        flip = f"{r['flip']:.2f}" if r["flip"] is not None else "-"
        print(f"{r['edit']:<22}{r['mask']:<6}{r['n']:>4}{r['err_cf']:>9.4f}{r['err_none']:>10.4f}"
              f"{r['ratio']:>7.2f}{r['outside']:>9.4f}{r['achieved']:>9.2f}{flip:>6}{psnr:>10}")
    print("bars: ratio <= 0.50, outside <= 0.020, psnr_rec >= 30 dB")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="models.toml entry or folder [default: the registry's default]")
    ap.add_argument("--n", type=int, default=100, help="phantoms per edit type")
    ap.add_argument("--seed", type=int, default=90000, help="held-out phantom seed (never used in training)")
    ap.add_argument("--masks", nargs="+", default=["none", "auto"], help="mask modes to compare")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--strength", type=float, default=None)
    ap.add_argument("--mask-threshold", type=float, default=None, help="auto masks [default: the model's]")
    ap.add_argument("--recon-per-type", type=int, default=10, help="phantoms per type whose reconstruction PSNR is measured")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--classifier", default="cxr-classifier", help="scoring classifier for the flip rate ('' to skip)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    res = run(args.model, args.n, args.seed, args.masks, args.steps, args.guidance, args.strength,
              args.recon_per_type, args.device, args.classifier or None, args.mask_threshold)
    print_table(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
