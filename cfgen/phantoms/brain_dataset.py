"""Writing a brain phantom data set: NIfTI volumes, labels, true counterfactuals and masks.

Layout of ``DIR``::

  images/brain_00000.nii.gz                           the factual T1 volumes ([0, 1] as int16 x 1/30000, RAS affine)
  anatomy/brain_00000.nii.gz                          with ``anatomy``: integer label map (value k = the k-th
                                                      structure named, where it covers >= half the voxel)
  labels.csv                                          Path, Age, Sex, Diagnosis, lesion_load, MS, true volumes (mL)
                                                      (with ``anatomy``: a ``labels`` column, the label map;
                                                      the column `cfgen finetune` reads for a labelled base)
  counterfactuals/brain_00000/<attr>-<value>.nii.gz   render(u, attributes with <attr> set to <value>)
  counterfactuals/brain_00000/<attr>-<value>.mask.nii.gz   where it differs from the factual (uint8)
  counterfactuals/brain_00000/<attr>-<value>.anatomy.nii.gz   with ``anatomy``: the counterfactual's label map
  counterfactuals.csv                                 one row per (volume, counterfactual), with the true volumes
                                                      (with ``anatomy``: a ``labels`` column, its label map)
  edit_jobs.csv                                       a `cfgen edit --batch` job list (brain captions)
  report.json                                         generator, parameters, timings

In edit_jobs.csv, ``label``/``target`` are numeric for `cfgen evaluate`: Age (years),
lesion_load (mL), Sex (1 = male) and AD (1 = Alzheimer's disease, 0 = cognitively normal).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from cfgen import __version__
from cfgen.captions.templates import caption_rows
from cfgen.io.atomic import write_json
from cfgen.io.nifti import write_volume as save_nifti
from cfgen.phantoms import brain
from cfgen.phantoms.dataset import edit_job, run_items, write_tables

MEASURES = ["icv_ml", "brain_ml", "ventricle_ml", "hippocampus_ml", "lesion_ml"]
LABEL_COLUMNS = ["Path", "Age", "Sex", "Diagnosis", "lesion_load", "MS", *MEASURES, "seed", "index"]
CF_COLUMNS = ["image", "attribute", "factual", "counterfactual_value", "counterfactual", "mask", "floor", "mask_fraction",
              "source_prompt", "prompt", "label", "target", *[f"cf_{m}" for m in MEASURES]]



def caption_of(attrs: brain.BrainAttributes) -> str:
    row = {"Age": f"{attrs.age:g}", "Sex": attrs.sex, "Diagnosis": attrs.diagnosis,
           "lesion_load": f"{attrs.lesion_load:g}"}
    return caption_rows([row], list(row), "brain", "phantom")[0]


def job_label(attribute: str, alt: brain.BrainAttributes) -> tuple[str, str]:
    """(label, numeric target) for `cfgen evaluate`."""
    if attribute == "age":
        return "Age", f"{alt.age:g}"
    if attribute == "lesion_load":
        return "lesion_load", f"{alt.lesion_load:g}"
    if attribute == "sex":
        return "Sex", "1" if alt.sex == "M" else "0"
    return "AD", "1" if alt.diagnosis == "AD" else "0"


def _one(args: tuple) -> tuple[dict, list[dict]]:
    out, seed, index, size, spacing, prev, with_cf, anatomy = args
    exo, attrs = brain.subject(seed, index, prev)
    stem = f"brain_{index:05d}"
    rel = f"images/{stem}.nii.gz"
    aff = brain.affine(size, spacing)
    maps = brain.tissue_maps(exo, attrs, size, spacing)
    clean = brain.compose(maps)
    factual = brain.acquire(clean, exo, spacing)
    save_nifti(out / rel, factual, aff, f"brain phantom seed {seed} index {index}")
    label = {"Path": rel, **brain.labels_row(attrs, brain.measurements(maps, spacing)),
             "seed": str(seed), "index": str(index)}
    legend = "labels " + " ".join(f"{k}={n}" for k, n in enumerate(anatomy, start=1))
    if anatomy:
        label["labels"] = f"anatomy/{stem}.nii.gz"
        save_nifti(out / label["labels"], brain.anatomy_labels(maps, anatomy), aff, legend)
    cfs = []
    if with_cf:
        for attr, alt in brain.counterfactual_attributes(exo, attrs).items():
            name = f"{attr}-{alt.value(attr)}"
            cf_rel, mask_rel = f"counterfactuals/{stem}/{name}.nii.gz", f"counterfactuals/{stem}/{name}.mask.nii.gz"
            alt_maps = brain.tissue_maps(exo, alt, size, spacing)
            clean_alt = brain.compose(alt_maps)
            mask = brain.mask_between(clean, clean_alt)
            save_nifti(out / cf_rel, brain.acquire(clean_alt, exo, spacing), aff, f"true counterfactual {name}")
            save_nifti(out / mask_rel, mask.astype(np.uint8), aff, f"difference mask {name}")
            floor_rel = f"counterfactuals/{stem}/{name}.floor.nii.gz"
            save_nifti(out / floor_rel, brain.ideal_edit(factual, clean_alt, exo, mask, spacing), aff,
                       f"ideal edit {name} (true change, independent noise inside the mask)")
            meas = brain.measurements(alt_maps, spacing)
            label_name, target = job_label(attr, alt)
            extra = {}
            if anatomy:  # the anatomy the counterfactual should have (e.g. older: larger ventricles)
                extra["labels"] = f"counterfactuals/{stem}/{name}.anatomy.nii.gz"
                save_nifti(out / extra["labels"], brain.anatomy_labels(alt_maps, anatomy), aff, legend)
            cfs.append({**extra, "label": label_name, "target": target, "image": rel, "attribute": attr, "factual": attrs.value(attr),
                        "counterfactual_value": alt.value(attr), "counterfactual": cf_rel, "mask": mask_rel,
                        "floor": floor_rel, "mask_fraction": f"{mask.mean():.5f}", "source_prompt": caption_of(attrs),
                        "prompt": caption_of(alt), **{f"cf_{k}": f"{v:.2f}" for k, v in meas.items()}})
    return label, cfs


def write_brain_dataset(out: Path, n: int, seed: int = 0, size: int = 64, spacing: float = 3.0,
                        prev: brain.BrainPrevalence = brain.BrainPrevalence(), counterfactuals: bool = True,
                        workers: int | None = None, start: int = 0, on_item=None,
                        anatomy: tuple[str, ...] = ()) -> dict:
    """Write ``n`` brain phantoms (indices start..start+n-1) and return the report; ``anatomy``
    names the structures (brain.ANATOMY) written as label maps, in label order."""
    anatomy = brain.check_anatomy(anatomy)
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or min(4, os.cpu_count() or 1)
    jobs = [(out, seed, i, size, spacing, prev, counterfactuals, anatomy) for i in range(start, start + n)]
    results = run_items(_one, jobs, workers, on_item, min_parallel=4, chunksize=1)
    columns = LABEL_COLUMNS + (["labels"] if anatomy else [])
    cf_columns = CF_COLUMNS + (["labels"] if anatomy else []) if counterfactuals else None
    labels, cf_rows = write_tables(out, results, columns, cf_columns,
                                   lambda r: edit_job(r, r["label"], r["target"]))
    report = {
        "schema": 1, "command": "phantoms brain", "cfgen_version": __version__,
        "params": {"n": n, "start": start, "seed": seed, "size": size, "spacing_mm": spacing,
                   "counterfactuals": counterfactuals, "prevalence": asdict(prev), "anatomy": list(anatomy)},
        "seed": seed, "model": None, "device": "cpu",
        "timings": {"total_s": round(time.perf_counter() - t0, 3)},
        "outputs": {"labels": "labels.csv", **({"counterfactuals": "counterfactuals.csv",
                                                  "edit_jobs": "edit_jobs.csv"} if counterfactuals else {})},
        "summary": {"images": len(labels), "counterfactuals": len(cf_rows),
                    "mean_age": float(np.mean([float(r["Age"]) for r in labels])) if labels else None,
                    "ms_fraction": float(np.mean([r["MS"] == "1" for r in labels])) if labels else None},
    }
    write_json(out / "report.json", report)
    return report

