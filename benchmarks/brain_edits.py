"""Quality of 3D counterfactual edits on held-out brain phantoms, against their true counterfactuals.

For N phantoms (a seed never used in training) it edits age by -60/-30/-10/+10/+30/+60 years
(skipping edits that leave [0, 100]), the lesion load (lesions added at the subject's
alternative load, or removed), sex (the other one) and diagnosis (CN -> AD, AD or MCI -> CN),
with the factual brain caption as source prompt and the counterfactual's as target, and prints
per edit:

  direction  fraction whose measured volume moves the right way: ventricles (age, diagnosis:
             CSF-dark voxels inside the subject's ventricle region), lesions (lesion load:
             lesion-dark voxels inside its lesion region) or the head (sex: the phantom's head is
             7% smaller per axis in women; voxels inside the scalp) (bar: >= 0.90)
  ratio      error to the true counterfactual / error of doing nothing, pooled over items, with a
             95% bootstrap interval (bar: <= 0.5)
  floor      the same ratio for the ideal editor (true noise-free change, the subject's bias field,
             an independent noise draw inside the region): what no editor can beat
  outside    mean |change| outside the true-difference region
  age_err    age edits: |age read from the counterfactual - target age| (years), by a phantom age
             regressor (log ventricle CSF volume, linear in age, fitted on 80 training-seed phantoms;
             the Cycle Diffusion paper's Tables 1-2 measure counterfactual age the same way);
             age_err_true is the regressor's own error on the true counterfactuals (the floor)
  seconds    wall time per edit (bar for 64^3 on CPU: < 60 s)
  refused    edits the model refuses (a field its [defaults] unreliable_fields or unreliable_edits
             lists, e.g. demo-brain's lesion load and diagnosis), with the reason; ``--measure-refused`` edits them anyway, to re-measure why
``--mask oracle`` edits inside the true-difference region itself (a NIfTI mask per edit): the model's
error once the mask is right. And the invert-then-reconstruct PSNR (factual caption, the model's steps; bar: >= 32 dB) of the
first --recon phantoms.

    python benchmarks/brain_edits.py --model MODEL --n 50 --seed 90000
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from cfgen.phantoms.oracle import CSF_THRESHOLD, LESION_THRESHOLD, age_regressor, dark_voxels, regions  # noqa: F401

AGE_DELTAS = (-60, -30, -10, 10, 30, 60)
KINDS = ("age", "lesion", "sex", "diagnosis")
HEAD_THRESHOLD = 0.2  # between the background (0) and the scalp (0.72), after a 1-voxel Gaussian


def cases(exo, attrs):
    for d in AGE_DELTAS:
        if 0 <= attrs.age + d <= 100:
            yield f"age {d:+d}", "age", attrs.with_value("age", attrs.age + d), np.sign(d)
    if attrs.lesion_load > 0:
        yield "remove lesions", "lesion", attrs.with_value("lesion_load", 0.0), -1
    else:
        yield "add lesions", "lesion", attrs.with_value("lesion_load", exo.lesion_alt_load), 1
    other = "M" if attrs.sex == "F" else "F"
    yield f"sex to {other}", "sex", attrs.with_value("sex", other), 1 if other == "M" else -1
    dx = "AD" if attrs.diagnosis == "CN" else "CN"
    yield f"diagnosis to {dx}", "diagnosis", attrs.with_value("diagnosis", dx), 1 if dx == "AD" else -1


def measured_volume(img: np.ndarray, kind: str, vent_roi: np.ndarray, les_roi: np.ndarray) -> int:
    """The volume an edit of ``kind`` should move, in voxels of ``img`` ([0, 1])."""
    if kind == "sex":  # inside the scalp: the smoothed head above background, holes filled
        from scipy import ndimage

        return int(ndimage.binary_fill_holes(ndimage.gaussian_filter(img, 1.0) > HEAD_THRESHOLD).sum())
    return dark_voxels(img, les_roi if kind == "lesion" else vent_roi, "lesion" if kind == "lesion" else "age")


def run(model_name: str | None, n: int, seed: int, steps: int | None, guidance: float | None,
        strength: float | None, mask: str | None, spacing: float, device: str = "auto", recon: int = 0,
        kinds: tuple[str, ...] = KINDS, inversion: str | None = None,
        measure_refused: bool = False) -> dict:
    from cfgen.editing import core
    from cfgen.editing.params import EditParams
    from cfgen.errors import UsageError
    from cfgen.io.scan import Scan
    from cfgen.phantoms import brain
    from cfgen.phantoms.brain_dataset import caption_of

    model = _load(model_name, device, measure_refused)
    size = model.entry.resolution
    rows: dict[str, list[dict]] = defaultdict(list)
    refused: dict[str, list[str]] = defaultdict(list)
    t0 = time.perf_counter()
    age_of = age_regressor(size, spacing)
    psnrs = []
    scratch = Path(tempfile.mkdtemp(prefix="cfgen-oracle-")) if mask == "oracle" else None
    try:
        for i in range(n):
            exo, attrs = brain.subject(seed, i)
            fact = brain.render(exo, attrs, size, spacing)
            rois = regions(exo, attrs, size, spacing)
            scan = Scan(path=Path(f"brain-{i}.nii.gz"), format="nifti", pixels=fact[None], source_dtype="float32",
                        spacing=(spacing,) * 3)
            if i < recon:
                psnrs.append(reconstruction_psnr(model, scan, caption_of(attrs), steps))
            for name, kind, alt, sign in cases(exo, attrs):
                if kind not in kinds:
                    continue
                clean_alt = brain.render_clean(exo, alt, size, spacing)
                region = brain.mask_between(brain.render_clean(exo, attrs, size, spacing), clean_alt)
                p = EditParams.resolve(model.entry.defaults, prompt=caption_of(alt), source_prompt=caption_of(attrs),
                                       steps=steps, guidance=guidance, strength=strength,
                                       mask=_oracle_file(scratch, region, spacing) if mask == "oracle" else mask,
                                       window="0,1", inversion=inversion)
                t1 = time.perf_counter()
                try:
                    out = np.clip(core.edit(model, scan, p).pixels[0], 0, 1)
                except UsageError as exc:  # a field the model's [defaults] unreliable_fields / _edits lists
                    refused[name].append(str(exc))
                    continue
                truth = (brain.render(exo, alt, size, spacing), brain.ideal_edit(fact, clean_alt, exo, region, spacing))
                rows[name].append({**_score(fact, out, truth, region, kind, sign, rois),
                                   "seconds": time.perf_counter() - t1})
                if kind == "age":
                    rows[name][-1].update(age_err=abs(age_of(out, rois[0]) - alt.age),
                                          age_err_true=abs(age_of(truth[0], rois[0]) - alt.age))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return {"model": model.report_info(), "seed": seed, "n": n, "size": size, "spacing": spacing,
            "params": {"steps": steps, "guidance": guidance, "strength": strength, "mask": mask, "kinds": list(kinds),
                       "inversion": inversion},
            "seconds": round(time.perf_counter() - t0, 1), "age_regressor_train_mae": age_of.train_mae,
            "psnr_reconstruction": psnrs,
            "refused": {k: {"n": len(v), "reason": v[0]} for k, v in sorted(refused.items())},
            "table": _table(rows)}


def _load(model_name: str | None, device: str, measure_refused: bool):
    """The model; with ``measure_refused`` without its unreliable_fields / unreliable_edits (the benchmark
    behind a refusal edits those fields all the same)."""
    import dataclasses

    from cfgen.models.loader import load_model
    from cfgen.models.tabular import UNRELIABLE_KEYS

    model = load_model(model_name, device=device, family="latent-diffusion-3d")
    if measure_refused:
        kept = {k: v for k, v in model.entry.defaults.items() if k not in UNRELIABLE_KEYS}
        model.entry = dataclasses.replace(model.entry, defaults=kept)
    return model


def _score(fact: np.ndarray, out: np.ndarray, truth: tuple[np.ndarray, np.ndarray], region: np.ndarray, kind: str,
           sign: int, rois: tuple[np.ndarray, np.ndarray]) -> dict:
    """One edit against the phantom truth: ``truth`` = (true counterfactual, the ideal editor's output),
    ``rois`` = (ventricle region, lesion region)."""
    import torch

    from cfgen.evaluation.pairwise import floor_metrics, truth_metrics

    t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))[None, None]  # noqa: E731
    true, ideal = truth
    m = truth_metrics(t(fact), t(out), t(true), t(region).bool())
    before, after = (measured_volume(v, kind, *rois) for v in (fact, out))
    return {"direction": float(np.sign(after - before) == sign), "err_cf": m["gt_l1"], "err_none": m["gt_l1_nothing"],
            "outside": m["change_outside"], "err_floor": floor_metrics(t(fact), t(ideal), t(true))["gt_floor_l1"]}


def _table(rows: dict[str, list[dict]]) -> list[dict]:
    """Per edit type: direction, mean errors, pooled ratio with its interval, floor, outside, seconds."""
    from cfgen.metrics.stats import pooled_ratio

    table = []
    for name, vals in sorted(rows.items()):
        e_cf, e_no = (float(np.mean([v[k] for v in vals])) for k in ("err_cf", "err_none"))
        ratio = pooled_ratio([v["err_cf"] for v in vals], [v["err_none"] for v in vals])
        floor = pooled_ratio([v["err_floor"] for v in vals], [v["err_none"] for v in vals])
        table.append({"edit": name, "n": len(vals), "direction": float(np.mean([v["direction"] for v in vals])),
                      "err_cf": e_cf, "err_none": e_no, "ratio": e_cf / max(e_no, 1e-12),
                      "ratio_ci95": ratio["ci95"], "floor": floor["value"],
                      "outside": float(np.nanmean([v["outside"] if v["outside"] is not None else np.nan for v in vals])),
                      "seconds": float(np.mean([v["seconds"] for v in vals])),
                      **{k: float(np.mean([v[k] for v in vals])) for k in ("age_err", "age_err_true") if k in vals[0]}})
    return table


def reconstruction_psnr(model, scan, caption: str, steps: int | None) -> float:
    """Invert under the factual caption and regenerate (guidance 1, as `cfgen invert`): PSNR in [0, 1]."""
    import torch

    from cfgen.editing import core
    from cfgen.editing.params import EditParams
    from cfgen.metrics.image import psnr

    p = EditParams.resolve(model.entry.defaults, "invert", prompt=caption, steps=steps, window="0,1")
    back = np.clip(core.invert(model, scan, p).pixels[0], 0, 1)
    t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))[None, None]  # noqa: E731
    return psnr(t(scan.pixels[0]), t(back))


def print_table(res: dict) -> None:
    print(f"model {res['model']['name']} ({res['model']['source']}), held-out seed {res['seed']}, "
          f"{res['n']} phantoms at {res['size']}^3 x {res['spacing']:g} mm, {res['seconds']} s")
    print(f"{'edit':<16}{'n':>4}{'direction':>10}{'err_cf':>9}{'err_none':>10}{'ratio':>7}{'95% CI':>13}{'floor':>7}"
          f"{'outside':>9}{'s/edit':>8}{'age_err':>9}{'age_err_true':>13}")
    for r in res["table"]:
        ages = f"{r['age_err']:>9.1f}{r['age_err_true']:>13.1f}" if "age_err" in r else ""
        ci = f"{r['ratio_ci95'][0]:.2f}..{r['ratio_ci95'][1]:.2f}"
        print(f"{r['edit']:<16}{r['n']:>4}{r['direction']:>10.2f}{r['err_cf']:>9.4f}{r['err_none']:>10.4f}"
              f"{r['ratio']:>7.2f}{ci:>13}{r['floor']:>7.2f}{r['outside']:>9.4f}{r['seconds']:>8.1f}{ages}")
    for name, r in res.get("refused", {}).items():
        print(f"{name:<16}{r['n']:>4}  refused: {r['reason'].split(': ', 1)[-1].split(' (')[0]}")
    if res.get("psnr_reconstruction"):
        ps = res["psnr_reconstruction"]
        print(f"invert-then-reconstruct PSNR, {len(ps)} phantoms: {min(ps):.1f}-{max(ps):.1f} dB (mean {np.mean(ps):.1f})")
    print(f"age regressor: MAE {res['age_regressor_train_mae']:.1f} years on its own training phantoms")
    print("bars: direction >= 0.90, ratio <= 0.50 (age +-30: 0.7); reconstruction >= 32 dB; 64^3 edit on CPU < 60 s")


def _oracle_file(folder: Path, region: np.ndarray, spacing: float) -> str:
    """The true-difference region as a NIfTI mask on the phantom's grid, for ``--mask oracle``: the
    model's error once the mask is right."""
    import nibabel as nib

    path = folder / "oracle_mask.nii.gz"
    nib.save(nib.Nifti1Image(region.astype(np.uint8), np.diag([spacing] * 3 + [1.0])), str(path))
    return str(path)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a latent-diffusion-3d entry or folder")
    ap.add_argument("--n", type=int, default=50, help="held-out phantoms")
    ap.add_argument("--seed", type=int, default=90000, help="held-out phantom seed (never used in training)")
    ap.add_argument("--spacing", type=float, default=3.0, help="voxel size (mm) of the rendered phantoms")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--strength", type=float, default=None)
    ap.add_argument("--mask", default=None, help="none | auto | refine | oracle (the true-difference region) "
                    "[default: the model's]")
    ap.add_argument("--recon", type=int, default=2, help="phantoms whose reconstruction PSNR is measured")
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS),
                    help="edit kinds to run (lesion, sex or diagnosis alone: n phantoms give n edits)")
    ap.add_argument("--inversion", default=None, help="ddim, negative-prompt or null-text [default: the model's]")
    ap.add_argument("--measure-refused", action="store_true",
                    help="edit the fields the model's [defaults] unreliable_fields / unreliable_edits list all the same")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    res = run(args.model, args.n, args.seed, args.steps, args.guidance, args.strength, args.mask, args.spacing,
              args.device, args.recon, tuple(args.kinds), args.inversion, args.measure_refused)
    print_table(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
