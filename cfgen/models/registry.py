"""The model registry: ``models.toml`` read as plain data. Imports no torch.

Where entries come from, later files overriding earlier ones:
1. the ``models.toml`` shipped in the package (the repository's top-level ``models.toml``);
2. every file named in ``CFGEN_MODELS_TOML`` (``os.pathsep``-separated), for users' own entries.

Relative ``path`` values in a file are resolved against that file's folder; ``package``
sources against the installed ``cfgen`` package folder.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfgen.errors import ModelError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PACKAGE_DIR = Path(__file__).resolve().parents[1]

#: Families the loader knows, with what they are. Only families that work are listed.
FAMILIES: dict[str, str] = {
    "latent-diffusion-2d": "2D latent diffusion in diffusers format (VAE, UNet2DConditionModel, "
    "text encoder + tokenizer, scheduler), Stable Diffusion v1.5-class",
    "latent-diffusion-3d": "3D diffusion on MONAI networks (DiffusionModelUNet, optional AutoencoderKL, "
    "text encoder + tokenizer), volumes: see cfgen/models/ldm3d.py for the folder layout",
    "classifier": "image classifier/regressor for scoring counterfactuals (MONAI DenseNet, 2D or 3D): "
    "config.json + model.safetensors",
    "clip": "CLIP image-text model in transformers format (CLIPModel + tokenizer) for CLIP scores",
}

SOURCE_KINDS = ("hub", "local", "package")

#: Intensity conventions a model can declare: the range its pixels were trained in.
VALUE_RANGES = {"minus1_1": (-1.0, 1.0), "0_1": (0.0, 1.0)}

#: PRISM's edit scheduler (REFERENCE.md), the default for entries that give none.
DEFAULT_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "num_train_timesteps": 1000,
}


@dataclass(frozen=True)
class ModelEntry:
    """One model: where its files are and how to use them."""

    name: str
    family: str
    source: str  # hub | local | package
    repo_id: str | None = None
    revision: str | None = None
    path: Path | None = None
    description: str = ""
    licence: str = "unknown"
    resolution: int = 512
    channels: int = 3
    intensity: str = "minus1_1"
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SCHEDULER))
    defaults: dict[str, Any] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    synth: dict[str, Any] = field(default_factory=dict)  # [synth] table: `cfgen synth3d` roles (models/synth.py)
    orientation: str = "RAS"  # volumes: the axis codes the model was trained in (cfgen/editing/grid.py)
    spacing: tuple[float, ...] | None = None  # volumes: the voxel spacing (mm) it was trained at
    origin: str = ""  # the toml file the entry came from

    @property
    def spatial_dims(self) -> int:
        return 3 if self.family == "latent-diffusion-3d" else 2

    @property
    def value_range(self) -> tuple[float, float]:
        return VALUE_RANGES[self.intensity]

    def describe_source(self) -> str:
        if self.source == "hub":
            return f"hub {self.repo_id}@{self.revision or 'main'}"
        return f"{self.source} {self.path}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "source": self.source,
            "repo_id": self.repo_id,
            "revision": self.revision,
            "path": str(self.path) if self.path else None,
            "description": self.description,
            "licence": self.licence,
            "resolution": self.resolution,
            "channels": self.channels,
            "intensity": self.intensity,
            "scheduler": dict(self.scheduler),
            "defaults": dict(self.defaults),
            "sha256": dict(self.sha256),
            "synth": dict(self.synth),
            "orientation": self.orientation,
            "spacing": list(self.spacing) if self.spacing else None,
            "origin": self.origin,
        }


@dataclass
class Registry:
    entries: dict[str, ModelEntry]
    default: str | None
    files: list[Path]
    default_classifier: str | None = None  # what `cfgen evaluate` scores with unless told otherwise
    default_synth3d: str | None = None  # the base model `cfgen synth3d` uses unless told otherwise

    def get(self, name: str) -> ModelEntry:
        try:
            return self.entries[name]
        except KeyError:
            known = ", ".join(sorted(self.entries)) or "none"
            raise ModelError(
                f"unknown model '{name}': not an entry in models.toml (known: {known}) "
                "and not a model folder"
            ) from None


def packaged_registry_file() -> Path:
    """The models.toml inside an installed wheel, or the checkout's top-level one."""
    for candidate in (PACKAGE_DIR / "models" / "models.toml", PACKAGE_DIR.parent / "models.toml"):
        if candidate.is_file():
            return candidate
    raise ModelError(f"models.toml not found beside the cfgen package ({PACKAGE_DIR})")


def _entry_from_table(name: str, table: dict[str, Any], origin: Path) -> ModelEntry:
    where = f"{origin}: [models.{name}]"
    from cfgen.models.schema import check_entry

    check_entry(table, where)
    family = table.get("family")
    if family not in FAMILIES:
        raise ModelError(f"{where}: family '{family}' is not one of {', '.join(FAMILIES)}")
    src = table.get("source")
    if not isinstance(src, dict) or src.get("kind") not in SOURCE_KINDS:
        raise ModelError(f"{where}: needs a [source] table with kind = one of {', '.join(SOURCE_KINDS)}")
    kind = src["kind"]
    path = None
    if kind == "hub":
        if not src.get("repo_id"):
            raise ModelError(f"{where}: a hub source needs repo_id")
    else:
        if not src.get("path"):
            raise ModelError(f"{where}: a {kind} source needs path")
        base = PACKAGE_DIR if kind == "package" else origin.parent
        path = (base / src["path"]).resolve()
    intensity = table.get("intensity", "minus1_1")
    if intensity not in VALUE_RANGES:
        raise ModelError(f"{where}: intensity '{intensity}' is not one of {', '.join(VALUE_RANGES)}")
    scheduler = dict(DEFAULT_SCHEDULER)
    scheduler.update(table.get("scheduler", {}))
    if scheduler.get("kind", "ddim") not in ("ddim", "rflow"):
        raise ModelError(f"{where}: scheduler kind '{scheduler['kind']}' is not ddim or rflow")
    from cfgen.models.synth import check_synth_table

    synth = check_synth_table(table.get("synth", {}), where)
    orientation, spacing = _voxel_geometry(table, where)
    _check_default_window(table.get("defaults", {}), where)
    return ModelEntry(
        name=name,
        family=family,
        source=kind,
        repo_id=src.get("repo_id"),
        revision=src.get("revision"),
        path=path,
        description=table.get("description", ""),
        licence=table.get("licence", "unknown"),
        resolution=int(table.get("resolution", 512)),
        channels=int(table.get("channels", 3)),
        intensity=intensity,
        scheduler=scheduler,
        defaults=dict(table.get("defaults", {})),
        sha256={str(k): str(v).lower() for k, v in table.get("sha256", {}).items()},
        synth=synth,
        orientation=orientation,
        spacing=spacing,
        origin=str(origin),
    )


def _check_default_window(defaults: dict[str, Any], where: str) -> None:
    """A model's ``[defaults] window`` is its weights' intensity map: an inverted or unreadable one
    would map every scan wrongly, so it is refused when the registry is read."""
    if "window" not in defaults:
        return
    from cfgen.errors import UsageError
    from cfgen.io.intensity import check_window

    try:
        check_window(str(defaults["window"]))
    except UsageError as exc:
        raise ModelError(f"{where}: [defaults] window = {defaults['window']!r} is not a window ({exc})") from None


def _voxel_geometry(table: dict[str, Any], where: str) -> tuple[str, tuple[float, ...] | None]:
    """``orientation`` (three axis codes, one of L/R, one of A/P, one of S/I) and ``spacing`` (mm:
    one number or three) of a 3D model's training volumes."""
    codes = table.get("orientation", "RAS")
    if not isinstance(codes, str) or len(codes) != 3 or sorted(
            {"L": "R", "P": "A", "I": "S"}.get(c, c) for c in codes.upper()) != ["A", "R", "S"]:
        raise ModelError(f"{where}: orientation {codes!r} is not three axis codes such as \"RAS\" or \"LPS\"")
    spacing = table.get("spacing")
    if spacing is None:
        return codes.upper(), None
    values = [spacing] * 3 if isinstance(spacing, (int, float)) and not isinstance(spacing, bool) else spacing
    if (not isinstance(values, list) or len(values) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1000 for v in values)):
        raise ModelError(f"{where}: spacing {spacing!r} is not a voxel size in mm (one number or three, each > 0)")
    return codes.upper(), tuple(float(v) for v in values)


def read_registry_file(path: Path) -> tuple[dict[str, ModelEntry], dict[str, str]]:
    """(entries, top-level defaults: ``default`` and ``default_classifier`` when given)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: registry file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not valid TOML ({exc})") from None
    models = data.get("models", {})
    if not isinstance(models, dict) or not all(isinstance(t, dict) for t in models.values()):
        raise ModelError(f"{path}: [models] must be a table of entries ([models.NAME] tables)")
    for key in data:
        if key not in ("models", "default", "default_classifier", "default_synth3d"):
            raise ModelError(f"{path}: unknown top-level key '{key}' (known: models, default, default_classifier, "
                             "default_synth3d)")
    entries = {name: _entry_from_table(name, table, path) for name, table in models.items()}
    return entries, {k: str(data[k]) for k in ("default", "default_classifier", "default_synth3d") if data.get(k)}


def load_registry(extra: list[Path] | None = None) -> Registry:
    files = [packaged_registry_file()]
    env = os.environ.get("CFGEN_MODELS_TOML", "")
    files += [Path(p) for p in env.split(os.pathsep) if p]
    files += list(extra or [])
    entries: dict[str, ModelEntry] = {}
    defaults: dict[str, str] = {}
    for f in files:
        more, dflt = read_registry_file(f)
        entries.update(more)
        defaults.update(dflt)
    for key, name in defaults.items():
        if name not in entries:
            raise ModelError(f"{files[-1]}: {key} model '{name}' is not an entry")
    return Registry(entries=entries, default=defaults.get("default"), files=files,
                    default_classifier=defaults.get("default_classifier"),
                    default_synth3d=defaults.get("default_synth3d"))


def resolve_model_name(registry: Registry, model: str | None) -> str:
    """The entry name to use for ``--model`` (None = the registry default)."""
    if model:
        return model
    if registry.default is None:
        raise UsageError("no --model given and models.toml names no default model")
    return registry.default
