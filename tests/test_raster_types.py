"""Raster outputs keep what the input stores: float TIFF in HU, 16-bit colour with its alpha, the
EXIF orientation; files with several frames are refused. References: Pillow's ImageOps.exif_transpose
and pypng's reader; inputs are written by Pillow and pypng, not by cfgen."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import png
import pytest
from PIL import Image, ImageOps

FAST = ["--steps", "6", "-q", "--guidance", "5"]
H, W = 48, 64


def _mask(tmp: Path, shape=(H, W)) -> Path:
    """Nonzero (may change) in the top-left corner only."""
    m = np.zeros(shape, np.uint8)
    m[4:20, 4:24] = 255
    path = tmp / f"mask_{shape[0]}x{shape[1]}.png"
    Image.fromarray(m).save(path)
    return path


def _outside(shape=(H, W)) -> np.ndarray:
    keep = np.ones(shape, bool)
    keep[:32, :40] = False  # the mask plus its feathered edge
    return keep


def _edit(cli, model, src: Path, out: Path, mask: Path, *extra) -> Path:
    res = cli("edit", src, "-p", "something else", "-m", model, "--mask", mask, "-o", out, *FAST, *extra)
    assert res.exit_code == 0, res.output
    (cf,) = out.glob("*/counterfactual.*")
    return cf


def test_float_tiff_in_hu_stays_float(cli, tiny_model, tmp_path):
    yy, xx = np.mgrid[0:H, 0:W]
    hu = (-1000 + 25 * xx + 3 * yy).astype(np.float32)  # -1000 .. 716 HU
    src = tmp_path / "ct.tif"
    Image.fromarray(hu, mode="F").save(src)
    cf = _edit(cli, tiny_model, src, tmp_path / "out", _mask(tmp_path), "--window", "-1000,1000")
    with Image.open(cf) as im:
        assert im.mode == "F"
        out = np.asarray(im)
    keep = _outside()
    assert np.array_equal(out[keep], hu[keep])  # unchanged outside the mask, in HU
    assert np.abs(out[~keep] - hu[~keep]).max() > 1  # and edited inside


def test_jpeg_exif_orientation_is_applied_and_kept(cli, tiny_model, tmp_path):
    yy, xx = np.mgrid[0:W, 0:H]  # displayed upright as W x H (portrait), stored as H x W (rotated)
    upright = (30 + 2 * yy + xx).astype(np.uint8)
    stored = np.rot90(upright, 1)  # orientation 6 shows this turned 90 degrees clockwise
    src = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(stored)).save(src, quality=100, exif=exif)
    with Image.open(src) as im:
        shown = np.asarray(ImageOps.exif_transpose(im)).astype(int)
    assert shown.shape == (W, H) and np.abs(shown - upright).mean() < 1
    cf = _edit(cli, tiny_model, src, tmp_path / "out", _mask(tmp_path, (W, H)))
    with Image.open(cf) as im:
        assert im.getexif().get(0x0112) == 6 and (im.height, im.width) == (H, W)  # the input's stored grid
        out_shown = np.asarray(ImageOps.exif_transpose(im)).astype(int)
    keep = _outside((W, H))  # the mask was drawn on the image as displayed
    assert np.abs(out_shown[keep] - shown[keep]).mean() < 2  # JPEG re-encoding only
    assert np.abs(out_shown[~keep] - shown[~keep]).mean() > 2


def _rgba16(path: Path) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W]
    base = (10000 + 500 * xx + 200 * yy).astype(np.uint16)
    rgb = np.stack([base, base + 7, base + 13], axis=-1)  # differ below 8 bits
    alpha = rng.integers(30000, 65535, (H, W)).astype(np.uint16)
    arr = np.dstack([rgb, alpha])
    png.Writer(W, H, greyscale=False, alpha=True, bitdepth=16).write(open(path, "wb"), arr.reshape(H, W * 4))
    return rgb, alpha


def test_16bit_rgba_png_keeps_depth_and_alpha(cli, tiny_rgb_model, tmp_path):
    src = tmp_path / "rgba16.png"
    rgb, alpha = _rgba16(src)
    cf = _edit(cli, tiny_rgb_model, src, tmp_path / "out", _mask(tmp_path))
    w, h, rows, info = png.Reader(filename=str(cf)).asDirect()
    assert info["bitdepth"] == 16 and info["alpha"] and (w, h) == (W, H)
    out = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(H, W, 4)
    assert np.array_equal(out[..., 3], alpha)
    keep = _outside()
    assert np.array_equal(out[..., :3][keep], rgb[keep])  # all 16 bits kept outside the mask
    with Image.open(cf) as im:
        assert im.text["cfgen:synthetic"] == "YES"


def test_8bit_gray_alpha_keeps_its_alpha(cli, tiny_model, tmp_path):
    gray = np.full((H, W), 120, np.uint8)
    alpha = np.tile(np.arange(W, dtype=np.uint8) * 4, (H, 1))
    src = tmp_path / "la.png"
    Image.fromarray(np.dstack([gray, alpha]), mode="LA").save(src)
    cf = _edit(cli, tiny_model, src, tmp_path / "out", _mask(tmp_path))
    with Image.open(cf) as im:
        assert im.mode == "LA" and np.array_equal(np.asarray(im.getchannel("A")), alpha)


def _tiff_rgb16(path: Path) -> None:
    """A minimal uncompressed 16-bit RGB TIFF (Pillow cannot write one)."""
    h, w = 4, 5
    data = np.arange(h * w * 3, dtype="<u2").tobytes()
    tags = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, 3, 8 + 2 + 12 * 10 + 4), (259, 3, 1, 1), (262, 3, 1, 2),
            (273, 4, 1, 8 + 2 + 12 * 10 + 4 + 6), (277, 3, 1, 3), (278, 3, 1, h), (279, 4, 1, len(data)),
            (284, 3, 1, 1)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *t) if t[1] == 4 else
                                                  struct.pack("<HHIHH", *t, 0) for t in tags) + struct.pack("<I", 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<HHH", 16, 16, 16) + data)


def _multipage(path: Path) -> None:
    frames = [Image.fromarray(np.full((H, W), v, np.uint8)) for v in (10, 200, 90)]
    frames[0].save(path, save_all=True, append_images=frames[1:])


@pytest.mark.parametrize("name, make, problem", [
    ("pages.tif", _multipage, "multi-page TIFF with 3 frames"),
    ("anim.png", _multipage, "animated PNG with 3 frames"),
    ("rgb16.tif", _tiff_rgb16, "16-bit colour TIFF"),
])
def test_files_cfgen_would_read_in_part_are_refused(cli, tiny_model, tmp_path, name, make, problem):
    src = tmp_path / name
    make(src)
    with Image.open(src) as im:  # Pillow opens every one of them (and would hand over a part)
        assert im.width > 0
    res = cli("edit", src, "-p", "x", "-m", tiny_model, "-o", tmp_path / "out", *FAST)
    assert res.exit_code != 0
    line = res.stderr.strip().splitlines()[-1]
    assert problem in line and name in line and "Traceback" not in res.stderr
