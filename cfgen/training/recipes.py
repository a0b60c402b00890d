"""Steps the demo-model recipes share (scripts/train_demo_*.py): each runs cfgen's own commands
or library functions and resumes when its output is already there, so a recipe killed mid-way
continues from its last checkpoint when re-run with the same --work folder."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

CFGEN = (sys.executable, "-m", "cfgen.cli.main")


def sh(*args: str) -> None:
    """Run a command (echoed, as a recipe's log), failing the recipe when it fails."""
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def band_scales(cfg: dict, train_csv: Path, base: Path) -> None:
    """A recipe with ``band_scales``: the untrained wavelet base's bands scaled to unit std on its
    training data (cfgen/training/bands.py), once (a re-run finds them in the config);
    ``band_scales = "image"``: the image channels' detail bands only, not the label channels'."""
    from cfgen.training.bands import fit_band_scales, wavelet_config

    if cfg.get("band_scales") and "band_scales" not in json.loads(wavelet_config(base).read_text()):
        print("band scales:", fit_band_scales(train_csv, base, image_only=cfg["band_scales"] == "image"), flush=True)


def finetune_unet(train_csv: Path, base: Path, unet_out: Path, cfg: dict, device: str, prompts: list[str]) -> None:
    """`cfgen finetune` with a recipe's UNet settings (resumes when checkpoints exist)."""
    sh(*CFGEN, "finetune", str(train_csv), "-m", str(base), "-o", str(unet_out),
       "--learning-rate", str(cfg["lr"]), "--lr-scheduler", "cosine", "--lr-warmup-steps", str(cfg["warmup"]),
       "--batch-size", str(cfg["unet_batch"]), "--max-steps", str(cfg["unet_steps"]), "--ema",
       "--ema-decay", str(cfg["ema_decay"]),
       # Min-SNR weighting (default 5) is for DDPM models: a recipe for a rectified-flow model sets None
       *(["--snr-gamma", str(cfg.get("snr_gamma", 5))] if cfg.get("snr_gamma", 5) is not None else []),
       "--checkpoint-every", str(cfg.get("checkpoint_every", 2000)), "--device", device,
       "-q", *[a for pr in prompts for a in ("--validation-prompt", pr)],
       *(["--resume"] if (unet_out / "checkpoints").is_dir() else []))


def finetune_sr(train_csv: Path, base: Path, out: Path, cfg: dict, device: str) -> None:
    """`cfgen finetune` of a super-resolution stage (no text, no Min-SNR; resumes when checkpoints exist)."""
    sh(*CFGEN, "finetune", str(train_csv), "-m", str(base), "-o", str(out),
       "--learning-rate", str(cfg["lr"]), "--lr-scheduler", "cosine", "--lr-warmup-steps", str(cfg["warmup"]),
       "--batch-size", str(cfg["batch"]), "--max-steps", str(cfg["steps"]), "--ema", "--ema-decay",
       str(cfg["ema_decay"]), "--checkpoint-every", "100", "--device", device, "-q",
       *(["--resume"] if (out / "checkpoints").is_dir() else []))


def _log_every_50(component: str):
    return lambda s, loss: print(f"{component} step {s} loss {loss:.4f}", flush=True) if s % 50 == 0 else None


def first_stage(train_csv: Path, base: Path, out: Path, component: str, phases: Sequence[tuple], device: str) -> None:
    """The autoencoder (``component``: vae or autoencoder) trained phase by phase, (to_step, batch,
    lr, crop) each, resuming from checkpoints; then put into the base model folder."""
    from cfgen.models.files import is_wavelet_config
    from cfgen.training.vae import train_vae

    if is_wavelet_config(base / component / "config.json"):
        return  # the Haar transform: nothing to train
    for to_step, batch, lr, crop in phases:
        log = out / "vae_training.json"
        done = json.loads(log.read_text())["steps"] if log.is_file() and (out / component).is_dir() else 0
        if done >= to_step:
            continue
        summary = train_vae(train_csv, base, out, steps=to_step, batch_size=batch, lr=lr, seed=0, device=device,
                            checkpoint_every=250 if component == "vae" else 100,
                            resume=(out / "checkpoints").is_dir(), crop=crop, on_step=_log_every_50(component))
        print(json.dumps({k: v for k, v in summary.items() if k != "losses"}), flush=True)
    if phases:
        shutil.rmtree(base / component, ignore_errors=True)
        shutil.copytree(out / component, base / component)


def world_phantoms(world: str, data: Path, n: int, seed: int, size: int, spacing: float, *extra: str) -> Path:
    """`cfgen phantoms WORLD` (brain or ct) into ``data`` without counterfactuals (kept when already there)."""
    if not (data / "labels.csv").is_file():
        sh(*CFGEN, "phantoms", world, "-n", str(n), "--seed", str(seed), "--size", str(size),
           "--spacing", str(spacing), "--no-counterfactuals", "-o", str(data), "-q", *extra)
    return data


def brain_phantoms(data: Path, n: int, seed: int, size: int, spacing: float, anatomy: Sequence[str] = ()) -> Path:
    """`cfgen phantoms brain` into ``data`` (kept when already there)."""
    return world_phantoms("brain", data, n, seed, size, spacing, *(["--anatomy", ",".join(anatomy)] if anatomy else []))


def export(model: Path, target: Path, recipe_script: str) -> None:
    """The recipes' --export: the shipped copy and the sha256 lines for models.toml, printed."""
    from cfgen.models.files import weight_files
    from cfgen.training.export import export_shipped

    digests = export_shipped(model, target, recipe_script)
    total = sum(f.stat().st_size for f in weight_files(target))
    print(f"exported {total / 1e6:.1f} MB of weights to {target}")
    for rel, digest in digests.items():
        print(f'"{rel}" = "{digest}"')


def continue_unet(train_csv: Path, start: Path, out: Path, c: dict, device: str) -> Path:
    """The second UNet phase (resumes from its checkpoints); returns its output folder."""
    sh(*CFGEN, "finetune", str(train_csv), "-m", str(start), "-o", str(out), "--learning-rate", str(c["lr"]),
       "--batch-size", str(c["batch"]), "--max-steps", str(c["steps"]), "--ema", "--ema-decay", str(c["ema_decay"]),
       "--seed", str(c.get("seed", 0)), "--checkpoint-every", "50", "--device", device, "-q",
       *(["--label-condition", str(c["label_condition"])] if c.get("label_condition") else []),
       *[a for name, w in c.get("label_weights", {}).items() for a in ("--label-weight", f"{name}={w}")],
       *(["--label-weight-given"] if c.get("label_weight_given") else []),
       *(["--resume"] if (out / "checkpoints").is_dir() else []))
    return out
