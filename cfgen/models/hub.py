"""Finding a hub entry's files: a user-placed folder, the local hub cache, or a download.

Offline is the normal case: honour ``HF_HUB_OFFLINE``, check reachability with a short
timeout instead of hanging, and say exactly which files are missing and how to place them.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from cfgen.errors import ModelNotAvailableError
from cfgen.models.files import FAMILY_COMPONENTS, missing_files
from cfgen.models.registry import ModelEntry

ALLOW_PATTERNS = ["model_index.json", "config.json", "*/config.json", "*.safetensors", "*.safetensors.index.json",
                  "tokenizer/*", "scheduler/*", "preprocessor_config.json", "tokenizer*", "vocab.json", "merges.txt",
                  "special_tokens_map.json"]


def models_dir() -> Path | None:
    value = os.environ.get("CFGEN_MODELS_DIR")
    return Path(value) if value else None


def _offline_reason(timeout: float = 3.0) -> str | None:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return None
    except OSError as exc:
        return f"{host} cannot be reached ({exc.__class__.__name__})"


def _not_available(entry: ModelEntry, reason: str, missing: list[str]) -> ModelNotAvailableError:
    rev = entry.revision or "main"
    placed = models_dir()
    where = f"{placed / entry.name}" if placed else f"$CFGEN_MODELS_DIR/{entry.name}"
    return ModelNotAvailableError(
        f"model '{entry.name}' (hub {entry.repo_id}@{rev}) is not on this machine and cannot be "
        f"downloaded: {reason}; missing {', '.join(missing)}. On a machine with network run "
        f"`hf download {entry.repo_id} --revision {rev} --include '*.json' '*.txt' "
        f"'*.safetensors' --local-dir {entry.name}`, copy that folder here and pass "
        f"--model PATH/{entry.name}, or place it at {where}"
    )


def hub_folder(entry: ModelEntry) -> tuple[Path, str | None]:
    """The local folder holding a hub entry's files and the resolved commit (if known)."""
    placed = models_dir()
    if placed and (placed / entry.name).is_dir():
        return placed / entry.name, entry.revision
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    components = FAMILY_COMPONENTS[entry.family]
    all_missing = [str(Path(c) / (w or cfg)) for c, (cfg, w) in components.items()]
    try:
        folder = Path(snapshot_download(entry.repo_id, revision=entry.revision,
                                        allow_patterns=ALLOW_PATTERNS, local_files_only=True))
        missing = missing_files(folder, components)
        if not missing:
            return folder, folder.name
    except LocalEntryNotFoundError:
        missing = all_missing
    reason = _offline_reason()
    if reason:
        raise _not_available(entry, reason, missing)
    try:
        folder = Path(snapshot_download(entry.repo_id, revision=entry.revision,
                                        allow_patterns=ALLOW_PATTERNS, etag_timeout=10))
    except Exception as exc:  # network errors come in many classes; report, never hang
        raise _not_available(entry, f"download failed ({exc.__class__.__name__}: {exc})", missing) from None
    return folder, folder.name
