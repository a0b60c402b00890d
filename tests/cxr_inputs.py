"""Small chest phantom PNGs for batch tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def cxr_pngs(folder: Path, n: int, seed: int = 5, size: int = 32) -> list[str]:
    """``n`` phantom PNGs p0.png ... in a new ``folder``; returns their file names."""
    from cfgen.phantoms import cxr

    folder.mkdir()
    names = []
    for i in range(n):
        exo, attrs = cxr.subject(seed, i)
        Image.fromarray(np.round(cxr.render_clean(exo, attrs, size) * 255).astype(np.uint8)).save(folder / f"p{i}.png")
        names.append(f"p{i}.png")
    return names
