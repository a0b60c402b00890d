"""`synth3d --mask-from --label-guidance W`: for a model trained with labels given clean, the image
prediction with the given labels is pushed away from the one with the same labels on their forward
trajectory (the model's joint mode), joint + W (given - joint), in the latent cells that hold a
[synth] label_guidance_labels label's given voxels (everywhere when none are named)."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from test_label_condition import NAMES, _label_latents, _model, _Spy, _volume

VESSEL = NAMES.index("vessel") + 1


def _anatomy(tmp_path):
    """A 16^3 x 8 mm label map: a lobe, a vessel line along z in the 2x2x2 cells (3, 3, *)."""
    lab = np.zeros((16, 16, 16), np.uint8)
    lab[2:14, 2:14, 2:14] = 1
    lab[7, 6, 2:14] = VESSEL
    path = tmp_path / "anatomy.nii.gz"
    nib.save(nib.Nifti1Image(lab, np.diag([8.0, 8.0, 8.0, 1.0])), path)
    return lab, path


def _guided_model(tmp_path, **synth):
    from cfgen.models.loader import load_model

    model = load_model(str(_model(tmp_path / "m", "clean")), device="cpu")
    model.entry.synth.update(synth)
    return model


def test_guidance_map_weighs_the_cells_that_hold_the_named_labels(tmp_path):
    from cfgen.synthesis.generate import guidance_map, read_anatomy

    lab, path = _anatomy(tmp_path)
    model = _guided_model(tmp_path, label_guidance_labels=["vessel"])
    w = guidance_map(model, read_anatomy(path, model), 4.0)
    # the reference: 2x2x2 blocks of the label map (the Haar cells) that contain a vessel voxel
    blocks = (lab == VESSEL).reshape(8, 2, 8, 2, 8, 2).any(axis=(1, 3, 5))
    assert w.shape == (1, 1, 8, 8, 8)
    assert np.array_equal(w[0, 0].numpy(), np.where(blocks, 4.0, 1.0))
    assert blocks.sum() == 6  # z 2..13 in cells 1..6
    model.entry.synth.pop("label_guidance_labels")
    assert guidance_map(model, read_anatomy(path, model), 4.0) == 4.0  # none named: everywhere


def test_label_guidance_moves_the_first_step_by_w_minus_1_times_the_label_effect_in_the_guided_cells(tmp_path):
    """Two runs from the same seed, weight 1 and 3: after the first sampling step their image latents
    differ by (3 - 1) x (given - joint prediction) x the step's size, in the vessel's cells only."""
    from cfgen.synthesis.generate import read_anatomy, sample_base

    lab, path = _anatomy(tmp_path)
    runs = {}
    for w in (1.0, 3.0):
        model = _guided_model(tmp_path / str(w), label_guidance_labels=["vessel"])
        fixed = read_anatomy(path, model)
        spy = _Spy(model.unet)
        model.unet = spy
        sample_base(model, "CT", seed=0, steps=2, guidance=1.0, fixed=fixed, label_guidance=w)
        runs[w] = spy
    from cfgen.editing.components import encode_images

    labelled, _ = _label_latents(model, *_volume())
    clean = encode_images(model, torch.cat([torch.zeros((1, 1, 16, 16, 16)), fixed], 1))
    plain, guided = runs[1.0], runs[3.0]
    assert [z.shape[0] for z in plain.inputs] == [1, 1] and [z.shape[0] for z in guided.inputs] == [2, 2]
    given, joint = guided.inputs[0].chunk(2)
    assert torch.equal(given, plain.inputs[0])  # the given half is the unguided run's input
    assert torch.equal(joint[:, ~labelled], given[:, ~labelled])  # same image latents ...
    assert torch.allclose(given[:, labelled], clean[:, labelled], atol=1e-5)  # ... labels clean in one half,
    assert (joint[:, labelled] - clean[:, labelled]).abs().max() > 0.5  # noised (first step: t near 1000) in the other
    out_given, out_joint = guided.outputs[0].detach().chunk(2)
    effect = (out_given - out_joint)[:, ~labelled]
    moved = (guided.inputs[1][:1] - plain.inputs[1])[:, ~labelled]
    cells = torch.from_numpy((lab == VESSEL).reshape(8, 2, 8, 2, 8, 2).any(axis=(1, 3, 5)))
    assert moved[..., ~cells].abs().max() < 1e-6  # nothing moves outside the vessel's cells
    assert effect[..., cells].abs().max() > 1e-3
    # rectified flow's Euler step (MONAI RFlowScheduler): z_next = z + (t - t_next) / T x v, here t 1000 -> 500 of 1000
    assert torch.allclose(moved[..., cells], (3.0 - 1.0) * 0.5 * effect[..., cells], rtol=1e-3, atol=1e-6)


def test_label_guidance_is_refused_without_mask_from_or_a_clean_label_model(cli, tmp_path):
    _, path = _anatomy(tmp_path)
    noised = _model(tmp_path / "noised")
    args = ("synth3d", "-p", "CT", "--sr", "none", "--steps", "2", "--device", "cpu", "-q")
    res = cli(*args, "-m", noised, "--label-guidance", "3", "-o", tmp_path / "a")
    assert res.exit_code == 2 and "--label-guidance: needs --mask-from" in res.output
    res = cli(*args, "-m", noised, "--label-guidance", "3", "--mask-from", path, "-o", tmp_path / "b")
    assert res.exit_code == 2 and "was not trained with labels given clean" in res.output
    res = cli(*args, "-m", noised, "--label-guidance", "0.5", "--mask-from", path, "-o", tmp_path / "c")
    assert res.exit_code == 2 and "--label-guidance 0.5: must be at least 1" in res.output
    assert not any((tmp_path / d).exists() for d in "abc")
    clean = _model(tmp_path / "clean", "clean")
    res = cli(*args, "-m", clean, "--label-guidance", "3", "--mask-from", path, "-o", tmp_path / "d", "--json")
    assert res.exit_code == 0, res.output
    assert '"label_guidance": 3.0' in res.output


@pytest.mark.parametrize("synth, message", [
    ({"label_guidance": 3.0}, "label_guidance needs given_labels"),
    ({"label_guidance": 0.5, "given_labels": "clean"}, "label_guidance = 0.5 must be at least 1"),
    ({"label_guidance_labels": ["vein"], "given_labels": "clean"}, "label_guidance_labels names ['vein']"),
])
def test_synth_table_checks_label_guidance(synth, message):
    from cfgen.errors import ModelError
    from cfgen.models.synth import check_synth_table

    with pytest.raises(ModelError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_synth_table({"labels": NAMES, "label_encoding": "bits", **synth}, "models.toml [models.ct]")
