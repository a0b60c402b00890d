"""`cfgen finetune --region-weight COLUMN=W`: the denoising loss weighted W times inside the region of a
mask file named per row in a CSV column (small findings: brain lesions, chest devices), for any model."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from test_label_condition import _Spy


@pytest.fixture(scope="module")
def wavelet_model(tmp_path_factory):
    """A 32 px 2D model in one-level Haar space: 16^2 latent cells of 2 x 2 pixels."""
    from cfgen.models.build import PRESETS, build_ldm2d

    return build_ldm2d(tmp_path_factory.mktemp("m") / "wav", PRESETS["tiny-wavelet"], seed=3)


def _png(path, arr):
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path.name


def _training_set(folder, size=32):
    """Three gray images with captions; masks: a rectangle (row 2), none (row 3, empty cell), a
    second column's square (row 2 only), a missing file (row 4)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    rect = np.zeros((size, size)); rect[size // 2:size // 2 + size // 4, size // 4:size // 2] = 255
    square = np.zeros((size, size)); square[2:6, 2:6] = 1  # a 0/1 mask counts as much as a 0/255 one
    rows = ["image,caption,lesions,devices"]
    for i in range(3):
        name = _png(folder / f"img{i}.png", g.integers(0, 256, (size, size)))
        lesions = {0: _png(folder / "rect.png", rect), 1: "", 2: "gone.png"}[i]
        devices = _png(folder / "square.png", square) if i == 0 else ""
        rows.append(f"{name},Chest X-ray,{lesions},{devices}")
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    return folder / "train.csv", rect > 0, square > 0


def _dataset(model_dir, csv, weights):
    from cfgen.editing.grid import ModelGrid
    from cfgen.models.loader import entry_for
    from cfgen.training.data import ImageCaptionDataset, read_training_csv

    samples, bad = read_training_csv(csv, region_columns=list(weights))
    e = entry_for(str(model_dir))
    return ImageCaptionDataset(samples, ModelGrid.of(e), e.channels, e.value_range, region_weights=weights), bad


def test_weight_maps_come_from_the_mask_files_on_the_model_grid(wavelet_model, tmp_path):
    csv, rect, square = _training_set(tmp_path / "d")
    data, bad = _dataset(wavelet_model, csv, {"lesions": 20.0, "devices": 5.0})
    assert [b["row"] for b in bad] == [4] and "gone.png: region mask file not found" in bad[0]["error"]
    first, second = data[0], data[1]
    expect = np.where(rect, 20.0, np.where(square, 5.0, 1.0))  # same grid: no resampling
    assert np.array_equal(first["weights"][0].numpy(), expect)
    assert torch.equal(second["weights"], torch.ones((1, 32, 32)))  # empty cells: no region
    _png(tmp_path / "d" / "rect.png", np.zeros((16, 16)))  # a mask not on its image's grid: that item is skipped
    assert "rect.png: mask of shape (16, 16) does not match the scan (32, 32)" in data[0]["error"]


def test_a_larger_mask_is_resampled_with_its_image(wavelet_model, tmp_path):
    csv, rect, _ = _training_set(tmp_path / "d", size=64)
    data, _ = _dataset(wavelet_model, csv, {"lesions": 8.0})
    w = data[0]["weights"][0].numpy()
    ys, xs = np.nonzero(rect)  # rows 32..47, columns 16..31 of 64 -> 16..23, 8..15 of 32 (inside, exactly)
    assert (w[ys.min() // 2 + 1:(ys.max() + 1) // 2 - 1, xs.min() // 2 + 1:(xs.max() + 1) // 2 - 1] == 8.0).all()
    far = np.ones_like(w, bool); far[ys.min() // 2 - 2:(ys.max() + 1) // 2 + 2, xs.min() // 2 - 2:(xs.max() + 1) // 2 + 2] = False
    assert (w[far] == 1.0).all() and set(np.unique(w)) <= {1.0, 8.0}


def test_region_weight_scales_the_gradient_inside_the_region(wavelet_model, tmp_path):
    from cfgen.models.loader import load_model
    from cfgen.training.config import FinetuneConfig
    from cfgen.training.finetune import noise_schedule
    from cfgen.training.objectives import Denoising

    csv, rect, _ = _training_set(tmp_path / "d")
    data, _ = _dataset(wavelet_model, csv, {"lesions": 20.0})
    pixels = torch.stack([data[0]["pixels"], data[1]["pixels"]])
    regions = torch.stack([data[0]["weights"], data[1]["weights"]])
    model = load_model(str(wavelet_model), device="cpu")
    grads = []
    for extra in ({}, {"regions": regions}):
        cfg = FinetuneConfig(caption_dropout=0.0)
        spy = _Spy(model.unet)
        Denoising()(model, spy, noise_schedule(model.entry, cfg), pixels, ["x", "x"], torch.Generator().manual_seed(0),
                    cfg, **extra).backward()
        grads.append(spy.outputs[0].grad)
    ratio = grads[1] / grads[0]
    cells = rect.reshape(16, 2, 16, 2).any(axis=(1, 3))  # independent 2 x 2 pooling onto the Haar grid
    w = np.where(cells, 20.0, 1.0)
    expect = torch.from_numpy(w / w.mean()).float()
    assert cells.sum() == 16
    assert torch.allclose(ratio[0], expect.expand_as(ratio[0]), rtol=1e-3)
    assert torch.allclose(ratio[1], torch.ones_like(ratio[1]))  # no region in the second image: unchanged


def test_finetune_region_weight_runs_records_and_refuses(cli, wavelet_model, tmp_path):
    csv, _, _ = _training_set(tmp_path / "d")
    common = ("finetune", csv, "-m", wavelet_model, "--batch-size", "2", "--device", "cpu", "-q", "--checkpoint-every", "1")
    res = cli(*common, "--max-steps", "1", "--region-weight", "lesions=20", "--region-weight", "devices=5",
              "-o", tmp_path / "run")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["params"]["region_weights"] == {"lesions": 20.0, "devices": 5.0}
    assert [i["row"] for i in report["items"] if i["status"] == "error"] == [4]
    res = cli(*common, "--max-steps", "2", "--region-weight", "lesions=10", "--resume", "-o", tmp_path / "run")
    assert res.exit_code == 2 and "region_weights" in res.output, res.output
    for bad, code, msg in (("nodules=3", 1, "train.csv: --region-weight nodules=...: no such column"),
                           ("lesions", 2, "COLUMN=WEIGHT"), ("lesions=0", 2, "must be a positive number")):
        res = cli(*common, "--max-steps", "1", "--region-weight", bad, "-o", tmp_path / "bad")
        assert res.exit_code == code and msg in res.output, (bad, res.output)
    assert not (tmp_path / "bad" / "model").exists()
    res = cli("cycle-train", csv, "-m", wavelet_model, "--counterfactual", "x=>y", "--region-weight", "lesions=2",
              "--max-steps", "1", "-o", tmp_path / "cyc", "-q")
    assert res.exit_code == 2 and "--region-weight: applies to `cfgen finetune` on a model, not to the" in res.output, res.output


def test_a_mask_on_another_grid_is_a_bad_row_before_training(tmp_path):
    """Headers only: a region PNG or a label NIfTI whose grid is not its image's is reported as a bad row
    naming the file when the CSV is read (the same-grid rows stay), not found item by item in training."""
    import nibabel as nib

    from cfgen.training.data import read_training_csv

    csv, _, _ = _training_set(tmp_path / "d")
    _png(tmp_path / "d" / "square.png", np.zeros((16, 16)))  # row 2's devices mask, now 16 x 16
    samples, bad = read_training_csv(csv, region_columns=["lesions", "devices"])
    assert [s.row for s in samples] == [3]
    assert [b["row"] for b in bad] == [2, 4]
    assert "line 2: square.png: grid (16, 16) is not the image's (32, 32)" in bad[0]["error"]
    affine = np.eye(4)
    rows = ["image,caption,labels"]
    for i, shape in enumerate([(8, 8, 8), (8, 8, 4)]):
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), affine), tmp_path / f"v{i}.nii.gz")
        nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), affine), tmp_path / f"l{i}.nii.gz")
        rows.append(f"v{i}.nii.gz,CT,l{i}.nii.gz")
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    samples, bad = read_training_csv(tmp_path / "t.csv", label_column="labels")
    assert [s.row for s in samples] == [2] and [b["row"] for b in bad] == [3]
    assert "l1.nii.gz: grid (8, 8, 4) is not the image's (8, 8, 8)" in bad[0]["error"]
