"""The keys and value types of a model entry (a models.toml ``[models.NAME]`` table or a folder's
cfgen.toml): a misspelt key or a value of the wrong type is a one-line error naming the file, the
key and the type expected, never a traceback or a silent default."""
from __future__ import annotations

from typing import Any

from cfgen.errors import ModelError

INT, FLOAT, STR, BOOL, TABLE = "an integer", "a number", "a string", "true or false", "a table"
NAMES = "a list of names"

#: top-level keys of an entry
ENTRY = {"family": STR, "source": TABLE, "description": STR, "licence": STR, "resolution": INT, "channels": INT,
         "intensity": STR, "scheduler": TABLE, "defaults": TABLE, "sha256": TABLE, "synth": TABLE,
         "orientation": STR, "spacing": None}  # spacing: a number or three (registry._voxel_geometry)
SOURCE = {"kind": STR, "repo_id": STR, "revision": STR, "path": STR}
#: [defaults]: what `edit`/`invert` take from the model when the command line does not say
DEFAULTS = {"steps": INT, "guidance": FLOAT, "strength": FLOAT, "eta": FLOAT, "seed": INT, "window": STR,
            "mask": STR, "mask_threshold": FLOAT, "refine_threshold": FLOAT, "refine_change": FLOAT, "negative_prompt": STR, "source_prompt": STR, "max_tokens": INT,
            "inversion": STR, "solver": STR, "attention": STR, "cross_attention": FLOAT, "self_attention": FLOAT, "select_by": STR,
            # a tabular model's fields whose edits and synthesis prompts are refused (its benchmark measured
            # them wrong), and fields whose edits alone are
            "unreliable_fields": NAMES, "unreliable_edits": NAMES}
#: [scheduler]: DDIM (diffusers' DDIMScheduler arguments) or rectified flow (kind = "rflow")
SCHEDULER = {"kind": STR, "num_train_timesteps": INT, "beta_start": FLOAT, "beta_end": FLOAT, "beta_schedule": STR,
             "clip_sample": BOOL, "clip_sample_range": FLOAT, "set_alpha_to_one": BOOL, "steps_offset": INT,
             "prediction_type": STR, "timestep_spacing": STR, "rescale_betas_zero_snr": BOOL, "thresholding": BOOL,
             "dynamic_thresholding_ratio": FLOAT, "sample_max_value": FLOAT}
RANGES = {"resolution": (8, 8192), "channels": (1, 64), "steps": (1, 500), "num_train_timesteps": (1, 100000),
          "max_tokens": (1, 4096), "steps_offset": (0, 1000)}


def _is(value: Any, kind: str) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return {INT: isinstance(value, int) and not isinstance(value, bool), FLOAT: number, STR: isinstance(value, str),
            BOOL: isinstance(value, bool), TABLE: isinstance(value, dict),
            NAMES: isinstance(value, list) and all(isinstance(x, str) and x for x in value)}[kind]


def _check(table: Any, keys: dict[str, str | None], where: str, prefix: str = "") -> None:
    if not isinstance(table, dict):
        raise ModelError(f"{where}: {prefix.rstrip('.') or 'entry'}: expected {TABLE}, found {table!r:.40}")
    for key, value in table.items():
        if key not in keys:
            known = ", ".join(sorted(keys))
            raise ModelError(f"{where}: unknown key '{prefix}{key}' (known: {known})")
        kind = keys[key]
        if kind is not None and not _is(value, kind):
            raise ModelError(f"{where}: {prefix}{key}: expected {kind}, found {value!r:.40}")
        low, high = RANGES.get(key, (None, None))
        if low is not None and not low <= value <= high:
            raise ModelError(f"{where}: {prefix}{key} = {value}: must be between {low} and {high}")


def check_entry(table: Any, where: str) -> None:
    """``table``'s keys and types (the [synth] table has its own check in models/synth.py)."""
    _check(table, ENTRY, where)
    for name, keys in (("source", SOURCE), ("defaults", DEFAULTS), ("scheduler", SCHEDULER)):
        if name in table:
            _check(table[name], keys, where, f"{name}.")
    for path, digest in table.get("sha256", {}).items():
        if not isinstance(digest, str):
            raise ModelError(f"{where}: sha256.{path}: expected {STR} (64 hex digits), found {digest!r:.40}")
