"""Bad inputs a researcher meets on a PACS export or a shared drive, as runnable cases.

Each case builds its files in a fresh folder and returns the cfgen arguments to run; the tests
(test_bad_inputs.py) and the table script (scripts/bad_input_table.py) run the same cases.
"""
from __future__ import annotations

import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass
class Case:
    name: str
    build: Callable[[Path, Path], list[str]]  # (work folder, tiny model) -> argv after "cfgen"
    code: int
    message: str  # a fragment the one-line error must contain


@dataclass
class Outcome:
    code: int
    stderr: str
    one_line_errors: bool  # every stderr line is a "cfgen: error: ..." line, no traceback
    inputs_untouched: bool
    nothing_outside: bool

    def ok(self, case: Case) -> bool:
        return (self.code == case.code and case.message in self.stderr and self.one_line_errors
                and "internal error" not in self.stderr and self.inputs_untouched and self.nothing_outside)


def run_case(case: Case, work: Path, model: Path) -> Outcome:
    """Build the case in ``work`` (empty), run cfgen in-process, check what the standards ask."""
    from typer.testing import CliRunner

    from cfgen.cli.main import app

    argv = case.build(work, model)
    before = {k: v for k, v in snapshot(work).items() if not k.startswith("out")}  # inputs: all but the output folder
    outside_before = sorted(p.name for p in work.parent.iterdir())
    env = {"CFGEN_MODELS_TOML": str(work / "reg.toml")} if (work / "reg.toml").exists() else {}
    res = CliRunner().invoke(app, argv, env=env, catch_exceptions=False)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    after = {k: v for k, v in snapshot(work).items() if not k.startswith("out")}
    return Outcome(code=res.exit_code, stderr=res.stderr.strip(),
                   one_line_errors=bool(lines) and all(ln.startswith("cfgen: error: ") for ln in lines)
                   and "Traceback" not in res.output,
                   inputs_untouched=after == before,
                   nothing_outside=sorted(p.name for p in work.parent.iterdir()) == outside_before)


def _ct(work: Path) -> Path:
    from pydicom.data import get_testdata_file

    return Path(shutil.copy(get_testdata_file("CT_small.dcm"), work / "ct.dcm"))


def _edit(work: Path, model: Path, scan, *extra) -> list[str]:
    return ["edit", str(scan), "-p", "no devices", "-m", str(model), "-o", str(work / "out"), "--steps", "2", "-q",
            *extra]


def _png(path: Path, arr: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(arr).save(path)
    return path


def truncated_dicom(w, m):
    p = _ct(w)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) * 6 // 10])  # cut inside the pixel data
    return _edit(w, m, p)


def dicom_without_pixels(w, m):
    import pydicom

    ds = pydicom.dcmread(_ct(w))
    del ds.PixelData
    ds.save_as(w / "sr.dcm")
    return _edit(w, m, w / "sr.dcm")


def compressed_dicom(w, m):
    from pydicom.data import get_testdata_file

    return _edit(w, m, shutil.copy(get_testdata_file("JPEG-lossy.dcm"), w / "jpeg.dcm"))


def text_as_nifti(w, m):
    (w / "scan.nii.gz").write_text("patient list, not an image\n" * 10)
    return _edit(w, m, w / "scan.nii.gz")


def zero_byte_png(w, m):
    (w / "empty.png").write_bytes(b"")
    return _edit(w, m, w / "empty.png")


def truncated_png(w, m):
    p = _png(w / "full.png", (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8))
    (w / "trunc.png").write_bytes(p.read_bytes()[:100])
    return _edit(w, m, w / "trunc.png")


def nan_voxels(w, m):
    import nibabel as nib

    a = np.ones((32, 32, 1), np.float32)
    a[3, 4, 0] = np.inf
    nib.save(nib.Nifti1Image(a, np.eye(4)), w / "inf.nii.gz")
    return _edit(w, m, w / "inf.nii.gz")


def nifti_4d(w, m):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((16, 16, 8, 3), np.float32), np.eye(4)), w / "fmri.nii.gz")
    return _edit(w, m, w / "fmri.nii.gz")


def volume_for_2d_model(w, m):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((16, 16, 8), np.float32), np.eye(4)), w / "vol.nii.gz")
    return _edit(w, m, w / "vol.nii.gz")


def two_channel_tiff(w, m):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((16, 16, 1, 1, 2), np.float32), np.eye(4)), w / "vec.nii.gz")
    return _edit(w, m, w / "vec.nii.gz")


def absurd_png_size(w, m):
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 200000, 200000, 8, 0, 0, 0, 0))
    (w / "huge.png").write_bytes(head + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b""))
    return _edit(w, m, w / "huge.png")


def absurd_nifti_size(w, m):
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((30000, 30000, 2000))
    hdr.set_data_dtype(np.float32)
    with open(w / "huge.nii", "wb") as fh:
        hdr.write_to(fh)
        fh.write(b"\x00" * 64)
    return _edit(w, m, w / "huge.nii")


def _batch(w: Path, m: Path, body: str) -> list[str]:
    _ct(w)
    (w / "jobs.csv").write_text(body)
    return ["edit", "--batch", str(w / "jobs.csv"), "-m", str(m), "-o", str(w / "out"), "--steps", "2", "-q"]


def csv_missing_columns(w, m):
    return _batch(w, m, "file,text\nct.dcm,no devices\n")


def csv_blank_rows_and_bad_row(w, m):
    return _batch(w, m, "image,prompt\n\nct.dcm,no devices\n,,\nmissing.dcm,x\n")


def csv_duplicate_outputs(w, m):
    return _batch(w, m, "image,prompt,output\nct.dcm,a,same\nct.dcm,b,same\n")


def csv_escaping_output(w, m):
    return _batch(w, m, "image,prompt,output\nct.dcm,a,../../outside\nct.dcm,b,/tmp/abs\n")


def non_utf8_file_name(w, m):
    import os

    name = os.fsdecode(b"scan-\xff\xfe.png")
    _png(w / name, np.zeros((16, 16), np.uint8))
    (w / name).write_bytes(b"not a png")
    return _edit(w, m, w / name)


def empty_prompt(w, m):
    return ["edit", str(_ct(w)), "-p", "", "-m", str(m), "-o", str(w / "out"), "-q"]


def overlong_prompt(w, m):
    return ["edit", str(_ct(w)), "-p", "x" * 5000, "-m", str(m), "-o", str(w / "out"), "-q"]


def unknown_model(w, m):
    return ["edit", str(_ct(w)), "-p", "x", "-m", "no-such-model", "-o", str(w / "out"), "-q"]


def model_missing_weights(w, m):
    bad = Path(shutil.copytree(m, w / "model"))
    (bad / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    return _edit(w, bad, _ct(w))


def model_corrupt_weights(w, m):
    bad = Path(shutil.copytree(m, w / "model"))
    (bad / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad")
    return _edit(w, bad, _ct(w))


def model_pickle_weights(w, m):
    bad = Path(shutil.copytree(m, w / "model"))
    f = bad / "unet" / "diffusion_pytorch_model.safetensors"
    f.rename(f.with_suffix(".bin"))
    return _edit(w, bad, _ct(w))


def sha256_mismatch(w, m):
    (w / "reg.toml").write_text(f'[models.pinned]\nfamily = "latent-diffusion-2d"\nsource = {{ kind = "local", '
                                f'path = "{m.as_posix()}" }}\n[models.pinned.sha256]\n'
                                f'"unet/diffusion_pytorch_model.safetensors" = "{"ab" * 32}"\n')
    return _edit(w, Path("pinned"), _ct(w))


def _evaluate(work: Path, source, *extra) -> list[str]:
    return ["evaluate", str(source), "-o", str(work / "out"), "--classifier", "none", "-q", *extra]


def eval_csv_missing_columns(w, m):
    (w / "pairs.csv").write_text("image,edited\na.png,b.png\n")
    return _evaluate(w, w / "pairs.csv")


def eval_pair_sizes_differ(w, m):
    _png(w / "a.png", np.zeros((32, 32), np.uint8))
    _png(w / "b.png", np.zeros((48, 32), np.uint8))
    (w / "pairs.csv").write_text("original,counterfactual\na.png,b.png\n")
    return _evaluate(w, w / "pairs.csv")


def eval_unknown_metric(w, m):
    _png(w / "a.png", np.zeros((32, 32), np.uint8))
    (w / "pairs.csv").write_text("original,counterfactual\na.png,a.png\n")
    return _evaluate(w, w / "pairs.csv", "--rank-by", "accuracy")


def eval_diffusion_model_as_classifier(w, m):
    _png(w / "a.png", np.zeros((32, 32), np.uint8))
    (w / "pairs.csv").write_text("original,counterfactual\na.png,a.png\n")
    return ["evaluate", str(w / "pairs.csv"), "-o", str(w / "out"), "--classifier", str(m), "-q"]


def eval_not_a_report(w, m):
    (w / "report.json").write_text('{"command": "caption"}')
    return _evaluate(w, w / "report.json")


CASES = [
    Case("truncated DICOM", truncated_dicom, 1, "cannot decode DICOM pixel data"),
    Case("DICOM without pixel data", dicom_without_pixels, 1, "no pixel data"),
    Case("compressed DICOM, no decoder", compressed_dicom, 1, "cfgen[dicom-codecs]"),
    Case("text file named .nii.gz", text_as_nifti, 1, "not a readable NIfTI"),
    Case("zero-byte PNG", zero_byte_png, 1, "file is empty"),
    Case("truncated PNG", truncated_png, 1, "cannot decode image"),
    Case("Inf voxels", nan_voxels, 1, "NaN/Inf"),
    Case("4D NIfTI", nifti_4d, 1, "4D NIfTI"),
    Case("3D volume, 2D model", volume_for_2d_model, 1, "needs a 3D model"),
    Case("5D (2-channel) NIfTI", two_channel_tiff, 1, "5D NIfTI"),
    Case("PNG claiming 200000x200000", absurd_png_size, 1, "outside what cfgen reads"),
    Case("NIfTI claiming 30000x30000x2000", absurd_nifti_size, 1, "outside what cfgen reads"),
    Case("CSV without image column", csv_missing_columns, 1, "needs an 'image' (or 'Path') column; columns found: file, text"),
    Case("CSV blank rows + missing file", csv_blank_rows_and_bad_row, 1, "missing.dcm: file not found"),
    Case("CSV duplicate output names", csv_duplicate_outputs, 1, "also used on line 2"),
    Case("CSV output leaving the folder", csv_escaping_output, 1, "must be a plain folder name"),
    Case("non-UTF-8 file name", non_utf8_file_name, 1, "not a readable image"),
    Case("empty prompt", empty_prompt, 2, "--prompt is required"),
    Case("5000-character prompt", overlong_prompt, 2, "(limit 2000)"),
    Case("unknown model name", unknown_model, 1, "unknown model 'no-such-model'"),
    Case("model without UNet weights", model_missing_weights, 1, "missing unet/diffusion_pytorch_model.safetensors"),
    Case("model with corrupt weights", model_corrupt_weights, 1, "not a readable safetensors file"),
    Case("model with pickle weights", model_pickle_weights, 1, "only pickle weights found"),
    Case("sha256 mismatch", sha256_mismatch, 1, "sha256 mismatch"),
    Case("evaluate: CSV without pair columns", eval_csv_missing_columns, 1, "columns found: image, edited"),
    Case("evaluate: pair of different sizes", eval_pair_sizes_differ, 1, "differs from the original's"),
    Case("evaluate: unknown --rank-by metric", eval_unknown_metric, 2, "--rank-by accuracy: not a per-item metric"),
    Case("evaluate: diffusion model as classifier", eval_diffusion_model_as_classifier, 2, "needs a 'classifier' model"),
    Case("evaluate: report of another command", eval_not_a_report, 1, "not the report.json of a `cfgen edit` run"),
]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
