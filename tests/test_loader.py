"""The loader: folders and registry entries, safetensors only, sha256 verified."""
from __future__ import annotations

import pytest

from cfgen.errors import ModelError
from cfgen.models.files import sha256_file
from cfgen.models.loader import load_model


def _registry(tmp_path, monkeypatch, folder, sha: dict | None = None):
    lines = ['[models.tiny]', 'family = "latent-diffusion-2d"', "resolution = 32", "channels = 1",
             f'source = {{ kind = "local", path = "{folder.as_posix()}" }}', "[models.tiny.defaults]",
             "steps = 4", "[models.tiny.sha256]"]
    lines += [f'"{k}" = "{v}"' for k, v in (sha or {}).items()]
    f = tmp_path / "reg.toml"
    f.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("CFGEN_MODELS_TOML", str(f))


def test_folder_loads_with_inferred_settings(tiny_model):
    m = load_model(str(tiny_model))
    assert m.entry.resolution == 32 and m.entry.channels == 1
    assert m.unet.config.in_channels == 4 and m.vae_scale_factor == 2
    assert set(m.sha256) == {"unet/diffusion_pytorch_model.safetensors",
                             "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"}
    assert all(len(v) == 64 for v in m.sha256.values())
    assert not any(p.requires_grad for p in m.unet.parameters())


def test_registry_entry_verifies_sha256(tiny_model, tmp_path, monkeypatch):
    rel = "unet/diffusion_pytorch_model.safetensors"
    good = sha256_file(tiny_model / rel)
    _registry(tmp_path, monkeypatch, tiny_model, {rel: good})
    m = load_model("tiny")
    assert m.sha256[rel] == good and m.entry.defaults["steps"] == 4
    _registry(tmp_path, monkeypatch, tiny_model, {rel: "0" * 64})
    with pytest.raises(ModelError, match="sha256 mismatch"):
        load_model("tiny")


def test_missing_weights_are_named(model_copy):
    (model_copy / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelError) as err:
        load_model(str(model_copy))
    assert "vae/diffusion_pytorch_model.safetensors" in str(err.value)


def test_pickle_weights_are_refused(model_copy):
    w = model_copy / "unet" / "diffusion_pytorch_model.safetensors"
    w.rename(w.with_name("diffusion_pytorch_model.bin"))
    with pytest.raises(ModelError, match="only pickle weights found"):
        load_model(str(model_copy))


def test_corrupt_weights_give_one_clear_error(model_copy):
    (model_copy / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelError) as err:
        load_model(str(model_copy))
    assert str(model_copy) in str(err.value) and "\n" not in str(err.value)


def test_unknown_name_lists_known_entries():
    with pytest.raises(ModelError, match="unknown model 'nope'.*sd15"):
        load_model("nope")


def test_the_console_script_holds_collection_until_a_model_is_loaded(tiny_model, monkeypatch):
    """cfgen.startup: `cfgen` (main) holds automatic collection back; load_model freezes what
    exists and restores the thresholds; in-process callers are left alone."""
    import gc
    import sys

    from cfgen import startup
    from cfgen.cli.main import main

    before = gc.get_threshold()
    monkeypatch.setattr(sys, "argv", ["cfgen", "--version"])
    try:
        with pytest.raises(SystemExit):
            main()
        assert startup.held() and gc.get_threshold() == (startup.HELD_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0  # main froze on its way out
        gc.unfreeze()
        load_model(str(tiny_model))
        assert not startup.held() and gc.get_threshold() == before
        assert gc.get_freeze_count() > 0  # the load froze the imports' and the model's objects
    finally:
        startup.release()
        gc.unfreeze()
    load_model(str(tiny_model))  # not held: a notebook's load freezes nothing
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before


def test_a_registry_window_other_than_the_folders_is_refused(tiny_model, tmp_path, monkeypatch):
    """The window belongs to the weights: an entry that feeds them another HU map is refused at load,
    naming the folder's cfgen.toml and both windows; the same window (spelt with spaces) loads."""
    import shutil

    folder = tmp_path / "ct"
    shutil.copytree(tiny_model, folder)
    (folder / "cfgen.toml").write_text('[defaults]\nwindow = "-1024,-700,600"\n')
    _registry(tmp_path, monkeypatch, folder)
    reg = tmp_path / "reg.toml"
    reg.write_text(reg.read_text().replace("steps = 4", 'steps = 4\nwindow = "-1024,600"'))
    with pytest.raises(ModelError, match=r"cfgen.toml: model 'tiny' was trained in the window -1024,-700,600, "
                                         r"but its registry entry says -1024,600"):
        load_model("tiny")
    reg.write_text(reg.read_text().replace('window = "-1024,600"', 'window = "-1024, -700, 600"'))
    assert load_model("tiny").entry.defaults["window"] == "-1024, -700, 600"
