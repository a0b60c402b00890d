"""Vectorised drawing primitives on a normalised grid (x right, y down, both in [-1, 1]).

Everything returns soft masks in [0, 1] (edges a few pixels wide) so phantoms have no
aliasing and differences between a factual and its counterfactual stay local.
"""
from __future__ import annotations

import numpy as np


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    return np.meshgrid(c, c, indexing="xy")


def soft(signed_distance: np.ndarray, width: float) -> np.ndarray:
    """Inside (negative distance) -> 1, outside -> 0, with a smooth edge of ``width``."""
    return (0.5 - 0.5 * np.tanh(signed_distance / max(width, 1e-6))).astype(np.float32)


def ellipse_sd(x, y, cx, cy, rx, ry, power: float = 2.0) -> np.ndarray:
    """Approximate signed distance to a superellipse (power 2 = ellipse)."""
    r = (np.abs((x - cx) / rx) ** power + np.abs((y - cy) / ry) ** power) ** (1.0 / power)
    return (r - 1.0) * min(rx, ry)


def segment_distance(x, y, p0, p1) -> np.ndarray:
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / max(dx * dx + dy * dy, 1e-12), 0, 1)
    return np.hypot(x - (x0 + t * dx), y - (y0 + t * dy))


def polyline_distance(x, y, points: np.ndarray) -> np.ndarray:
    d = np.full(x.shape, np.inf, dtype=np.float32)
    for p0, p1 in zip(points[:-1], points[1:]):
        d = np.minimum(d, segment_distance(x, y, p0, p1))
    return d


def bezier(p0, p1, p2, n: int = 16) -> np.ndarray:
    """Points on a quadratic Bezier curve (wires, leads, tubes)."""
    t = np.linspace(0, 1, n)[:, None]
    p0, p1, p2 = (np.asarray(p, dtype=np.float32) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def line_mask(x, y, points: np.ndarray, half_width: float, edge: float) -> np.ndarray:
    """A soft line of ``half_width`` along ``points``, evaluated only in its bounding box
    (x and y must come from :func:`grid`)."""
    size = x.shape[1]
    pad = half_width + 6 * edge
    lo = np.floor(((points.min(axis=0) - pad) + 1) / 2 * size - 0.5).astype(int)
    hi = np.ceil(((points.max(axis=0) + pad) + 1) / 2 * size - 0.5).astype(int) + 1
    c0, r0 = np.clip(lo, 0, size)
    c1, r1 = np.clip(hi, 0, size)
    out = np.zeros(x.shape, dtype=np.float32)
    if c1 > c0 and r1 > r0:
        xs, ys = x[r0:r1, c0:c1], y[r0:r1, c0:c1]
        out[r0:r1, c0:c1] = soft(polyline_distance(xs, ys, points) - half_width, edge)
    return out


def smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """Band-limited noise in [-1, 1]: random values on a coarse grid, bilinearly upsampled."""
    from scipy.ndimage import zoom

    n = max(2, size // scale)
    coarse = rng.standard_normal((n + 1, n + 1)).astype(np.float32)
    fine = zoom(coarse, (size / (n + 1), size / (n + 1)), order=1)[:size, :size]
    return np.clip(fine / 2.0, -1, 1)
