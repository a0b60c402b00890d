"""Edits and inversions with a model that generates anatomy label channels with the image
(a `synth3d` base whose ``[synth]`` table names ``labels``, e.g. demo-ct).

Such a model was trained on image and labels together, so it is inverted with both: the scan's
integer label map (``--labels``, or a ``labels`` column in a batch CSV; value k = the k-th label
name, on the scan's grid) is encoded as the model's label channels beside the image, the pair is
inverted and regenerated under the target prompt, and the regenerated label channels are the
counterfactual's anatomy: written as ``counterfactual_labels.nii.gz`` (inside the edit mask the
model's labels, outside the scan's own), the map evaluate's CT measures read for the
counterfactual (its CTR needs the counterfactual's heart). Invert reports how well the labels
come back (``label_agreement``, ``label_dice``).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cfgen.errors import InputError, ModelError, UsageError
from cfgen.models.synth import label_encoding, label_names

if TYPE_CHECKING:
    import torch

    from cfgen.editing.params import EditParams
    from cfgen.editing.prepare import Prepared
    from cfgen.io.scan import Scan
    from cfgen.models.loader import LoadedModel

#: largest distance (mm) between the label map's and the scan's voxel-to-world affines
AFFINE_TOLERANCE_MM = 0.01


def check_lossless(model: "LoadedModel") -> None:
    """Label channels go through the first stage unchanged only in voxel space or through the Haar
    transform; a learned autoencoder would blur them."""
    if label_names(model.entry) and not getattr(model.vae, "lossless", False):
        raise ModelError(f"{model.folder}: label channels need a voxel-space or Haar-wavelet base stage "
                         "(a learned autoencoder/ would blur them)")


def check_params(p: "EditParams", entry, command: str, batch: bool) -> None:
    """Before loading: a labelled model needs the scan's label map, an image-only one takes none."""
    names = label_names(entry)
    if p.labels and not names:
        raise UsageError(f"--labels {p.labels}: model '{entry.name}' generates no anatomy label channels "
                         "(its [synth] table names no labels); leave --labels out")
    if names and not p.labels and not batch:
        raise UsageError(f"--model {entry.name}: generates {len(names)} anatomy labels with the image "
                         f"({', '.join(names)}), so {command} needs the scan's label map: --labels LABELS.nii.gz "
                         f"(integer, value k = the k-th name, on the scan's grid; with --batch a 'labels' column)")
    if p.labels:
        check_file(p.labels, "--labels")


def check_file(path: str, given_as: str) -> None:
    if not Path(path).is_file():
        raise InputError(f"{path}: label map not found ({given_as} takes an integer label NIfTI on the scan's grid)")


def attach(model: "LoadedModel", scan: "Scan", prep: "Prepared", path: str) -> None:
    """``prep.labels``: the scan's label map from ``path`` as (1, label channels, R, R, R) on the
    model's grid and in its range; ``prep.label_map``: the map as given (uint8, the scan's grid)."""
    from cfgen.editing.prepare import label_channels
    from cfgen.io.geometry import volume_affine
    from cfgen.io.scan import read_scan

    lab = read_scan(path)
    if lab.spatial_dims != 3 or lab.channels != 1:
        raise InputError(f"{path}: a label map must be one 3D volume")
    a, b = volume_affine(lab), volume_affine(scan)
    if a is not None and b is not None and lab.pixels.shape == scan.pixels.shape:
        corners = np.array([[i, j, k, 1] for i in (0, lab.pixels.shape[1]) for j in (0, lab.pixels.shape[2])
                            for k in (0, lab.pixels.shape[3])], dtype=float)
        gap = float(np.abs((corners @ a.T - corners @ b.T)[:, :3]).max())
        if gap > AFFINE_TOLERANCE_MM:
            raise InputError(f"{path}: label map is not on the scan's grid {scan.path} (their affines differ by "
                             f"{gap:.2f} mm)")
    e = model.entry
    prep.labels = label_channels(lab.pixels[0], path, scan, prep, len(label_names(e)), e.value_range,
                                 label_encoding(e.synth))[None]
    prep.label_map = np.rint(lab.pixels[0]).astype(np.uint8)


def split(y: "torch.Tensor | None", model: "LoadedModel") -> tuple:
    """(n, image + label channels, ...) -> (image channels, label channels or None)."""
    if y is None or not label_names(model.entry):
        return y, None
    c = model.entry.channels
    return y[:, :c], y[:, c:]


def to_scan(channels: "torch.Tensor", prep: "Prepared", model: "LoadedModel") -> np.ndarray:
    """Label channels (1, L, R, R, R) in the model's range -> uint8 map on the scan's grid."""
    from cfgen.editing.prepare import labels_to_scan

    e = model.entry
    return labels_to_scan(channels, prep, len(label_names(e)), e.value_range, label_encoding(e.synth))


def metrics(reference: np.ndarray, got: np.ndarray, count: int) -> dict[str, float]:
    """Share of voxels with the same label, and the mean Dice over the labels in ``reference``."""
    dice = []
    for k in range(1, count + 1):
        a, b = reference == k, got == k
        if a.any():
            dice.append(2.0 * float((a & b).sum()) / float(a.sum() + b.sum()))
    return {"label_agreement": float((reference == got).mean()),
            "label_dice": float(np.mean(dice)) if dice else float("nan")}
