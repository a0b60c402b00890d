"""Image-caption training data from a CSV, validated before training starts.

Columns: ``image`` (or CheXpert's ``Path``) and ``caption`` (or another column named by
``caption_column``); with ``template`` the captions are made from label columns the way
`cfgen caption` makes them. Relative paths are resolved against the CSV's folder. Rows with a
missing file or an empty caption are reported and left out before the first step; an image that
fails to decode during training is skipped in its batch and counted, never a crash mid-epoch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cfgen.errors import InputError
from cfgen.io.tables import read_csv


@dataclass
class Sample:
    row: int
    path: Path
    caption: str


def read_training_csv(csv_path: Path, caption_column: str = "caption", template: str | None = None,
                      uncertain: str = "ignore") -> tuple[list[Sample], list[dict]]:
    """(usable samples, error items for the report)."""
    from cfgen.captions.templates import UncertainPolicy, caption_rows

    columns, rows = read_csv(csv_path)
    image_col = next((c for c in ("image", "Path", "path") if c in columns), None)
    if image_col is None:
        raise InputError(f"{csv_path}: needs an 'image' (or 'Path') column; columns found: {', '.join(columns)}")
    if template:
        captions = caption_rows(rows, columns, template, str(csv_path), UncertainPolicy(uncertain))
    elif caption_column in columns:
        captions = [r[caption_column] for r in rows]
    else:
        raise InputError(f"{csv_path}: no '{caption_column}' column (make one with `cfgen caption`, or pass "
                         f"--template); columns found: {', '.join(columns)}")
    samples, errors = [], []
    for i, (row, cap) in enumerate(zip(rows, captions), start=2):
        path = csv_path.parent / row[image_col]
        problem = None
        if not row[image_col]:
            problem = "the image cell is empty"
        elif not path.is_file():
            problem = f"{row[image_col]}: file not found"
        elif not cap.strip():
            problem = "empty caption"
        if problem:
            errors.append({"input": row[image_col], "row": i, "status": "error",
                           "error": f"{csv_path} line {i}: {problem}", "outputs": {}, "metrics": {}})
        else:
            samples.append(Sample(row=i, path=path, caption=cap.strip()))
    if not samples:
        raise InputError(f"{csv_path}: no usable rows ({len(errors)} bad)")
    return samples, errors


class ImageCaptionDataset:
    """Map-style dataset: (C, R, R) tensors in the model's range plus captions."""

    def __init__(self, samples: list[Sample], resolution: int, channels: int,
                 value_range: tuple[float, float], window: str = "auto", dims: int = 2):
        self.samples = samples
        self.resolution, self.channels, self.value_range = resolution, channels, value_range
        self.window, self.dims = window, dims

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from cfgen.editing.prepare import to_model
        from cfgen.errors import CfgenError
        from cfgen.io.scan import read_scan

        s = self.samples[i]
        try:
            prep = to_model(read_scan(s.path), self.resolution, self.channels, self.value_range,
                            self.window, self.dims)
        except CfgenError as exc:
            return {"error": str(exc), "row": s.row}
        return {"pixels": prep.x[0], "caption": s.caption, "row": s.row}


def collate(batch: list[dict]) -> dict:
    import torch

    good = [b for b in batch if "pixels" in b]
    bad = [b for b in batch if "error" in b]
    out = {"errors": bad, "captions": [b["caption"] for b in good]}
    out["pixels"] = torch.stack([b["pixels"] for b in good]) if good else None
    return out
