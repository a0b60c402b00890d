"""The one loader: ``--model`` (an entry name or a folder) -> ready components.

A folder may carry a ``cfgen.toml`` with the same keys as a models.toml entry (family,
resolution, channels, intensity, scheduler, defaults); without one, the family is inferred
from the folder layout and the rest from the component configs.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from cfgen import startup
from cfgen.errors import ModelError, UsageError
from cfgen.models.files import (FAMILY_COMPONENTS, FAMILY_OPTIONAL, OPTIONAL_COMPONENTS, check_configs,
                                check_network_size, is_wavelet_config, missing_files, verify_sha256)
from cfgen.models.hf import quiet_hf
from cfgen.models.registry import ModelEntry, Registry, _entry_from_table, load_registry, resolve_model_name
from cfgen.models.scheduler import folder_scheduler

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: what `edit` and `invert` take
DIFFUSION_FAMILIES = ("latent-diffusion-2d", "latent-diffusion-3d")

DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
          "bfloat16": "bfloat16", "bf16": "bfloat16"}


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine (use cpu or auto)")
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    name = DTYPES.get(dtype)
    if name is None:
        raise UsageError(f"--dtype {dtype}: use one of float32, float16, bfloat16")
    if name == "float16" and device == "cpu":
        raise UsageError("--dtype float16 is not supported on cpu (use float32 or bfloat16)")
    return getattr(torch, name)


@dataclass
class LoadedModel:
    """Ready-to-use components of one model plus everything the run report needs.

    Diffusion families fill ``unet``, ``vae`` (2D: a diffusers AutoencoderKL or the Haar wavelet
    transform; 3D: the family's autoencoder wrapper, ``.net`` None in voxel space, or the Haar transform), ``text_encoder``, ``tokenizer`` and
    ``vae_scale_factor`` (pixels per latent cell); tabular 3D models also ``fields``. The
    ``classifier`` and ``clip`` families fill their scorer. The memory plan is not kept here: a run
    passes its VAE chunk size to the functions that encode and decode."""

    entry: ModelEntry
    folder: Path
    revision: str | None
    sha256: dict[str, str]
    device: str
    dtype: Any  # torch.dtype of the loaded weights
    unet: Any = None
    vae: Any = None
    text_encoder: Any = None
    tokenizer: Any = None
    vae_scale_factor: int = 1
    fields: tuple | None = None  # tabular conditioning fields (cfgen.models.tabular.Field)
    classifier: Any = None  # cfgen.models.classifier.Classifier
    clip: Any = None  # cfgen.models.clip.ClipScorer
    scheduler_source: dict | None = None  # which scheduler settings came from the folder's file (models/scheduler.py)

    @property
    def name(self) -> str:
        return self.entry.name

    def networks(self) -> list[tuple[str, Any]]:
        """(name, torch module) of every network component (casts, device moves, layouts)."""
        import torch

        comps = [(n, getattr(self, n)) for n in ("unet", "vae", "text_encoder")]
        return [(n, c) for n, c in comps if isinstance(c, torch.nn.Module)]

    def report_info(self) -> dict[str, Any]:
        return {
            "name": self.entry.name,
            "family": self.entry.family,
            "source": self.entry.describe_source(),
            "revision": self.revision,
            "folder": str(self.folder),
            "sha256": dict(self.sha256),
            "resolution": self.entry.resolution,
            "channels": self.entry.channels,
            "intensity": self.entry.intensity,
            "scheduler": dict(self.entry.scheduler),
            "scheduler_source": self.scheduler_source,
        }


def _infer_family(folder: Path) -> str:
    """A folder without cfgen.toml: diffusers layout, a 3D UNet config, or a root config.json
    that says what it is."""
    import json

    cfg = folder / "config.json"
    unet_cfg = folder / "unet" / "config.json"
    if unet_cfg.is_file():
        try:
            if json.loads(unet_cfg.read_text(encoding="utf-8")).get("spatial_dims") == 3:
                return "latent-diffusion-3d"
        except (OSError, ValueError, AttributeError):
            pass
    if not (folder / "unet").is_dir() and cfg.is_file():
        try:
            data = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        if isinstance(data, dict) and "labels" in data and "kinds" in data:
            return "classifier"
        if isinstance(data, dict) and data.get("model_type") == "clip":
            return "clip"
    return "latent-diffusion-2d"


def _folder_entry(folder: Path) -> ModelEntry:
    cfg_file = folder / "cfgen.toml"
    table: dict[str, Any] = {}
    if cfg_file.is_file():
        try:
            table = tomllib.loads(cfg_file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{cfg_file}: not valid TOML ({exc})") from None
    table.setdefault("family", _infer_family(folder))
    table["source"] = {"kind": "local", "path": str(folder)}
    return _entry_from_table(folder.name, table, cfg_file)


def entry_for(model: str | None, registry: Registry | None = None) -> ModelEntry:
    """Registry entry for a name, or an ad-hoc entry for a model folder."""
    if model and Path(model).is_dir():
        return _folder_entry(Path(model).resolve())
    registry = registry or load_registry()
    return registry.get(resolve_model_name(registry, model))


def locate(entry: ModelEntry) -> tuple[Path, str | None]:
    if entry.source == "hub":
        from cfgen.models.hub import hub_folder

        return hub_folder(entry)
    assert entry.path is not None
    if not entry.path.is_dir():
        raise ModelError(f"{entry.path}: model folder for '{entry.name}' does not exist")
    return entry.path, entry.revision


def _check_size_2d(sub: Path, cls) -> None:
    """A diffusers component's config against its weights, before anything is allocated."""
    import re

    weights = sorted(p for p in sub.glob("diffusion_pytorch_model*.safetensors")
                     if re.fullmatch(r"diffusion_pytorch_model(-\d+-of-\d+)?\.safetensors", p.name))
    if not weights:
        return  # missing_files has said what is missing
    try:
        config = cls.load_config(sub)
        check_network_size(sub / "config.json", lambda: cls.from_config(config), weights)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:  # a value of the wrong type or kind
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
        raise ModelError(f"{sub / 'config.json'}: not a {cls.__name__} config ({first})") from None


def _load_ldm2d(entry: ModelEntry, folder: Path, device: str, dtype) -> tuple[ModelEntry, dict[str, Any]]:
    """A diffusers folder; its vae/ may instead declare the Haar wavelet transform (cfgen/models/wavelet.py)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from cfgen.models.wavelet import load_wavelet
    from transformers import AutoModel, AutoTokenizer

    quiet_hf()
    kw = {"use_safetensors": True}
    wavelet = is_wavelet_config(folder / "vae" / "config.json")
    for sub, cls in (("vae", AutoencoderKL), ("unet", UNet2DConditionModel)):
        if not (sub == "vae" and wavelet):
            _check_size_2d(folder / sub, cls)
    try:
        vae = (load_wavelet(folder / "vae" / "config.json").to(dtype=dtype) if wavelet else
               AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype, **kw))
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype, **kw)
        text_encoder = AutoModel.from_pretrained(folder / "text_encoder", trust_remote_code=False,
                                                 dtype=dtype, **kw)
        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", trust_remote_code=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ModelError(f"{folder}: cannot load model '{entry.name}' ({first})") from None
    for m in (vae, unet, text_encoder):
        m.requires_grad_(False)
        m.eval()
        m.to(device)
    if wavelet and int(unet.config.in_channels) != vae.latent_channels(2):
        raise ModelError(f"{folder / 'unet' / 'config.json'}: in_channels {unet.config.in_channels}, but vae/ is a "
                         f"{vae.levels}-level Haar transform of {vae.config.in_channels} channel(s), which gives "
                         f"{vae.latent_channels(2)}")
    sched, source = folder_scheduler(entry.scheduler, folder)
    vae_scale = vae.downsampling if wavelet else 2 ** (len(vae.config.block_out_channels) - 1)
    inferred = {"channels": int(vae.config.in_channels)}
    if entry.source == "local" and not (folder / "cfgen.toml").is_file():
        inferred["resolution"] = int(unet.config.sample_size) * vae_scale
    entry = replace(entry, scheduler=sched, **inferred)
    comps = {"vae": vae, "unet": unet, "text_encoder": text_encoder, "tokenizer": tokenizer,
             "vae_scale_factor": vae_scale, "scheduler_source": source}
    return entry, comps


def _load_ldm3d(entry: ModelEntry, folder: Path, device: str, dtype):
    from cfgen.models.ldm3d import load_ldm3d

    return load_ldm3d(entry, folder, device, dtype)


def _load_classifier(entry: ModelEntry, folder: Path, device: str, dtype):
    from cfgen.models.classifier import load_family

    return load_family(entry, folder, device, dtype)


def _load_clip(entry: ModelEntry, folder: Path, device: str, dtype):
    from cfgen.models.clip import load_family

    return load_family(entry, folder, device, dtype)


#: family -> loader(entry, folder, device, dtype) -> (entry with resolved values, components)
FAMILY_LOADERS: dict[str, Callable[..., tuple[ModelEntry, dict[str, Any]]]] = {
    "latent-diffusion-2d": _load_ldm2d,
    "latent-diffusion-3d": _load_ldm3d,
    "classifier": _load_classifier,
    "clip": _load_clip,
}


def _label_table(synth: dict) -> str:
    """Label names with their codes and encoding, defaults spelled out (one-hot; label k's code k)."""
    from cfgen.models.synth import label_encoding

    enc = label_encoding(synth)
    names = list(synth.get("labels", []))
    codes = enc.codes or tuple(range(1, len(names) + 1))
    return f"{enc.kind} " + ", ".join(f"{n}={c}" for n, c in zip(names, codes))


def _check_folder(entry: ModelEntry, folder: Path) -> None:
    """A registry entry against what its folder's cfgen.toml was trained with: the fixed intensity
    window (a CT model fed another HU map gives plausible, wrong HU), the label table (names, encoding,
    codes: another table decodes plausible, wrong label maps) and how --mask-from gives the labels (a
    model trained to follow clean labels, given noised ones, does not follow them)."""
    from cfgen.io.intensity import fixed_window

    cfg_file, given = folder / "cfgen.toml", entry.defaults.get("window")
    if not cfg_file.is_file() or Path(entry.origin) == cfg_file or (given is None and not entry.synth.get("labels")):
        return  # no file, the entry is that file (a model loaded by its folder), or nothing to compare
    own_entry = _folder_entry(folder)
    own = own_entry.defaults.get("window")
    if given is not None and own is not None and fixed_window(own) != fixed_window(given):
        raise ModelError(f"{cfg_file}: model '{entry.name}' was trained in the window {own}, but its registry "
                         f"entry says {given}; make the entry's [defaults] window {own}")
    mine, theirs = (_label_table(e.synth) for e in (own_entry, entry))
    if own_entry.synth.get("labels") and mine != theirs:
        raise ModelError(f"{cfg_file}: model '{entry.name}' was trained with the labels {mine}, but its registry "
                         f"entry's [synth] says {theirs}; make the entry's labels, label_encoding and label_codes "
                         "the folder's")
    mine, theirs = (e.synth.get("given_labels", "noised") for e in (own_entry, entry))
    if own_entry.synth.get("labels") and mine != theirs:
        raise ModelError(f"{cfg_file}: model '{entry.name}' was trained with its labels given {mine}, but its "
                         f"registry entry's [synth] says {theirs}; make the entry's given_labels \"{mine}\"")


def load_model(model: str | None = None, device: str = "auto", dtype: str = "float32",
               registry: Registry | None = None, family: str | tuple[str, ...] | None = DIFFUSION_FAMILIES,
               option: str = "--model") -> LoadedModel:
    """Resolve, verify (files present, safetensors only, sha256) and load a model of ``family``
    (one name or several)."""
    entry = entry_for(model, registry)
    wanted = (family,) if isinstance(family, str) else family
    if wanted and entry.family not in wanted:
        raise UsageError(f"{option} {model or entry.name}: a '{entry.family}' model; this needs a "
                         f"{' or '.join(repr(w) for w in wanted)} model")
    folder, revision = locate(entry)
    missing = missing_files(folder, FAMILY_COMPONENTS[entry.family],
                            optional=OPTIONAL_COMPONENTS + FAMILY_OPTIONAL.get(entry.family, ()))
    if missing:
        raise ModelError(f"{folder}: model '{entry.name}' is incomplete, missing {', '.join(missing)}")
    check_configs(folder)
    _check_folder(entry, folder)
    sha = verify_sha256(folder, entry.sha256, entry.name)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    entry, comps = FAMILY_LOADERS[entry.family](entry, folder, dev, dt)
    startup.release()  # the console script's imports and this model are done: collect from here on
    return LoadedModel(entry=entry, folder=folder, revision=revision, sha256=sha, device=dev, dtype=dt, **comps)
