"""Image-caption training data from a CSV, validated before training starts.

Columns: ``image`` (or CheXpert's ``Path``) and ``caption`` (or another column named by
``caption_column``; a super-resolution stage needs none); a 3D base stage that generates anatomy
label channels also needs ``labels``: an integer label NIfTI on the image's grid whose value k
is the k-th name of the model's ``[synth] labels``; with ``template`` the captions are made from label columns the way
`cfgen caption` makes them. ``region_columns`` (`finetune --region-weight COLUMN=W`) name columns of
mask files on the image's grid (nonzero = region; an empty cell: no region in that image) whose
regions the loss weighs more. Relative paths are resolved against the CSV's folder. Rows with a
missing file, an empty caption or a label / mask file whose header shows another grid than its
image's are reported and left out before the first step; an image that
fails to decode during training is skipped in its batch and counted, never a crash mid-epoch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from cfgen.errors import InputError
from cfgen.io.tables import image_column, read_csv


@dataclass
class Sample:
    row: int
    path: Path
    caption: str
    labels: Path | None = None
    regions: dict[str, Path] = field(default_factory=dict)


def read_training_csv(csv_path: Path, caption_column: str = "caption", template: str | None = None,
                      uncertain: str = "ignore", need_captions: bool = True,
                      label_column: str | None = None,
                      region_columns: Sequence[str] = ()) -> tuple[list[Sample], list[dict]]:
    """(usable samples, error items for the report)."""
    from cfgen.captions.templates import UncertainPolicy, caption_rows

    columns, rows = read_csv(csv_path)
    image_col = image_column(columns)
    if image_col is None:
        raise InputError(f"{csv_path}: needs an 'image' (or 'Path') column; columns found: {', '.join(columns)}")
    if template:
        captions = caption_rows(rows, columns, template, str(csv_path), UncertainPolicy(uncertain))
    elif caption_column in columns:
        captions = [r[caption_column] for r in rows]
    elif not need_captions:
        captions = ["-"] * len(rows)
    else:
        raise InputError(f"{csv_path}: no '{caption_column}' column (make one with `cfgen caption`, or pass "
                         f"--template); columns found: {', '.join(columns)}")
    if label_column and label_column not in columns:
        raise InputError(f"{csv_path}: this model generates label channels and needs a '{label_column}' column "
                         f"(label NIfTI per image); columns found: {', '.join(columns)}")
    missing = [c for c in region_columns if c not in columns]
    if missing:
        raise InputError(f"{csv_path}: --region-weight {missing[0]}=...: no such column (a column of mask files); "
                         f"columns found: {', '.join(columns)}")
    samples, errors = [], []
    for i, (row, cap) in enumerate(zip(rows, captions), start=2):
        path = csv_path.parent / row[image_col]
        labels = csv_path.parent / row[label_column] if label_column and row[label_column] else None
        regions = {c: csv_path.parent / row[c] for c in region_columns if row[c]}
        absent = [row[c] for c, p in regions.items() if not p.is_file()]
        problem = None
        if not row[image_col]:
            problem = "the image cell is empty"
        elif not path.is_file():
            problem = f"{row[image_col]}: file not found"
        elif not cap.strip():
            problem = "empty caption"
        elif label_column and (labels is None or not labels.is_file()):
            problem = f"{row[label_column] or 'the labels cell is empty'}: label file not found"
        elif absent:
            problem = f"{absent[0]}: region mask file not found"
        else:
            problem = _off_grid(path, {**({label_column: labels} if labels else {}), **regions}, row)
        if problem:
            errors.append({"input": row[image_col], "row": i, "status": "error",
                           "error": f"{csv_path} line {i}: {problem}", "outputs": {}, "metrics": {}})
        else:
            samples.append(Sample(row=i, path=path, caption=cap.strip(), labels=labels, regions=regions))
    if not samples:
        raise InputError(f"{csv_path}: no usable rows ({len(errors)} bad)")
    return samples, errors


def _off_grid(image: Path, masks: dict[str, Path], row: dict) -> str | None:
    """A row's label / region files whose headers show another grid than its image's (NIfTI and PNG
    headers only: nothing decoded), so a mask column at the wrong resolution is reported before training."""
    from cfgen.io.scan import header_shape

    if not masks:
        return None
    own = header_shape(image)
    for column, path in masks.items():
        other = header_shape(path)
        if own and other and own[0] == other[0] and own[1] != other[1]:
            return f"{row[column]}: grid {other[1]} is not the image's {own[1]}"
    return None


class ImageCaptionDataset:
    """Map-style dataset: (C, R, R) tensors in the model's range plus captions (and, with
    ``region_weights``, a (1, R, R) loss weight map: the largest weight of the regions at each pixel, else 1)."""

    def __init__(self, samples: list[Sample], grid, channels: int,
                 value_range: tuple[float, float], window: str = "auto", labels: int = 0,
                 label_encoding="one-hot", region_weights: dict[str, float] | None = None):
        self.samples = samples
        self.grid, self.channels, self.value_range = grid, channels, value_range  # grid: editing.grid.ModelGrid
        self.window, self.labels, self.label_encoding = window, labels, label_encoding
        self.region_weights = region_weights or {}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from cfgen.editing.prepare import label_channels, to_model
        from cfgen.errors import CfgenError
        from cfgen.io.scan import read_scan

        s = self.samples[i]
        try:
            scan = read_scan(s.path)
            prep = to_model(scan, self.grid, self.channels, self.value_range, self.window)
            x = prep.x[0]
            if self.labels:
                import torch

                lab = read_scan(s.labels).pixels[0]
                x = torch.cat([x, label_channels(lab, s.labels, scan, prep, self.labels, self.value_range,
                                                  self.label_encoding)])
            item = {"pixels": x, "caption": s.caption, "row": s.row}
            if self.region_weights:
                item["weights"] = self._weights(s, scan, prep, x)
        except CfgenError as exc:
            return {"error": str(exc), "row": s.row}
        return item

    def _weights(self, s: Sample, scan, prep, x):
        import torch

        from cfgen.editing.masks import region_on_model

        w = torch.ones((1,) + tuple(x.shape[1:]))
        for column, path in s.regions.items():
            inside = region_on_model(path, scan, prep)[0] > 0
            w = torch.where(inside, w.clamp_min(self.region_weights[column]), w)
        return w


def collate(batch: list[dict]) -> dict:
    import torch

    good = [b for b in batch if "pixels" in b]
    bad = [b for b in batch if "error" in b]
    out = {"errors": bad, "captions": [b["caption"] for b in good]}
    out["pixels"] = torch.stack([b["pixels"] for b in good]) if good else None
    if good and "weights" in good[0]:
        out["weights"] = torch.stack([b["weights"] for b in good])
    return out
