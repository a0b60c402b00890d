"""`cfgen finetune --label-condition`: a labelled 3D base learns with its anatomy label channels
sometimes given clean (not noised, not in the loss), and `synth3d --mask-from` then gives them clean
at every sampling step ([synth] given_labels = "clean"), so the image is generated around them."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from cfgen.models.ldm3d import LDM3DSpec, build_ldm3d
from cfgen.phantoms.ct import LABELS
from test_synth3d import _liven

NAMES = list(LABELS)  # the CT phantoms' nine labels as analog bits: 4 channels beside the image


def _model(folder, given: str | None = None):
    synth = {"spacing": 8.0, "labels": NAMES, "label_encoding": "bits", **({"given_labels": given} if given else {})}
    return _liven(build_ldm3d(folder, LDM3DSpec(resolution=16, ae_channels=None, wavelet_levels=1, unet_channels=(8, 16),
                                                scheduler="rflow", synth=synth), seed=4))


def _volume(seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand((2, 1, 16, 16, 16), generator=g) * 2 - 1
    labels = torch.where(torch.rand((2, 4, 16, 16, 16), generator=g) < 0.5, -1.0, 1.0)
    return image, labels


def _label_latents(model, image, labels):
    """Which latent channels carry the labels, found without cfgen's layout rule: the Haar latents
    of (image, labels) and of (image, other labels) differ exactly there."""
    from cfgen.editing.components import encode_images

    a = encode_images(model, torch.cat([image, labels], 1))
    b = encode_images(model, torch.cat([image, -labels], 1))
    return (a - b).flatten(2).abs().amax(dim=(0, 2)) > 0, a


def ct_training_set(cli, data):
    """Two 32^3 x 12 mm CT phantoms with their label maps in ``data``/train.csv (caption "CT")."""
    assert cli("phantoms", "ct", "-n", "2", "--size", "32", "--spacing", "12", "--no-counterfactuals", "-o", data,
               "-q").exit_code == 0
    rows = ["image,caption,labels"] + [f"images/ct_0000{i}.nii.gz,CT,anatomy/ct_0000{i}.nii.gz" for i in range(2)]
    (data / "train.csv").write_text("\n".join(rows) + "\n")
    return data


class _Spy(torch.nn.Module):
    """Records the UNet's inputs; returns a leaf tensor whose gradient shows what the loss counts."""

    def __init__(self, unet):
        super().__init__()
        self.unet, self.config, self.inputs, self.outputs = unet, unet.config, [], []

    def forward(self, z, t, encoder_hidden_states=None):
        self.inputs.append(z.detach().clone())
        out = self.unet(z, t, encoder_hidden_states=encoder_hidden_states).sample.detach().requires_grad_(True)
        self.outputs.append(out)
        return type("Out", (), {"sample": out})()


@pytest.mark.parametrize("share", [1.0, 0.0])
def test_given_labels_are_clean_in_the_unet_input_and_out_of_the_loss(tmp_path, share):
    from cfgen.models.loader import load_model
    from cfgen.training.config import FinetuneConfig
    from cfgen.training.finetune import noise_schedule
    from cfgen.training.objectives import Denoising

    model = load_model(str(_model(tmp_path / "m")), device="cpu")
    image, labels = _volume()
    labelled, clean = _label_latents(model, image, labels)
    assert labelled.sum() == 4 * 8 and not labelled.all()  # 4 label channels x 8 Haar bands
    cfg = FinetuneConfig(label_condition=share, caption_dropout=0.0)
    spy = _Spy(model.unet)
    loss = Denoising()(model, spy, noise_schedule(model.entry, cfg), torch.cat([image, labels], 1), ["CT", "CT"],
                       torch.Generator().manual_seed(0), cfg)
    loss.backward()
    z, grad = spy.inputs[0], spy.outputs[0].grad
    label_in = z[:, labelled]
    assert not torch.allclose(z[:, ~labelled], clean[:, ~labelled])  # the image channels are noised
    assert torch.count_nonzero(grad[:, ~labelled]) > 0
    if share == 1.0:
        assert torch.equal(label_in, clean[:, labelled])
        assert torch.count_nonzero(grad[:, labelled]) == 0  # nothing to predict where the labels are given
    else:
        assert not torch.allclose(label_in, clean[:, labelled])
        assert torch.count_nonzero(grad[:, labelled]) > 0


@pytest.mark.parametrize("given", ["clean", "noised"])
def test_mask_from_gives_a_clean_label_model_its_labels_clean_at_every_step(tmp_path, given):
    from cfgen.models.loader import load_model
    from cfgen.synthesis.generate import read_anatomy, sample_base

    model = load_model(str(_model(tmp_path / "m", given)), device="cpu")
    lab = np.zeros((16, 16, 16), np.uint8)
    lab[3:12, 4:12, 2:14] = 1
    lab[7:9, 7:9, 2:14] = 2
    lab[4:6, 9:11, 2:14] = 3
    path = tmp_path / "anatomy.nii.gz"
    nib.save(nib.Nifti1Image(lab, np.diag([8.0, 8.0, 8.0, 1.0])), path)
    fixed = read_anatomy(path, model)
    image = torch.zeros((1, 1, 16, 16, 16))
    labelled, clean = _label_latents(model, image, fixed)
    spy = _Spy(model.unet)
    model.unet = spy
    out = sample_base(model, "CT", seed=0, steps=4, guidance=1.0, fixed=fixed)
    assert len(spy.inputs) == 4
    gaps = [float((z[:, labelled] - clean[:, labelled]).abs().max()) for z in spy.inputs]
    if given == "clean":
        assert max(gaps) < 1e-5
    else:  # the forward trajectory: pure noise first, nearer the labels at each step
        assert gaps[0] > 0.5 and gaps[0] > gaps[-1]
    assert torch.allclose(out[:, 1:], fixed, atol=1e-5)  # the labels come out exactly either way


def test_finetune_records_clean_labels_and_refuses_a_model_without_labels(cli, tmp_path, monkeypatch):
    from cfgen.models.synth import check_synth_table
    from cfgen.errors import ModelError

    data = ct_training_set(cli, tmp_path / "ph")
    model = _model(tmp_path / "m")
    common = ("finetune", data / "train.csv", "--batch-size", "2", "--max-steps", "1", "--device", "cpu", "-q")
    res = cli(*common, "-m", model, "--label-condition", "0.5", "-o", tmp_path / "run")
    assert res.exit_code == 0, res.output
    toml = (tmp_path / "run" / "model" / "cfgen.toml").read_text()
    assert 'given_labels = "clean"' in toml
    # a registry entry over those weights that would give them noised labels is refused at load
    from cfgen.models.loader import load_model

    reg = tmp_path / "reg.toml"
    synth = f'[models.ct.synth]\nspacing = 8.0\nlabels = {json.dumps(NAMES)}\nlabel_encoding = "bits"\n'
    reg.write_text(f'[models.ct]\nfamily = "latent-diffusion-3d"\nresolution = 16\nchannels = 1\n'
                   f'source = {{ kind = "local", path = "run/model" }}\n[models.ct.scheduler]\nkind = "rflow"\n' + synth)
    monkeypatch.setenv("CFGEN_MODELS_TOML", str(reg))
    with pytest.raises(ModelError, match="trained with its labels given clean, but its registry entry's"):
        load_model("ct", device="cpu")
    reg.write_text(reg.read_text() + 'given_labels = "clean"\n')
    assert load_model("ct", device="cpu").entry.synth["given_labels"] == "clean"
    image_only = build_ldm3d(tmp_path / "plain", LDM3DSpec(resolution=16, ae_channels=None, unet_channels=(8, 16),
                                                           scheduler="rflow", synth={"spacing": 8.0}), seed=4)
    res = cli(*common, "-m", image_only, "--label-condition", "0.5", "-o", tmp_path / "run2")
    assert res.exit_code == 2 and "generates no anatomy label channels" in res.output, res.output
    res = cli(*common, "-m", model, "--label-condition", "1.5", "-o", tmp_path / "run3")
    assert res.exit_code == 2 and "--label-condition 1.5" in res.output
    for bad, msg in (({"labels": ["a"], "given_labels": "always"}, "unknown"), ({"given_labels": "clean"}, "needs labels")):
        with pytest.raises(ModelError, match=msg):
            check_synth_table(bad, "w")
