"""Pairs to score: (factual, counterfactual) plus what is known about the edit.

From an edit run's ``report.json`` (paths relative to its folder; carried CSV columns give
``label``, ``target``, ``true_counterfactual``, ``true_mask``), or from a CSV with columns
``original`` and ``counterfactual`` and optionally ``label``, ``target``, ``true_counterfactual``,
``mask`` (the true-difference region), ``edit_mask`` (the mask the edit used), ``floor_counterfactual``
(the ideal editor's output, which the phantoms write), ``sample_floor_counterfactual`` (the ideal
editor that samples what the scan does not show, chest phantoms), ``labels`` and ``counterfactual_labels`` (CT
label maps of the original and of the counterfactual, for the CT measures, cfgen/evaluation/ct.py),
``source_prompt``, ``prompt`` and ``name``. Relative
paths in a CSV are resolved against the CSV's folder.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cfgen.errors import InputError
from cfgen.io.tables import read_csv

CSV_REQUIRED = ("original", "counterfactual")


@dataclass
class Pair:
    name: str
    original: Path
    counterfactual: Path
    truth: Path | None = None
    region: Path | None = None
    label: str | None = None
    target: float | None = None
    source_prompt: str = ""
    prompt: str = ""
    error: str | None = None  # set when the pair cannot be scored (a failed edit, a bad row)
    edit_mask: Path | None = None  # the mask the edit used (its mask.png / mask.nii.gz)
    floor: Path | None = None  # the ideal editor's output (phantoms: true change, independent noise)
    sample_floor: Path | None = None  # the ideal sampling editor's (what the scan does not show drawn anew)
    labels: Path | None = None  # CT: label map of the original (lungs, heart, effusion...)
    counterfactual_labels: Path | None = None  # CT: label map of the counterfactual


def _target(value: str | None, where: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError:
        raise InputError(f"{where}: target '{value}' is not a number") from None


def pairs_from_report(path: Path) -> list[Pair]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: report not found") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a JSON run report ({exc})") from None
    if not isinstance(data, dict) or data.get("command") != "edit" or not isinstance(data.get("items"), list):
        raise InputError(f"{path}: not the report.json of a `cfgen edit` run")
    root = path.parent
    pairs = []
    for i, it in enumerate(data["items"]):
        name = str(it.get("name") or f"item-{i}")
        cols = it.get("columns") or {}
        params = it.get("params") or {}
        rel = lambda key: (root / cols[key]) if cols.get(key) else None  # noqa: E731
        outputs = it.get("outputs") or {}
        cf, used, cf_labels = outputs.get("counterfactual"), outputs.get("mask"), outputs.get("counterfactual_labels")
        pair = Pair(name=name, original=root / str(it.get("input_file") or it.get("input") or ""),
                    counterfactual=root / cf if cf else root, truth=rel("true_counterfactual"),
                    region=rel("true_mask"), label=cols.get("label") or None,
                    source_prompt=params.get("source_prompt") or "", prompt=params.get("prompt") or "",
                    edit_mask=root / used if used else None, floor=rel("floor_counterfactual"),
                    sample_floor=rel("sample_floor_counterfactual"),
                    labels=rel("labels"),  # a labelled model's edit wrote the counterfactual's own map
                    counterfactual_labels=root / cf_labels if cf_labels else rel("counterfactual_labels"))
        if it.get("status") == "error" or not cf:
            pair.error = f"edit failed: {it.get('error') or 'no counterfactual'}"
        else:
            try:
                pair.target = _target(cols.get("target"), f"{path} item {name}")
            except InputError as exc:
                pair.error = str(exc)
        pairs.append(pair)
    return pairs


def pairs_from_csv(path: Path) -> list[Pair]:
    columns, rows = read_csv(path)
    missing = [c for c in CSV_REQUIRED if c not in columns]
    if missing:
        raise InputError(f"{path}: needs columns {', '.join(CSV_REQUIRED)} (missing {', '.join(missing)}); "
                         f"columns found: {', '.join(columns)}")
    folder = path.parent
    pairs = []
    for line, row in enumerate(rows, start=2):
        opt = lambda key: folder / row[key] if row.get(key) else None  # noqa: E731
        pair = Pair(name=row.get("name") or f"line-{line}", original=folder / row.get("original", ""),
                    counterfactual=folder / row.get("counterfactual", ""), truth=opt("true_counterfactual"),
                    region=opt("mask"), label=row.get("label") or None,
                    source_prompt=row.get("source_prompt", ""), prompt=row.get("prompt", ""),
                    edit_mask=opt("edit_mask"), floor=opt("floor_counterfactual"),
                    sample_floor=opt("sample_floor_counterfactual"), labels=opt("labels"),
                    counterfactual_labels=opt("counterfactual_labels"))
        try:
            if not row.get("original") or not row.get("counterfactual"):
                raise InputError(f"{path} line {line}: empty 'original' or 'counterfactual' cell")
            pair.target = _target(row.get("target"), f"{path} line {line}")
        except InputError as exc:
            pair.error = str(exc)
        pairs.append(pair)
    return pairs


def load_pairs(source: Path) -> list[Pair]:
    """Pairs from a report.json (or an edit run's folder) or a CSV."""
    source = Path(source)
    from cfgen.io.tables import is_stdin

    if is_stdin(source):
        return pairs_from_csv(source)  # a pairs CSV on standard input
    if source.is_dir():
        source = source / "report.json"
    if source.suffix.lower() == ".json":
        return pairs_from_report(source)
    if not source.is_file():
        raise InputError(f"{source}: file not found")
    return pairs_from_csv(source)


@dataclass
class LoadedPair:
    """Images of one pair in [0, 1], shape (1, C, *spatial), all through one intensity window."""

    original: "object"  # torch.Tensor
    counterfactual: "object"
    truth: "object | None"
    region: "object | None"  # bool, (1, 1, *spatial)
    window: dict
    edit_region: "object | None" = None  # bool, (1, 1, *spatial): where the edit's mask let it change
    floor: "object | None" = None
    sample_floor: "object | None" = None
    scans: tuple = ()  # (original, counterfactual) as read, in their own units (the CT measures' HU)


def _unit(pixels: np.ndarray, window) -> np.ndarray:
    return (window.to_model(pixels) - window.model_low) / (window.model_high - window.model_low)


def read_pair(pair: Pair) -> LoadedPair:
    """Read the scans of a pair; the factual scan's window maps all of them to [0, 1]."""
    import torch

    from cfgen.io.intensity import choose_window
    from cfgen.io.scan import read_scan

    orig = read_scan(pair.original)
    window = choose_window(orig.pixels, orig.source_dtype, "auto", (0.0, 1.0), where=str(pair.original))
    tensors, read = {}, {}
    for key, p in (("counterfactual", pair.counterfactual), ("truth", pair.truth), ("floor", pair.floor),
                   ("sample_floor", pair.sample_floor)):
        if p is None:
            tensors[key] = None
            continue
        other = read[key] = read_scan(p)
        if other.pixels.shape != orig.pixels.shape:
            raise InputError(f"{p}: shape {tuple(other.pixels.shape)} differs from the original's "
                             f"{tuple(orig.pixels.shape)} ({pair.original})")
        tensors[key] = torch.from_numpy(_unit(other.pixels, window)[None].astype(np.float32))
    region, edit_region = (_read_region(p, orig) for p in (pair.region, pair.edit_mask))
    return LoadedPair(original=torch.from_numpy(_unit(orig.pixels, window)[None].astype(np.float32)),
                      counterfactual=tensors["counterfactual"], truth=tensors["truth"], region=region,
                      window=window.as_dict(), edit_region=edit_region, floor=tensors["floor"],
                      sample_floor=tensors["sample_floor"],
                      scans=(orig, read.get("counterfactual")))


def _read_region(path: Path | None, orig):
    """A mask file on the original's grid as a bool tensor: nonzero = region, as for an edit's --mask."""
    import torch

    from cfgen.io.scan import read_scan, region_of

    if path is None:
        return None
    m = read_scan(path)
    if m.pixels.shape[1:] != orig.pixels.shape[1:]:
        raise InputError(f"{path}: mask size {tuple(m.pixels.shape[1:])} differs from the original's "
                         f"{tuple(orig.pixels.shape[1:])}")
    return torch.from_numpy(region_of(m)[None])
