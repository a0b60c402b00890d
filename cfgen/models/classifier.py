"""Image classifiers/regressors for scoring counterfactuals (family ``classifier``).

A folder holds ``config.json`` and ``model.safetensors`` (plus a ``cfgen.toml`` so that
``--classifier DIR`` works without a registry entry). The network is MONAI's DenseNet
(``spatial_dims`` 2 or 3); its pooled penultimate activations are the features that FID
and MMD use. Each output has a name (e.g. a CheXpert label) and a kind: ``binary``
(sigmoid probability) or ``regression`` (a number in the label's units, e.g. years).

config.json::

  {"labels": ["Pleural Effusion", ...], "kinds": ["binary", ...], "spatial_dims": 2,
   "in_channels": 1, "image_size": 128, "init_features": 16, "growth_rate": 8,
   "block_config": [2, 2, 2, 2], "evaluation": {...held-out figures...}}
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cfgen.errors import ModelError

KINDS = ("binary", "regression")
CONFIG = "config.json"
WEIGHTS = "model.safetensors"


def build_network(cfg: dict[str, Any]):
    from monai.networks.nets import DenseNet

    return DenseNet(spatial_dims=int(cfg["spatial_dims"]), in_channels=int(cfg["in_channels"]),
                    out_channels=len(cfg["labels"]), init_features=int(cfg["init_features"]),
                    growth_rate=int(cfg["growth_rate"]), block_config=tuple(cfg["block_config"]),
                    bn_size=2, dropout_prob=0.0)


def check_config(cfg: Any, where: Path) -> dict[str, Any]:
    keys = ("labels", "kinds", "spatial_dims", "in_channels", "image_size", "init_features", "growth_rate",
            "block_config")
    if not isinstance(cfg, dict) or any(k not in cfg for k in keys):
        raise ModelError(f"{where}: classifier config needs the keys {', '.join(keys)}")
    if len(cfg["labels"]) != len(cfg["kinds"]) or any(k not in KINDS for k in cfg["kinds"]):
        raise ModelError(f"{where}: 'kinds' must give one of {', '.join(KINDS)} for each label")
    return cfg


def label_from_prompts(source: str, prompt: str, labels: list[str]) -> tuple[str | None, float | None]:
    """The one label named in exactly one of the two prompts and its target (1: the target prompt
    names it), or (None, None)."""
    src, dst = source.lower(), prompt.lower()
    cands = [(lab, 1.0 if lab.lower() in dst else 0.0) for lab in labels
             if (lab.lower() in src) != (lab.lower() in dst)]
    return cands[0] if len(cands) == 1 else (None, None)


@dataclass
class Classifier:
    net: Any
    config: dict[str, Any]
    device: str = "cpu"

    @property
    def labels(self) -> list[str]:
        return list(self.config["labels"])

    def kind(self, label: str) -> str:
        return self.config["kinds"][self.labels.index(label)]

    def prepare(self, x):
        """(B, C, *spatial) in [0, 1] -> the network's channels and size (pad to square, resize)."""
        import torch
        import torch.nn.functional as F

        c = int(self.config["in_channels"])
        if x.shape[1] != c:
            x = x.mean(dim=1, keepdim=True).expand(-1, c, *x.shape[2:]) if c != 1 else x.mean(dim=1, keepdim=True)
        side = max(x.shape[2:])
        pads = []
        for s in reversed(x.shape[2:]):
            pads += [(side - s) // 2, side - s - (side - s) // 2]
        x = F.pad(x, pads)
        size = int(self.config["image_size"])
        if side != size:
            mode = "bilinear" if x.ndim == 4 else "trilinear"
            x = F.interpolate(x, size=(size,) * (x.ndim - 2), mode=mode, align_corners=False,
                              antialias=side > size and x.ndim == 4)
        return x.to(self.device, torch.float32)

    def logits_and_features(self, x):
        h = self.net.features(self.prepare(x))
        feats = self.net.class_layers[:-1](h)  # relu, global pool, flatten
        return self.net.class_layers[-1](feats), feats

    def predict(self, x) -> tuple[dict[str, Any], Any]:
        """({label: (B,) outputs (probabilities for binary labels)}, (B, F) features)."""
        import torch

        with torch.no_grad():
            logits, feats = self.logits_and_features(x)
        out = {}
        for i, (name, kind) in enumerate(zip(self.labels, self.config["kinds"])):
            out[name] = torch.sigmoid(logits[:, i]) if kind == "binary" else logits[:, i]
        return out, feats

    def describe(self) -> dict[str, Any]:
        return {"network": "monai DenseNet", "labels": self.labels, "kinds": list(self.config["kinds"]),
                "image_size": self.config["image_size"], "features": "pooled penultimate activations",
                "evaluation": self.config.get("evaluation")}


def save_classifier(folder: Path, net, cfg: dict[str, Any]) -> Path:
    """Write config.json, model.safetensors and cfgen.toml (atomically, as one folder)."""
    from safetensors.torch import save_file

    from cfgen.io.atomic import atomic_dir

    with atomic_dir(Path(folder)) as tmp:
        (tmp / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        (tmp / "cfgen.toml").write_text(
            f'family = "classifier"\nresolution = {int(cfg["image_size"])}\nchannels = {int(cfg["in_channels"])}\n'
            'intensity = "0_1"\n', encoding="utf-8")
    return Path(folder)


def load_classifier_folder(folder: Path, device: str = "cpu") -> Classifier:
    from safetensors.torch import load_file

    try:
        cfg = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder / CONFIG}: cannot read classifier config ({exc})") from None
    cfg = check_config(cfg, folder / CONFIG)
    net = build_network(cfg)
    try:
        state = load_file(str(folder / WEIGHTS), device="cpu")
        net.load_state_dict(state)
    except Exception as exc:  # safetensors/torch raise several types for corrupt or mismatched files
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
        raise ModelError(f"{folder / WEIGHTS}: cannot load classifier weights ({first})") from None
    net.eval().requires_grad_(False).to(device)
    return Classifier(net=net, config=cfg, device=device)


def load_family(entry, folder: Path, device: str, dtype) -> tuple[Any, dict[str, Any]]:
    """FAMILY_LOADERS hook for ``family = "classifier"``."""
    clf = load_classifier_folder(folder, device)
    return entry, {"classifier": clf}
