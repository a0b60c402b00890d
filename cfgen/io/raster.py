"""PNG, JPEG and TIFF (8/16-bit gray or colour, float TIFF) through Pillow; 16-bit colour PNG
through pypng (Pillow reads it as 8-bit).

What is kept on writing: the stored type (8/16-bit, float32 TIFF), an alpha channel (written back
as it was: the edit does not touch it) and the EXIF orientation (the model sees the image as it
is displayed; the output stores the input's pixel grid with the same Orientation tag, so both
files display alike). Files with several frames (multi-page TIFF, APNG) and 16-bit colour TIFF
are refused: cfgen would otherwise edit the first frame or 8 of the 16 bits without a word.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cfgen import __version__
from cfgen.errors import ScanReadError
from cfgen.io.png16 import is_colour16, read_png16, write_png16
from cfgen.io.atomic import atomic_path
from cfgen.io.scan import Scan, check_size

_PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
ORIENTATION_TAG = 0x0112  # EXIF (and TIFF tag 274)

#: EXIF orientation -> (H, W[, C]) array as displayed (what Pillow's ImageOps.exif_transpose does)
_DISPLAY = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1], 5: lambda a: a.swapaxes(0, 1),
            6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].swapaxes(0, 1), 8: lambda a: np.rot90(a, 1)}
_INVERSE = {6: 8, 8: 6}  # the others undo themselves


def _displayed(a: np.ndarray, orientation: int) -> np.ndarray:
    return np.ascontiguousarray(_DISPLAY[orientation](a)) if orientation in _DISPLAY else a


def _stored_grid(a: np.ndarray, orientation: int) -> np.ndarray:
    return _displayed(a, _INVERSE.get(orientation, orientation))


def _check_single(im, path: Path) -> None:
    frames = int(getattr(im, "n_frames", 1) or 1)
    if frames > 1:
        kind = "multi-page TIFF" if im.format == "TIFF" else f"animated {im.format}"
        raise ScanReadError(f"{path}: {kind} with {frames} frames; cfgen edits one 2D image: save the frame you "
                            "want as its own file (a stack of slices as a NIfTI volume)")
    bits = im.tag_v2.get(258) if im.format == "TIFF" else None  # BitsPerSample
    if isinstance(bits, tuple) and len(bits) > 1 and max(bits) > 8:
        raise ScanReadError(f"{path}: {max(bits)}-bit colour TIFF, which cfgen would read as 8-bit; save it as a "
                            "16-bit PNG or one channel per file")


def _decode(im, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(pixels H x W [x C], alpha or None) in the file's own pixel grid."""
    if im.format == "PNG" and is_colour16(path):
        return read_png16(path)
    mode = im.mode
    alpha = np.asarray(im.getchannel("A")) if mode in ("RGBA", "LA", "PA") else None
    if mode in ("P", "PA", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        im = im.convert("RGB")
    elif mode in ("LA", "1"):
        im = im.convert("L")
    return np.asarray(im), alpha


def read_raster(path: Path) -> Scan:
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # cfgen's own limit (check_size) applies, before decoding
    try:
        with Image.open(path) as im:
            check_size((im.height, im.width), path, channels=len(im.getbands()))
            fmt = {"PNG": "png", "JPEG": "jpeg", "TIFF": "tiff", "MPO": "jpeg"}.get(im.format or "")
            if fmt is None:
                raise ScanReadError(f"{path}: {im.format} images are not supported (PNG, JPEG, TIFF)")
            _check_single(im, path)
            mode, orientation = im.mode, int(im.getexif().get(ORIENTATION_TAG, 1) or 1)
            arr, alpha = _decode(im, path)
    except UnidentifiedImageError:
        raise ScanReadError(f"{path}: not a readable image (corrupt or not PNG/JPEG/TIFF)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ScanReadError(f"{path}: cannot decode image ({exc})") from None
    source_dtype = str(arr.dtype)
    if arr.dtype == np.int32 and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        source_dtype = "uint16"  # Pillow's "I" mode for 16-bit PNGs
    arr = _displayed(arr, orientation)
    pixels = arr.astype(np.float32)
    pixels = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)
    meta = {"mode": mode, "orientation": orientation,
            "alpha": None if alpha is None else _displayed(alpha, orientation)}
    return Scan(path=path, format=fmt, pixels=pixels, source_dtype=source_dtype, meta=meta)


def _to_storage(template: Scan, pixels: np.ndarray, window, fmt: str) -> np.ndarray:
    """Scan units -> the type the file stores: the input's own raster type (float TIFF stays
    float TIFF), else 16-bit through the intensity window."""
    dtype = np.dtype(template.source_dtype) if template.format in ("png", "jpeg", "tiff") else None
    if dtype is not None and dtype.kind == "f" and fmt == "TIFF":
        return pixels.astype(np.float32)
    if dtype is None or dtype.kind not in "ui":
        if window is not None:
            t = (window.to_model(pixels) - window.model_low) / (window.model_high - window.model_low)
        else:
            lo, hi = float(pixels.min()), float(pixels.max())
            t = (pixels - lo) / (hi - lo or 1.0)
        return np.round(np.clip(t, 0, 1) * 65535).astype(np.uint16)
    info = np.iinfo(dtype)
    return np.clip(np.round(pixels), info.min, info.max).astype(dtype)


def _as_8bit(arr: np.ndarray) -> np.ndarray:
    return arr if arr.dtype == np.uint8 else (arr.astype(np.float64) / np.iinfo(arr.dtype).max * 255).round().astype(np.uint8)


def _file_array(template: Scan, pixels: np.ndarray, window, fmt: str) -> np.ndarray:
    """(H, W[, C]) as the file stores it: its type, its alpha channel, its pixel grid."""
    stored = _to_storage(template, pixels, window, fmt)
    arr = stored[0] if stored.shape[0] == 1 else np.moveaxis(stored, 0, -1)
    alpha = template.meta.get("alpha") if template.format in ("png", "tiff", "jpeg") else None
    colour16 = fmt == "PNG" and arr.ndim == 3 and template.format == "png" and arr.dtype == np.uint16
    if fmt == "JPEG" or (arr.ndim == 3 and not colour16):
        arr = _as_8bit(arr)  # Pillow writes colour as 8-bit only; JPEG is 8-bit
    if alpha is not None and fmt != "JPEG" and alpha.shape == arr.shape[:2]:
        a = alpha.astype(arr.dtype) if alpha.dtype == arr.dtype else _rescale(alpha, arr.dtype)
        arr = np.dstack([arr, a])
    return _stored_grid(arr, int(template.meta.get("orientation", 1)))


def _rescale(a: np.ndarray, dtype) -> np.ndarray:
    src, dst = np.iinfo(a.dtype).max, np.iinfo(dtype).max
    return np.round(a.astype(np.float64) * dst / src).astype(dtype)


def write_raster(template: Scan, pixels: np.ndarray, target: Path, description: str, window=None) -> Path:
    from PIL import Image, PngImagePlugin

    if pixels.ndim != 3:
        raise ValueError("raster output needs a 2D image")
    fmt = _PIL_FORMATS[target.suffix.lower()]
    arr = _file_array(template, pixels, window, fmt)
    orientation = int(template.meta.get("orientation", 1))
    software = f"cfgen {__version__}"
    text = f"SYNTHETIC image generated by {software}: {description}"
    labels = {"Software": software, "Description": text, "cfgen:synthetic": "YES"}
    with atomic_path(target) as tmp:
        if fmt == "PNG" and arr.ndim == 3 and arr.dtype == np.uint16:
            write_png16(tmp, arr, labels, orientation)
            return target
        im = Image.fromarray(arr)
        exif = Image.Exif()
        if orientation != 1:
            exif[ORIENTATION_TAG] = orientation
        if fmt == "PNG":
            info = PngImagePlugin.PngInfo()
            for k, v in labels.items():
                info.add_text(k, v)
            im.save(tmp, format="PNG", pnginfo=info, exif=exif)
        elif fmt == "JPEG":
            im.save(tmp, format="JPEG", quality=95, comment=text.encode("utf-8"), exif=exif)
        else:
            tags = {270: text, 305: software, **({274: orientation} if orientation != 1 else {})}
            im.save(tmp, format="TIFF", tiffinfo=tags)
    return target
