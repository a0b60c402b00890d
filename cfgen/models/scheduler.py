"""The noise schedule a model folder runs with.

The folder's own ``scheduler/scheduler_config.json`` (what diffusers saved with the model: its
``prediction_type``, ``timestep_spacing``, ``rescale_betas_zero_snr``, betas, ...) is the truth;
the registry entry (models.toml, or the folder's cfgen.toml) only adds the keys the file lacks
(``kind = "rflow"``, or everything when the folder has no scheduler file). What came from where
is recorded (``LoadedModel.scheduler_source``, in every run report's ``model``), including entry
values that the file overrode.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cfgen.errors import ModelError

SCHEDULER_FILE = "scheduler/scheduler_config.json"


def read_scheduler_file(folder: Path) -> dict[str, Any] | None:
    """The folder's scheduler settings without diffusers' bookkeeping keys; None: no file."""
    path = Path(folder) / SCHEDULER_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable scheduler config ({exc})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: a scheduler config must be a JSON object")
    return {k: v for k, v in data.items() if not k.startswith("_")}


def folder_scheduler(entry_scheduler: dict[str, Any], folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(settings to run with, where they came from) for a model in ``folder``."""
    own = read_scheduler_file(folder)
    if own is None:
        return dict(entry_scheduler), {"file": None, "from_entry": sorted(entry_scheduler)}
    added = {k: v for k, v in entry_scheduler.items() if k not in own}
    overridden = {k: v for k, v in entry_scheduler.items() if k in own and own[k] != v}
    return {**added, **own}, {"file": SCHEDULER_FILE, "added_from_entry": added,
                              "entry_values_overridden_by_file": overridden}
