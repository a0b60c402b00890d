"""`cfgen finetune --label-weight NAME=W`: the denoising loss of a base with anatomy label channels
weighted W times at the latent positions whose voxels hold that label (thin vessels, airways)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from test_label_condition import NAMES, _Spy, _model, ct_training_set

VESSEL = NAMES.index("vessel") + 1


def _labelled_volume():
    """A 16^3 label map (lobe 1 everywhere, a vessel line, an airway voxel) as bit channels in [-1, 1],
    written bit by bit here (not with cfgen's encoder), beside a random image."""
    lab = np.ones((2, 16, 16, 16), np.int64)
    lab[0, 5, 6, 2:12] = VESSEL  # one voxel wide: 2x2x2 blocks (2, 3, 1..5) hold it
    lab[1, 9, 9, 9] = NAMES.index("airway") + 1
    bits = np.stack([((lab >> b) & 1) * 2.0 - 1.0 for b in range(4)], axis=1).astype(np.float32)
    image = torch.rand((2, 1, 16, 16, 16), generator=torch.Generator().manual_seed(1)) * 2 - 1
    return torch.cat([image, torch.from_numpy(bits)], 1), lab


def _output_grad(model, pixels, weights):
    from cfgen.training.config import FinetuneConfig
    from cfgen.training.finetune import noise_schedule
    from cfgen.training.objectives import Denoising

    cfg = FinetuneConfig(caption_dropout=0.0, label_weights=weights)
    spy = _Spy(model.unet)
    Denoising()(model, spy, noise_schedule(model.entry, cfg), pixels, ["CT", "CT"],
                torch.Generator().manual_seed(0), cfg).backward()
    return spy.outputs[0].grad


def test_label_weight_scales_the_loss_where_the_label_is(tmp_path):
    from cfgen.models.loader import load_model

    model = load_model(str(_model(tmp_path / "m")), device="cpu")
    pixels, lab = _labelled_volume()
    plain = _output_grad(model, pixels, {})
    weighted = _output_grad(model, pixels, {"vessel": 20.0})
    # the same noise, timesteps and UNet output: the gradients differ by w / mean(w) per position
    ratio = (weighted / plain)
    blocks = (lab.reshape(2, 8, 2, 8, 2, 8, 2) == VESSEL).any(axis=(2, 4, 6))  # independent 2x2x2 pooling
    w = np.where(blocks, 20.0, 1.0)
    expect = w / w.reshape(2, -1).mean(axis=1)[:, None, None, None]
    assert blocks[0].sum() == 5 and not blocks[1].any()
    assert torch.allclose(ratio, torch.from_numpy(expect).float()[:, None].expand_as(ratio), rtol=1e-3)
    assert torch.allclose(ratio[1], torch.ones_like(ratio[1]))  # no vessel in the second volume: as before


def test_finetune_label_weight_options_and_refusals(cli, tmp_path):
    data = ct_training_set(cli, tmp_path / "ph")
    model = _model(tmp_path / "m")
    common = ("finetune", data / "train.csv", "-m", model, "--batch-size", "2", "--device", "cpu", "-q",
              "--checkpoint-every", "1")
    res = cli(*common, "--max-steps", "1", "--label-weight", "vessel=20", "--label-weight", "airway=5", "-o", tmp_path / "run")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["params"]["label_weights"] == {"vessel": 20.0, "airway": 5.0}
    res = cli(*common, "--max-steps", "2", "--label-weight", "vessel=10", "--resume", "-o", tmp_path / "run")
    assert res.exit_code == 2 and "label_weights" in res.output, res.output
    for bad, msg in (("nerve=3", "has no such label (its labels: RUL"), ("vessel", "NAME=WEIGHT"),
                     ("vessel=-1", "must be a positive number"), ("vessel=x", "NAME=WEIGHT")):
        res = cli(*common, "--max-steps", "1", "--label-weight", bad, "-o", tmp_path / "bad")
        assert res.exit_code == 2 and msg in res.output, (bad, res.output)
    assert not (tmp_path / "bad" / "model").exists()


@pytest.mark.parametrize("option", [{"label_weights": {"vessel": 2.0}}, {"label_condition": 0.5}])
def test_label_options_are_refused_where_the_objective_would_ignore_them(option):
    from cfgen.errors import UsageError
    from cfgen.training.config import FinetuneConfig
    from cfgen.training.finetune import _check_label_options
    from cfgen.training.objectives import Denoising, SuperResObjective

    cfg = FinetuneConfig(**option)
    _check_label_options(Denoising(), cfg)
    with pytest.raises(UsageError, match="not to the super-resolution objective"):
        _check_label_options(SuperResObjective(2, 16), cfg)


def test_label_weight_given_counts_only_in_the_volumes_whose_labels_are_given(tmp_path):
    """--label-weight-given: the weight map of a volume with clean labels is the label weights' map, that of
    a volume with noised labels all ones (the second volume's vessel voxel counts once)."""
    from cfgen.models.loader import load_model
    from cfgen.training.config import FinetuneConfig
    from cfgen.training.objectives import label_weight_map, loss_weights

    model = load_model(str(_model(tmp_path / "m")), device="cpu")
    pixels, lab = _labelled_volume()
    pixels[1, 1:, 3, 3, 3] = torch.tensor([1.0, 1.0, 1.0, -1.0])  # vessel (7 = 0111) in the second volume too
    shape = (2, 40, 8, 8, 8)
    given = torch.zeros((2, 40, 1, 1, 1), dtype=torch.bool)
    given[0, [c for c in range(40) if c % 5]] = True  # the first volume's label channels given clean
    everywhere = label_weight_map(model, pixels, shape, {"vessel": 20.0})
    assert everywhere[0].max() == 20 and everywhere[1].max() == 20
    cfg = FinetuneConfig(label_weights={"vessel": 20.0}, label_condition=0.5, label_weight_given=True)
    w = loss_weights(model, pixels, shape, cfg, None, given)
    assert torch.equal(w[0], everywhere[0]) and torch.equal(w[1], torch.ones_like(w[1]))
    assert torch.equal(loss_weights(model, pixels, shape, FinetuneConfig(label_weights={"vessel": 20.0}), None, given),
                       everywhere)


def test_label_weight_given_needs_both_options(cli, tmp_path):
    res = cli("finetune", tmp_path / "t.csv", "-m", tmp_path / "m", "--label-weight", "vessel=5", "--label-weight-given",
              "-o", tmp_path / "o")
    assert res.exit_code == 2 and "--label-weight-given: needs --label-weight and --label-condition" in res.output
