"""Model folders on disk: which files a family needs, safetensors-only checks, sha256.

No torch here: these checks run before any weights are touched.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from cfgen.errors import ModelError

#: For each component of a 2D latent diffusion folder: its config and its weight file(s).
LDM2D_COMPONENTS: dict[str, tuple[str, str | None]] = {
    "unet": ("config.json", "diffusion_pytorch_model.safetensors"),
    "vae": ("config.json", "diffusion_pytorch_model.safetensors"),
    "text_encoder": ("config.json", "model.safetensors"),
    "tokenizer": ("tokenizer_config.json", None),
    "scheduler": ("scheduler_config.json", None),
}

#: the 3D family (cfgen/models/ldm3d.py); autoencoder and scheduler are optional
LDM3D_COMPONENTS: dict[str, tuple[str, str | None]] = {
    "unet": ("config.json", "model.safetensors"),
    "autoencoder": ("config.json", "model.safetensors"),
    "text_encoder": ("config.json", "model.safetensors"),
    "tokenizer": ("tokenizer_config.json", None),
    "scheduler": ("scheduler_config.json", None),
}
OPTIONAL_COMPONENTS = ("scheduler", "autoencoder")
#: per family, further components that may be absent (3D: a tabular model has no text encoder;
#: the loader then requires unet/config.json's "conditioning")
FAMILY_OPTIONAL: dict[str, tuple[str, ...]] = {"latent-diffusion-3d": ("text_encoder", "tokenizer")}

#: the files each family's folder needs ("." = the folder itself)
FAMILY_COMPONENTS: dict[str, dict[str, tuple[str, str | None]]] = {
    "latent-diffusion-2d": LDM2D_COMPONENTS,
    "latent-diffusion-3d": LDM3D_COMPONENTS,
    "classifier": {".": ("config.json", "model.safetensors")},
    "clip": {".": ("config.json", "model.safetensors")},
}

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
#: an autoencoder config naming this class is the Haar transform (cfgen/models/wavelet.py): no weights
WAVELET_CLASS = "HaarWavelet"


def _wavelet_config(config_file: Path) -> dict | None:
    """The config if it declares the Haar wavelet transform, else None (also when unreadable)."""
    try:
        data = json.loads(Path(config_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("_class_name") == WAVELET_CLASS else None


def is_wavelet_config(config_file: Path) -> bool:
    """Whether an autoencoder config declares the Haar wavelet transform instead of a network."""
    return _wavelet_config(config_file) is not None


def _has_weights(folder: Path, weight_name: str) -> bool:
    stem = weight_name.removesuffix(".safetensors")
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        check_shard_index(index)
        return True
    return (folder / weight_name).is_file()


def check_shard_index(index: Path) -> None:
    """A sharded checkpoint's index may only name safetensors files beside it, which then get
    hashed with the rest: a .bin shard would be unpickled by the library that follows the index."""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        shards = sorted(set((data.get("weight_map") or {}).values()))
    except (OSError, ValueError, AttributeError, TypeError):
        raise ModelError(f"{index}: not a readable shard index (JSON with a weight_map)") from None
    if not shards:
        raise ModelError(f"{index}: the shard index names no weight files")
    for shard in shards:
        if not isinstance(shard, str) or not shard.endswith(".safetensors") or Path(shard).name != shard:
            raise ModelError(f"{index}: names the weight file {shard!r}; cfgen loads safetensors files beside "
                             "the index only (pickle files can run code when loaded)")
        if not (index.parent / shard).is_file():
            raise ModelError(f"{index}: names {shard}, which is missing")


def missing_files(root: Path, components: dict[str, tuple[str, str | None]] = LDM2D_COMPONENTS,
                  optional: tuple[str, ...] = ("scheduler",)) -> list[str]:
    """Relative paths of required files that are absent (safetensors weights only).

    A component that has only pickle weights is reported as an error of its own, since
    cfgen never unpickles: that is a security boundary, not a missing file.
    """
    missing = []
    for comp, (config, weights) in components.items():
        folder = root / comp
        if comp in optional and not folder.exists():
            continue
        if not (folder / config).is_file():
            missing.append(f"{comp}/{config}")
        if comp in ("vae", "autoencoder") and is_wavelet_config(folder / config):
            continue  # a transform, not a network: nothing to load
        if weights and not _has_weights(folder, weights):
            pickles = sorted(p.name for p in folder.glob("*") if p.suffix in PICKLE_SUFFIXES) if folder.is_dir() else []
            if pickles:
                raise ModelError(
                    f"{folder}: only pickle weights found ({', '.join(pickles)}); cfgen loads "
                    "safetensors only because pickle files can run code when loaded: convert them "
                    "once on a trusted machine (e.g. load with diffusers and save_pretrained(..., "
                    "safe_serialization=True))"
                )
            missing.append(f"{comp}/{weights}")
    return missing


def weight_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.safetensors") if p.is_file())


def pinned_files(root: Path) -> list[Path]:
    """What a shipped model's sha256 table pins: its weight files, and a Haar transform config that
    carries band scales (they change what the UNet's inputs mean, so they belong to the weights)."""
    configs = [c for c in sorted(Path(root).glob("*/config.json")) if "band_scales" in (_wavelet_config(c) or {})]
    return weight_files(root) + configs


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _cache_file() -> Path:
    base = os.environ.get("CFGEN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "cfgen")
    return Path(base) / "sha256.json"


def hashes(root: Path, files: list[Path]) -> dict[str, str]:
    """sha256 of each file, keyed by its path relative to root; cached by (path, size, mtime)."""
    cache_path = _cache_file()
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    out, changed = {}, False
    for f in files:
        st = f.stat()
        key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in cache:
            cache[key] = sha256_file(f)
            changed = True
        out[f.relative_to(root).as_posix()] = cache[key]
    if changed:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(cache))
            os.replace(tmp, cache_path)
        except OSError:
            pass  # a read-only home only costs re-hashing next time
    return out


def verify_sha256(root: Path, expected: dict[str, str], name: str) -> dict[str, str]:
    """Check the files models.toml pins; return the hashes of all weight files."""
    for rel in expected:
        if not (root / rel).is_file():
            raise ModelError(f"{root / rel}: listed in models.toml for '{name}' but missing")
    got = hashes(root, weight_files(root))
    extra = [root / rel for rel in expected if rel not in got]
    got.update(hashes(root, extra))
    for rel, want in expected.items():
        if got[rel] != want:
            raise ModelError(
                f"{root / rel}: sha256 mismatch for model '{name}' (expected {want[:12]}..., "
                f"got {got[rel][:12]}...): the file is corrupt or not the published one"
            )
    return got


#: the JSON files a model folder's loaders read
CONFIG_FILES = ("model_index.json", "*/config.json", "scheduler/scheduler_config.json", "tokenizer/tokenizer_config.json")


def check_configs(root: Path) -> None:
    """Every JSON config of the folder parses as a JSON object: a one-line error naming the file
    (diffusers, transformers and MONAI report these in their own words, or with a traceback)."""
    import json

    for pattern in CONFIG_FILES:
        for path in sorted(Path(root).glob(pattern)):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise ModelError(f"{path}: not valid JSON ({exc})") from None
            if not isinstance(data, dict):
                raise ModelError(f"{path}: expected a JSON object, found {type(data).__name__} {str(data)[:40]}")


def stored_elements(paths: list[Path]) -> int:
    """Values the safetensors files hold, from their headers (nothing is loaded); a file that is
    not safetensors is a one-line error naming it."""
    import math

    from safetensors import SafetensorError, safe_open

    total = 0
    for path in paths:
        try:
            with safe_open(str(path), "pt") as fh:
                total += sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())
        except (SafetensorError, OSError) as exc:
            raise ModelError(f"{path}: not a readable safetensors file ({exc})") from None
    return total


def check_network_size(where: Path, build, weights: list[Path]) -> None:
    """The network ``build()`` makes (on the meta device: nothing allocated) has as many values
    as ``weights`` hold: a config asking for enormous channels is refused before it is built."""
    import torch

    with torch.device("meta"):
        wanted = sum(t.numel() for t in build().state_dict().values())
    stored = stored_elements(weights)
    if wanted != stored:
        raise ModelError(f"{where}: describes a network of {wanted:,} parameters; {', '.join(w.name for w in weights)} "
                         f"holds {stored:,}: the config and the weights do not belong together")
