"""The packaging step of the demo recipes (cfgen.training.export.export_shipped): what goes into
the package is fp16 safetensors, names no path of the training machine, and its sha256 lines
are those of the files written (checked with hashlib, not with cfgen's own hashing)."""
from __future__ import annotations

import hashlib
import json
import re
import shutil

import torch
from safetensors.torch import load_file

from cfgen.models.loader import load_model
from cfgen.training.export import export_shipped, portable


def _trained_folder(tiny_model, tmp_path):
    """A model folder as `cfgen finetune` leaves it under a recipe's --work folder."""
    work = tmp_path / "work"
    model = work / "unet" / "model"
    shutil.copytree(tiny_model, model)
    (work / "phantoms").mkdir()
    (model / "training.json").write_text(json.dumps({
        "base_model": {"name": "base", "folder": str(work / "base"), "source": str(work / "base")},
        "data": str(work / "phantoms" / "train.csv"), "steps": 3}))
    cfg = model / "unet" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "_name_or_path": str(work / "base" / "unet")}))
    return work, model


def test_export_writes_fp16_weights_no_machine_paths_and_the_hashes_of_its_files(tiny_model, tmp_path):
    work, model = _trained_folder(tiny_model, tmp_path)
    before = {p.relative_to(model): p.read_bytes() for p in model.rglob("*") if p.is_file()}
    target = tmp_path / "package" / "demo-tiny"
    digests = export_shipped(model, target, "scripts/train_demo_tiny.py")

    files = sorted(target.rglob("*.safetensors"))
    assert files and sorted(digests) == sorted(f.relative_to(target).as_posix() for f in files)
    for f in files:
        assert digests[f.relative_to(target).as_posix()] == hashlib.sha256(f.read_bytes()).hexdigest()
        tensors = load_file(str(f))
        assert all(t.dtype == torch.float16 for t in tensors.values() if t.is_floating_point())
    info = json.loads((target / "training.json").read_text())
    assert info["data"] == "WORK/phantoms/train.csv" and "folder" not in info["base_model"]
    assert info["base_model"]["source"] == "built by scripts/train_demo_tiny.py"
    assert "_name_or_path" not in json.loads((target / "unet" / "config.json").read_text())
    for f in target.rglob("*"):
        if f.suffix in (".json", ".toml") and "tokenizer" not in f.parent.name:
            assert not re.findall(r'"(/[^"]*)"', f.read_text()), f
    after = {p.relative_to(model): p.read_bytes() for p in model.rglob("*") if p.is_file()}
    assert after == before  # the trained folder itself is left as it was
    assert load_model(str(target), device="cpu").unet.dtype == torch.float32  # loads, widened as asked


def test_portable_keeps_relative_paths_and_names_work_relative_ones(tmp_path):
    model = tmp_path / "w" / "unet" / "model"
    assert portable("data/train.csv", model) == "data/train.csv"
    assert portable(str(tmp_path / "w" / "p" / "t.csv"), model) == "WORK/p/t.csv"
    assert portable(None, model) is None
