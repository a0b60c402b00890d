"""Difference maps (diverging colour map, as the papers' figures) and comparison panels.

Images are 2D arrays in [0, 1]; a signed difference is counterfactual - original in the
same units, shown with blue for darker and red for brighter, symmetric around zero.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cfgen.io.atomic import atomic_path

DIVERGING = "RdBu_r"


def display_2d(pixels01: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0,1] -> (H, W) or (H, W, 3) for showing."""
    return pixels01[0] if pixels01.shape[0] == 1 else np.moveaxis(pixels01[:3], 0, -1)


def gray(pixels01: np.ndarray) -> np.ndarray:
    return pixels01.mean(axis=0) if pixels01.ndim == 3 else pixels01


def diff_scale(diff: np.ndarray) -> float:
    """Symmetric colour limit: the 99.5th percentile of |difference|, at least 0.01."""
    return float(max(np.percentile(np.abs(diff), 99.5), 0.01))


def _diverging_rgb(t: np.ndarray) -> np.ndarray:
    """[0, 1] -> uint8 RGB through the diverging map's own lookup table: the colours matplotlib's
    ``cmap(t)`` gives (same bins), a few times faster on full-size scans."""
    import matplotlib

    cmap = matplotlib.colormaps[DIVERGING]
    lut = (cmap(np.arange(cmap.N))[:, :3] * 255).round().astype(np.uint8)
    return lut[np.minimum((t * cmap.N).astype(np.intp), cmap.N - 1)]


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


def write_difference_png(diff: np.ndarray, target: Path, vmax: float) -> Path:
    """A signed difference (H, W) as an RGB PNG through the diverging colour map."""
    from PIL import Image

    im = Image.fromarray(_diverging_rgb(np.clip(diff / vmax, -1, 1) * 0.5 + 0.5))
    with atomic_path(target) as tmp:
        im.save(tmp, format="PNG")
    return target


def _annotate(ax, views: dict, shrink: int) -> None:
    """View names, slice numbers and edge letters on a strip of volume_views (cfgen/viz/figures.py)."""
    for v in views["views"]:
        x0, x1, h = v["x0"] / shrink, v["x1"] / shrink, v["height"] / shrink
        ax.text((x0 + x1) / 2, -1, f"{v['name']} {v['slice']}", ha="center", va="bottom", fontsize=7)
        if v["letters"]:
            left, right, top, bottom = v["letters"]
            style = {"color": "yellow", "fontsize": 7, "fontweight": "bold"}
            ax.text(x0 + 1, h / 2, left, ha="left", va="center", **style)
            ax.text(x1 - 1, h / 2, right, ha="right", va="center", **style)
            ax.text((x0 + x1) / 2, 1, top, ha="center", va="top", **style)
            ax.text((x0 + x1) / 2, h - 1, bottom, ha="center", va="bottom", **style)


def write_panel_png(original: np.ndarray, counterfactual: np.ndarray, diff: np.ndarray, target: Path,
                    vmax: float, titles: tuple[str, str] = ("original", "counterfactual"),
                    views: dict | None = None) -> Path:
    """original | counterfactual | difference, with a colour bar for the difference (images larger
    than the panel shows are shrunk first, ``for_display``); ``views``: the three views of a volume
    (figures.volume_views), side by side and named, with L/R, A/P, S/I letters."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    h, w = diff.shape
    shrink = display_factor(diff.shape)  # what for_display does to the strips below
    original, counterfactual, diff = (for_display(a) for a in (original, counterfactual, diff))
    width = 9.6 if views is None else 15.0  # a volume's strip of three views: wide enough to read
    fig, axes = plt.subplots(1, 3, figsize=(width, width / 3 * h / max(w, 1) + 0.6), dpi=100)
    cmap_img = "gray" if original.ndim == 2 else None
    for ax, img, title in zip(axes[:2], (original, counterfactual), titles):
        ax.imshow(img, cmap=cmap_img, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=9, pad=12 if views else 6)
    im = axes[2].imshow(diff, cmap=DIVERGING, vmin=-vmax, vmax=vmax, interpolation="nearest")
    second = "CF" if titles[1] == "counterfactual" else titles[1]
    axes[2].set_title(f"difference ({second} - original)", fontsize=9, pad=12 if views else 6)
    for ax in axes:
        ax.set_axis_off()
        if views is not None:
            _annotate(ax, views, shrink)
    bar = fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.04)
    bar.set_label("change, fraction of the intensity window", fontsize=8)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return target
