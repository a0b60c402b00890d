"""Set-level metrics: FID and MMD on classifier features, diversity as mean pairwise MS-SSIM.

FID and MMD use MONAI's implementations (``FIDMetric``; ``MMDMetric``: unbiased MMD^2 with a
linear kernel) on the features of the classifier given to ``evaluate``. Diversity (the Cycle
Diffusion Model's measure) is the mean MS-SSIM over random pairs of a set: lower = more diverse.
"""
from __future__ import annotations

import numpy as np

from cfgen.metrics.image import ms_ssim

MAX_PAIRS = 300


def fid(features_a, features_b) -> float | None:
    """Frechet distance between two sets of feature vectors (needs 2+ of each)."""
    from monai.metrics import FIDMetric

    if len(features_a) < 2 or len(features_b) < 2:
        return None
    # the matrix square root is approximate: identical sets can come out a hair below zero
    return max(0.0, float(FIDMetric()(features_a.double(), features_b.double())))


def mmd(features_a, features_b) -> float | None:
    from monai.metrics import MMDMetric

    if len(features_a) < 2 or len(features_b) < 2:
        return None
    return float(MMDMetric()(features_a.double(), features_b.double()))


def diversity(images: list, max_pairs: int = MAX_PAIRS, seed: int = 0) -> dict:
    """Mean MS-SSIM over up to ``max_pairs`` random pairs of same-shape images."""
    n = len(images)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if images[i].shape == images[j].shape]
    if not pairs:
        return {"value": None, "pairs": 0}
    if len(pairs) > max_pairs:
        rng = np.random.default_rng(seed)
        pairs = [pairs[k] for k in sorted(rng.choice(len(pairs), size=max_pairs, replace=False))]
    vals = [ms_ssim(images[i], images[j]) for i, j in pairs]
    return {"value": float(np.mean(vals)), "pairs": len(pairs)}
