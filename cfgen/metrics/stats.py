"""Summaries of per-item values: mean, standard deviation and a 95% bootstrap interval.

NumPy only. The bootstrap is the percentile interval of the mean over ``n_boot`` resamples
drawn with a fixed seed, so the same values always give the same interval.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np

N_BOOT = 2000


def finite_values(values: Iterable) -> np.ndarray:
    out = [float(v) for v in values
           if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
    return np.asarray(out, dtype=np.float64)


def describe(values: Iterable, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> dict:
    """{mean, std, ci95: [low, high], n} of the finite values (bools and None are skipped)."""
    x = finite_values(values)
    n = int(x.size)
    if n == 0:
        return {"mean": None, "std": None, "ci95": None, "n": 0}
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else 0.0
    if n > 1 and n_boot > 0:
        rng = np.random.default_rng(seed)
        means = x[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
        alpha = (1.0 - level) / 2
        lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
        ci = [float(min(lo, mean)), float(max(hi, mean))]
    else:
        ci = [mean, mean]
    return {"mean": mean, "std": std, "ci95": ci, "n": n}


def pooled_ratio(num: Iterable, den: Iterable, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> dict:
    """sum(num) / sum(den) over items (pairs with a finite num and a den > 0), with a 95% bootstrap
    interval that resamples items: the ratio of summed errors, which small denominators cannot
    blow up as they do a mean of per-item ratios."""
    pairs = [(float(a), float(b)) for a, b in zip(num, den)
             if isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isfinite(a)
             and math.isfinite(b) and b > 0]
    n = len(pairs)
    if n == 0:
        return {"value": None, "ci95": None, "n": 0}
    a, b = np.asarray(pairs).T
    value = float(a.sum() / b.sum())
    ci = [value, value]
    if n > 1 and n_boot > 0:
        idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
        ratios = a[idx].sum(axis=1) / b[idx].sum(axis=1)
        alpha = (1.0 - level) / 2
        lo, hi = np.quantile(ratios, [alpha, 1.0 - alpha])
        ci = [float(min(lo, value)), float(max(hi, value))]
    return {"value": value, "ci95": ci, "n": n}
