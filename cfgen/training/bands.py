"""Per-band scales of a Haar-wavelet model, measured on its training data before training.

A wavelet model's detail bands are small next to the unit noise of diffusion (12 mm CT phantoms:
std 0.04-0.3 against the low band's 1.6), so a network that cannot predict the noise of those
bands to a few percent leaves it in its samples: demo-ct's generated lungs had twice the
phantoms' HU spread and detail bands at 1.5-3.5 times their std, at any guidance. The remedy is
the VAE's scaling factor taken band by band (cfgen.models.wavelet.unit_band_scales): the scales
go into the model's transform config (``band_scales``), so training, sampling, inversion and
editing all see unit-std bands and the pixels stay exact.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from cfgen.errors import UsageError

WAVELET_DIRS = ("autoencoder", "vae")  # the 3D family's, the 2D family's


def wavelet_config(folder: Path) -> Path:
    """The Haar transform's config file of a model folder (UsageError when it has none)."""
    from cfgen.models.files import is_wavelet_config

    for sub in WAVELET_DIRS:
        if is_wavelet_config(Path(folder) / sub / "config.json"):
            return Path(folder) / sub / "config.json"
    raise UsageError(f"{folder}: not a Haar-wavelet model (no autoencoder/ or vae/ config naming HaarWavelet)")


def training_batch(data_csv: Path, model, n: int, seed: int) -> torch.Tensor:
    """Up to ``n`` training items (image and label channels, as `cfgen finetune` reads them)."""
    from cfgen.editing.grid import ModelGrid
    from cfgen.models.synth import label_encoding, label_names
    from cfgen.training.data import ImageCaptionDataset, read_training_csv

    e = model.entry
    names = label_names(e)
    samples, _ = read_training_csv(Path(data_csv), need_captions=False, label_column="labels" if names else None)
    samples = random.Random(seed).sample(samples, min(n, len(samples)))
    data = ImageCaptionDataset(samples, ModelGrid.of(e), e.channels, e.value_range, str(e.defaults.get("window", "auto")),
                               labels=len(names), label_encoding=label_encoding(e.synth))
    items = [item["pixels"] for item in (data[i] for i in range(len(data))) if "pixels" in item]
    if not items:
        raise UsageError(f"{data_csv}: no readable training item to measure the wavelet bands on")
    return torch.stack(items).float()


def fit_band_scales(data_csv: Path, folder: Path, n: int = 256, seed: int = 0, image_only: bool = False) -> list[float]:
    """Measure unit-std band scales on ``n`` items of ``data_csv`` and write them into ``folder``'s
    transform config (an untrained model: a trained UNet would see other inputs afterwards).
    ``image_only``: scale the image channels' detail bands and leave those of generated label
    channels (analog bits, whose detail bands are their sparse boundaries) as they are."""
    from cfgen.models.loader import load_model
    from cfgen.models.wavelet import haar_forward, unit_band_scales

    config_file = wavelet_config(folder)
    config = json.loads(config_file.read_text(encoding="utf-8"))
    model = load_model(str(folder), device="cpu")
    y = haar_forward(training_batch(data_csv, model, n, seed), int(config.get("levels", 1)))
    scales = unit_band_scales(y, int(config.get("in_channels", 1)), scaled=model.entry.channels if image_only else None)
    tmp = config_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**config, "band_scales": scales}, indent=2) + "\n", encoding="utf-8")
    tmp.replace(config_file)
    return scales
