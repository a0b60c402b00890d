"""cfgen.training.recode: a bits-labelled Haar base given a new label code table (vessel on a bit of its
own), warm-started so that the UNet's first layer sees exactly what it saw before on clean labels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cfgen.errors import UsageError

CODES = [1, 2, 3, 4, 5, 6, 16, 8, 9]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from cfgen.models.ldm3d import LDM3DSpec, build_ldm3d
    from cfgen.models.tabular import CT_FIELDS
    from cfgen.phantoms.ct import LABELS

    folder = tmp_path_factory.mktemp("recode") / "ct"
    build_ldm3d(folder, LDM3DSpec(
        resolution=32, ae_channels=None, wavelet_levels=1, unet_channels=(8, 16), conditioning=CT_FIELDS,
        window="-1024,600", synth={"spacing": 12.0, "labels": list(LABELS), "label_encoding": "bits"}), seed=3)
    cfg = folder / "autoencoder" / "config.json"  # detail bands scaled, as a trained base's are
    import json

    data = json.loads(cfg.read_text())
    data["band_scales"] = [1.0 + 0.5 * (b % 5 == 0) * (b > 0) for b in range(40)]
    cfg.write_text(json.dumps(data))
    return folder


def _first_layer(model, hu: np.ndarray, lab: np.ndarray) -> torch.Tensor:
    """conv_in's features of a phantom's image and its clean labels, encoded the model's way."""
    from cfgen.models.label_codes import encode
    from cfgen.models.synth import label_encoding

    image = torch.from_numpy(np.clip((hu + 1024) / 1624 * 2 - 1, -1, 1)).float()[None, None]
    labels = 2 * torch.from_numpy(encode(lab, 9, label_encoding(model.entry.synth)))[None] - 1
    z = model.vae.encode(torch.cat([image, labels], dim=1)).latent_dist.mean
    return model.unet.net.conv_in(z)


def test_a_recoded_base_sees_what_the_old_one_saw_and_its_labels_decode(base, tmp_path):
    from cfgen.models.loader import load_model
    from cfgen.phantoms import ct
    from cfgen.synthesis.generate import SynthParams, synthesize
    from cfgen.training.recode import recode

    folder = recode(str(base), tmp_path / "new", CODES)
    old, new = load_model(str(base), device="cpu"), load_model(str(folder), device="cpu")
    assert new.entry.synth["label_codes"] == CODES and new.unet.config.in_channels == 48 == new.unet.config.out_channels
    assert new.vae.config.band_scales[:6] == [1.0] * 6 and new.vae.config.band_scales[6] == 1.5  # image band kept
    exo, attrs = ct.subject(90000, 1)
    lab = ct.label_map(ct.tissue_maps(exo, attrs, 32, 12.0))
    hu = ct.render(exo, attrs, 32, 12.0)
    assert (lab == ct.LABELS["vessel"]).any()
    a, b = _first_layer(old, hu, lab), _first_layer(new, hu, lab)
    inner = (Ellipsis, slice(1, -1), slice(1, -1), slice(1, -1))  # zero padding differs at the border
    torch.testing.assert_close(b[inner], a[inner], atol=1e-4, rtol=1e-4)
    assert (b - a).abs().max() > 1e-3  # ... and only there
    # image output rows copied, the new channel's start at zero
    w_old, w_new = old.unet.net.out[2].conv.weight, new.unet.net.out[2].conv.weight
    torch.testing.assert_close(w_new[0], w_old[0])
    assert w_new[5::6].abs().max() == 0
    vols = synthesize(new, None, SynthParams("effusion=large", steps=2, guidance=1.0).resolved({}, {}))
    assert vols[0].labels.shape == (32, 32, 32) and vols[0].labels.max() <= 9


def test_codes_the_old_bits_are_no_affine_function_of_are_refused(base, tmp_path):
    from cfgen.training.recode import recode

    with pytest.raises(UsageError, match="not an affine function"):  # label 1 <-> 3: old bit 1 = XOR of new bits
        recode(str(base), tmp_path / "x", [3, 2, 1, 4, 5, 6, 7, 8, 9])
    assert not (tmp_path / "x").exists()


def test_a_registry_entry_without_the_recoded_table_is_refused_at_load(base, tmp_path, monkeypatch):
    """Same bit count, other codes: the default table would decode the vessel bit as nothing (code 16
    is no label of 1..9) and label 7's bits as a vessel: plausible, wrong label maps."""
    import json

    from cfgen.errors import ModelError
    from cfgen.models.loader import load_model
    from cfgen.phantoms.ct import LABELS
    from cfgen.training.recode import recode

    recode(str(base), tmp_path / "new", CODES)
    synth = f'spacing = 12.0\nlabels = {json.dumps(list(LABELS))}\nlabel_encoding = "bits"\n'
    reg = tmp_path / "reg.toml"
    for codes in ("", f"label_codes = {json.dumps(CODES)}\n"):
        reg.write_text('[models.ct]\nfamily = "latent-diffusion-3d"\nresolution = 32\nchannels = 1\n'
                       'source = { kind = "local", path = "new/model" }\n[models.ct.defaults]\nwindow = "-1024,600"\n'
                       f'[models.ct.synth]\n{synth}{codes}')
        monkeypatch.setenv("CFGEN_MODELS_TOML", str(reg))
        if not codes:
            with pytest.raises(ModelError, match=r"vessel=16.*registry entry's \[synth\] says bits .*vessel=7"):
                load_model("ct", device="cpu")
        else:
            assert load_model("ct", device="cpu").entry.synth["label_codes"] == CODES


def test_a_recode_killed_while_writing_leaves_no_model_folder(base, tmp_path, monkeypatch):
    """The new autoencoder config (its band scales) belongs to the recoded weights: it is written inside
    the atomic folder, so a failure there leaves nothing that loads with the old config."""
    from cfgen.models.wavelet import HaarWavelet
    from cfgen.training.recode import recode

    def killed(self, folder, **_):
        raise KeyboardInterrupt

    monkeypatch.setattr(HaarWavelet, "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        recode(str(base), tmp_path / "new", CODES)
    assert not (tmp_path / "new" / "model").exists()
