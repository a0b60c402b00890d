"""Finding a hub entry's files: a user-placed folder, the local hub cache, or a download.

Offline is the normal case: honour ``HF_HUB_OFFLINE``, let huggingface_hub reach the hub its own
way (``HF_ENDPOINT`` mirrors on any port, ``HTTPS_PROXY``) with a short timeout instead of
hanging, and say exactly which files are missing and how to place them. Only the files each
component needs are fetched (per-component patterns), never a repository's root checkpoints or
its fp16 / non-EMA variants.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path

from cfgen.errors import ModelNotAvailableError
from cfgen.models.files import FAMILY_COMPONENTS, missing_files
from cfgen.models.registry import ModelEntry

#: files some components need beside their config and weights
EXTRA_PATTERNS = {"tokenizer": ["tokenizer/*"], "scheduler": ["scheduler/*"]}


def download_patterns(entry: ModelEntry) -> list[str]:
    """The files of ``entry``'s components: configs, the exact weight names (or their shards and
    index), tokenizer and scheduler folders, model_index.json."""
    patterns = ["model_index.json"]
    for comp, (config, weights) in FAMILY_COMPONENTS[entry.family].items():
        prefix = "" if comp == "." else f"{comp}/"
        patterns += EXTRA_PATTERNS.get(comp, [f"{prefix}{config}"])
        if weights:
            stem = weights.removesuffix(".safetensors")
            patterns += [f"{prefix}{weights}", f"{prefix}{stem}.safetensors.index.json",
                         f"{prefix}{stem}-*-of-*.safetensors"]
    if entry.family == "clip":
        patterns += ["preprocessor_config.json", "tokenizer*", "vocab.json", "merges.txt", "special_tokens_map.json"]
    return patterns


def download_command(entry: ModelEntry) -> str:
    """The `hf download` command (huggingface_hub >= 0.34) that fetches exactly those files, as the
    installed hf CLI parses it: from 1.0 (typer) one --include per pattern (more words after one
    --include would be file names); before (argparse) one --include with every pattern (a second
    --include would replace the first)."""
    import huggingface_hub

    args = ["hf", "download", entry.repo_id, "--revision", entry.revision or "main"]
    patterns = download_patterns(entry)
    if int(huggingface_hub.__version__.split(".")[0]) >= 1:
        for p in patterns:
            args += ["--include", p]
    else:
        args += ["--include", *patterns]
    return shlex.join(args + ["--local-dir", entry.name])


def models_dir() -> Path | None:
    value = os.environ.get("CFGEN_MODELS_DIR")
    return Path(value) if value else None


def _offline_reason() -> str | None:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    return None


def _not_available(entry: ModelEntry, reason: str, missing: list[str]) -> ModelNotAvailableError:
    rev = entry.revision or "main"
    placed = models_dir()
    where = f"{placed / entry.name}" if placed else f"$CFGEN_MODELS_DIR/{entry.name}"
    return ModelNotAvailableError(
        f"model '{entry.name}' (hub {entry.repo_id}@{rev}) is not on this machine and cannot be "
        f"downloaded: {reason}; missing {', '.join(missing)}. On a machine with network run "
        f"`{download_command(entry)}`, copy that folder here and pass "
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
                                        allow_patterns=download_patterns(entry), local_files_only=True))
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
                                        allow_patterns=download_patterns(entry), etag_timeout=10))
    except Exception as exc:  # network errors come in many classes; report, never hang
        raise _not_available(entry, f"download failed ({exc.__class__.__name__}: {exc})", missing) from None
    return folder, folder.name
