"""Evaluation figures: best / median / worst pairs and histograms of per-item metrics."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cfgen.viz.panels import DIVERGING, diff_scale, gray, new_figure, save_figure
from cfgen.viz.style import PAPER_RC


def as_2d(img01: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W); (C, X, Y, Z) -> the three orthogonal mid-slices side by side."""
    g = gray(img01) if img01.ndim == 3 else img01.mean(axis=0)
    if g.ndim == 2:
        return g
    x, y, z = g.shape
    return side_by_side([np.rot90(g[x // 2]), np.rot90(g[:, y // 2]), np.rot90(g[:, :, z // 2])])


#: columns of background between slices laid side by side
GAP = 2


def side_by_side(slices: list[np.ndarray]) -> np.ndarray:
    """2D slices in one image, top-aligned, each followed by GAP columns of background."""
    h = max(s.shape[0] for s in slices)
    return np.concatenate([np.pad(s, ((0, h - s.shape[0]), (0, GAP))) for s in slices], axis=1)


#: display convention of the three views (radiological: the patient's right on the image's left)
VIEWS = (("axial", 2, ("R", "L", "A", "P")), ("coronal", 1, ("R", "L", "S", "I")), ("sagittal", 0, ("A", "P", "S", "I")))


def _view_slice(ras: np.ndarray, axis: int, k: int) -> np.ndarray:
    """One slice of a RAS volume for display: rows top to bottom, columns left to right as VIEWS says."""
    sl = np.take(ras, k, axis=axis)  # axial (X, Y), coronal (X, Z), sagittal (Y, Z); RAS: + is R, A, S
    return np.flipud(np.fliplr(sl.T))  # the second axis up (A or S on top), the first reversed (R or A left)


def volume_views(a: np.ndarray, b: np.ndarray, affine: np.ndarray | None,
                 more: tuple[np.ndarray, ...] = ()) -> tuple[np.ndarray, np.ndarray, dict]:
    """Axial, coronal and sagittal slices of two (X, Y, Z) volumes in [0, 1] side by side, through the
    centre of their difference (the mid-slices when nothing changed), in RAS with radiological
    left/right when the affine is known; returns the two strips and where each view lies, its name,
    slice and edge letters (L/R, A/P, S/I), for the panel's annotations; ``more`` volumes of the
    same grid (an edit mask) come back as strips of the same slices in ``["more"]``."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    known = affine is not None and np.isfinite(affine).all() and abs(np.linalg.det(affine[:3, :3])) > 1e-12
    if known:
        t = ornt_transform(io_orientation(affine), axcodes2ornt("RAS"))
        a, b = apply_orientation(a, t), apply_orientation(b, t)
        more = tuple(apply_orientation(m, t) for m in more)
    change = np.abs(b - a)
    if change.max() > 0:
        idx = np.argwhere(change >= 0.5 * change.max())
        centre = np.round(idx.mean(axis=0)).astype(int)
    else:
        centre = np.array(a.shape) // 2
    views, strips = [], tuple([] for _ in range(2 + len(more)))
    for name, axis, letters in VIEWS:
        k = int(centre[axis])
        for strip, vol in zip(strips, (a, b, *more)):
            strip.append(_view_slice(vol, axis, k))
        views.append({"name": name, "slice": k, "letters": letters if known else None})
    x = 0
    for v, sl in zip(views, strips[0]):
        v["x0"], v["x1"], v["height"] = x, x + sl.shape[1], sl.shape[0]
        x += sl.shape[1] + GAP
    return side_by_side(strips[0]), side_by_side(strips[1]), {
        "views": views, "oriented": bool(known), "more": [side_by_side(st) for st in strips[2:]]}


def write_examples(rows: list[dict], target: Path, metric: str) -> Path:
    """rows: {"title", "original", "counterfactual", "truth" (or None)} with 2D arrays in [0, 1];
    one colour scale and one colour bar per column (the differences share the rows' largest)."""
    import matplotlib

    with_truth = any(r.get("truth") is not None for r in rows)
    cols = 4 if with_truth else 3
    diffs = [r["counterfactual"] - r["original"] for r in rows]
    vmax = diff_scale(np.concatenate([d.ravel() for d in diffs]))
    with matplotlib.rc_context(PAPER_RC):
        fig = new_figure(figsize=(3.0 * cols, 3.0 * len(rows) + 0.6), dpi=100, layout="constrained")
        axes = fig.subplots(len(rows), cols, squeeze=False)
        images = []
        for ax_row, r, diff in zip(axes, rows, diffs):
            panels = [("original", r["original"], "gray", 0, 1), ("counterfactual", r["counterfactual"], "gray", 0, 1),
                      ("difference (CF - original)", diff, DIVERGING, -vmax, vmax)]
            if with_truth:
                panels.append(("true counterfactual", r["truth"] if r.get("truth") is not None
                               else np.zeros_like(r["original"]), "gray", 0, 1))
            for ax, (name, img, cmap, lo, hi) in zip(ax_row, panels):
                images.append(ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest"))
                ax.set_axis_off()
                ax.set_title(name, fontsize=8)
            ax_row[0].text(-0.05, 0.5, r["title"], transform=ax_row[0].transAxes, rotation=90, va="center",
                           ha="right", fontsize=8)
        labels = ["intensity (window fraction)", "intensity (window fraction)",
                  f"change (window fraction), \u00b1{vmax:.3g} for all rows", "intensity (window fraction)"]
        for c in range(cols):
            bar = fig.colorbar(images[c], ax=list(axes[:, c]), location="bottom", fraction=0.04, pad=0.02)
            bar.ax.set_gid(f"colour-bar-{c}")
            bar.set_label(labels[c], fontsize=7)
            bar.ax.tick_params(labelsize=6)
        fig.suptitle(f"best, median and worst items by {metric}", fontsize=10)
        return save_figure(fig, target)


#: fewer items than this: a strip plot of the values, not a histogram
MIN_HISTOGRAM = 5


def _plotted(values: dict[str, list[float]]) -> list[str]:
    """The metrics worth a panel: not empty, and not a capped twin equal to its metric."""
    names = [k for k, v in values.items() if len(v)]
    return [k for k in names if not (k.endswith("_capped") and values.get(k.removesuffix("_capped")) == values[k])]


def write_histograms(values: dict[str, list[float]], target: Path) -> Path:
    """One panel per metric: a histogram with the mean marked (a strip plot below MIN_HISTOGRAM items)."""
    import matplotlib

    names = _plotted(values)
    cols = min(4, max(1, len(names)))
    rows = max(1, -(-len(names) // cols))
    with matplotlib.rc_context(PAPER_RC):
        fig = new_figure(figsize=(3.2 * cols, 2.6 * rows), dpi=100)
        axes = fig.subplots(rows, cols, squeeze=False)
        _histogram_axes(axes, names, values)
        fig.tight_layout()
        return save_figure(fig, target)


def _histogram_axes(axes, names: list[str], values: dict[str, list[float]]) -> None:
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, name in zip(axes.flat, names):
        ax.set_axis_on()
        v = np.asarray(values[name], dtype=float)
        if len(v) < MIN_HISTOGRAM:
            ax.plot(v, np.zeros_like(v), "o", color="#4477aa", label="items")
            ax.set_yticks([])
        else:
            ax.hist(v, bins=min(30, max(5, len(v) // 3)), color="#4477aa", label="items")
            ax.set_ylabel("items", fontsize=7)
        ax.axvline(v.mean(), color="#cc3311", lw=1, label=f"mean {v.mean():.3g}")
        ax.set_xlabel(name, fontsize=7)
        ax.set_title(f"{name} (n={len(v)})", fontsize=8)
        ax.legend(fontsize=6, loc="best")
        ax.tick_params(labelsize=7)
