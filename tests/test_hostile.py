"""Hostile inputs and folders (issue 19, its first items): nothing lost, nothing written outside
OUT, no unpickling through a shard index, and a per-item report cost that stays flat."""
from __future__ import annotations

import json
from pathlib import Path
import shutil

import numpy as np
import pytest
from cxr_inputs import cxr_pngs

from cfgen.errors import ModelError
from cfgen.models.loader import load_model



def _error_lines(stderr: str) -> int:
    """cfgen's own error lines (the tiny models' 16-token text encoder warns about most prompts)."""
    return sum(1 for ln in stderr.splitlines() if ln.strip() and not ln.startswith("cfgen: warning: "))

def test_a_generated_name_never_takes_another_rows_explicit_output(cli, tiny_model, tmp_path):
    d = tmp_path / "d1"
    cxr_pngs(d, 2)
    (d / "b").mkdir()
    shutil.copy(d / "p1.png", d / "b" / "p0.png")
    (d / "jobs.csv").write_text("image,prompt,output\np0.png,Normal chest X-ray,\n"
                                "p0.png,Chest X-ray showing Cardiomegaly,p0-4\n"
                                "b/p0.png,Chest X-ray showing Pleural Effusion,\n")
    res = cli("edit", "--batch", d / "jobs.csv", "-m", tiny_model, "--steps", "1", "-q", "-o", d / "out")
    assert res.exit_code == 0, res.output
    items = json.loads((d / "out" / "report.json").read_text())["items"]
    names = [it["name"] for it in items]
    assert names[1] == "p0-4" and len(set(names)) == 3 and all(it["status"] == "ok" for it in items)
    for it in items:  # each row's own folder, holding that row's record
        rec = json.loads((d / "out" / it["name"] / "item.json").read_text())
        assert rec["row"] == it["row"] and rec["params"]["prompt"] == it["params"]["prompt"]


def test_an_item_folder_that_is_a_link_is_refused_and_what_it_points_at_is_untouched(cli, tiny_model, tmp_path):
    cxr_pngs(tmp_path / "in", 1)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    (victim / ".tmp-precious").write_text("also mine")
    out = tmp_path / "out"
    out.mkdir()
    (out / "p0").symlink_to(victim, target_is_directory=True)
    res = cli("edit", tmp_path / "in" / "p0.png", "-p", "Chest X-ray showing Cardiomegaly", "-m", tiny_model,
              "--steps", "1", "-q", "-o", out)
    assert res.exit_code == 1 and "symbolic link" in res.stderr and _error_lines(res.stderr) == 1, res.output
    assert sorted(p.name for p in victim.iterdir()) == [".tmp-precious", "keep.txt"]
    assert (victim / "keep.txt").read_text() == "mine"


def test_atomic_folders_replace_a_link_without_following_it(tmp_path):
    from cfgen.io.atomic import atomic_dir

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    link = tmp_path / "series"
    link.symlink_to(victim, target_is_directory=True)
    with atomic_dir(link) as tmp:
        (tmp / "new.dcm").write_text("x")
    assert not link.is_symlink() and (link / "new.dcm").is_file()
    assert [p.name for p in victim.iterdir()] == ["keep.txt"]


def _sharded(tiny_model, tmp_path):
    from diffusers import UNet2DConditionModel

    folder = tmp_path / "sharded"
    shutil.copytree(tiny_model, folder)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    shutil.rmtree(folder / "unet")
    unet.save_pretrained(folder / "unet", safe_serialization=True, max_shard_size="100KB")
    return folder


def test_a_sharded_safetensors_unet_loads_and_every_shard_is_hashed(tiny_model, tmp_path):
    folder = _sharded(tiny_model, tmp_path)
    shards = sorted(p.name for p in (folder / "unet").glob("*.safetensors"))
    assert len(shards) > 1 and (folder / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    m = load_model(str(folder), device="cpu")
    assert {f"unet/{s}" for s in shards} <= set(m.sha256)


@pytest.mark.parametrize("bad", ["diffusion_pytorch_model-00001.bin", "../elsewhere.safetensors"])
def test_a_shard_index_naming_a_pickle_or_another_folder_is_refused(tiny_model, tmp_path, bad):
    folder = _sharded(tiny_model, tmp_path)
    index = folder / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    data = json.loads(index.read_text())
    first = next(iter(data["weight_map"]))
    data["weight_map"][first] = bad
    index.write_text(json.dumps(data))
    (folder / "unet" / "diffusion_pytorch_model-00001.bin").write_bytes(b"not to be unpickled")
    with pytest.raises(ModelError, match="safetensors files beside the index only"):
        load_model(str(folder), device="cpu")


def test_progress_writes_of_the_report_are_throttled_and_skip_the_summary(tmp_path, monkeypatch):
    from cfgen import report as rep

    writes, summaries = [], []
    monkeypatch.setattr(rep, "write_json", lambda path, data: writes.append(len(data["items"])))
    r = rep.RunReport("edit", tmp_path, {})
    monkeypatch.setattr(r, "summarize", lambda: summaries.append(1))
    for i in range(500):
        r.add_item({"status": "ok", "metrics": {"l1": 0.1}})
        r.write_progress()
    assert writes == [1] and not summaries  # 500 items within 2 s: one write, no bootstrap
    r.write()
    assert writes == [1, 500] and summaries == [1]


@pytest.mark.parametrize("make, message", [
    ("png_strip", "would be padded to 200000 x 200000"),
    ("nifti_needle", "would be padded to 4000 x 4000 x 4000"),
    ("rgb_giant", "3 channel(s)"),
])
def test_padding_and_channel_bombs_are_refused_from_the_header(cli, tiny_model, tmp_path, make, message):
    """A 1 x 200000 PNG is a few hundred bytes; padded to a square it would be 160 GB."""
    import nibabel as nib
    import numpy as np
    from PIL import Image

    if make == "png_strip":
        path = tmp_path / "strip.png"
        Image.new("L", (200000, 1)).save(path)
    elif make == "nifti_needle":
        path = tmp_path / "needle.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((1, 2, 4000), np.uint8), np.eye(4)), path)
    else:  # a 16384^2 RGB PNG header (805 M values) with no pixels behind it: only the header is read
        import struct
        import zlib

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        path = tmp_path / "giant.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 16384, 16384, 8, 2, 0, 0, 0))
                         + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    res = cli("edit", path, "-p", "x", "-m", tiny_model, "-q", "-o", tmp_path / "out")
    assert res.exit_code == 1 and message in res.stderr and _error_lines(res.stderr) == 1, res.output


@pytest.mark.parametrize("case, code, message", [
    ("out_is_a_file", 2, "is a file, not a folder"),
    ("out_is_the_input", 2, "is the input itself"),
])
def test_output_problems_are_refused_before_the_model_is_loaded(cli, tmp_path, monkeypatch, case, code, message):
    from cfgen.models import loader

    cxr_pngs(tmp_path / "in", 1)
    scan, out = tmp_path / "in" / "p0.png", tmp_path / "out"
    if case == "out_is_a_file":
        out.write_text("not a folder")
    else:
        out = scan
    monkeypatch.setattr(loader, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    res = cli("edit", scan, "-p", "x", "-o", out)
    assert res.exit_code == code and message in res.stderr and _error_lines(res.stderr) == 1, res.output


def test_an_output_named_like_the_runs_own_files_is_refused_per_row(tmp_path):
    from cfgen.editing.jobs import default_name, jobs_from_csv
    from cfgen.editing.params import EditParams

    cxr_pngs(tmp_path / "in", 1)
    (tmp_path / "in" / "jobs.csv").write_text("image,prompt,output\np0.png,x,report.json\np0.png,x,ok\n")
    jobs = jobs_from_csv(tmp_path / "in" / "jobs.csv", EditParams())
    assert "reserved" in jobs[0].error and jobs[1].error is None and jobs[1].name == "ok"
    assert default_name("report.json.png") == "report.json-scan"


def test_library_warnings_go_to_the_item_not_to_stderr(cli, tiny_model, tmp_path):
    """nibabel logs that a header's sform_code is invalid while the scan is read: the note is kept
    in item.json, stderr carries only cfgen's own lines."""
    import nibabel as nib

    img = nib.Nifti1Image((np.arange(32 * 32, dtype=np.float32) % 97).reshape(32, 32), np.eye(4))
    img.header["sform_code"] = 7  # not a code NIfTI defines
    nib.save(img, tmp_path / "odd.nii.gz")
    res = cli("edit", tmp_path / "odd.nii.gz", "-p", "x", "-m", tiny_model, "-o", tmp_path / "out", "--steps", "2", "-q")
    assert res.exit_code == 0, res.output
    assert res.stderr.strip() == "", res.stderr
    item = json.loads((tmp_path / "out" / "odd" / "item.json").read_text())
    assert any("sform_code" in n for n in item["read_notes"]), item.get("read_notes")


def test_a_volume_with_an_all_zero_affine_is_edited_in_voxel_order(cli, tmp_path):
    """No usable axes in the affine: the volume reaches the model in voxel order, and the report says so."""
    import nibabel as nib

    from cfgen.models.ldm3d import LDM3DSpec, build_ldm3d

    model = build_ldm3d(tmp_path / "m3d", LDM3DSpec(), seed=0)
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((16, 16, 12))
    hdr.set_data_dtype(np.float32)
    hdr["sform_code"] = 1
    for row in ("srow_x", "srow_y", "srow_z"):
        hdr[row] = 0  # a scanner sform of zeros: no axes at all
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((16, 16, 12), dtype=np.float32), None, header=hdr),
             tmp_path / "flat.nii.gz")
    assert not nib.load(tmp_path / "flat.nii.gz").header.get_best_affine()[:3, :3].any()
    res = cli("edit", tmp_path / "flat.nii.gz", "-p", "x", "-m", model, "-o", tmp_path / "out", "--steps", "2", "-q")
    assert res.exit_code == 0, res.output
    item = json.loads((tmp_path / "out" / "flat" / "item.json").read_text())
    assert item["preprocessing"]["orientation"].startswith("unknown")
    assert nib.load(tmp_path / "out" / "flat" / "counterfactual.nii.gz").shape == (16, 16, 12)


def test_prompt_warnings_are_recorded_and_printed_once(cli, tiny_model, ct_small, tmp_path):
    long = "Chest X-ray showing " + ", ".join(["Pleural Effusion"] * 6)
    res = cli("edit", ct_small, "-p", long, "-m", tiny_model, "-o", tmp_path / "out", "--steps", "2", "-q")
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("cfgen: warning: ") and "is ignored" in lines[0]
    item = json.loads((tmp_path / "out" / "CT_small" / "item.json").read_text())
    assert item["warnings"] and "tokens" in item["warnings"][0]


def test_a_full_disk_is_reported_as_such_not_as_an_internal_error(cli, tiny_model, ct_small, tmp_path, monkeypatch):
    import errno

    from cfgen.editing import operations

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "CT_small" / "counterfactual.dcm"))

    monkeypatch.setattr(operations, "write_scan", full)
    res = cli("edit", ct_small, "-p", "x", "-m", tiny_model, "-o", tmp_path / "out", "--steps", "2", "-q")
    assert res.exit_code == 1
    assert "No space left on device" in res.stderr and "internal error" not in res.stderr, res.stderr
    assert "counterfactual.dcm" in res.stderr
