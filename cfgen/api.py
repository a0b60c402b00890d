"""The Python API: edit and invert one scan from a notebook or a script.

    import cfgen
    model = cfgen.load_model("demo-cxr")                  # reusable across calls
    result = cfgen.edit("scan.png", "Chest X-ray showing Cardiomegaly", model=model, steps=20)
    result.counterfactual, result.difference, result.mask, result.metrics
    result.save("out")                                   # the files `cfgen edit` writes

``scan`` is a path, a numpy array (2D: an image; 3D: a volume in voxel order, with an optional
``affine`` or ``spacing``) or a :class:`cfgen.io.scan.Scan`; ``model`` a models.toml name, a
folder or a loaded model; options are the CLI's (steps, guidance, strength, eta, seed, mask,
mask_threshold, refine_change, window, negative_prompt, inversion, null_text_steps, min_inversion_psnr, solver, attention,
cross_attention, self_attention, sweep, select_by, labels: the scan's label map for a model that
generates anatomy labels, e.g. demo-ct), checked
as the CLI checks them; invert's guidance (of the reconstruction) is 1 unless given. Batches, resuming and
run reports are the CLI's business (``cfgen.editing.batch.run_edits`` from Python).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from cfgen.errors import UsageError
from cfgen.io.scan import Scan, read_scan, write_scan

if TYPE_CHECKING:
    from cfgen.editing.core import Outcome
    from cfgen.editing.params import EditParams
    from cfgen.models.loader import LoadedModel

ScanLike = Union[str, Path, np.ndarray, Scan]
ModelLike = Union[str, Path, "LoadedModel", None]


def load_model(name_or_path: str | Path | None = None, device: str | None = None,
               dtype: str | None = None) -> LoadedModel:
    """A diffusion model (models.toml entry or folder; None: the registry's default), loaded once."""
    from cfgen.models.loader import load_model as _load

    return _load(None if name_or_path is None else str(name_or_path), device=device or "auto",
                 dtype=dtype or "float32")


def as_scan(scan: ScanLike, affine: np.ndarray | None = None, spacing: tuple[float, ...] | None = None) -> Scan:
    """A Scan from a path, a Scan, or a numpy array (2D image: float32 TIFF values; 3D volume:
    NIfTI in voxel order with ``affine``, else a diagonal one from ``spacing`` [default 1 mm])."""
    if isinstance(scan, Scan):
        return scan
    if isinstance(scan, (str, Path)):
        return read_scan(scan)
    arr = np.asarray(scan)
    if arr.ndim not in (2, 3) or not np.issubdtype(arr.dtype, np.number):
        raise UsageError(f"scan: a numpy array must be 2D (an image) or 3D (a volume) of numbers, got "
                         f"{arr.ndim}D {arr.dtype}")
    with tempfile.TemporaryDirectory(prefix="cfgen-array-") as tmp:
        if arr.ndim == 2:
            from PIL import Image

            path = Path(tmp) / "array.tif"
            Image.fromarray(arr.astype(np.float32)).save(path)
        else:
            import nibabel as nib

            if affine is None:
                affine = np.diag([*(spacing or (1.0, 1.0, 1.0)), 1.0])
            path = Path(tmp) / "array.nii.gz"
            nib.save(nib.Nifti1Image(arr.astype(np.float32), np.asarray(affine, dtype=float)), path)
        out = read_scan(path)
    out.path = Path("<array>")
    return out


@dataclass
class Result:
    """One edit or inversion: arrays in the input's shape and units, and the files on request."""

    command: str
    scan: Scan
    params: EditParams
    outcome: Outcome = field(repr=False)
    squeeze: bool = False  # a 2D numpy input: arrays come back (H, W)

    def _shaped(self, a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else (a[0] if self.squeeze else a)

    @property
    def counterfactual(self) -> np.ndarray:
        """edit: the counterfactual; invert: the reconstruction (the scan's units)."""
        return self._shaped(self.outcome.pixels)

    @property
    def difference(self) -> np.ndarray:
        return self._shaped(self.outcome.pixels - self.scan.pixels)

    @property
    def mask(self) -> np.ndarray | None:
        """The edit mask used, in [0, 1] on the scan's grid (None without --mask)."""
        return self._shaped(self.outcome.mask)

    @property
    def labels(self) -> np.ndarray | None:
        """A labelled model's label map of the counterfactual (reconstruction), uint8 on the scan's grid."""
        return self.outcome.labels

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.outcome.metrics)

    def save(self, folder: str | Path, fmt: str | None = None, figure_format: str = "png",
             difference_range: float | None = None) -> dict[str, Path]:
        """The files `cfgen edit` / `cfgen invert` write for one item, into ``folder`` (``fmt``: the
        scan's format [default: the input's]; figures as the CLI's --figure-format, --difference-range)."""
        from cfgen.editing.operations import OPERATIONS
        from cfgen.viz.style import FigureOptions

        figures = FigureOptions(figure_format, difference_range)
        figures.check()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files, _ = OPERATIONS[self.command].write(folder, self.scan, self.outcome, self.params, fmt, figures)
        return files


def _params(model: LoadedModel, options: dict[str, Any], command: str) -> EditParams:
    from cfgen.editing.params import EditParams

    import warnings

    from cfgen.editing.components import prompt_problems

    known = {f.name for f in fields(EditParams)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(f"unknown option(s) {', '.join(unknown)}; options: {', '.join(sorted(known))}")
    p = EditParams.resolve(model.entry.defaults, command, **options)
    p.check()
    for text in dict.fromkeys((p.prompt, p.source_prompt, p.negative_prompt)):
        for problem in prompt_problems(model, text):
            warnings.warn(problem, stacklevel=3)
    return p


def _model(model: ModelLike) -> LoadedModel:
    from cfgen.models.loader import LoadedModel

    return model if isinstance(model, LoadedModel) else load_model(model)


def edit(scan: ScanLike, prompt: str, source_prompt: str | None = None, model: ModelLike = None,
         affine: np.ndarray | None = None, spacing: tuple[float, ...] | None = None, **options: Any) -> Result:
    """The counterfactual of ``scan`` for ``prompt`` (invert under ``source_prompt``, regenerate)."""
    from cfgen.editing import core, labelled
    from cfgen.editing.batch import check_model_options, check_selector, load_selector

    loaded = _model(model)
    p = _params(loaded, {**options, "prompt": prompt, "source_prompt": source_prompt}, "edit")
    labelled.check_params(p, loaded.entry, "edit", batch=False)
    check_selector(p)
    sc = as_scan(scan, affine, spacing)
    check_model_options(p, loaded)
    selector = load_selector(p, loaded)
    return Result("edit", sc, p, core.edit(loaded, sc, p, selector=selector), squeeze=_is_2d_array(scan))


def invert(scan: ScanLike, source_prompt: str | None = None, model: ModelLike = None,
           affine: np.ndarray | None = None, spacing: tuple[float, ...] | None = None, **options: Any) -> Result:
    """DDIM inversion of ``scan`` and its reconstruction (``metrics``: PSNR/SSIM, VAE alone, DDIM alone)."""
    from cfgen.editing import core, labelled
    from cfgen.editing.batch import check_model_options

    loaded = _model(model)
    p = _params(loaded, {**options, "source_prompt": source_prompt}, "invert")
    labelled.check_params(p, loaded.entry, "invert", batch=False)
    check_model_options(p, loaded)
    sc = as_scan(scan, affine, spacing)
    return Result("invert", sc, p, core.invert(loaded, sc, p), squeeze=_is_2d_array(scan))


def evaluate(pairs_or_run: str | Path, out: str | Path, classifier: str | None = None, clip: str | None = None,
             figures: bool = True, seed: int = 0, device: str = "auto", figure_format: str = "png",
             ct_labels: str | None = None) -> dict[str, Any]:
    """`cfgen evaluate` from Python: an edit run's folder / report.json or a pairs CSV, scored into
    ``out``; returns the report (``classifier``: None = the registry's default, "none" = skip)."""
    from cfgen.evaluation.ct import parse_labels
    from cfgen.evaluation.pairs import load_pairs
    from cfgen.evaluation.run import EvalOptions, evaluate as run_evaluate
    from cfgen.models.loader import load_model as _load
    from cfgen.models.registry import load_registry
    from cfgen.viz.style import FigureOptions

    FigureOptions(figure_format).check()
    ids = parse_labels(ct_labels)
    pairs = load_pairs(Path(pairs_or_run))
    name = classifier if classifier is not None else load_registry().default_classifier
    clf = _load(name, device=device, family="classifier", option="classifier") if name and name != "none" else None
    clip_model = _load(clip, device=device, family="clip", option="clip") if clip else None
    params = {"source": str(pairs_or_run), "classifier": name, "clip": clip, "device": device}
    report = run_evaluate(pairs, Path(out), clf, clip_model, EvalOptions(seed=seed, figures=figures, figure_format=figure_format,
                                                                        ct_labels=ids), params)
    return report.data


def _is_2d_array(scan: ScanLike) -> bool:
    return isinstance(scan, np.ndarray) and scan.ndim == 2


__all__ = ["Result", "as_scan", "edit", "evaluate", "invert", "load_model", "read_scan", "write_scan"]
