"""The kinds of bad input of issue 19, as runnable cases (same contract as bad_cases.py): files
that are not regular files, model configs of the wrong type or size, ordinary input problems that
must not read as an internal error, DICOM series faults, prompts the text encoder cannot take
whole, outputs that cannot be written, training resumed with other settings."""
from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np

from bad_cases import Case, _batch, _ct, _edit, _png


# --- not a regular file ---------------------------------------------------------------------------
def fifo_scan(w, m):
    os.mkfifo(w / "scan.png")
    return _edit(w, m, w / "scan.png")


def fifo_mask(w, m):
    os.mkfifo(w / "mask.png")
    return _edit(w, m, _ct(w), "--mask", str(w / "mask.png"))


def device_as_scan(w, m):
    os.symlink("/dev/zero", w / "scan.nii")
    return _edit(w, m, w / "scan.nii")


def fifo_in_batch(w, m):
    os.mkfifo(w / "pipe.dcm")
    return _batch(w, m, "image,prompt\npipe.dcm,x\n")


# --- model configs --------------------------------------------------------------------------------
def _registry(w: Path, m: Path, extra: str, table: str = "") -> list[str]:
    (w / "reg.toml").write_text(f'[models.mine]\nfamily = "latent-diffusion-2d"\nsource = {{ kind = "local", '
                                f'path = "{m.as_posix()}" }}\n{extra}\n{table}')
    return _edit(w, Path("mine"), _ct(w))


def toml_string_resolution(w, m):
    return _registry(w, m, 'resolution = "512"')


def toml_misspelt_key(w, m):
    return _registry(w, m, "resoluton = 512")


def toml_defaults_wrong_type(w, m):
    return _registry(w, m, "", "[models.mine.defaults]\nsteps = \"fifty\"\n")


def toml_unknown_default(w, m):
    return _registry(w, m, "", "[models.mine.defaults]\nstep = 20\n")


def toml_scheduler_not_a_table(w, m):
    return _registry(w, m, 'scheduler = "ddim"')


def toml_channels_list(w, m):
    return _registry(w, m, "channels = [1]")


def toml_unknown_top_level(w, m):
    args = _registry(w, m, "")
    (w / "reg.toml").write_text('defualt = "mine"\n' + (w / "reg.toml").read_text())
    return args


def toml_scheduler_value_type(w, m):
    return _registry(w, m, "", "[models.mine.scheduler]\nbeta_start = \"0.00085\"\n")


def toml_sha256_a_number(w, m):
    return _registry(w, m, "", "[models.mine.sha256]\n\"unet/diffusion_pytorch_model.safetensors\" = 12\n")


def mask_of_another_size(w, m):
    _png(w / "mask.png", np.full((40, 40), 255, np.uint8))
    return _edit(w, m, _ct(w), "--mask", str(w / "mask.png"))


def _folder(w: Path, m: Path) -> Path:
    return Path(shutil.copytree(m, w / "model"))


def folder_toml_bad_type(w, m):
    bad = _folder(w, m)
    (bad / "cfgen.toml").write_text((bad / "cfgen.toml").read_text().replace("resolution = 32", "resolution = true"))
    return _edit(w, bad, _ct(w))


def folder_toml_not_toml(w, m):
    bad = _folder(w, m)
    (bad / "cfgen.toml").write_text("family = latent diffusion\n[[")
    return _edit(w, bad, _ct(w))


def unet_config_not_json(w, m):
    bad = _folder(w, m)
    (bad / "unet" / "config.json").write_text("{not json")
    return _edit(w, bad, _ct(w))


def unet_config_a_list(w, m):
    bad = _folder(w, m)
    (bad / "unet" / "config.json").write_text("[1, 2, 3]")
    return _edit(w, bad, _ct(w))


def unet_config_huge_channels(w, m):
    bad = _folder(w, m)
    cfg = json.loads((bad / "unet" / "config.json").read_text())
    cfg["block_out_channels"] = [65536, 65536]
    (bad / "unet" / "config.json").write_text(json.dumps(cfg))
    return _edit(w, bad, _ct(w))


_BUILT: dict[str, Path] = {}  # built once per process, copied into each case that needs one


def _cached(key: str, make) -> Path:
    import atexit
    import tempfile

    if key not in _BUILT or not _BUILT[key].exists():
        root = Path(tempfile.mkdtemp(prefix="cfgen-cases-"))
        atexit.register(shutil.rmtree, root, True)
        _BUILT[key] = make(root / key)
    return _BUILT[key]


def _model3d(w: Path) -> Path:
    from cfgen.models.ldm3d import LDM3DSpec, build_ldm3d

    built = _cached("model3d", lambda p: build_ldm3d(p, LDM3DSpec(), seed=0))
    return Path(shutil.copytree(built, w / "model3d"))


def _volume(w: Path) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((16, 16, 16), dtype=np.float32), np.eye(4)),
             w / "vol.nii.gz")
    return w / "vol.nii.gz"


def model3d_huge_channels(w, m):
    bad = _model3d(w)
    cfg = json.loads((bad / "unet" / "config.json").read_text())
    cfg["channels"] = [40000, 40000]
    (bad / "unet" / "config.json").write_text(json.dumps(cfg))
    return _edit(w, bad, _volume(w))


def model3d_lying_header(w, m):
    bad = _model3d(w)
    f = bad / "unet" / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(struct.pack("<Q", 10 ** 12) + data[8:])  # a header length far past the file's end
    return _edit(w, bad, _volume(w))


def model3d_garbage_weights(w, m):
    bad = _model3d(w)
    (bad / "autoencoder" / "model.safetensors").write_bytes(os.urandom(4096))
    return _edit(w, bad, _volume(w))


def model3d_config_wrong_type(w, m):
    bad = _model3d(w)
    cfg = json.loads((bad / "unet" / "config.json").read_text())
    cfg["channels"] = "8,16"
    (bad / "unet" / "config.json").write_text(json.dumps(cfg))
    return _edit(w, bad, _volume(w))


# --- ordinary problems, not internal errors -------------------------------------------------------
def _ct_with(w: Path, **tags) -> Path:
    import pydicom

    ds = pydicom.dcmread(_ct(w))
    for k, v in tags.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    ds.save_as(w / "tagged.dcm")
    return w / "tagged.dcm"


def _invalid_value(w: Path, keyword: str, value: str) -> Path:
    """A header value pydicom itself would refuse to write (PACS exports have them)."""
    import pydicom
    from pydicom import config

    p = _ct_with(w)
    ds = pydicom.dcmread(p)
    mode = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        from pydicom.dataelem import DataElement

        ds[keyword] = DataElement(ds[keyword].tag, "LO", value)  # written as text, read back as it is
        ds.save_as(p)
    finally:
        config.settings.writing_validation_mode = mode
    return p


def dicom_text_slope(w, m):
    return _edit(w, m, _invalid_value(w, "RescaleSlope", "abc"))


def dicom_without_rows(w, m):
    return _edit(w, m, _ct_with(w, Rows=None))


def dicom_bits_allocated_odd(w, m):
    return _edit(w, m, _ct_with(w, BitsAllocated=12))


def dicom_garbage_spacing(w, m):
    return _edit(w, m, _invalid_value(w, "PixelSpacing", "a\\b"), "--format", "nifti")


def seed_too_large(w, m):
    return _edit(w, m, _ct(w), "--seed", str(2 ** 64))


def seed_negative(w, m):
    return _edit(w, m, _ct(w), "--seed", "-5")


def csv_bad_seed(w, m):
    return _batch(w, m, "image,prompt,seed\nct.dcm,x,abc\n")


def csv_bad_strength(w, m):
    return _batch(w, m, "image,prompt,strength\nct.dcm,x,2\n")


def scan_is_a_folder_of_text(w, m):
    (w / "scan.png").mkdir()
    (w / "scan.png" / "notes.txt").write_text("hello")
    return _edit(w, m, w / "scan.png")


# --- DICOM series ---------------------------------------------------------------------------------
def _series(w: Path, n: int = 4) -> tuple[Path, list[Path]]:
    import copy

    import pydicom
    from pydicom.uid import generate_uid

    base = pydicom.dcmread(_ct(w))
    folder = w / "series"
    folder.mkdir()
    uid, files = generate_uid(), []
    for i in range(n):
        ds = copy.deepcopy(base)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        pos = [float(v) for v in base.ImagePositionPatient]
        ds.ImagePositionPatient = [pos[0], pos[1], pos[2] + 5.0 * i]
        files.append(folder / f"slice{i:03d}.dcm")
        ds.save_as(files[-1])
    return folder, files


def _series_edit(w: Path, folder: Path) -> list[str]:
    return _edit(w, _model3d(w), folder)


def series_resent_slice(w, m):
    import pydicom
    from pydicom.uid import generate_uid

    folder, files = _series(w)
    ds = pydicom.dcmread(files[1])
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(folder / "slice001-resent.dcm")
    return _series_edit(w, folder)


def series_mixed_sizes(w, m):
    import pydicom

    folder, files = _series(w)
    ds = pydicom.dcmread(files[2])
    ds.set_pixel_data(ds.pixel_array[:64, :64].copy(), "MONOCHROME2", int(ds.BitsStored))
    ds.save_as(files[2])
    return _series_edit(w, folder)


def series_corrupt_slice(w, m):
    folder, files = _series(w)
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) // 2])
    return _series_edit(w, folder)


# --- prompts --------------------------------------------------------------------------------------
def prompt_past_the_encoder(w, m):
    return _edit(w, m, _ct(w), "-p", "Chest X-ray showing " + ", ".join(["Pleural Effusion"] * 12), "--strict")


def prompt_unrepresentable(w, m):
    return _edit(w, m, _ct(w), "-p", "Rö épanché", "--strict")


# --- outputs --------------------------------------------------------------------------------------
def out_is_a_file(w, m):
    (w / "notes.txt").write_text("a file")
    return ["edit", str(_ct(w)), "-p", "x", "-m", str(m), "-o", str(w / "notes.txt"), "--steps", "2", "-q"]


def out_is_the_input(w, m):
    ct = _ct(w)
    return ["edit", str(ct), "-p", "x", "-m", str(m), "-o", str(ct), "--steps", "2", "-q"]


def dicom_format_for_png(w, m):
    return _edit(w, m, _png(w / "a.png", np.zeros((32, 32), np.uint8)), "--format", "dicom")


def batch_output_report_json(w, m):
    return _batch(w, m, "image,prompt,output\nct.dcm,x,report.json\n")


# --- training -------------------------------------------------------------------------------------
def _finetune(w: Path, m: Path, *extra) -> list[str]:
    for i in range(2):
        _png(w / f"img{i}.png", (np.arange(32 * 32).reshape(32, 32) * (i + 1) % 251).astype(np.uint8))
    (w / "train.csv").write_text("image,caption\nimg0.png,a\nimg1.png,b\n")
    return ["finetune", str(w / "train.csv"), "-m", str(m), "-o", str(w / "out"), "--max-steps", "2",
            "--checkpoint-every", "1", "--batch-size", "1", "-q", *extra]


def _trained(w: Path, m: Path) -> None:
    """A finished 2-step finetune in w/out (trained once per process and model, then copied)."""
    from typer.testing import CliRunner

    from cfgen.cli.main import app

    def train(folder: Path) -> Path:
        folder.mkdir(parents=True)
        res = CliRunner().invoke(app, _finetune(folder, m), catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return folder

    built = _cached(f"trained-{m.name}", train)
    _finetune(w, m)  # the same data files in this case's folder
    shutil.copytree(built / "out", w / "out")


def resume_other_lr(w, m):
    _trained(w, m)
    return _finetune(w, m, "--resume", "--max-steps", "3", "--learning-rate", "0.5")


def resume_other_seed(w, m):
    _trained(w, m)
    return _finetune(w, m, "--resume", "--max-steps", "3", "--seed", "7")


KIND_CASES = [
    Case("FIFO named scan.png", fifo_scan, 1, "not a regular file"),
    Case("FIFO as --mask", fifo_mask, 1, "not a regular file"),
    Case("/dev/zero linked as scan.nii", device_as_scan, 1, "not a regular file"),
    Case("batch row naming a FIFO", fifo_in_batch, 1, "not a regular file"),
    Case("models.toml: resolution a string", toml_string_resolution, 1, "resolution: expected an integer"),
    Case("models.toml: misspelt key", toml_misspelt_key, 1, "unknown key 'resoluton'"),
    Case("models.toml: default of the wrong type", toml_defaults_wrong_type, 1, "defaults.steps: expected an integer"),
    Case("models.toml: unknown default", toml_unknown_default, 1, "unknown key 'defaults.step'"),
    Case("models.toml: scheduler not a table", toml_scheduler_not_a_table, 1, "scheduler: expected a table"),
    Case("models.toml: channels a list", toml_channels_list, 1, "channels: expected an integer"),
    Case("models.toml: misspelt top-level key", toml_unknown_top_level, 1, "unknown top-level key 'defualt'"),
    Case("models.toml: scheduler value a string", toml_scheduler_value_type, 1, "scheduler.beta_start: expected a number"),
    Case("models.toml: sha256 a number", toml_sha256_a_number, 1, "expected a string"),
    Case("--mask of another size", mask_of_another_size, 1, "does not match the scan"),
    Case("cfgen.toml: resolution true", folder_toml_bad_type, 1, "resolution: expected an integer"),
    Case("cfgen.toml: not TOML", folder_toml_not_toml, 1, "not valid TOML"),
    Case("unet/config.json not JSON", unet_config_not_json, 1, "unet/config.json: not valid JSON"),
    Case("unet/config.json a list", unet_config_a_list, 1, "config.json: expected a JSON object"),
    Case("2D UNet config with 65536 channels", unet_config_huge_channels, 1, "parameters"),
    Case("3D UNet config with 40000 channels", model3d_huge_channels, 1, "parameters"),
    Case("3D weights with a lying header", model3d_lying_header, 1, "not a readable safetensors file"),
    Case("3D weights of random bytes", model3d_garbage_weights, 1, "not a readable safetensors file"),
    Case("3D config channels a string", model3d_config_wrong_type, 1, "channels"),
    Case("DICOM RescaleSlope 'abc'", dicom_text_slope, 1, "RescaleSlope"),
    Case("DICOM without Rows", dicom_without_rows, 1, "Rows"),
    Case("DICOM BitsAllocated 12", dicom_bits_allocated_odd, 1, "Bits Allocated"),
    Case("DICOM PixelSpacing 'a\\b'", dicom_garbage_spacing, 1, "PixelSpacing"),
    Case("--seed 2^64", seed_too_large, 2, "--seed"),
    Case("--seed -5", seed_negative, 2, "--seed"),
    Case("CSV seed 'abc'", csv_bad_seed, 1, "seed"),
    Case("CSV strength 2", csv_bad_strength, 1, "strength"),
    Case("folder of text named scan.png", scan_is_a_folder_of_text, 1, "no DICOM series"),
    Case("series: a slice sent twice", series_resent_slice, 1, "same position"),
    Case("series: one slice of another size", series_mixed_sizes, 1, "slice002.dcm"),
    Case("series: a truncated slice", series_corrupt_slice, 1, "slice002.dcm"),
    Case("prompt past the text encoder (--strict)", prompt_past_the_encoder, 2, "tokens"),
    Case("prompt with characters the tokenizer drops (--strict)", prompt_unrepresentable, 2, "cannot represent"),
    Case("-o is a file", out_is_a_file, 2, "is a file, not a folder"),
    Case("-o is the input", out_is_the_input, 2, "is the input itself"),
    Case("--format dicom for a PNG", dicom_format_for_png, 2, "DICOM output needs a DICOM input"),
    Case("batch output named report.json", batch_output_report_json, 1, "report.json"),
    Case("finetune --resume with another learning rate", resume_other_lr, 2, "learning_rate"),
    Case("finetune --resume with another seed", resume_other_seed, 2, "seed"),
]


def unet_config_string_channels(w, m):
    bad = _folder(w, m)
    cfg = json.loads((bad / "unet" / "config.json").read_text())
    cfg["block_out_channels"] = "32,64"
    (bad / "unet" / "config.json").write_text(json.dumps(cfg))
    return _edit(w, bad, _ct(w))


KIND_CASES.append(Case("2D UNet config with channels as a string", unet_config_string_channels, 1,
                       "unet/config.json: not a UNet2DConditionModel config"))
