"""`cfgen synth3d` as a library call: load the stages, generate, write NIfTI + preview + report.

Output folder: ``sample-000/volume.nii.gz`` (the image: intensities in [0, 1], or int16 in the
model's units when its ``[defaults] window`` is fixed, e.g. HU for a CT model), ``labels.nii.gz``
(uint8, value k = the k-th of ``report.params.labels``) when the base generates anatomy,
``base.nii.gz`` (the low-resolution stage), ``preview.png`` (axial, coronal and sagittal mid-slices, named, with their L/R, A/P, S/I edges); one folder per
seed, written atomically, ``volume.nii.gz`` last: a killed run resumes at the first sample without it.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from cfgen.errors import CfgenError, UsageError
from cfgen.io.intensity import IntensityMap, window_map
from cfgen.synthesis.generate import SynthParams, Volume, base_defaults, output_size, synthesize


def _in_units(x: np.ndarray, window: IntensityMap | None) -> np.ndarray:
    """[0, 1] -> the model's fixed window (int16, e.g. HU), or as it is without one."""
    if window is None:
        return x
    return np.round(window.from_model(x)).astype(np.int16)


def _sample_outputs(out: Path, vol: Volume, spacing: float, base_spacing: float, prompt: str, labels: list[str],
                    window: IntensityMap | None = None, dicom: bool = False) -> dict:
    from cfgen.io.nifti import centred_affine, write_volume
    from cfgen.viz.figures import volume_views
    from cfgen.viz.panels import write_views

    folder = out / f"sample-{vol.seed:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    rel = folder.name
    note = f"synth3d seed {vol.seed}: {prompt}"
    outputs = {}
    write_volume(folder / "base.nii.gz", _in_units(vol.base, window), centred_affine(vol.base.shape[0], base_spacing),
                 note)
    outputs["base"] = f"{rel}/base.nii.gz"
    aff = centred_affine(vol.image.shape[0], spacing)
    image = _in_units(vol.image, window)
    metrics = {"mean_intensity": float(image.mean())}
    if vol.labels is not None:
        write_volume(folder / "labels.nii.gz", vol.labels, aff, note)
        outputs["labels"] = f"{rel}/labels.nii.gz"
        voxel_ml = spacing ** 3 / 1000.0
        metrics.update({f"{name}_ml": float((vol.labels == k).sum() * voxel_ml) for k, name in enumerate(labels, 1)})
    strip, _, views = volume_views(vol.image, vol.image, aff)
    write_views(strip, views, folder / "preview.png", note)
    outputs["preview"] = f"{rel}/preview.png"
    if dicom:  # before volume.nii.gz, which marks a finished sample for a resumed run
        from cfgen.io.dicom_create import write_ct_series

        write_ct_series(image, aff, folder / "dicom", note, {"patient_name": "Synthetic^CT", "patient_id": "CFGEN"})
        outputs["dicom"] = f"{rel}/dicom"
    write_volume(folder / "volume.nii.gz", image, aff, note)
    outputs["volume"] = f"{rel}/volume.nii.gz"
    return {"outputs": outputs, "metrics": metrics}


def _load(name: str | None, device: str, dtype: str, option: str):
    from cfgen.models.loader import load_model

    return load_model(name, device=device, dtype=dtype, family="latent-diffusion-3d", option=option)


def run_synth3d(p: SynthParams, out: Path, model: str | None = None, sr: str | None = None,
                mask_from: Path | None = None, device: str = "auto", dtype: str = "float32",
                overwrite: bool = False, on_step: Callable[[], None] | None = None, dicom: bool = False) -> dict:
    """Generate ``p.num`` volumes into ``out``; returns the report (also written to out/report.json).
    ``dicom``: each volume also as a DICOM CT series (models with a fixed HU window only)."""
    import torch

    from cfgen.models.registry import load_registry
    from cfgen.report import RunReport
    from cfgen.synthesis.generate import check_label_guidance, read_anatomy
    from cfgen.models.synth import label_names

    p.check()
    if mask_from is not None and not Path(mask_from).is_file():
        from cfgen.errors import InputError

        raise InputError(f"{mask_from}: label file not found (--mask-from)")
    if p.label_guidance is not None and mask_from is None:
        raise UsageError("--label-guidance: needs --mask-from (it weighs the given labels)")
    t0 = time.perf_counter()
    if model is None:
        model = load_registry().default_synth3d
        if model is None:
            raise UsageError("no --model given and models.toml names no default_synth3d")
    base = _load(model, device, dtype, "--model")
    sr_name = sr
    if sr is None:  # the base's own: an entry name, or a folder relative to the base's folder
        sr_name = base.entry.synth.get("super_resolution")
        if sr_name and (base.folder / sr_name).is_dir():
            sr_name = str((base.folder / sr_name).resolve())
    stage2 = None if sr_name in (None, "none") else _load(sr_name, device, dtype, "--sr")
    p = p.resolved(base_defaults(base.entry), stage2.entry.defaults if stage2 else {})
    if mask_from is None:
        p = replace(p, label_guidance=None)
    elif p.label_guidance != 1.0:
        check_label_guidance(base)
    fixed = read_anatomy(Path(mask_from), base) if mask_from is not None else None
    labels = label_names(base.entry)
    e = base.entry
    base_spacing = float(e.synth.get("spacing", 1.0))
    size = output_size(p, base, stage2)
    spacing = base_spacing * e.resolution / size  # the base's field of view at the output's grid
    window = window_map(e.defaults.get("window"))
    if dicom and window is None:
        raise UsageError(f"--dicom: model '{base.name}' has no fixed [defaults] window, so its volumes are not in "
                         "HU; a DICOM CT series needs HU (write NIfTI, or use a CT model such as demo-ct)")
    if base.fields:  # a tabular model refuses to be asked for what its benchmark found it cannot draw
        from cfgen.models.tabular import check_synthesizable

        check_synthesizable(base.name, base.entry.defaults, p.prompt, base.fields)
    params = {**vars(p), "size": size, "model": model, "sr": stage2.name if stage2 else None,
              "mask_from": str(mask_from) if mask_from else None, "device": device, "dtype": dtype,
              "overwrite": overwrite, "dicom": dicom, "labels": labels, "spacing_mm": spacing,
              "units": f"window {e.defaults['window']} (int16)" if window else "[0, 1]",
              "scheduler": e.scheduler.get("kind", "ddim"),
              "sr_scheduler": stage2.entry.scheduler.get("kind", "ddim") if stage2 else None}
    report = RunReport("synth3d", out, params)
    report.set_model(base.report_info(), base.device)
    report.data["stages"] = {"base": base.report_info(), "super_resolution": stage2.report_info() if stage2 else None}
    report.data["timings"]["model_load_s"] = round(time.perf_counter() - t0, 3)
    if base.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for k in range(p.num):
        seed = p.seed + k
        name = f"sample-{seed:03d}"
        item = {"input": p.prompt, "name": name, "seed": seed, "status": "ok", "error": None, "outputs": {},
                "metrics": {}}
        if (out / name / "volume.nii.gz").is_file() and not overwrite:
            item["status"] = "skipped"
            report.add_item(item)
            continue
        t1 = time.perf_counter()
        try:
            one = SynthParams(**{**vars(p), "num": 1, "seed": seed})
            vol = synthesize(base, stage2, one, fixed, on_step)[0]
            item.update(_sample_outputs(out, vol, spacing, base_spacing, p.prompt, labels, window, dicom))
        except CfgenError as exc:
            item.update(status="error", error=f"{name}: {exc}")
        item["metrics"]["seconds"] = round(time.perf_counter() - t1, 3)
        report.add_item(item)
    if base.device.startswith("cuda"):
        report.data["timings"]["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 3)
    report.data["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    report.html = True
    report.write()
    return report.data
