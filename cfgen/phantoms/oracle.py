"""The brain phantom world's ground-truth oracle: where structures can be, what counts as CSF or
lesion, and how old a brain looks. It measures an image (a counterfactual, an edit, a generated
volume) against the structural causal model instead of trusting a learned proxy; the benchmarks
(`benchmarks/brain_edits.py`, `synth3d.py`, `cycle_vs_plain.py`) score with it.

  regions(exo, attrs)   voxels where the subject's ventricles / lesions can be (largest
                        ventricles: age 100 and AD; all lesion sites at the maximum load)
  CSF_THRESHOLD         T1 intensity in [0, 1] below which a voxel counts as CSF (between CSF
                        0.12 and grey matter 0.50); LESION_THRESHOLD likewise for lesions
                        (lesion 0.36, white matter 0.82)
  AgeRegressor          age from log ventricle CSF volume (the phantoms' ventricles grow
                        exponentially with age), fitted on phantoms of a training seed; the
                        Cycle Diffusion paper's Tables 1-2 read counterfactual age the same way
"""
from __future__ import annotations

import functools

import numpy as np

CSF_THRESHOLD = 0.30
LESION_THRESHOLD = 0.55
#: the seed and count of the phantoms the age regressor is fitted on (never a held-out seed)
REGRESSOR_SEED, REGRESSOR_N = 1000, 80


def regions(exo, attrs, size: int, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """(ventricle region, lesion region): boolean volumes on the size^3 grid at ``spacing`` mm."""
    from scipy.ndimage import binary_dilation

    from cfgen.phantoms import brain

    big = attrs.with_value("age", 100).with_value("diagnosis", "AD")
    vent = brain.tissue_maps(exo, big, size, spacing)["ventricles"] > 0.05
    les = brain.tissue_maps(exo, big.with_value("lesion_load", brain.MAX_LESION_ML), size, spacing)["lesions"] > 0.05
    return binary_dilation(vent), binary_dilation(les) & ~vent


def csf_voxels(img: np.ndarray, roi: np.ndarray) -> float:
    """Voxels of ``roi`` darker than CSF_THRESHOLD (at least 1, so that its log is defined)."""
    return float(max((img[roi] < CSF_THRESHOLD).sum(), 1))


def dark_voxels(img: np.ndarray, roi: np.ndarray, kind: str) -> int:
    """Voxels of ``roi`` that read as CSF (kind "age": ventricles) or lesion (kind "lesion")."""
    return int((img[roi] < (CSF_THRESHOLD if kind == "age" else LESION_THRESHOLD)).sum())


class AgeRegressor:
    """Age from log ventricle CSF volume, a straight line fitted on ``n`` phantoms of ``seed``."""

    def __init__(self, size: int, spacing: float, n: int = REGRESSOR_N, seed: int = REGRESSOR_SEED):
        from cfgen.phantoms import brain

        logv, ages = [], []
        for i in range(n):
            exo, attrs = brain.subject(seed, i)
            img = brain.render(exo, attrs, size, spacing)
            logv.append(np.log(csf_voxels(img, regions(exo, attrs, size, spacing)[0])))
            ages.append(attrs.age)
        self.slope, self.intercept = np.polyfit(np.asarray(logv), np.asarray(ages), 1)
        fit = self.slope * np.asarray(logv) + self.intercept
        self.train_mae = float(np.abs(fit - np.asarray(ages)).mean())

    def __call__(self, img: np.ndarray, vent_roi: np.ndarray) -> float:
        return float(np.clip(self.slope * np.log(csf_voxels(img, vent_roi)) + self.intercept, 0, 100))


@functools.lru_cache(maxsize=None)
def age_regressor(size: int, spacing: float) -> AgeRegressor:
    """Fitted once per grid and process (a benchmark may score several models)."""
    return AgeRegressor(size, spacing)
