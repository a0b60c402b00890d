"""Quality of counterfactual edits on held-out chest phantoms, against their true counterfactuals.

For each edit type (remove/add devices, effusion, cardiomegaly) it edits N phantoms whose seed
was never used in training, with the factual caption as source prompt and the counterfactual's
caption as target (PRISM's protocol), and prints per edit type and mask mode:

  err_cf     mean L1 to the true counterfactual (images in [0, 1])
  err_none   mean L1 of doing nothing (factual vs true counterfactual)
  ratio      err_cf / err_none, pooled over items (sum / sum), with a 95% bootstrap interval
             over items (bar: <= 0.5)
  floor      the same ratio for the ideal editor (true noise-free change, independent noise
             inside the mask): what no editor can beat
  sfloor     the same for the ideal editor that samples what the scan and the prompt do not show
             (where added devices sit, an added effusion's side and size, the new CTR;
             cxr.sample_floor_edit): what no editor that samples a plausible counterfactual can beat
  outside    mean |change| outside the true-difference mask (bar: <= 0.02)
  achieved   fraction of the required change made (1 exact, 0 nothing)
  flip       fraction the scoring classifier calls the target class (--classifier, default cxr-classifier)
  recall / precision   masked modes: the edit mask against the true-difference region
  psnr_rec   invert-then-reconstruct PSNR under the source prompt (bar: >= 30 dB)
Mask modes: none, auto, a mask file, or ``oracle`` (the true-difference region itself, written
as a PNG per phantom): oracle's ratio is the model's error once the mask is right.
The ground-truth numbers are cfgen evaluate's (cfgen.evaluation.pairwise, cfgen.metrics.stats).

    python benchmarks/phantom_edits.py --model demo-cxr --n 100 --seed 90000 --masks none auto
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def run(model_name: str | None, n: int, seed: int, masks: list[str], steps: int | None, guidance: float | None,
        strength: float | None, recon_per_type: int, device: str = "auto", classifier: str | None = "cxr-classifier",
        mask_threshold: float | None = None, edit_options: dict | None = None) -> dict:
    import torch

    from cfgen.editing import core
    from cfgen.editing.params import EditParams
    from cfgen.evaluation.pairwise import floor_metrics
    from cfgen.models.loader import load_model
    from cfgen.phantoms import cxr
    from cfgen.phantoms.dataset import caption_of

    from cfgen.editing.batch import check_selector, load_selector

    model = model_name if hasattr(model_name, "unet") else load_model(model_name, device=device)  # name or loaded
    edit_options = {k: v for k, v in (edit_options or {}).items() if v is not None}
    selector = None
    clf = load_model(classifier, device=device, family="classifier").classifier if classifier else None
    t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))[None, None]  # noqa: E731
    size = model.entry.resolution
    rows: dict[tuple[str, str], list[dict]] = defaultdict(list)
    recon: dict[str, list[float]] = defaultdict(list)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cfgen-oracle-") as scratch:
        tmp = Path(scratch)
        for kind, exo, fa, cf in cxr.edit_cases(n, seed):
            clean_fa, clean_cf, fact, true, inside, scan = phantom_case(kind, exo, fa, cf, size)
            floor = floor_metrics(t(fact), t(cxr.ideal_edit(fact, clean_cf, exo, inside)), t(true))
            attr = kind.split(" ", 1)[1]
            sfloor = floor_metrics(t(fact), t(cxr.sample_floor_edit(fact, clean_fa, exo, fa, attr)), t(true))
            src, tgt = caption_of(exo, fa), caption_of(exo, cf)
            for mode in masks:
                p = EditParams.resolve(model.entry.defaults, prompt=tgt, source_prompt=src, steps=steps,
                                       guidance=guidance, strength=strength,
                                       mask=_oracle_file(tmp, inside) if mode == "oracle" else mode,
                                       mask_threshold=mask_threshold,
                                       **edit_options)
                if selector is None and p.sweep:
                    check_selector(p)
                    selector = load_selector(p, model)
                t_edit = time.perf_counter()
                outcome = core.edit(model, scan, p, selector=selector)
                t_edit = time.perf_counter() - t_edit
                row = score_edit(outcome, fact, true, inside, clf, kind)
                row.update(err_floor=floor["gt_floor_l1"], err_sfloor=sfloor["gt_floor_l1"], seconds=t_edit)
                rows[(kind, mode)].append(row)
            if len(recon[kind]) < recon_per_type:
                p = EditParams.resolve(model.entry.defaults, "invert", source_prompt=src, steps=steps, strength=strength)
                psnr = core.invert(model, scan, p).metrics["psnr"]
                recon[kind].append(float(psnr) if psnr is not None else 100.0)
    table = [_row(kind, mode, vals, recon[kind]) for (kind, mode), vals in sorted(rows.items())]
    return {"model": model.report_info(), "seed": seed, "n_per_type": n, "size": size,
            "params": {"steps": steps, "guidance": guidance, "strength": strength, "mask_threshold": mask_threshold,
                       **edit_options},
            "seconds": round(time.perf_counter() - t0, 1), "table": table}


def phantom_case(kind: str, exo, fa: dict, cf: dict, size: int) -> tuple:
    """One edit case at ``size`` px: the clean factual and counterfactual renders, their acquired
    images (the scan and the truth, [0, 1]), the true-difference region, and the scan as an 8-bit
    PNG-like Scan."""
    from cfgen.io.scan import Scan
    from cfgen.phantoms import cxr

    clean_fa, clean_cf = cxr.render_clean(exo, fa, size), cxr.render_clean(exo, cf, size)
    fact, true = cxr.acquire(clean_fa, exo), cxr.acquire(clean_cf, exo)
    scan = Scan(path=Path(f"phantom-{kind.replace(' ', '_')}.png"), format="png",
                pixels=np.round(fact * 255)[None].astype(np.float32), source_dtype="uint8")
    return clean_fa, clean_cf, fact, true, cxr.mask_between(clean_fa, clean_cf), scan


def score_edit(outcome, fact, true, inside, clf, kind: str) -> dict:
    """An edit's figures against the phantom truth: errors to the true counterfactual and of doing
    nothing, change outside the region, achieved change, the mask's recall/precision (when one was
    used) and, with a scoring classifier, whether it calls the target class."""
    import torch

    from cfgen.evaluation.pairwise import mask_metrics, truth_metrics
    from cfgen.phantoms import cxr

    t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))[None, None]  # noqa: E731
    out = outcome.pixels[0] / 255.0
    m = truth_metrics(t(fact), t(out), t(true), t(inside).bool())
    row = {"err_cf": m["gt_l1"], "err_none": m["gt_l1_nothing"], "outside": m["change_outside"],
           "achieved": m["gt_achieved"]}
    if outcome.mask is not None:
        row.update(mask_metrics(t(outcome.mask[0] > 0), t(inside)))
    if clf is not None:
        p_after = float(clf.predict(t(out))[0][cxr.LABEL_OF[kind.split(" ", 1)[1]]][0])
        row["flip"] = float((p_after >= 0.5) == kind.startswith("add"))
    return row


def _oracle_file(folder: Path, region: np.ndarray) -> str:
    """The true-difference region as a mask PNG (nonzero = edit) for ``--masks oracle``."""
    from PIL import Image

    path = folder / "oracle_mask.png"
    Image.fromarray(region.astype(np.uint8) * 255).save(path)
    return str(path)


def _row(kind: str, mode: str, vals: list[dict], recon: list[float]) -> dict:
    from cfgen.metrics.stats import pooled_ratio

    def mean(key: str) -> float | None:
        got = [v[key] for v in vals if v.get(key) is not None]
        return float(np.mean(got)) if got else None

    ratio = pooled_ratio([v["err_cf"] for v in vals], [v["err_none"] for v in vals])
    floor = pooled_ratio([v["err_floor"] for v in vals], [v["err_none"] for v in vals])
    sfloor = pooled_ratio([v["err_sfloor"] for v in vals], [v["err_none"] for v in vals])
    return {"edit": kind, "mask": mode, "n": len(vals), "err_cf": mean("err_cf"), "err_none": mean("err_none"),
            "ratio": ratio["value"], "ratio_ci95": ratio["ci95"], "floor": floor["value"],
            "sample_floor": sfloor["value"], "outside": mean("outside"), "achieved": mean("achieved"), "flip": mean("flip"),
            "recall": mean("mask_recall"), "precision": mean("mask_precision"), "edit_seconds": mean("seconds"),
            "psnr_rec": float(np.mean(recon)) if recon else None}


def print_table(res: dict) -> None:
    print(f"model {res['model']['name']} ({res['model']['source']}), held-out seed {res['seed']}, "
          f"{res['n_per_type']} phantoms per edit type at {res['size']} px, {res['seconds']} s")
    print(f"{'edit':<22}{'mask':<6}{'n':>4}{'err_cf':>9}{'err_none':>10}{'ratio':>7}{'95% CI':>13}{'floor':>7}{'sfloor':>7}"
          f"{'outside':>9}{'achieved':>9}{'flip':>6}{'recall':>7}{'prec':>6}{'psnr_rec':>10}")
    f = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
    for r in res["table"]:
        ci = f"{r['ratio_ci95'][0]:.2f}..{r['ratio_ci95'][1]:.2f}" if r["ratio_ci95"] else "-"
        print(f"{r['edit']:<22}{r['mask']:<6}{r['n']:>4}{r['err_cf']:>9.4f}{r['err_none']:>10.4f}"
              f"{r['ratio']:>7.2f}{ci:>13}{f(r['floor'], '.2f'):>7}"
              f"{f(r['sample_floor'], '.2f'):>7}{r['outside']:>9.4f}{r['achieved']:>9.2f}"
              f"{f(r['flip'], '.2f'):>6}{f(r['recall'], '.2f'):>7}{f(r['precision'], '.2f'):>6}"
              f"{f(r['psnr_rec'], '.1f'):>10}")
    print("ratio and floors: pooled (summed error / summed error of doing nothing); floor: the ideal editor, "
          "true change with other noise; sfloor: the ideal editor that samples what the scan and prompt do not show")
    print("bars (issue 17): ratio <= 0.50, flip >= 0.90, outside <= 0.010, psnr_rec >= 38 dB")


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
    ap.add_argument("--refine-change", type=float, default=None, help="refine masks [default: the model's]")
    ap.add_argument("--inversion", default=None, help="ddim, negative-prompt or null-text [default: the model's]")
    ap.add_argument("--attention", default=None, help="prompt-to-prompt: none, refine or replace")
    ap.add_argument("--self-attention", type=float, default=None)
    ap.add_argument("--sweep", default=None, help="e.g. self-attention=0.4,0.6,0.8 (selected by the model's "
                    "select_by; with the scoring classifier, the flip rate is then not independent of the selection)")
    ap.add_argument("--recon-per-type", type=int, default=10, help="phantoms per type whose reconstruction PSNR is measured")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--classifier", default="cxr-classifier", help="scoring classifier for the flip rate ('' to skip)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    res = run(args.model, args.n, args.seed, args.masks, args.steps, args.guidance, args.strength,
              args.recon_per_type, args.device, args.classifier or None, args.mask_threshold,
              {"inversion": args.inversion, "attention": args.attention, "self_attention": args.self_attention,
               "sweep": args.sweep, "refine_change": args.refine_change})
    print_table(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
