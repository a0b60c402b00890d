"""Quality of CT counterfactual edits on held-out chest CT phantoms, against their true counterfactuals.

It writes N CT phantoms (``cfgen phantoms ct``, a seed never used in training, the dataset's
64^3 x 6 mm grid) and makes each phantom's four single-attribute edits (effusion none <-> large,
emphysema none <-> severe, cardiomegaly toggled, nodules removed / added) with a labelled CT
model (the phantom's anatomy label map given as --labels, as a user would), the factual caption
as source prompt and the counterfactual's as target. Per edit type it prints:

  direction  fraction whose CT measure moves the way the true counterfactual's does: effusion
             volume (mL), %LAA-950 or CTR (cfgen evaluate's measures; the edit is measured with
             the label map the edit wrote, counterfactual_labels); none for nodules
  measured   mean measured change of the edit / of the true counterfactual
  ratio      error to the true counterfactual / error of doing nothing, pooled over items, with a
             95% bootstrap interval (bar: <= 0.5); floor: the same for the ideal editor (the true
             noise-free change with an independent noise draw inside the region)
  outside    mean |change| outside the true-difference region (HU / 1624, the window's width)
  achieved   projection of the edit's change on the true change (1 = all of it)
  recall / precision   masked modes: the edit mask against the true-difference region
  s/edit     wall time per edit
  refused    edits the model refuses (a field its [defaults] unreliable_fields lists), with the reason
  top item   the phantom with the largest error to its truth and its share of the summed error (one
             phantom carrying a pooled ratio shows here; every item's errors are in --json's per_item)
and the invert-then-reconstruct PSNR on the scan's grid (what a user gets back) of the first
``--recon`` phantoms.

    python benchmarks/ct_edits.py --model demo-ct --n 8 --seed 95000 --masks none refine
"""
from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

SIZE, SPACING = 64, 6.0  # the phantoms' grid (cfgen phantoms ct's default)
HU_LOW, HU_WIDTH = -1024.0, 1624.0  # MedSyn's window [-1024, 600]: errors are in its units
MEASURE = {"effusion": "effusion_ml", "emphysema": "laa950_pct", "cardiomegaly": "ctr", "nodules": None}


def _unit(hu):
    import torch

    return torch.from_numpy((np.asarray(hu, np.float32) - HU_LOW) / HU_WIDTH)[None, None]


def _region(a):
    import torch

    return torch.from_numpy(np.asarray(a, bool))[None, None]


def _volume(path: Path) -> np.ndarray:
    from cfgen.io.scan import read_scan

    return read_scan(path).pixels[0].astype(np.float32)


def _measures(hu: np.ndarray, labels: np.ndarray, affine: np.ndarray) -> dict:
    from cfgen.evaluation import ct as ct_eval

    return ct_eval.measures(hu, labels.astype(np.int32), affine, ct_eval.parse_labels(None))


def score(row: dict, work: Path, fact: np.ndarray, cf: np.ndarray, cf_labels: np.ndarray, mask, affine) -> dict:
    """One edit against its truth: the pooled-ratio parts, the mask's quality, the measure's move."""
    from cfgen.evaluation.pairwise import floor_metrics, mask_metrics, truth_metrics

    true, region = _volume(work / row["counterfactual"]), _volume(work / row["mask"]) > 0
    m = truth_metrics(_unit(fact), _unit(cf), _unit(true), _region(region))
    out = {"err_cf": m["gt_l1"], "err_none": m["gt_l1_nothing"], "outside": m["change_outside"],
           "achieved": m["gt_achieved"],
           "err_floor": floor_metrics(_unit(fact), _unit(_volume(work / row["floor"])), _unit(true))["gt_floor_l1"]}
    if mask is not None:
        out.update(mask_metrics(_region(mask[0] > 0), _region(region)))
    key = MEASURE[row["attribute"]]
    if key:
        before = _measures(fact, _volume(work / row["labels"]), affine)[key]
        after = _measures(cf, cf_labels, affine)[key]
        truth = _measures(true, _volume(work / row["counterfactual_labels"]), affine)[key]
        if None not in (before, after, truth):
            out.update(direction=float(np.sign(after - before) == np.sign(truth - before)),
                       moved=after - before, true_move=truth - before)
    return out


def edit_type(row: dict) -> str:
    return f"{row['attribute']} {row['factual']} -> {row['counterfactual_value']}"


def run(model_name: str | None, n: int, seed: int, masks: list[str], options: dict, recon: int, work: Path,
        device: str = "auto") -> dict:
    """``options``: steps, guidance, strength, mask_threshold, refine_change (None: the model's)."""
    from cfgen.editing import core
    from cfgen.editing.params import EditParams
    from cfgen.errors import UsageError
    from cfgen.io.scan import read_scan
    from cfgen.metrics.image import psnr
    from cfgen.models.loader import load_model
    from cfgen.phantoms import ct
    from cfgen.phantoms.ct_dataset import write_ct_dataset

    t0 = time.perf_counter()
    write_ct_dataset(work, n, seed, SIZE, SPACING)
    rows = list(csv.DictReader((work / "counterfactuals.csv").open()))
    model = load_model(model_name, device=device, family="latent-diffusion-3d")
    affine = ct.affine(SIZE, SPACING)
    res: dict = {"model": model.report_info(), "seed": seed, "n": n, "masks": {},
                 "params": options}
    for mode in masks:
        items: dict[str, list[dict]] = defaultdict(list)
        refused: dict[str, list[str]] = defaultdict(list)
        for row in rows:
            p = EditParams.resolve(model.entry.defaults, prompt=row["prompt"], source_prompt=row["source_prompt"],
                                   mask=mode, labels=str(work / row["labels"]),
                                   **{k: v for k, v in options.items() if mode == "refine" or k != "refine_change"})
            t1 = time.perf_counter()
            scan = read_scan(work / row["image"])
            try:
                out = core.edit(model, scan, p)
            except UsageError as exc:  # e.g. a field the model's [defaults] unreliable_fields lists
                refused[edit_type(row)].append(str(exc))
                continue
            secs = time.perf_counter() - t1
            fact = scan.pixels[0].astype(np.float32)
            items[edit_type(row)].append({**score(row, work, fact, out.pixels[0], out.labels, out.mask, affine),
                                          "seconds": secs, "image": row["image"]})
        res["masks"][mode] = summarise(items)
        res.setdefault("refused", {})[mode] = {k: {"n": len(v), "reason": v[0]} for k, v in sorted(refused.items())}
    res["psnr_reconstruction"] = []
    for image in sorted({r["image"] for r in rows})[:recon]:
        row = next(r for r in rows if r["image"] == image)
        p = EditParams.resolve(model.entry.defaults, "invert", prompt=row["source_prompt"], steps=options["steps"],
                               labels=str(work / row["labels"]))
        scan = read_scan(work / image)
        back = core.invert(model, scan, p)
        res["psnr_reconstruction"].append(psnr(_unit(scan.pixels[0]), _unit(back.pixels[0])))
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def _mean(vals: list[dict], key: str) -> float | None:
    xs = [v[key] for v in vals if v.get(key) is not None]
    return float(np.mean(xs)) if xs else None


def _top_item(vals: list[dict]) -> dict:
    """The item with the largest error to its truth, and its share of the summed error (a pooled ratio
    carried by one phantom says so), beside every item's own ratio (in the JSON)."""
    errs = np.array([v["err_cf"] for v in vals])
    top = int(errs.argmax())
    return {"top_item": vals[top]["image"], "top_share": float(errs[top] / errs.sum()) if errs.sum() else None,
            "per_item": [{"image": v["image"], "err_cf": v["err_cf"], "err_none": v["err_none"]} for v in vals]}


def summarise(items: dict[str, list[dict]]) -> list[dict]:
    from cfgen.metrics.stats import pooled_ratio

    table = []
    for name, vals in sorted(items.items()):
        ratio = pooled_ratio([v["err_cf"] for v in vals], [v["err_none"] for v in vals])
        floor = pooled_ratio([v["err_floor"] for v in vals], [v["err_none"] for v in vals])
        table.append({"edit": name, "n": len(vals), "ratio": ratio["value"], "ratio_ci95": ratio["ci95"],
                      "floor": floor["value"], **_top_item(vals),
                      **{k: _mean(vals, k) for k in ("direction", "moved", "true_move", "outside", "achieved",
                                                       "mask_recall", "mask_precision", "seconds")}})
    return table


def _f(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_table(res: dict) -> None:
    print(f"model {res['model']['name']} ({res['model']['source']}), held-out seed {res['seed']}, "
          f"{res['n']} CT phantoms at {SIZE}^3 x {SPACING:g} mm, {res['seconds']} s")
    for mode, table in res["masks"].items():
        print(f"\n--mask {mode}")
        print(f"{'edit':<30}{'n':>3}{'direction':>10}{'measured / true':>22}{'ratio':>9}{'95% CI':>15}"
              f"{'floor':>7}{'outside':>9}{'achieved':>9}{'recall':>8}{'prec':>6}{'s/edit':>8}  top item (share of error)")
        for r in table:
            moved = "-" if r["moved"] is None else f"{r['moved']:.3g} / {r['true_move']:.3g}"
            ci = f"{r['ratio_ci95'][0]:.2f}..{r['ratio_ci95'][1]:.2f}"
            print(f"{r['edit']:<30}{r['n']:>3}{_f(r['direction'], '.2f'):>10}{moved:>22}{r['ratio']:>9.2f}{ci:>15}"
                  f"{r['floor']:>7.2f}{_f(r['outside'], '.4f'):>9}{_f(r['achieved'], '.2f'):>9}"
                  f"{_f(r['mask_recall'], '.2f'):>8}{_f(r['mask_precision'], '.2f'):>6}{r['seconds']:>8.1f}"
                  f"  {Path(r['top_item']).name} ({_f(r['top_share'], '.2f')})")
        for name, r in res.get("refused", {}).get(mode, {}).items():
            print(f"{name:<30}{r['n']:>3}  refused: {r['reason'].split(': ', 1)[-1].split(' (')[0]}")
    if res["psnr_reconstruction"]:
        ps = res["psnr_reconstruction"]
        print(f"\ninvert-then-reconstruct PSNR on the scan grid (window -1024..600), {len(ps)} phantoms: "
              f"{min(ps):.1f}-{max(ps):.1f} dB")
    print("bars (issue 17's, for chest edits): ratio <= 0.50, change outside <= 0.01; direction >= 0.90")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo-ct", help="a labelled latent-diffusion-3d entry or folder")
    ap.add_argument("--n", type=int, default=8, help="held-out phantoms (four edits each)")
    ap.add_argument("--seed", type=int, default=95000, help="held-out phantom seed (never used in training)")
    ap.add_argument("--masks", nargs="+", default=["refine"], help="mask modes to compare (none, auto, refine)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--strength", type=float, default=None)
    ap.add_argument("--mask-threshold", type=float, default=None, help="DiffEdit's [default: the model's]")
    ap.add_argument("--refine-change", type=float, default=None, help="refine masks [default: the model's]")
    ap.add_argument("--recon", type=int, default=2, help="phantoms whose reconstruction PSNR is measured")
    ap.add_argument("--work", type=Path, default=None, help="where the phantoms go [default: a temporary folder]")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        options = {k: getattr(args, k) for k in ("steps", "guidance", "strength", "mask_threshold", "refine_change")}
        res = run(args.model, args.n, args.seed, args.masks, options, args.recon, args.work or Path(tmp), args.device)
    print_table(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
