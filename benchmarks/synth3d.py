"""`cfgen synth3d`: does conditional synthesis follow the prompt, and what does it cost.

1. Conditional synthesis (MedSyn Tables II-IV style): N volumes per prompt of each pair
   ("high lesion load" vs "no lesions"; "85 year old" vs "25 year old"), seeds 0..N-1 for both
   prompts, the measured attribute of each generated volume:
     lesion   voxels below LESION_THRESHOLD inside the periventricular white-matter region where
              phantom lesions can be (union over held-out phantoms), mL
     ventricles  voxels below CSF_THRESHOLD inside the region where phantom ventricles can be, mL
   printed: mean of each side, Cohen's d (pooled SD), and P(A > B) over all pairs (AUC; 0.5 = no effect).
   A base with anatomy label channels (demo-brain-labels) is also measured on its generated labels
   (the same attributes as labelled volumes), with the agreement of labels and image (share of the
   voxels labelled ventricles that are CSF-dark in the image; share of labelled lesion voxels
   darker than white matter), and --mask-from: held-out phantoms' label maps fixed, the share of
   their ventricle / lesion voxels that come out dark in the generated image, against free
   generation with the same seeds (the image follows the given anatomy when it is higher).
   A chest CT base (demo-ct; picked by --world, by default from the model's fixed HU window) is
   measured with cfgen's CT measures (cfgen/evaluation/ct.py) on its own generated label channels:
   effusion volume (mL) "large" vs "no pleural effusion", %LAA-950 "severe" vs "no emphysema", CTR
   "cardiomegaly" vs "normal heart size" (the issue's bar: d >= 1.5 each), each beside the same
   measure on 16 held-out phantoms drawn with do(A) and do(B) on the base's grid (calibration: a
   model can separate the prompts and still draw hearts or lungs unlike any phantom's), and the lung
   HU of the "no emphysema" volumes (median, 10-90% spread inside the lobe labels) against the
   phantoms'; and --mask-from with
   held-out CT phantoms' label maps: the share of the given airway voxels generated as air
   (< AIRWAY_HU) and vessel voxels as blood (> VESSEL_HU) (bar: >= 0.8), beside free generation
   with the same seeds and the phantoms themselves on the same grid (for a model with a [synth]
   label_guidance, also the same at label guidance 1); and, as the control, the share
   of the lobes' other voxels above VESSEL_HU (noisy lungs put vessel-bright voxels anywhere: a
   vessel share is only the given anatomy's when it is well above this one's), and that share among
   the lobe voxels face to face with a given vessel voxel (a vessel drawn thicker than the map).
2. Cost: the 64^3 base volume through the CLI on this machine (process start included; bar on CPU:
   under 60 s), the two-stage volume (64^3 -> 128^3), and with --size 256 on a GPU the 256^3 run
   with its peak memory (bar: within 16 GB).

    python benchmarks/synth3d.py --n 32                 # the issue's sample size
    python benchmarks/synth3d.py --n 8 --steps 25       # a quick CPU look
    python benchmarks/synth3d.py --model demo-ct --n 8 --steps 25 --seed 1000 --guidance 2   # tuning
    python benchmarks/synth3d.py --n 0 --size 256 --device cuda   # the GPU cost only
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cfgen.phantoms.oracle import CSF_THRESHOLD, LESION_THRESHOLD, regions

CT_PAIRS = (("effusion_ml", "Chest CT: large pleural effusion", "Chest CT: no pleural effusion"),
            ("laa950_pct", "Chest CT: severe emphysema", "Chest CT: no emphysema"),
            ("ctr", "Chest CT: cardiomegaly", "Chest CT: normal heart size"))
AIRWAY_HU, VESSEL_HU = -500.0, -400.0  # halfway between air / lung (-1000 / -860) and lung / blood (40)
PAIRS = (("lesion", "brain MRI, high lesion load", "brain MRI, no lesions"),
         ("ventricles", "brain MRI of an 85 year old", "brain MRI of a 25 year old"))
#: the phantom attribute and its values behind each CT prompt pair (the calibration reference)
CT_TRUTH = {"effusion_ml": ("effusion", "large", "none"), "laa950_pct": ("emphysema", "severe", "none"),
            "ctr": ("cardiomegaly", "1", "0")}


@dataclass(frozen=True)
class Draw:
    """How each volume is sampled: n per prompt, sampling seeds seed..seed+n-1 (or seed+offset)."""
    n: int
    steps: int | None = None
    guidance: float | None = None
    seed: int = 0

    def params(self, prompt: str, num: int | None = None, offset: int = 0):
        from cfgen.synthesis.generate import SynthParams

        return SynthParams(prompt=prompt, num=self.n if num is None else num, seed=self.seed + offset,
                           steps=self.steps, guidance=self.guidance)


def search_regions(size: int, spacing: float, subjects: int = 8, seed: int = 90000):
    """Where ventricles / lesions can be in any phantom (union over held-out subjects)."""
    from cfgen.phantoms import brain

    vent = les = None
    for i in range(subjects):
        exo, attrs = brain.subject(seed, i)
        v, le = regions(exo, attrs, size, spacing)
        vent, les = (v, le) if vent is None else (vent | v, les | le)
    return vent, les & ~vent


def measure(volume: np.ndarray, vent: np.ndarray, les: np.ndarray, spacing: float) -> dict:
    ml = spacing ** 3 / 1000
    return {"ventricles": float(((volume < CSF_THRESHOLD) & vent).sum() * ml),
            "lesion": float(((volume < LESION_THRESHOLD) & les).sum() * ml)}


def effect(a: list[float], b: list[float]) -> dict:
    a_, b_ = np.asarray(a), np.asarray(b)
    pooled = np.sqrt((a_.var(ddof=1) + b_.var(ddof=1)) / 2) if len(a_) > 1 else float("nan")
    auc = float(np.mean([(x > y) + 0.5 * (x == y) for x in a_ for y in b_]))
    return {"mean_a": float(a_.mean()), "mean_b": float(b_.mean()),
            "cohens_d": float((a_.mean() - b_.mean()) / pooled) if pooled else float("inf"), "p_a_gt_b": auc}


def label_measures(labels: np.ndarray, image: np.ndarray, names: list[str], spacing: float) -> dict:
    """Labelled volumes (mL) and the share of labelled voxels the image shows dark."""
    ml, out = spacing ** 3 / 1000, {}
    for key, name, threshold in (("ventricles", "ventricles", CSF_THRESHOLD), ("lesion", "lesions", LESION_THRESHOLD)):
        if name in names:
            where = labels == names.index(name) + 1
            out[f"{key}_labels"] = float(where.sum() * ml)
            out[f"{key}_dark"] = float((image[where] < threshold).mean()) if where.any() else float("nan")
    return out


def conditional(base, draw: Draw) -> dict:
    from cfgen.synthesis.generate import synthesize
    from cfgen.models.synth import label_names

    spacing = float(base.entry.synth.get("spacing", 3.0))
    names = label_names(base.entry)
    vent, les = search_regions(base.entry.resolution, spacing)
    out, dark = {}, []
    for attribute, prompt_a, prompt_b in PAIRS:
        sides = []
        for prompt in (prompt_a, prompt_b):
            t0 = time.perf_counter()
            vols = synthesize(base, None, draw.params(prompt))
            rows = [{**measure(v.image, vent, les, spacing),
                     **(label_measures(v.labels, v.image, names, spacing) if v.labels is not None else {})} for v in vols]
            sides.append(rows)
            dark += rows
            print(f"  {prompt!r}: {draw.n} volumes in {time.perf_counter() - t0:.0f} s", flush=True)
        for key in (attribute, f"{attribute}_labels"):
            if key in sides[0][0]:
                out[key] = {"a": prompt_a, "b": prompt_b, "n": draw.n,
                            **effect(*([r[key] for r in side] for side in sides))}
    if names:
        out["agreement"] = {k: float(np.nanmean([r[k] for r in dark if k in r]))
                            for k in ("ventricles_dark", "lesion_dark") if any(k in r for r in dark)}
    return out


def mask_from(base, draw: Draw, n: int, seed: int = 90000) -> dict:
    """Held-out phantoms' anatomy fixed (--mask-from): is the image generated around it?"""
    import nibabel as nib

    from cfgen.phantoms import brain
    from cfgen.phantoms.brain_dataset import caption_of
    from cfgen.synthesis.generate import read_anatomy, synthesize
    from cfgen.models.synth import label_names

    names = label_names(base.entry)
    size, spacing = base.entry.resolution, float(base.entry.synth.get("spacing", 3.0))
    res = {"fixed": [], "free": [], "phantom": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            exo, attrs = brain.subject(seed, i, brain.BrainPrevalence(ms=1.0))
            maps = brain.tissue_maps(exo, attrs, size, spacing)
            lab = brain.anatomy_labels(maps, names)
            path = Path(tmp) / f"anatomy-{i}.nii.gz"
            nib.save(nib.Nifti1Image(lab, brain.affine(size, spacing)), path)
            p = draw.params(caption_of(attrs), num=1, offset=i)
            fixed = synthesize(base, None, p, fixed=read_anatomy(path, base))[0]
            free = synthesize(base, None, p)[0]
            real = brain.acquire(brain.compose(maps), exo, spacing)
            for key, img in (("fixed", fixed.image), ("free", free.image), ("phantom", real)):
                res[key].append(label_measures(lab, img, names, spacing))
    return {key: {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0] if k.endswith("_dark")}
            for key, rows in res.items()}


def ct_world(base, world: str) -> bool:
    if world == "auto":
        return bool(base.entry.defaults.get("window"))
    return world == "ct"


def _hu(unit: np.ndarray, base) -> np.ndarray:
    from cfgen.io.intensity import window_map

    return window_map(base.entry.defaults["window"]).from_model(unit)


def lung_hu(hu: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Median and 10-90% spread (HU) of the voxels labelled lung (the CT measures' lung ids: the lobes)."""
    from cfgen.evaluation.ct import parse_labels

    q = np.percentile(hu[np.isin(labels, parse_labels(None)["lung"])], [10, 50, 90])
    return float(q[1]), float(q[2] - q[0])


def ct_phantom_reference(size: int, spacing: float, k: int = 16, seed: int = 90000) -> tuple[dict, list]:
    """The same measures on k held-out phantoms on the base's grid, each drawn with do(A) and do(B)
    of each pair's attribute: what a calibrated model would give; and the lung HU (``lung_hu``) of
    each phantom drawn with no emphysema."""
    from cfgen.evaluation.ct import measures, parse_labels
    from cfgen.io.nifti import centred_affine
    from cfgen.phantoms import ct

    affine, ids = centred_affine(size, spacing), parse_labels(None)
    out: dict = {}
    lungs: list[tuple[float, float]] = []
    for attribute, (field, value_a, value_b) in CT_TRUTH.items():
        sides: list[list[float]] = [[], []]
        for i in range(k):
            exo, attrs = ct.subject(seed, i)
            for side, value in zip(sides, (value_a, value_b)):
                maps = ct.tissue_maps(exo, attrs.with_value(field, value), size, spacing)
                hu, lab = ct.acquire(ct.compose(maps), exo), ct.label_map(maps)
                side.append(measures(hu, lab, affine, ids)[attribute])
                if field == "emphysema" and value == value_b:
                    lungs.append(lung_hu(hu, lab))
        out[attribute] = {"mean_a": float(np.mean(sides[0])), "mean_b": float(np.mean(sides[1])), "k": k}
    return out, lungs


def ct_conditional(base, draw: Draw) -> dict:
    """CT measures of generated volumes on their own generated label maps, per prompt pair, beside
    the phantoms' values for the same pair (calibration) and the lung HU of "no emphysema" volumes."""
    from cfgen.evaluation.ct import measures, parse_labels
    from cfgen.io.nifti import centred_affine
    from cfgen.synthesis.generate import synthesize

    size, spacing = base.entry.resolution, float(base.entry.synth.get("spacing", 12.0))
    affine, ids = centred_affine(size, spacing), parse_labels(None)
    truth, lungs = ct_phantom_reference(size, spacing)
    out: dict = {"lung_hu": {"phantoms": _hu_summary(lungs)}}
    for attribute, prompt_a, prompt_b in CT_PAIRS:
        sides = []
        for prompt in (prompt_a, prompt_b):
            t0 = time.perf_counter()
            vols = synthesize(base, None, draw.params(prompt))
            values = [measures(_hu(v.image, base), v.labels, affine, ids).get(attribute) for v in vols]
            sides.append([np.nan if v is None else v for v in values])
            if attribute == "laa950_pct" and prompt == prompt_b:  # "no emphysema"
                out["lung_hu"]["generated"] = _hu_summary([lung_hu(_hu(v.image, base), v.labels) for v in vols])
            print(f"  {prompt!r}: {draw.n} volumes in {time.perf_counter() - t0:.0f} s", flush=True)
        out[attribute] = {"a": prompt_a, "b": prompt_b, "n": draw.n, "missing": int(np.isnan(sides).sum()),
                          **effect(*([x for x in side if not np.isnan(x)] for side in sides)),
                          "phantoms": truth[attribute]}
    return out


def _hu_summary(rows: list[tuple[float, float]]) -> dict:
    med, spread = np.asarray(rows).T
    return {"n": len(rows), "median_hu": float(med.mean()), "spread_min": float(spread.min()),
            "spread_max": float(spread.max())}


def ct_mask_from(base, draw: Draw, n: int, seed: int = 90000) -> dict:
    """Held-out CT phantoms' label maps fixed: share of airway voxels generated as air, vessels as blood."""
    import nibabel as nib
    from scipy import ndimage

    from cfgen.phantoms import ct
    from cfgen.phantoms.ct_dataset import caption_of
    from cfgen.synthesis.generate import read_anatomy, synthesize

    size, spacing = base.entry.resolution, float(base.entry.synth.get("spacing", 12.0))
    res: dict[str, list] = {"fixed": [], "free": [], "phantom": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            exo, attrs = ct.subject(seed, i)
            lab = ct.label_map(ct.tissue_maps(exo, attrs, size, spacing))
            path = Path(tmp) / f"anatomy-{i}.nii.gz"
            nib.save(nib.Nifti1Image(lab, ct.affine(size, spacing)), path)
            p = draw.params(caption_of(exo, attrs), num=1, offset=i)
            given = read_anatomy(path, base)
            runs = [("fixed", _hu(synthesize(base, None, p, fixed=given)[0].image, base)),
                    ("free", _hu(synthesize(base, None, p)[0].image, base)),
                    ("phantom", ct.render(exo, attrs, size, spacing))]
            if base.entry.synth.get("label_guidance", 1.0) != 1.0:  # the model's default label guidance, and none
                plain = replace(p, label_guidance=1.0)
                runs.append(("fixed, label guidance 1", _hu(synthesize(base, None, plain, fixed=given)[0].image, base)))
            lung = (lab >= ct.LABELS["RUL"]) & (lab <= ct.LABELS["LLL"])  # the lobes' other voxels: the control
            vessel = lab == ct.LABELS["vessel"]
            beside = lung & ndimage.binary_dilation(vessel)  # lobe voxels face to face with a given vessel voxel
            for key, hu in runs:
                res.setdefault(key, [])
                res[key].append({"airway_as_air": float((hu[lab == ct.LABELS["airway"]] < AIRWAY_HU).mean()),
                                 "vessel_as_blood": float((hu[vessel] > VESSEL_HU).mean()),
                                 "lung_as_blood": float((hu[lung] > VESSEL_HU).mean()),
                                 "beside_vessel_as_blood": float((hu[beside] > VESSEL_HU).mean())})
    return {key: {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]} for key, rows in res.items()}


def _print_ct(result: dict) -> None:
    for attr, r in result.items():
        if attr == "lung_hu":
            for who, h in r.items():
                print(f"  lung HU, 'no emphysema', {who} (n {h['n']}): median {h['median_hu']:.0f}, "
                      f"10-90% spread {h['spread_min']:.0f}-{h['spread_max']:.0f}")
            continue
        t = r["phantoms"]
        print(f"  {attr:12s} {r['a']!r} {r['mean_a']:.2f} vs {r['b']!r} {r['mean_b']:.2f}: Cohen's d "
              f"{r['cohens_d']:+.2f} (bar >= 1.5), P(A > B) {r['p_a_gt_b']:.2f}"
              + (f", {r['missing']} volumes without the structure" if r["missing"] else "")
              + f"; phantoms ({t['k']} held-out, do(A) / do(B)) {t['mean_a']:.2f} / {t['mean_b']:.2f}")


def cost(model: str, size: int | None, device: str, prompt: str) -> dict:
    cfgen = [sys.executable, "-m", "cfgen.cli.main", "synth3d", "-p", prompt,
             "-m", model, "--device", device, "-q", "--json"]
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("base (--sr none)", ["--sr", "none"]), ("base + super-resolution", [])]
        if size:
            runs.append((f"base + super-resolution to {size}^3", ["--size", str(size)]))
        for label, extra in runs:
            t0 = time.perf_counter()
            proc = subprocess.run(cfgen + extra + ["-o", str(Path(tmp) / label.split()[0] / str(len(res)))],
                                  capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode:
                raise SystemExit(f"{label}: {proc.stderr.strip()[-500:]}")
            import json

            rep = json.loads(proc.stdout)
            res[label] = {"wall_s": round(wall, 1), "size": rep["params"]["size"],
                          "peak_gpu_memory_gib": rep["timings"].get("peak_gpu_memory_gib")}
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo-brain")
    ap.add_argument("--n", type=int, default=32, help="volumes per prompt (0: cost only)")
    ap.add_argument("--steps", type=int, default=None, help="base sampling steps [default: the model's]")
    ap.add_argument("--guidance", type=float, default=None, help="base guidance scale [default: the model's]")
    ap.add_argument("--seed", type=int, default=0,
                    help="first sampling seed (volumes use seed..seed+n-1; tune on another than the report's 0)")
    ap.add_argument("--size", type=int, default=None, help="also time a run at this output size (GPU: 256)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--world", choices=["auto", "brain", "ct"], default="auto",
                    help="which measures [default: ct for a model with a fixed window (HU), else brain]")
    args = ap.parse_args(argv)
    from cfgen.models.loader import load_model

    base = load_model(args.model, device=args.device, family="latent-diffusion-3d")
    ct = ct_world(base, args.world)
    draw = Draw(args.n, args.steps, args.guidance, args.seed)
    result: dict = {}
    if args.n and ct:
        print(f"conditional CT synthesis, {args.n} volumes per prompt, model {args.model} (base stage):")
        result["conditional"] = ct_conditional(base, draw)
        _print_ct(result["conditional"])
        k = args.n  # ~8 given vessel voxels a phantom at 12 mm: 8 phantoms swung +-0.05
        print(f"--mask-from, {k} held-out CT phantoms' label maps (share of the given voxels at their HU; bar >= 0.8):")
        result["mask_from"] = ct_mask_from(base, draw, k)
        for key, r in result["mask_from"].items():
            print(f"  {key:8s} " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()))
    elif args.n:
        print(f"conditional synthesis, {args.n} volumes per prompt, model {args.model}:")
        result["conditional"] = conditional(base, draw)
        for attr, r in result["conditional"].items():
            if attr == "agreement":
                print("  labels and image agree: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()))
                continue
            print(f"  {attr:17s} {r['a']!r} {r['mean_a']:.2f} mL vs {r['b']!r} {r['mean_b']:.2f} mL: "
                  f"Cohen's d {r['cohens_d']:+.2f}, P(A > B) {r['p_a_gt_b']:.2f}")
        if "agreement" in result["conditional"]:
            k = min(args.n, 8)
            print(f"--mask-from, {k} held-out phantoms' anatomy (share of their labelled voxels dark in the image):")
            result["mask_from"] = mask_from(base, draw, k)
            for key, r in result["mask_from"].items():
                print(f"  {key:8s} " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()))
    print("cost (CLI, process start included):")
    prompt = CT_PAIRS[0][1] if ct else "brain MRI of an 85 year old"  # demo-brain refuses lesion prompts
    result["cost"] = cost(args.model, args.size, args.device, prompt)
    for label, r in result["cost"].items():
        mem = f", peak GPU memory {r['peak_gpu_memory_gib']:.2f} GiB" if r["peak_gpu_memory_gib"] else ""
        print(f"  {label:40s} {r['size']}^3 in {r['wall_s']:.1f} s{mem}")
    return result


if __name__ == "__main__":
    main()
