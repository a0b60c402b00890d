"""Writing a phantom data set: images, CheXpert-style labels, true counterfactuals and masks.

Layout of ``DIR``::

  images/cxr_00000.png                      the factual radiographs (8-bit gray)
  labels.csv                                Path + CheXpert columns + true values (CTR, ...)
  counterfactuals/cxr_00000/<attr>-<value>.png       render(u, attributes with <attr> flipped)
  counterfactuals/cxr_00000/<attr>-<value>.mask.png  where it differs from the factual
  counterfactuals/cxr_00000/<attr>-<value>.floor.png the ideal editor's output: the true change
                                            with an independent noise draw inside the mask (the
                                            floor no editor can beat: it cannot know the noise)
  counterfactuals/cxr_00000/<attr>-<value>.sample_floor.png  the same for an editor that samples
                                            what the scan and caption do not show (where added
                                            devices sit, an added effusion's side and size, the
                                            new CTR): cxr.sample_floor_edit
  counterfactuals.csv                       one row per (image, flipped attribute)
  edit_jobs.csv                             a `cfgen edit --batch` job list (label, target and
                                            true_* columns carried into the report for evaluate)
  report.json                               generator, parameters, prevalences, timings

Image i is drawn from SeedSequence([seed, i]) alone, so any image (and any counterfactual) can
be rendered again without the others.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from cfgen import __version__
from cfgen.captions.templates import caption_rows
from cfgen.io.atomic import atomic_path, write_json
from cfgen.io.tables import write_csv
from cfgen.phantoms import cxr

LABEL_COLUMNS = ["Path", "Sex", "Age", "No Finding", "Cardiomegaly", "Pleural Effusion", "Support Devices",
                 "effusion_severity", "ctr", "pacemaker", "seed", "index"]
CF_COLUMNS = ["image", "attribute", "factual", "counterfactual_value", "counterfactual", "mask", "floor",
              "sample_floor", "mask_fraction", "source_prompt", "prompt"]
#: a `cfgen edit --batch` job list; label/target/true_* are carried into the report for `cfgen evaluate`
JOB_COLUMNS = ["image", "prompt", "source_prompt", "output", "label", "target", "true_counterfactual", "true_mask",
               "floor_counterfactual"]
CXR_JOB_COLUMNS = JOB_COLUMNS + ["sample_floor_counterfactual"]


def _save_png(path: Path, img01: np.ndarray, note: str) -> None:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", f"cfgen {__version__}")
    info.add_text("Description", f"SYNTHETIC cfgen phantom: {note}")
    info.add_text("cfgen:synthetic", "YES")
    arr = np.round(np.clip(img01, 0, 1) * 255).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG", pnginfo=info)


def run_items(fn, jobs: list, workers: int, on_item=None, min_parallel: int = 32, chunksize: int = 16) -> list:
    """``[fn(job) for job in jobs]``, in processes when there are enough jobs, in order."""
    results = []
    if workers > 1 and len(jobs) >= min_parallel:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for res in pool.map(fn, jobs, chunksize=chunksize):
                results.append(res)
                if on_item:
                    on_item()
    else:
        for job in jobs:
            results.append(fn(job))
            if on_item:
                on_item()
    return results


def edit_job(r: dict, label: str, target: str) -> dict:
    """A `cfgen edit --batch` row for one counterfactual row (JOB_COLUMNS)."""
    stem = Path(r["image"]).name.split(".")[0]
    return {"image": r["image"], "prompt": r["prompt"], "source_prompt": r["source_prompt"],
            "output": f"{stem}_{r['attribute']}-{r['counterfactual_value']}", "label": label, "target": target,
            "true_counterfactual": r["counterfactual"], "true_mask": r["mask"], "floor_counterfactual": r["floor"]}


def _cxr_job(r: dict) -> dict:
    target = "0" if r["counterfactual_value"] in ("0", "none") else "1"
    return {**edit_job(r, cxr.LABEL_OF[r["attribute"]], target), "sample_floor_counterfactual": r["sample_floor"]}


def write_tables(out: Path, results: list, label_columns: list[str], cf_columns: list[str] | None,
                 job_of, job_columns: list[str] = JOB_COLUMNS) -> tuple[list[dict], list[dict]]:
    """labels.csv, and with counterfactuals counterfactuals.csv and edit_jobs.csv, from the
    per-subject (label row, counterfactual rows) results."""
    labels = [r[0] for r in results]
    cf_rows = [row for r in results for row in r[1]]
    write_csv(out / "labels.csv", label_columns, labels)
    if cf_columns is not None:
        write_csv(out / "counterfactuals.csv", cf_columns, cf_rows)
        write_csv(out / "edit_jobs.csv", job_columns, [job_of(r) for r in cf_rows])
    return labels, cf_rows


def caption_of(exo: cxr.CXRExogenous, attrs: cxr.CXRAttributes) -> str:
    row = cxr.labels_row(exo, attrs)
    return caption_rows([row], list(row), "chexpert", "phantom")[0]


def _one(args: tuple) -> tuple[dict, list[dict]]:
    out, seed, index, size, prev, with_cf = args
    exo, attrs = cxr.subject(seed, index, prev)
    stem = f"cxr_{index:05d}"
    rel = f"images/{stem}.png"
    clean = cxr.render_clean(exo, attrs, size)
    factual = cxr.acquire(clean, exo)
    _save_png(out / rel, factual, f"seed {seed} index {index} {asdict(attrs)}")
    label = {"Path": rel, **cxr.labels_row(exo, attrs), "seed": str(seed), "index": str(index)}
    cfs = []
    if with_cf:
        for attr in cxr.ATTRIBUTES:
            alt = attrs.flipped(attr, exo)
            name = f"{attr}-{alt.value(attr)}"
            cf_rel, mask_rel = f"counterfactuals/{stem}/{name}.png", f"counterfactuals/{stem}/{name}.mask.png"
            clean_alt = cxr.render_clean(exo, alt, size)
            mask = cxr.mask_between(clean, clean_alt)
            floor_rel = f"counterfactuals/{stem}/{name}.floor.png"
            _save_png(out / cf_rel, cxr.acquire(clean_alt, exo), f"true counterfactual {name} of {stem}")
            _save_png(out / mask_rel, mask.astype(np.float32), f"difference mask {name} of {stem}")
            _save_png(out / floor_rel, cxr.ideal_edit(factual, clean_alt, exo, mask),
                      f"ideal edit {name} of {stem} (true change, independent noise inside the mask)")
            sample_rel = f"counterfactuals/{stem}/{name}.sample_floor.png"
            _save_png(out / sample_rel, cxr.sample_floor_edit(factual, clean, exo, attrs, attr),
                      f"ideal sampling edit {name} of {stem} (what the scan does not show drawn anew)")
            cfs.append({"image": rel, "attribute": attr, "factual": attrs.value(attr),
                        "counterfactual_value": alt.value(attr), "counterfactual": cf_rel, "mask": mask_rel,
                        "floor": floor_rel, "sample_floor": sample_rel,
                        "mask_fraction": f"{mask.mean():.5f}", "source_prompt": caption_of(exo, attrs),
                        "prompt": caption_of(exo, alt)})
    return label, cfs


def write_cxr_dataset(out: Path, n: int, seed: int = 0, size: int = 256,
                      prev: cxr.Prevalence = cxr.Prevalence(), counterfactuals: bool = True,
                      workers: int | None = None, start: int = 0, on_item=None) -> dict:
    """Write ``n`` chest phantoms (indices start..start+n-1) and return the report."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or min(4, os.cpu_count() or 1)
    jobs = [(out, seed, i, size, prev, counterfactuals) for i in range(start, start + n)]
    results = run_items(_one, jobs, workers, on_item)
    labels, cf_rows = write_tables(out, results, LABEL_COLUMNS, CF_COLUMNS if counterfactuals else None, _cxr_job,
                                   CXR_JOB_COLUMNS)
    prevalence = {
        "effusion": float(np.mean([bool(r["Pleural Effusion"]) for r in labels])) if labels else 0.0,
        "cardiomegaly": float(np.mean([bool(r["Cardiomegaly"]) for r in labels])) if labels else 0.0,
        "devices": float(np.mean([bool(r["Support Devices"]) for r in labels])) if labels else 0.0,
    }
    report = {
        "schema": 1, "command": "phantoms cxr", "cfgen_version": __version__,
        "params": {"n": n, "start": start, "seed": seed, "size": size, "counterfactuals": counterfactuals,
                   "prevalence": asdict(prev)},
        "seed": seed, "model": None, "device": "cpu",
        "timings": {"total_s": round(time.perf_counter() - t0, 3)},
        "outputs": {"labels": "labels.csv", **({"counterfactuals": "counterfactuals.csv",
                                                  "edit_jobs": "edit_jobs.csv"} if counterfactuals else {})},
        "summary": {"images": len(labels), "counterfactuals": len(cf_rows), "prevalence": prevalence},
    }
    write_json(out / "report.json", report)
    return report
