"""16-bit colour PNG (RGB, RGBA) through pypng: Pillow decodes these as 8-bit."""
from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np


def is_colour16(path: Path) -> bool:
    """From the IHDR chunk: 16 bits per sample and colour type RGB (2) or RGBA (6)."""
    with open(path, "rb") as fh:
        head = fh.read(26)
    return len(head) == 26 and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 6)


def read_png16(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(H x W x 3 uint16 colour, H x W alpha or None)."""
    import png

    try:
        w, h, rows, info = png.Reader(filename=str(path)).asDirect()
        arr = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(h, w, info["planes"])
    except (png.Error, zlib.error, ValueError) as exc:
        raise ValueError(f"16-bit colour PNG: {exc}") from None
    return (arr[..., :3], arr[..., 3]) if info["alpha"] else (arr, None)


def write_png16(target: Path, arr: np.ndarray, labels: dict[str, str], orientation: int = 1) -> None:
    """``arr``: H x W x 3 or 4 uint16. tEXt chunks for ``labels``, eXIf for a non-default orientation."""
    import png

    from PIL import Image

    h, w, planes = arr.shape
    buf = io.BytesIO()
    png.Writer(w, h, greyscale=False, alpha=planes == 4, bitdepth=16).write(buf, arr.reshape(h, w * planes))
    chunks = list(png.Reader(bytes=buf.getvalue()).chunks())
    extra = [(b"tEXt", k.encode("latin-1") + b"\0" + v.encode("latin-1", "replace")) for k, v in labels.items()]
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        data = exif.tobytes(8)
        extra.append((b"eXIf", data[6:] if data.startswith(b"Exif\0\0") else data))
    with open(target, "wb") as fh:
        png.write_chunks(fh, chunks[:1] + extra + chunks[1:])
