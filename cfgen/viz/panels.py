"""Difference maps (diverging colour map, as the papers' figures) and comparison panels.

Images are 2D arrays in [0, 1]; a signed difference is counterfactual - original in the
same units, shown with blue for darker and red for brighter, symmetric around zero.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cfgen.io.atomic import atomic_path
from cfgen.viz.style import PAPER_RC, Units

DIVERGING = "RdBu_r"


def display_2d(pixels01: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0,1] -> (H, W) or (H, W, 3) for showing."""
    return pixels01[0] if pixels01.shape[0] == 1 else np.moveaxis(pixels01[:3], 0, -1)


def gray(pixels01: np.ndarray) -> np.ndarray:
    return pixels01.mean(axis=0) if pixels01.ndim == 3 else pixels01


def diff_scale(diff: np.ndarray) -> float:
    """Symmetric colour limit: the 99.5th percentile of |difference|, at least 0.01."""
    return float(max(np.percentile(np.abs(diff), 99.5), 0.01))


def display_factor(shape: tuple[int, ...], max_side: int = 640) -> int:
    """The integer factor for_display shrinks an image of ``shape`` (H, W[, 3]) by."""
    return -(-max(shape[:2]) // max_side)


def for_display(img: np.ndarray, max_side: int = 640) -> np.ndarray:
    """(H, W[, 3]) shrunk by an integer factor (block means) to at most about ``max_side``: a
    panel shows a few hundred pixels per image, and drawing a full-size scan costs seconds."""
    k = display_factor(img.shape, max_side)
    if k <= 1:
        return img
    h, w = img.shape[0] // k * k, img.shape[1] // k * k
    blocks = img[:h, :w].reshape((h // k, k, w // k, k) + img.shape[2:])
    return blocks.mean(axis=(1, 3))


@dataclass
class Panel:
    """One item's figure content: display images (H, W) or (H, W, 3) in [0, 1], the signed
    difference (H, W) in ``units`` with its colour limit ``vmax`` (the run's), the prompts, the
    edit mask (H, W) when one was used, and a volume's views (figures.volume_views)."""

    original: np.ndarray
    result: np.ndarray
    diff: np.ndarray
    vmax: float
    units: Units
    second: str = "counterfactual"
    caption: str = ""
    mask: np.ndarray | None = None
    views: dict | None = None


def _annotate(ax, views: dict, shrink: int, colour: str = "yellow") -> None:
    """View names, slice numbers and edge letters on a strip of volume_views (cfgen/viz/figures.py)."""
    for v in views["views"]:
        x0, x1, h = v["x0"] / shrink, v["x1"] / shrink, v["height"] / shrink
        ax.text((x0 + x1) / 2, -1, f"{v['name']} {v['slice']}", ha="center", va="bottom", fontsize=7)
        if v["letters"]:
            left, right, top, bottom = v["letters"]
            style = {"color": colour, "fontsize": 7, "fontweight": "bold"}
            ax.text(x0 + 1, h / 2, left, ha="left", va="center", **style)
            ax.text(x1 - 1, h / 2, right, ha="right", va="center", **style)
            ax.text((x0 + x1) / 2, 1, top, ha="center", va="top", **style)
            ax.text((x0 + x1) / 2, h - 1, bottom, ha="center", va="bottom", **style)


#: colour of the edit mask's outline (visible on grey images and on the blue-white-red map)
MASK_COLOUR, MASK_NAME = "#00dd00", "green"


def _outline(ax, mask: np.ndarray | None) -> None:
    """The edit mask's boundary as a contour line (SVG id ``mask-outline``)."""
    if mask is None or not mask.any() or mask.all():
        return
    import matplotlib.artist

    cs = ax.contour(mask.astype(np.float32), levels=[0.5], colors=MASK_COLOUR, linewidths=0.8)
    for art in [cs] if isinstance(cs, matplotlib.artist.Artist) else cs.collections:  # matplotlib < 3.8
        art.set_gid("mask-outline")


def new_figure(**kw):
    """A matplotlib Figure without pyplot: no global figure state, so that the runner's worker
    threads can draw items at the same time (pyplot is not thread-safe)."""
    from matplotlib.figure import Figure

    return Figure(**kw)


def _caption(p: Panel) -> str:
    note = f"{MASK_NAME} outline: edit mask" if p.mask is not None and p.mask.any() and not p.mask.all() else ""
    text = textwrap.fill(p.caption, 110) if p.caption else ""
    return "\n".join(t for t in (text, note) if t)


def save_figure(fig, target: Path, tight: bool = True) -> Path:
    """``fig`` to ``target`` in the format its suffix names (png, svg, pdf), atomically; ``tight``:
    cropped to what is drawn (a second draw)."""
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format=target.suffix.lstrip("."), bbox_inches="tight" if tight else None)
    return target


#: inches around the images of write_panel / write_difference (no layout engine, no tight bounding
#: box: each costs a second draw, about half of a figure's time)
_EDGE, _GAP, _BAR, _BAR_PAD, _BAR_TEXT, _LINE = 0.1, 0.08, 0.15, 0.1, 1.0, 0.16


def _placed(n: int, width: float, aspect: float, text_lines: int, views: bool):
    """A figure ``width`` inches wide with ``n`` image axes in a row (height/width ``aspect``) and a
    colour-bar axes right of the last; room above for titles, view names and ``text_lines`` lines."""
    img_w = (width - 2 * _EDGE - (n - 1) * _GAP - _BAR_PAD - _BAR - _BAR_TEXT) / n
    img_h = img_w * aspect
    top = 0.12 + (0.3 if views else 0.2) + _LINE * text_lines
    height = img_h + top + _EDGE
    fig = new_figure(figsize=(width, height), dpi=100)
    axes = [fig.add_axes(((_EDGE + i * (img_w + _GAP)) / width, _EDGE / height, img_w / width, img_h / height))
            for i in range(n)]
    x_bar = _EDGE + n * img_w + (n - 1) * _GAP + _BAR_PAD
    cax = fig.add_axes((x_bar / width, _EDGE / height, _BAR / width, img_h / height))
    return fig, axes, cax


def _bar(fig, im, cax, p: Panel) -> None:
    bar = fig.colorbar(im, cax=cax)
    bar.ax.set_gid("colour-bar")
    bar.set_label(f"{p.units.bar_label}\n\u00b1{p.vmax:.4g} for every item of the run", fontsize=7)
    bar.ax.tick_params(labelsize=7)


def write_panel(p: Panel, target: Path) -> Path:
    """original | counterfactual | difference, with the prompts, the mask outline and a colour bar
    in the scan's units (images larger than the panel shows are shrunk first, ``for_display``);
    a volume's three views side by side, named, with L/R, A/P, S/I letters."""
    import matplotlib

    h, w = p.diff.shape
    shrink = display_factor(p.diff.shape)  # what for_display does to the strips below
    original, result, diff = (for_display(a) for a in (p.original, p.result, p.diff))
    mask = for_display(p.mask.astype(np.float32)) > 0.5 if p.mask is not None else None
    caption = _caption(p)
    with matplotlib.rc_context(PAPER_RC):
        fig, axes, cax = _placed(3, 9.6 if p.views is None else 15.0, h / max(w, 1),
                                 caption.count("\n") + 1 if caption else 0, p.views is not None)
        cmap_img = "gray" if original.ndim == 2 else None
        pad = 12 if p.views else 6
        for ax, img, title in zip(axes[:2], (original, result), ("original", p.second)):
            ax.imshow(img, cmap=cmap_img, vmin=0, vmax=1, interpolation="nearest", aspect="auto")
            ax.set_title(title, fontsize=9, pad=pad)
        im = axes[2].imshow(diff, cmap=DIVERGING, vmin=-p.vmax, vmax=p.vmax, interpolation="nearest", aspect="auto")
        axes[2].set_title(f"difference ({p.second} - original)", fontsize=9, pad=pad)
        for ax, colour in zip(axes, ("yellow", "yellow", "black")):
            ax.set_axis_off()
            if p.views is not None:
                _annotate(ax, p.views, shrink, colour)
        for ax in axes[1:]:
            _outline(ax, mask)
        _bar(fig, im, cax, p)
        if caption:
            fig.suptitle(caption, fontsize=8, y=1 - 0.06 / fig.get_figheight(), va="top")
        return save_figure(fig, target, tight=False)


def write_difference(p: Panel, target: Path) -> Path:
    """The difference map alone, at the scan's resolution up to about 640 pixels a side, with its
    colour bar (units, the run's scale), the mask outline and the prompts."""
    import matplotlib

    diff = for_display(p.diff)
    shrink = display_factor(p.diff.shape)
    mask = for_display(p.mask.astype(np.float32)) > 0.5 if p.mask is not None else None
    h, w = diff.shape
    side = 10.0 if p.views is not None else max(3.0, min(8.0, max(h, w) / 100))  # inches, the longer side
    width = side * w / max(h, w) + 2 * _EDGE + _BAR_PAD + _BAR + _BAR_TEXT
    chars = max(30, int(width * 12))  # about what a line of 8-point text holds across the figure
    lines = [f"difference: {p.second} - original"] + [textwrap.fill(t, chars) for t in _caption(p).split("\n") if t]
    title = "\n".join(lines)
    with matplotlib.rc_context(PAPER_RC):
        fig, (ax,), cax = _placed(1, width, h / max(w, 1), title.count("\n") + 1, p.views is not None)
        im = ax.imshow(diff, cmap=DIVERGING, vmin=-p.vmax, vmax=p.vmax, interpolation="nearest", aspect="auto")
        ax.set_axis_off()
        if p.views is not None:
            _annotate(ax, p.views, shrink, "black")
        _outline(ax, mask)
        _bar(fig, im, cax, p)
        fig.suptitle(title, fontsize=8, y=1 - 0.06 / fig.get_figheight(), va="top")
        return save_figure(fig, target, tight=False)


def write_views(strip: np.ndarray, views: dict, target: Path, title: str) -> Path:
    """One volume's strip of three named views (figures.volume_views) with L/R, A/P, S/I letters."""
    import matplotlib

    shrink = display_factor(strip.shape)
    img = for_display(strip)
    h, w = img.shape
    with matplotlib.rc_context(PAPER_RC):
        fig = new_figure(figsize=(10.0, 10.0 * h / max(w, 1) + 0.7), dpi=100)
        ax = fig.subplots()
        ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_axis_off()
        _annotate(ax, views, shrink)
        ax.set_title(textwrap.fill(title, 110), fontsize=8, pad=12)
        return save_figure(fig, target)
