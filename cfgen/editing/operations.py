"""The two operations on a scan and the files each writes: ``edit`` and ``invert``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cfgen.editing import core
from cfgen.editing.core import Outcome
from cfgen.editing.params import EditParams
from cfgen.editing.prepare import unit
from cfgen.io.atomic import atomic_path
from cfgen.io.scan import Scan, write_scan
from cfgen.io.seg import seg_possible, write_seg
from cfgen.viz.panels import diff_scale, display_2d, gray, write_difference_png, write_panel_png


def _unit_pixels(scan: Scan, outcome: Outcome, pixels: np.ndarray) -> np.ndarray:
    w = outcome.prepared.window
    return unit(w.to_model(pixels), (w.model_low, w.model_high))


def _figures(folder: Path, scan: Scan, outcome: Outcome, second: str, write_diff: bool) -> tuple[dict, dict]:
    a = _unit_pixels(scan, outcome, scan.pixels)
    b = _unit_pixels(scan, outcome, outcome.pixels)
    views = None
    if scan.spatial_dims == 3:  # volumes: axial, coronal, sagittal through the centre of the change
        from cfgen.io.geometry import volume_affine
        from cfgen.viz.figures import volume_views

        sa, sb, views = volume_views(a.mean(axis=0), b.mean(axis=0), volume_affine(scan))
        a, b = sa[None], sb[None]
    diff = gray(b) - gray(a)
    vmax = diff_scale(diff)
    files = {}
    if write_diff:
        files["difference"] = write_difference_png(diff, folder / "difference.png", vmax)
    files["panel"] = write_panel_png(display_2d(a), display_2d(b), diff, folder / "panel.png", vmax,
                                     titles=("original", second), views=views)
    return files, {"difference_vmax": vmax}


def _write_mask(folder: Path, scan: Scan, mask: np.ndarray) -> Path:
    """The edit mask used (1 = may change): PNG for images, NIfTI on the scan's grid for volumes."""
    from PIL import Image

    if scan.spatial_dims == 3:
        return write_scan(scan, mask.astype(np.float32), folder / "mask", "nifti",
                          description="edit mask (1 = may change)")
    target = folder / "mask.png"
    with atomic_path(target) as tmp:
        Image.fromarray(np.round(mask[0] * 255).astype(np.uint8)).save(tmp, format="PNG")
    return target


class EditOp:
    command = "edit"
    compute = staticmethod(core.compute_edits)
    finish = staticmethod(core.finish_edit)

    def write(self, folder: Path, scan: Scan, outcome: Outcome, params: EditParams,
              fmt: str | None) -> tuple[dict[str, Path], dict[str, Any]]:
        desc = f"counterfactual of '{params.source_prompt}' -> '{params.prompt}'"
        cf = write_scan(scan, outcome.pixels, folder / "counterfactual", fmt, description=desc,
                        window=outcome.prepared.window)
        files, metrics = _figures(folder, scan, outcome, "counterfactual", write_diff=True)
        if outcome.mask is not None:
            files["mask"] = _write_mask(folder, scan, outcome.mask)
            if seg_possible(scan):  # DICOM inputs: also a Segmentation referencing the input
                files["mask_seg"] = write_seg(scan, outcome.mask, folder / "mask.dcm", params.mask == "auto", desc)
        return {"counterfactual": cf, **files}, metrics


class InvertOp:
    command = "invert"
    compute = staticmethod(core.compute_inversions)
    finish = staticmethod(core.finish_inversion)

    def write(self, folder: Path, scan: Scan, outcome: Outcome, params: EditParams,
              fmt: str | None) -> tuple[dict[str, Path], dict[str, Any]]:
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
        files, metrics = _figures(folder, scan, outcome, "reconstruction", write_diff=False)
        return {"latents": target, "reconstruction": rec, **files}, metrics


OPERATIONS = {"edit": EditOp(), "invert": InvertOp()}
