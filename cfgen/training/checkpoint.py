"""Training checkpoints in safetensors + JSON only (no pickle, so a checkpoint can't run code).

``OUT/checkpoints/step-0000100/``: ``weights.safetensors`` (the trained network), ``ema.safetensors`` (if EMA),
``optimizer.safetensors`` + ``optimizer.json``, ``state.json`` (step, epoch, LR scheduler,
EMA counters). Folders are written aside and renamed, so the newest complete one is always
loadable after a kill.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from cfgen.io.atomic import atomic_dir

PREFIX = "step-"


def checkpoints(out: Path) -> list[Path]:
    folder = Path(out) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
                  and (p / "state.json").is_file())


def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}/{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}/{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, name = key.split("/", 1)
        state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(out: Path, step: int, net, optimizer, lr_scheduler, ema=None,
                    extra: dict | None = None, keep: int = 3) -> Path:
    from safetensors.torch import save_file

    target = Path(out) / "checkpoints" / f"{PREFIX}{step:07d}"
    with atomic_dir(target) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
                  str(tmp / "weights.safetensors"))
        tensors, meta = _flatten_optimizer(optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(meta))
        state = {"step": step, "lr_scheduler": lr_scheduler.state_dict(), **(extra or {})}
        if ema is not None:
            save_file({str(i): p.detach().cpu().contiguous() for i, p in enumerate(ema.shadow_params)},
                      str(tmp / "ema.safetensors"))
            state["ema"] = {"optimization_step": ema.optimization_step, "decay": ema.decay}
        (tmp / "state.json").write_text(json.dumps(state, default=str))
    for old in checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(folder: Path, net, optimizer, lr_scheduler, ema=None) -> dict:
    from safetensors.torch import load_file

    state = json.loads((folder / "state.json").read_text())
    net.load_state_dict(load_file(str(folder / "weights.safetensors")))
    meta = json.loads((folder / "optimizer.json").read_text())
    optimizer.load_state_dict(_unflatten_optimizer(load_file(str(folder / "optimizer.safetensors")), meta))
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    if ema is not None and (folder / "ema.safetensors").is_file():
        shadow = load_file(str(folder / "ema.safetensors"))
        ema.shadow_params = [shadow[str(i)].to(p.device) for i, p in enumerate(ema.shadow_params)]
        ema.optimization_step = state["ema"]["optimization_step"]
    return state


#: settings that shape the training trajectory: a resumed run must keep them (the step count may
#: grow: that is what resuming is for)
RESUME_KEYS = ("learning_rate", "adam_beta1", "adam_beta2", "weight_decay", "adam_epsilon", "max_grad_norm",
               "lr_scheduler", "lr_warmup_steps", "batch_size", "gradient_accumulation", "mixed_precision", "ema",
               "ema_decay", "snr_gamma", "noise_offset", "caption_dropout", "seed", "window",
               "label_condition", "label_weights", "label_weight_given", "region_weights")


def resume_settings(cfg) -> dict:
    return {k: getattr(cfg, k) for k in RESUME_KEYS}


def check_resume(folder: Path, now: dict) -> None:
    """--resume with the settings the checkpoint was trained with, or a usage error naming each
    change (checkpoints written before the settings were recorded are taken as they are)."""
    from cfgen.errors import UsageError

    try:
        was = json.loads((Path(folder) / "state.json").read_text()).get("settings") or {}
    except (OSError, ValueError):
        return
    changed = [f"{k} {was[k]!r} -> {now[k]!r}" for k in RESUME_KEYS if k in was and k in now and was[k] != now[k]]
    if changed:
        raise UsageError(f"--resume: {folder.name} was trained with other settings ({'; '.join(changed)}); "
                         "resume with the checkpoint's settings or start in another --out")
