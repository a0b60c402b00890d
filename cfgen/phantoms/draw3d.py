"""Volume drawing in millimetres for the 3D phantom worlds (brain, chest CT): a centred RAS grid,
soft (partial-volume) maps of signed distances, ellipsoids."""
from __future__ import annotations

import numpy as np

from cfgen.phantoms.draw import soft  # noqa: F401 (partial volume, shared with the 2D worlds)


def grid_mm(size: int, spacing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-centre coordinates (mm) of a cubic grid centred on the origin, in voxel order."""
    c = (np.arange(size, dtype=np.float32) - (size - 1) / 2) * spacing
    return np.meshgrid(c, c, c, indexing="ij")


def affine(size: int, spacing: float) -> np.ndarray:
    """RAS voxel-to-world matrix of the phantom grid (origin at the volume centre)."""
    from cfgen.io.nifti import centred_affine

    return centred_affine(size, spacing)


def ellipsoid_sd(x, y, z, c, r) -> np.ndarray:
    """Approximate signed distance (mm) to the ellipsoid of centre ``c`` and half-axes ``r``."""
    q = np.sqrt(((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2)
    return (q - 1.0) * min(r)
