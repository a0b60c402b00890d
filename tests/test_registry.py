"""The registry is pure data (no torch), merges user files, and fails with exact messages."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from cfgen.errors import ModelError
from cfgen.models.registry import load_registry


def test_registry_and_help_import_no_torch():
    code = textwrap.dedent("""
        import sys
        from cfgen.models.registry import load_registry
        reg = load_registry()
        assert "sd15" in reg.entries and "prism" in reg.entries
        from cfgen.cli.main import app
        from typer.testing import CliRunner
        res = CliRunner().invoke(app, ["--help"])
        assert res.exit_code == 0 and "edit" in res.output
        heavy = [m for m in ("torch", "diffusers", "monai", "transformers") if m in sys.modules]
        print(heavy)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_entries_carry_prism_scheduler_and_hub_source():
    e = load_registry().get("sd15")
    assert e.source == "hub" and e.repo_id == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert e.scheduler["beta_schedule"] == "scaled_linear"
    assert e.scheduler["beta_start"] == pytest.approx(0.00085) and e.scheduler["beta_end"] == pytest.approx(0.012)
    assert e.scheduler["set_alpha_to_one"] is False and e.scheduler["steps_offset"] == 1
    assert e.resolution == 512 and e.value_range == (-1.0, 1.0)


def test_user_registry_file_is_merged(tmp_path, monkeypatch):
    extra = tmp_path / "mine.toml"
    extra.write_text('default = "mine"\n[models.mine]\nfamily = "latent-diffusion-2d"\nresolution = 64\n'
                     'channels = 1\nsource = { kind = "local", path = "weights/mine" }\n')
    monkeypatch.setenv("CFGEN_MODELS_TOML", str(extra))
    reg = load_registry()
    assert reg.default == "mine"
    assert reg.get("mine").path == (tmp_path / "weights" / "mine").resolve()
    assert "sd15" in reg.entries


@pytest.mark.parametrize("body, message", [
    ('[models.x]\nfamily = "gan"\nsource = { kind = "local", path = "." }\n', "family 'gan'"),
    ('[models.x]\nfamily = "latent-diffusion-2d"\n', "needs a [source] table"),
    ('[models.x]\nfamily = "latent-diffusion-2d"\nsource = { kind = "hub" }\n', "needs repo_id"),
    ("[models.x\n", "not valid TOML"),
    ('[models.x]\nfamily = "latent-diffusion-3d"\nsource = { kind = "local", path = "." }\n[models.x.defaults]\n'
     'window = "600,-1024"\n', "HIGH must be above LOW"),
    ('[models.x]\nfamily = "latent-diffusion-3d"\nsource = { kind = "local", path = "." }\n[models.x.defaults]\n'
     'window = "-1024,700,600"\n', "KNEE must lie between"),
])
def test_bad_registry_names_the_file(tmp_path, monkeypatch, body, message):
    bad = tmp_path / "bad.toml"
    bad.write_text(body)
    monkeypatch.setenv("CFGEN_MODELS_TOML", str(bad))
    with pytest.raises(ModelError) as err:
        load_registry()
    assert str(bad) in str(err.value) and message in str(err.value)


def test_models_cli_lists_and_shows(cli):
    res = cli("models", "--json")
    assert res.exit_code == 0
    names = {m["name"] for m in json.loads(res.stdout)["models"]}
    assert {"sd15", "prism"} <= names
    res = cli("models", "show", "prism", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["repo_id"] == "amar-kr/PRISM"
    res = cli("models", "show", "prism")
    assert res.exit_code == 0 and "repo_id: amar-kr/PRISM\n" in res.stdout
    res = cli("models")  # not a terminal: whole names, tab-separated
    lines = [line.split("\t") for line in res.stdout.splitlines()]
    assert lines[0][:2] == ["name", "family"]
    assert ["demo-brain-labels", "latent-diffusion-3d"] in [row[:2] for row in lines[1:]]
    res = cli("models", "show", "nope")
    assert res.exit_code == 1 and "unknown model 'nope'" in res.stderr and "sd15" in res.stderr


def test_offline_hub_model_fails_fast_with_the_missing_files(cli, tmp_path, ct_small):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "CFGEN_MODELS_DIR": str(tmp_path / "m")}
    res = cli("edit", ct_small, "-p", "x", "-m", "sd15", "-o", tmp_path / "out", env=env)
    assert res.exit_code == 1
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1
    assert "model 'sd15'" in err and "HF_HUB_OFFLINE" in err
    assert "unet/diffusion_pytorch_model.safetensors" in err and "hf download" in err
    assert str(tmp_path / "m" / "sd15") in err
    assert not (tmp_path / "out").exists()


def _hf_download_params(argv: list[str]) -> dict:
    """`hf download ARGV` as the installed hf CLI parses it: typer from huggingface_hub 1.0,
    argparse before."""
    try:
        from huggingface_hub.cli.download import download  # the function behind `hf download` (>= 1.0)
    except ImportError:
        import argparse

        from huggingface_hub.cli.download import DownloadCommand

        parser = argparse.ArgumentParser("hf")
        DownloadCommand.register_subcommand(parser.add_subparsers())
        return vars(parser.parse_args(["download", *argv]))
    import typer

    hf = typer.Typer()
    hf.command("download")(download)
    return typer.main.get_command(hf).make_context("download", argv, resilient_parsing=True).params


def test_the_offline_message_command_parses_to_the_files_cfgen_needs(cli, tmp_path, ct_small):
    """The `hf download` command of the message, parsed by the hf CLI itself (not run): every
    pattern is an --include (none turns into a positional file name), the component weights are
    named exactly (no root checkpoints, no fp16 / non-EMA variants), configs are included."""
    import fnmatch
    import re
    import shlex

    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    err = cli("edit", ct_small, "-p", "x", "-m", "sd15", "-o", tmp_path / "out", env=env).stderr
    command = shlex.split(re.search(r"`(hf download [^`]+)`", err).group(1))
    params = _hf_download_params(command[2:])
    assert not params["filenames"] and params["local_dir"] == "sd15"
    include = params["include"]
    wanted = ["unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
              "text_encoder/model.safetensors", "unet/config.json", "tokenizer/vocab.json",
              "scheduler/scheduler_config.json", "model_index.json"]
    unwanted = ["v1-5-pruned-emaonly.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
                "unet/diffusion_pytorch_model.non_ema.safetensors", "safety_checker/model.safetensors"]
    matches = lambda f: any(fnmatch.fnmatch(f, p) for p in include)  # noqa: E731
    assert all(matches(f) for f in wanted) and not any(matches(f) for f in unwanted)


def test_a_shipped_folder_loaded_by_path_uses_its_entrys_defaults_and_synth_role():
    """`--model <folder>` reads only the folder's cfgen.toml: every [defaults] and [synth] value the
    registry entry sets must be there too, or a copied demo folder edits and samples differently from
    `-m NAME` (demo-ct's label guidance 5 read as 1: vessels 0.47 instead of 0.82 held out;
    demo-cxr-wavelet at strength 1.0, which reconstructs at 22 dB)."""
    from cfgen.models.loader import entry_for

    reg = load_registry()
    shipped = [e for e in reg.entries.values() if e.source == "package" and (e.path / "cfgen.toml").is_file()]
    assert {"demo-ct", "demo-brain", "demo-cxr-wavelet"} <= {e.name for e in shipped}
    for named in shipped:
        by_path = entry_for(str(named.path))
        for table in ("defaults", "synth"):
            mine, folder = getattr(named, table), getattr(by_path, table)
            assert {k: folder.get(k) for k in mine} == mine, (named.name, table)
