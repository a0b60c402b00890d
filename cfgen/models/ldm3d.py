"""The 3D family (``latent-diffusion-3d``) on MONAI's generative networks.

Folder layout (safetensors only)::

  cfgen.toml                     family = "latent-diffusion-3d", resolution (voxels per axis), channels,
                                 intensity, optional [scheduler] and [defaults]
  unet/config.json               monai.networks.nets.DiffusionModelUNet keyword arguments (spatial_dims 3)
  unet/model.safetensors
  autoencoder/config.json        optional: monai.networks.nets.AutoencoderKL keyword arguments plus
  autoencoder/model.safetensors  "scaling_factor"; without it the model works in voxel space; a config
                                 {"_class_name": "HaarWavelet", "levels": L} alone: in Haar wavelet
                                 space (cfgen/models/wavelet.py, lossless, no weights)
  text_encoder/, tokenizer/      transformers text encoder and tokenizer (as the 2D family), or:
  unet/conditioner.safetensors   tabular conditioning (age, sex, ...) declared by the key
                                 "conditioning" of unet/config.json (cfgen/models/tabular.py)
  scheduler/scheduler_config.json  optional: DDIM settings (diffusers keys)

A UNet with ``"with_conditioning": false`` needs neither (the super-resolution stage of
`cfgen synth3d`, whose role the ``[synth]`` table of cfgen.toml declares: cfgen/models/synth.py).

The networks are wrapped so that they answer the calls the 2D family answers (``unet(z, t,
encoder_hidden_states=...).sample``, ``vae.encode(x).latent_dist.mean``, ``vae.decode(z).sample``):
one editing loop (DDIM inversion, guided sampling, masks) serves 2D and 3D. Scheduling uses
diffusers' DDIMScheduler, whose arithmetic does not depend on the tensor's dimensions.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from cfgen.errors import ModelError
from cfgen.models.files import check_network_size
from cfgen.models.synth import label_channel_count

UNET_DIR, AE_DIR, WEIGHTS = "unet", "autoencoder", "model.safetensors"


class UNet3DAdapter(torch.nn.Module):
    """DiffusionModelUNet with the diffusers call signature."""

    def __init__(self, net: torch.nn.Module, config: dict[str, Any], conditioner: torch.nn.Module | None = None):
        super().__init__()
        self.net = net
        self.conditioner = conditioner  # tabular models: [value, present] rows -> tokens
        self.config = SimpleNamespace(**config)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor | None = None):
        t = torch.as_tensor(timestep, device=sample.device)
        if t.ndim == 0:
            t = t.expand(sample.shape[0])
        context = encoder_hidden_states
        if self.conditioner is not None and context is not None:
            context = self.conditioner(context).to(sample.dtype)
        return SimpleNamespace(sample=self.net(sample, t.long(), context=context))

    def save_pretrained(self, folder: Path, safe_serialization: bool = True) -> None:
        """config.json + model.safetensors, the layout load_ldm3d reads (finetune output)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}, str(folder / WEIGHTS))
        if self.conditioner is not None:
            from cfgen.models.tabular import CONDITIONER_WEIGHTS

            save_file({k: v.detach().cpu().contiguous() for k, v in self.conditioner.state_dict().items()},
                      str(folder / CONDITIONER_WEIGHTS))
        (folder / "config.json").write_text(json.dumps(vars(self.config), indent=2))


class Autoencoder3DAdapter(torch.nn.Module):
    """MONAI AutoencoderKL (or nothing: voxel space) with the diffusers encode/decode interface."""

    def __init__(self, net: torch.nn.Module | None, scaling_factor: float = 1.0, in_channels: int = 1):
        super().__init__()
        self.net = net
        self.config = SimpleNamespace(scaling_factor=scaling_factor, shift_factor=0.0, in_channels=in_channels)

    def encode(self, x: torch.Tensor):
        mean = x if self.net is None else self.net.encode(x)[0]
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=mean))

    def decode(self, z: torch.Tensor):
        return SimpleNamespace(sample=z if self.net is None else self.net.decode(z))

    @property
    def downsampling(self) -> int:
        return 1 if self.net is None else 2 ** (len(self.net.encoder.channels) - 1)

    @property
    def voxel_space(self) -> bool:
        return self.net is None

    @property
    def lossless(self) -> bool:
        """Voxel space: anatomy label channels are generated on the image grid."""
        return self.voxel_space


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder / 'config.json'}: cannot read ({exc})") from None


#: MONAI network arguments cfgen's 3D folders use, and the type each must have
_CONFIG_TYPES = {"spatial_dims": int, "in_channels": int, "out_channels": int, "latent_channels": int,
                 "norm_num_groups": int, "cross_attention_dim": int, "channels": list, "attention_levels": list,
                 "with_conditioning": bool, "with_encoder_nonlocal_attn": bool, "with_decoder_nonlocal_attn": bool}


def _check_config(kwargs: dict[str, Any], where: Path) -> None:
    for key, kind in _CONFIG_TYPES.items():
        value = kwargs.get(key)
        if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            raise ModelError(f"{where}: {key}: expected {'a list' if kind is list else kind.__name__}, found {value!r:.40}")
    if not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in kwargs.get("channels", [])):
        raise ModelError(f"{where}: channels: expected a list of positive integers, found {kwargs['channels']!r:.60}")


def _network(kind: str, cfg: dict[str, Any], folder: Path, device: str, dtype) -> torch.nn.Module:
    """The network of ``folder``: its config checked, its size compared with the weights' (on the
    meta device: nothing allocated) before it is built and loaded."""
    from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cls = DiffusionModelUNet if kind == UNET_DIR else AutoencoderKL
    kwargs = {k: v for k, v in cfg.items() if k not in ("scaling_factor", "conditioning")}
    _check_config(kwargs, folder / "config.json")
    if kind == UNET_DIR:  # torch's fused attention, on every device: the same maths, 3x faster on CPU
        kwargs["use_flash_attention"] = True
    try:
        check_network_size(folder / "config.json", lambda: cls(**kwargs), [folder / WEIGHTS])
        net = cls(**kwargs)
        net.load_state_dict(load_file(str(folder / WEIGHTS)))
    except SafetensorError as exc:
        raise ModelError(f"{folder / WEIGHTS}: not a readable safetensors file ({exc})") from None
    except (TypeError, ValueError, RuntimeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ModelError(f"{folder}: cannot build {cls.__name__} from config.json and {WEIGHTS} ({first[:300]})") from None
    return net.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _check_unreliable(entry, fields) -> None:
    """``[defaults] unreliable_fields`` and ``unreliable_edits`` name fields of this model's conditioning (a
    misspelt one would never refuse anything)."""
    from cfgen.models.tabular import UNRELIABLE_KEYS

    names = {f.name for f in fields or ()}
    for key in UNRELIABLE_KEYS:
        for name in entry.defaults.get(key, []):
            if name not in names:
                raise ModelError(f"{entry.origin}: [models.{entry.name}.defaults] {key} names '{name}', which is "
                                 f"not a conditioning field of this model ({', '.join(sorted(names)) or 'none'})")


def _conditioner(ucfg: dict[str, Any], folder: Path, device: str, dtype):
    """(fields, TabularEmbedding) of a tabular model; (None, None) for a text model."""
    if "conditioning" not in ucfg:
        return None, None
    from safetensors.torch import load_file

    from cfgen.models.tabular import CONDITIONER_WEIGHTS, TabularEmbedding, parse_fields

    fields = parse_fields(ucfg["conditioning"], str(folder / "config.json"))
    emb = TabularEmbedding(fields, int(ucfg["cross_attention_dim"]))
    from safetensors import SafetensorError

    try:
        emb.load_state_dict(load_file(str(folder / CONDITIONER_WEIGHTS)))
    except (OSError, RuntimeError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ModelError(f"{folder / CONDITIONER_WEIGHTS}: cannot load the tabular conditioner ({first[:300]})") from None
    return fields, emb.to(device=device, dtype=torch.float32).eval().requires_grad_(False)


def _autoencoder(folder: Path, entry, ucfg: dict[str, Any], device: str, dtype):
    """autoencoder/: a MONAI AutoencoderKL, the Haar transform (checked against the UNet's
    channels) or absent (voxel space)."""
    from cfgen.models.files import is_wavelet_config

    if is_wavelet_config(folder / AE_DIR / "config.json"):
        from cfgen.models.wavelet import load_wavelet

        # label channels go through the transform with the image (in_channels = image + labels)
        wav = load_wavelet(folder / AE_DIR / "config.json", int(entry.channels) + label_channel_count(entry.synth))
        want = wav.latent_channels(3)
        if int(ucfg.get("out_channels", want)) != want:
            raise ModelError(f"{folder / UNET_DIR / 'config.json'}: out_channels {ucfg.get('out_channels')}, but "
                             f"autoencoder/ is a {wav.levels}-level Haar transform giving {want} channels")
        return wav.to(device=device, dtype=dtype)
    ae_net, scale = None, 1.0
    if (folder / AE_DIR).is_dir():
        acfg = _read_config(folder / AE_DIR)
        scale = float(acfg.get("scaling_factor", 1.0))
        ae_net = _network(AE_DIR, acfg, folder / AE_DIR, device, dtype)
    return Autoencoder3DAdapter(ae_net, scale, int(entry.channels))


def load_ldm3d(entry, folder: Path, device: str, dtype):
    """Loader for FAMILY_LOADERS: (entry, components) as the 2D family gives them."""
    from dataclasses import replace

    from transformers import AutoModel, AutoTokenizer

    from cfgen.models.hf import quiet_hf

    quiet_hf()
    ucfg = _read_config(folder / UNET_DIR)
    if int(ucfg.get("spatial_dims", 0)) != 3:
        raise ModelError(f"{folder / UNET_DIR / 'config.json'}: spatial_dims must be 3 for a latent-diffusion-3d model")
    fields, conditioner = _conditioner(ucfg, folder / UNET_DIR, device, dtype)
    _check_unreliable(entry, fields)
    unet = UNet3DAdapter(_network(UNET_DIR, ucfg, folder / UNET_DIR, device, dtype), ucfg, conditioner)
    vae = _autoencoder(folder, entry, ucfg, device, dtype)
    text_encoder = tokenizer = None
    unconditioned = ucfg.get("with_conditioning") is False  # e.g. a super-resolution stage
    if fields is None and not unconditioned and not (folder / "text_encoder").is_dir():
        raise ModelError(f"{folder}: model '{entry.name}' has neither text_encoder/ (a text model) nor "
                         "'conditioning' in unet/config.json (a tabular model)")
    try:
        if fields is None and not unconditioned:
            text_encoder = AutoModel.from_pretrained(folder / "text_encoder", trust_remote_code=False, dtype=dtype,
                                                 use_safetensors=True).to(device).eval().requires_grad_(False)
            tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", trust_remote_code=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ModelError(f"{folder}: cannot load the text encoder of '{entry.name}' ({first})") from None
    from cfgen.models.scheduler import folder_scheduler

    sched, source = folder_scheduler(entry.scheduler, folder)
    entry = replace(entry, scheduler=sched)
    comps = {"vae": vae, "unet": unet, "text_encoder": text_encoder, "tokenizer": tokenizer,
             "vae_scale_factor": vae.downsampling, "fields": fields, "scheduler_source": source}
    return entry, comps


@dataclass(frozen=True)
class LDM3DSpec:
    resolution: int = 16
    channels: int = 1
    latent_channels: int = 2
    ae_channels: tuple[int, ...] | None = (8, 8)  # None: voxel space
    unet_channels: tuple[int, ...] = (8, 16)
    text_hidden: int = 16  # text encoder width; tabular models: the token width
    text_layers: int = 1
    text_heads: int = 2
    max_tokens: int = 48
    intensity: str = "minus1_1"
    scaling_factor: float = 1.0
    conditioning: dict | None = None  # tabular fields (cfgen/models/tabular.py) instead of a text encoder
    scheduler: str = "ddim"  # or "rflow": rectified flow (cfgen/editing/flow.py)
    prediction_type: str = "epsilon"  # DDIM models: or "v_prediction", "sample" (x0, as MedSyn's stages)
    synth: dict | None = None  # [synth] table (cfgen/models/synth.py): label channels or a super-resolution stage
    spacing: float | None = None  # mm per voxel of the training volumes (RAS): the grid scans are brought to
    wavelet_levels: int | None = None  # L: the lossless Haar transform (C * 8^L bands) instead of ae_channels
    window: str | None = None  # a fixed intensity window, [defaults] window (e.g. "-1024,600": CT in HU)


def build_ldm3d(folder: Path, spec: LDM3DSpec = LDM3DSpec(), seed: int = 0) -> Path:
    """Write an untrained 3D model folder (tests, and the start of training)."""
    from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
    from safetensors.torch import save_file

    from cfgen.models.hf import quiet_hf

    quiet_hf()
    folder = Path(folder)
    torch.manual_seed(seed)
    synth = spec.synth or {}
    labels = label_channel_count(synth)
    latent = spec.channels + labels  # label channels are generated with the image
    if spec.wavelet_levels is not None:  # ... and go through the transform with it
        from cfgen.models.wavelet import HaarWavelet

        wav = HaarWavelet(spec.wavelet_levels, spec.channels + labels, spec.scaling_factor)
        wav.save_pretrained(folder / AE_DIR)
        latent = wav.latent_channels(3)
    elif spec.ae_channels:
        acfg = {"spatial_dims": 3, "in_channels": spec.channels, "out_channels": spec.channels,
                "channels": list(spec.ae_channels), "latent_channels": spec.latent_channels,
                "num_res_blocks": 1, "attention_levels": [False] * len(spec.ae_channels),
                "norm_num_groups": min(spec.ae_channels[0], 8), "with_encoder_nonlocal_attn": False,
                "with_decoder_nonlocal_attn": False}
        ae = AutoencoderKL(**acfg)
        (folder / AE_DIR).mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in ae.state_dict().items()}, str(folder / AE_DIR / WEIGHTS))
        (folder / AE_DIR / "config.json").write_text(json.dumps({**acfg, "scaling_factor": spec.scaling_factor}, indent=2))
        latent = spec.latent_channels + labels
    n = len(spec.unet_channels)
    sr = "scale" in synth
    if spec.unet_channels[0] < latent:
        import warnings

        warnings.warn(f"{folder}: the UNet's first block ({spec.unet_channels[0]} channels) is narrower than its "
                      f"{latent} latent channels, so it cannot carry its input through (fine for a test model, "
                      "not for one to train)", stacklevel=2)
    ucfg = {"spatial_dims": 3, "in_channels": 2 * latent if sr else latent, "out_channels": latent,
            "channels": list(spec.unet_channels), "num_res_blocks": 1,
            # a super-resolution stage is convolutional (no attention, no text): it runs in sliding windows
            "attention_levels": [False] * n if sr else [False] * (n - 1) + [True],
            "norm_num_groups": min(spec.unet_channels[0], 8), "num_head_channels": spec.unet_channels[-1] // 2,
            "with_conditioning": not sr}
    if not sr:
        ucfg["cross_attention_dim"] = spec.text_hidden
    unet = DiffusionModelUNet(**ucfg)
    (folder / UNET_DIR).mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(folder / UNET_DIR / WEIGHTS))
    if spec.conditioning:
        from cfgen.models.tabular import CONDITIONER_WEIGHTS, TabularEmbedding, parse_fields

        emb = TabularEmbedding(parse_fields(spec.conditioning, "spec"), spec.text_hidden)
        save_file({k: v.contiguous() for k, v in emb.state_dict().items()}, str(folder / UNET_DIR / CONDITIONER_WEIGHTS))
        ucfg["conditioning"] = spec.conditioning
    (folder / UNET_DIR / "config.json").write_text(json.dumps(ucfg, indent=2))
    _write_common(folder, spec)
    return folder


def _write_common(folder: Path, spec: LDM3DSpec) -> None:
    from diffusers import DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    from cfgen.models.build import char_clip_tokenizer
    from cfgen.models.registry import DEFAULT_SCHEDULER

    from cfgen.models.synth import toml_lines

    # the folder's scheduler file is what the loader reads first: it must say what cfgen.toml says
    DDIMScheduler(**DEFAULT_SCHEDULER, prediction_type=spec.prediction_type).save_pretrained(folder / "scheduler")
    (folder / "cfgen.toml").write_text(
        f'family = "latent-diffusion-3d"\nresolution = {spec.resolution}\nchannels = {spec.channels}\n'
        f'intensity = "{spec.intensity}"\norientation = "RAS"\n'
        + (f"spacing = [{spec.spacing}, {spec.spacing}, {spec.spacing}]\n" if spec.spacing else "")
        + f'\n[defaults]\nmax_tokens = {spec.max_tokens}\n'
        + (f'window = "{spec.window}"\n' if spec.window else "")
        + ("\n[scheduler]\n" if spec.scheduler != "ddim" or spec.prediction_type != "epsilon" else "")
        + (f'kind = "{spec.scheduler}"\n' if spec.scheduler != "ddim" else "")
        + (f'prediction_type = "{spec.prediction_type}"\n' if spec.prediction_type != "epsilon" else "")
        + "\n".join(toml_lines(spec.synth or {})) + "\n")
    if spec.conditioning or "scale" in (spec.synth or {}):
        return
    tokenizer = char_clip_tokenizer(spec.max_tokens)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()), hidden_size=spec.text_hidden, intermediate_size=spec.text_hidden * 2,
        num_hidden_layers=spec.text_layers, num_attention_heads=spec.text_heads, max_position_embeddings=spec.max_tokens,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(folder / "tokenizer")
