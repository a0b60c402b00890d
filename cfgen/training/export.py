"""Model folders out of training: what `cfgen finetune` saves, and the packaging of a shipped model.

``save_model``     OUT/model: the base model's frozen parts, the trained UNet, a cfgen.toml that
                   keeps the entry's family, resolution, intensity, scheduler, defaults and [synth]
                   role, and training.json (the recipe), written as one folder atomically.
``export_shipped`` the packaging step of the demo recipes (scripts/train_demo_*.py --export): an
                   fp16 safetensors copy with no path of the training machine inside (training.json's
                   base folder dropped, data paths as WORK/...), and the sha256 of every weight file
                   for the models.toml entry.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from cfgen.io.atomic import atomic_dir
from cfgen.models.synth import toml_lines

COPIED_COMPONENTS = ("vae", "autoencoder", "text_encoder", "tokenizer", "scheduler")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):  # e.g. [defaults] unreliable_fields
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


#: what a rectified-flow model runs with (cfgen/editing/flow.py); DDIM's betas and spacing mean nothing to it
RFLOW_KEYS = ("kind", "num_train_timesteps")


def _scheduler_keys(scheduler: dict) -> dict:
    if scheduler.get("kind") == "rflow":
        return {k: scheduler[k] for k in RFLOW_KEYS if k in scheduler}
    return scheduler


def model_toml(entry) -> str:
    """A registry entry as the cfgen.toml of a model folder."""
    lines = [f'family = "{entry.family}"', f"resolution = {entry.resolution}", f"channels = {entry.channels}",
             f'intensity = "{entry.intensity}"']
    if entry.spatial_dims == 3:  # the grid the training volumes were brought to (cfgen/editing/grid.py)
        lines.append(f'orientation = "{entry.orientation}"')
        if entry.spacing:
            lines.append(f"spacing = {json.dumps(list(entry.spacing))}")
    lines += ["", "[scheduler]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in _scheduler_keys(entry.scheduler).items() if v is not None]
    lines += ["", "[defaults]"] + [f"{k} = {_toml_value(v)}" for k, v in entry.defaults.items()]
    return "\n".join(lines + toml_lines(entry.synth)) + "\n"


def save_model(out: Path, model, unet, recipe: dict, defaults: dict | None = None, synth: dict | None = None,
               more=None) -> Path:
    """A model folder that `--model OUT/model` loads: the base's frozen parts + the trained UNet;
    ``defaults`` (e.g. a distilled student's few steps) over the base's [defaults], ``synth`` over its [synth];
    ``more(folder)`` writes what else belongs to the model (e.g. recode's new autoencoder config) before the
    folder is moved into place, so a killed run leaves no half-written model."""
    from dataclasses import replace

    target = out / "model"
    entry = replace(model.entry, defaults={**model.entry.defaults, **(defaults or {})},
                    synth={**model.entry.synth, **(synth or {})})
    with atomic_dir(target) as tmp:
        for comp in COPIED_COMPONENTS:
            if (model.folder / comp).is_dir():
                shutil.copytree(model.folder / comp, tmp / comp)
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        (tmp / "cfgen.toml").write_text(model_toml(entry))
        if model.entry.family == "latent-diffusion-2d":  # diffusers' DiffusionPipeline loads it too
            from cfgen.models.pipeline_index import write_model_index

            write_model_index(tmp)
        (tmp / "training.json").write_text(json.dumps(recipe, indent=2, default=str))
        if more is not None:
            more(tmp)
    return target


def portable(data: str | None, model: Path) -> str | None:
    """An absolute training-data path as WORK/... (WORK: the recipe's --work folder, the nearest
    folder above the model that holds the data); relative paths as given."""
    if not data or not Path(data).is_absolute():
        return data
    for work in Path(model).resolve().parents:
        if Path(data).is_relative_to(work) and work != Path(work.anchor):
            return "WORK/" + Path(data).relative_to(work).as_posix()
    return Path(data).name


def _scrub(target: Path, model: Path, recipe_script: str) -> None:
    """No path of the machine that trained the model in its metadata."""
    meta = target / "training.json"
    if meta.is_file():
        info = json.loads(meta.read_text())
        base = info.get("base_model") or {}
        base.pop("folder", None)
        base["source"] = f"built by {recipe_script}"
        info["data"] = portable(info.get("data"), model)
        meta.write_text(json.dumps(info, indent=2) + "\n")
    for cfg in target.glob("*/config.json"):
        info = json.loads(cfg.read_text())
        if info.pop("_name_or_path", None) is not None:
            cfg.write_text(json.dumps(info, indent=2) + "\n")


def export_shipped(model: Path, target: Path, recipe_script: str) -> dict[str, str]:
    """fp16 safetensors copy of ``model`` at ``target`` (replaced), its training.json saying it was
    "built by ``recipe_script``"; returns {relative file: sha256} of the files it pins (weights, and a
    band-scaled Haar config: cfgen.models.files.pinned_files), the lines of the models.toml entry."""
    import torch
    from safetensors.torch import load_file, save_file

    from cfgen.models.files import hashes, pinned_files, weight_files

    model, target = Path(model), Path(target)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(model, target)
    _scrub(target, model, recipe_script)
    for f in weight_files(target):
        tensors = load_file(str(f))
        save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in tensors.items()}, str(f))
    return hashes(target, pinned_files(target))
