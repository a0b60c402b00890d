"""Writing a chest CT phantom data set: NIfTI volumes in HU, label maps, true counterfactuals.

Layout of ``DIR``::

  images/ct_00000.nii.gz                             the factual CT (int16 HU, RAS affine, mm); with
                                                     ``fmt="dicom"`` a CT series folder images/ct_00000/
                                                     (so are the counterfactuals and floors)
  anatomy/ct_00000.nii.gz                            its label map (uint8; cfgen.phantoms.ct.LABELS:
                                                     lobes 1-5, airway 6, vessel 7, heart 8, effusion 9)
  labels.csv                                         Path, labels, Age, Sex, effusion, effusion_side,
                                                     emphysema, emphysema_type, Cardiomegaly, nodules and
                                                     the true effusion_ml, lung_ml, laa950_pct, ctr
  counterfactuals/ct_00000/<attr>-<value>.nii.gz     render(u, attributes with <attr> set to <value>)
  counterfactuals/ct_00000/<attr>-<value>.mask.nii.gz     where it differs from the factual by > 20 HU
  counterfactuals/ct_00000/<attr>-<value>.floor.nii.gz    the ideal editor (true change, other noise)
  counterfactuals/ct_00000/<attr>-<value>.anatomy.nii.gz  the counterfactual's label map
  counterfactuals.csv, edit_jobs.csv, report.json    as the other phantom worlds; edit_jobs.csv carries
                                                     ``labels`` (the original's map) for evaluate's CT measures

In edit_jobs.csv, ``label``/``target`` are numeric: effusion_ml and laa950_pct of the true
counterfactual, Cardiomegaly 0/1, nodules (count).
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
from cfgen.io.nifti import write_volume
from cfgen.phantoms import ct
from cfgen.phantoms.dataset import JOB_COLUMNS, edit_job, run_items, write_tables

MEASURES = ["effusion_ml", "lung_ml", "laa950_pct", "ctr"]
LABEL_COLUMNS = ["Path", "labels", "Age", "Sex", "effusion", "effusion_side", "emphysema", "emphysema_type",
                 "Cardiomegaly", "nodules", *MEASURES, "seed", "index"]
CF_COLUMNS = ["image", "attribute", "factual", "counterfactual_value", "counterfactual", "mask", "floor",
              "mask_fraction", "source_prompt", "prompt", "label", "target", "labels", "counterfactual_labels",
              *[f"cf_{m}" for m in MEASURES]]


def labels_row(exo: ct.CTExogenous, attrs: ct.CTAttributes) -> dict[str, str]:
    return {"Age": f"{attrs.age:g}", "Sex": attrs.sex, "effusion": attrs.effusion,
            "effusion_side": exo.effusion_side if attrs.effusion != "none" else "",
            "emphysema": attrs.emphysema, "emphysema_type": exo.emph_type if attrs.emphysema != "none" else "",
            "Cardiomegaly": "1" if attrs.cardiomegaly else "0", "nodules": str(attrs.nodules)}


def caption_of(exo: ct.CTExogenous, attrs: ct.CTAttributes) -> str:
    row = labels_row(exo, attrs)
    return caption_rows([row], list(row), "ct", "phantom")[0]


def job_label(attribute: str, alt: ct.CTAttributes, meas: dict[str, float]) -> tuple[str, str]:
    if attribute == "effusion":
        return "effusion_ml", f"{meas['effusion_ml']:.1f}"
    if attribute == "emphysema":
        return "laa950_pct", f"{meas['laa950_pct']:.2f}"
    if attribute == "cardiomegaly":
        return "Cardiomegaly", "1" if alt.cardiomegaly else "0"
    return "nodules", str(alt.nodules)


def _fmt(meas: dict[str, float]) -> dict[str, str]:
    return {k: f"{v:.3f}" if k == "ctr" else f"{v:.2f}" for k, v in meas.items()}


def _write(out: Path, rel: str, volume: np.ndarray, aff: np.ndarray, note: str) -> str:
    write_volume(out / rel, volume, aff, note)
    return rel


def _hu(out: Path, stem: str, volume: np.ndarray, aff: np.ndarray, note: str, fmt: str, patient: dict) -> str:
    """A CT volume as NIfTI (``stem.nii.gz``) or as a DICOM series (folder ``stem/``)."""
    if fmt == "nifti":
        return _write(out, f"{stem}.nii.gz", volume, aff, note)
    from cfgen.io.dicom_create import write_ct_series

    write_ct_series(volume, aff, out / stem, note, patient)
    return stem


def _one(args: tuple) -> tuple[dict, list[dict]]:
    out, seed, index, size, spacing, prev, with_cf, fmt = args
    exo, attrs = ct.subject(seed, index, prev)
    stem, aff = f"ct_{index:05d}", ct.affine(size, spacing)
    maps = ct.tissue_maps(exo, attrs, size, spacing)
    clean = ct.compose(maps)
    factual, labels = ct.acquire(clean, exo), ct.label_map(maps)
    patient = {"patient_id": f"PHANTOM-{seed}-{index}", "sex": attrs.sex, "age": attrs.age}
    rel = _hu(out, f"images/{stem}", factual, aff, f"CT phantom seed {seed} index {index}", fmt, patient)
    lab = _write(out, f"anatomy/{stem}.nii.gz", labels, aff, "labels lobes 1-5 airway 6 vessel 7 heart 8 effusion 9")
    label = {"Path": rel, "labels": lab, **labels_row(exo, attrs),
             **_fmt(ct.measurements(maps, exo, attrs, spacing, clean, labels)),
             "seed": str(seed), "index": str(index)}
    cfs = []
    for attr, alt in (ct.counterfactual_attributes(exo, attrs).items() if with_cf else ()):
        name, base = f"{attr}-{alt.value(attr)}", f"counterfactuals/{stem}/{attr}-{alt.value(attr)}"
        alt_maps = ct.tissue_maps(exo, alt, size, spacing)
        clean_alt, labels_alt = ct.compose(alt_maps), ct.label_map(alt_maps)
        mask = ct.mask_between(clean, clean_alt)
        meas = ct.measurements(alt_maps, exo, alt, spacing, clean_alt, labels_alt)
        label_name, target = job_label(attr, alt, meas)
        cfs.append({"image": rel, "attribute": attr, "factual": attrs.value(attr), "counterfactual_value": alt.value(attr),
                    "counterfactual": _hu(out, base, ct.acquire(clean_alt, exo), aff, f"true counterfactual {name}", fmt,
                                          patient),
                    "mask": _write(out, f"{base}.mask.nii.gz", mask.astype(np.uint8), aff, f"difference mask {name}"),
                    "floor": _hu(out, f"{base}.floor", ct.ideal_edit(factual, clean_alt, exo, mask), aff,
                                 f"ideal edit {name}", fmt, patient),
                    "counterfactual_labels": _write(out, f"{base}.anatomy.nii.gz", labels_alt, aff,
                                                    f"labels of {name}"),
                    "labels": lab, "mask_fraction": f"{mask.mean():.5f}", "source_prompt": caption_of(exo, attrs),
                    "prompt": caption_of(exo, alt), "label": label_name, "target": target,
                    **{f"cf_{k}": v for k, v in _fmt(meas).items()}})
    return label, cfs


def _job(r: dict) -> dict:
    """Edits are measured with the original's label map (the edit's own anatomy is unknown)."""
    return {**edit_job(r, r["label"], r["target"]), "labels": r["labels"]}


def write_ct_dataset(out: Path, n: int, seed: int = 0, size: int = 64, spacing: float = 6.0,
                     prev: ct.CTPrevalence = ct.CTPrevalence(), counterfactuals: bool = True,
                     workers: int | None = None, start: int = 0, on_item=None, fmt: str = "nifti") -> dict:
    """Write ``n`` chest CT phantoms (indices start..start+n-1) and return the report; ``fmt``
    nifti or dicom (the CT volumes as DICOM CT series; masks and label maps stay NIfTI)."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(out, seed, i, size, spacing, prev, counterfactuals, fmt) for i in range(start, start + n)]
    results = run_items(_one, jobs, workers or min(4, os.cpu_count() or 1), on_item, min_parallel=4, chunksize=1)
    labels, cf_rows = write_tables(out, results, LABEL_COLUMNS, CF_COLUMNS if counterfactuals else None, _job,
                                   JOB_COLUMNS + ["labels"])
    report = {
        "schema": 1, "command": "phantoms ct", "cfgen_version": __version__,
        "params": {"n": n, "start": start, "seed": seed, "size": size, "spacing_mm": spacing,
                   "counterfactuals": counterfactuals, "prevalence": asdict(prev), "format": fmt},
        "seed": seed, "model": None, "device": "cpu", "timings": {"total_s": round(time.perf_counter() - t0, 3)},
        "outputs": {"labels": "labels.csv", **({"counterfactuals": "counterfactuals.csv",
                                                  "edit_jobs": "edit_jobs.csv"} if counterfactuals else {})},
        "summary": {"images": len(labels), "counterfactuals": len(cf_rows),
                    "effusion": float(np.mean([r["effusion"] != "none" for r in labels])) if labels else None},
    }
    write_json(out / "report.json", report)
    return report
