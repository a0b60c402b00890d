"""The two operations on a scan and the files each writes: ``edit`` and ``invert``."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cfgen.editing import core
from cfgen.editing.core import Outcome
from cfgen.editing.params import AUTOMATIC_MASKS, MASK_MODES, EditParams
from cfgen.editing.prepare import unit
from cfgen.io.atomic import atomic_path
from cfgen.io.scan import Scan, write_scan
from cfgen.io.seg import seg_possible, write_seg
from cfgen.viz.panels import Panel, display_2d, gray, write_difference, write_panel
from cfgen.viz.style import FigureOptions, colour_range, units_for


def _unit_pixels(scan: Scan, outcome: Outcome, pixels: np.ndarray) -> np.ndarray:
    w = outcome.prepared.window
    return unit(w.to_model(pixels), (w.model_low, w.model_high))


def _difference(w, a: np.ndarray, b: np.ndarray, units) -> np.ndarray:
    """b - a (both [0, 1] of the model range) in the figure's units, as fractions of the window's width
    in scan units (through a knee not the model range's fractions), times HU per window for CT."""
    frac = lambda u: w.width_fraction(w.model_low + u * (w.model_high - w.model_low))  # noqa: E731
    return (frac(b) - frac(a)) * units.per_window


def _caption(command: str, params: EditParams) -> str:
    if command == "invert":
        return f"inversion and reconstruction under '{params.source_prompt}' ({params.steps} steps)"
    return (f"'{params.source_prompt}' -> '{params.prompt}' (guidance {params.guidance:g}, "
            f"strength {params.strength:g}, mask {params.mask if params.mask in MASK_MODES else 'file'})")


def _figures(folder: Path, scan: Scan, outcome: Outcome, command: str, params: EditParams,
             fig: FigureOptions) -> tuple[dict, dict]:
    """panel (and for edits difference) in ``fig.format``: the difference in the scan's units on the
    run's one colour scale, the prompts, the mask outline; volumes as three named views."""
    a = _unit_pixels(scan, outcome, scan.pixels)
    b = _unit_pixels(scan, outcome, outcome.pixels)
    mask = None if outcome.mask is None else outcome.mask[0] > 0.5
    views = None
    if scan.spatial_dims == 3:  # volumes: axial, coronal, sagittal through the centre of the change
        from cfgen.io.geometry import volume_affine
        from cfgen.viz.figures import volume_views

        more = () if mask is None else (mask.astype(np.float32),)
        sa, sb, views = volume_views(a.mean(axis=0), b.mean(axis=0), volume_affine(scan), more)
        a, b = sa[None], sb[None]
        mask = views["more"][0] > 0.5 if more else None
    w = outcome.prepared.window
    units = units_for(scan.meta.get("units"), w.low, w.high)
    vmax = colour_range(fig, command, units)
    second = "counterfactual" if command == "edit" else "reconstruction"
    panel = Panel(display_2d(a), display_2d(b), _difference(w, gray(a), gray(b), units), vmax, units, second,
                  _caption(command, params), mask, views)
    files: dict[str, Path] = {}
    if fig.format == "none":
        return files, {"metrics": {}, "figure": {"format": "none"}}
    if command == "edit":
        files["difference"] = write_difference(panel, folder / f"difference.{fig.format}")
    files["panel"] = write_panel(panel, folder / f"panel.{fig.format}")
    return files, {"metrics": {"difference_vmax": vmax},
                   "figure": {"format": fig.format, "difference_range": vmax, "units": units.label}}


def _write_mask(folder: Path, scan: Scan, mask: np.ndarray) -> Path:
    """The edit mask used (1 = may change): PNG for images, NIfTI on the scan's grid for volumes."""
    from PIL import Image

    if scan.spatial_dims == 3:  # float32, not the scan's type: an int16 CT would round the feathered edge away
        return write_scan(replace(scan, source_dtype="float32"), mask.astype(np.float32), folder / "mask", "nifti",
                          description="edit mask (1 = may change; the blend weight of the counterfactual)")
    target = folder / "mask.png"
    with atomic_path(target) as tmp:
        Image.fromarray(np.round(mask[0] * 255).astype(np.uint8)).save(tmp, format="PNG")
    return target


def _write_labels(folder: Path, scan: Scan, outcome: Outcome, name: str, note: str) -> dict[str, Path]:
    """A labelled model's label map on the scan's grid and affine (uint8 NIfTI), if there is one."""
    if outcome.labels is None:
        return {}
    from cfgen.io.geometry import volume_affine
    from cfgen.io.nifti import write_volume

    affine = volume_affine(scan)
    return {name: write_volume(folder / f"{name}.nii.gz", outcome.labels, np.eye(4) if affine is None else affine, note)}


class EditOp:
    command = "edit"
    finish = staticmethod(core.finish_edit)

    def __init__(self, selector=None):
        self.selector = selector  # the sweep's scorer (a loaded clip or classifier model), or None

    def compute(self, model, scans: list[Scan], params: list[EditParams], on_step=None, preps=None, vae_chunk=None):
        return core.compute_edits(model, scans, params, on_step, preps, vae_chunk, self.selector)

    def write(self, folder: Path, scan: Scan, outcome: Outcome, params: EditParams, fmt: str | None,
              figures: FigureOptions = FigureOptions()) -> tuple[dict[str, Path], dict[str, Any]]:
        desc = f"counterfactual of '{params.source_prompt}' -> '{params.prompt}'"
        cf = write_scan(scan, outcome.pixels, folder / "counterfactual", fmt, description=desc,
                        window=outcome.prepared.window)
        files, metrics = _figures(folder, scan, outcome, "edit", params, figures)
        if outcome.mask is not None:
            files["mask"] = _write_mask(folder, scan, outcome.mask)
            if seg_possible(scan):  # DICOM inputs: also a Segmentation referencing the input
                files["mask_seg"] = write_seg(scan, outcome.mask, folder / "mask.dcm", params.mask in AUTOMATIC_MASKS, desc)
        files.update(_write_labels(folder, scan, outcome, "counterfactual_labels", f"labels of the {desc}"))
        return {"counterfactual": cf, **files}, metrics


class InvertOp:
    command = "invert"
    compute = staticmethod(core.compute_inversions)
    finish = staticmethod(core.finish_inversion)

    def write(self, folder: Path, scan: Scan, outcome: Outcome, params: EditParams, fmt: str | None,
              figures: FigureOptions = FigureOptions()) -> tuple[dict[str, Path], dict[str, Any]]:
        from safetensors.torch import save_file

        meta = {"source_prompt": params.source_prompt, "steps": str(params.steps),
                "strength": str(params.strength), "timesteps": ",".join(map(str, outcome.timesteps)),
                "input": str(scan.path)}
        target = folder / "latents.safetensors"
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in outcome.latents.items()}
        with atomic_path(target) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        rec = write_scan(scan, outcome.pixels, folder / "reconstruction", fmt,
                         description=f"DDIM reconstruction under '{params.source_prompt}'",
                         window=outcome.prepared.window)
        files, metrics = _figures(folder, scan, outcome, "invert", params, figures)
        files.update(_write_labels(folder, scan, outcome, "reconstruction_labels",
                                   f"labels of the reconstruction under '{params.source_prompt}'"))
        return {"latents": target, "reconstruction": rec, **files}, metrics


OPERATIONS = {"edit": EditOp(), "invert": InvertOp()}


def operation(command: str, selector=None):
    """The operation for ``command``; edits with a sweep get their scorer."""
    return EditOp(selector) if command == "edit" and selector is not None else OPERATIONS[command]
