"""Recipe for the shipped demo model `demo-cxr` (latent diffusion trained on chest phantoms).

Steps (every one reproducible from the seeds below):
  1. phantoms: `cfgen phantoms cxr -n N --seed 1000 --size 128 --no-counterfactuals`
     (held-out evaluation uses seed 90000: benchmarks/phantom_edits.py)
  2. captions: PRISM's CheXpert template (`cfgen caption`)
  3. an untrained model folder from DEMO_SPEC (char-level CLIP text encoder, frozen at init)
  4. the VAE trained on the phantoms (L1 + KL), scaling factor set to 1 / latent std (wavelet
     recipes: none, the Haar transform is exact)
  5. the UNet trained with `cfgen finetune` (only the UNet trains), EMA, Min-SNR
  5b. cpu recipe: a second UNet phase from that model on the same captions (`continue`): 4000 steps
     (about 41 min on 2 CPU cores), constant lr 1e-4, plain LDM loss, EMA 0.995 (benchmarks/cycle_vs_plain.py --world cxr measured it
     against the first phase and against cycle training; README, cycle-train)
  6. export to cfgen/models/weights/demo-cxr in fp16 safetensors, sha256 printed for models.toml

    python scripts/train_demo_cxr.py --work runs/demo-cxr                  # the full recipe (GPU advised)
    python scripts/train_demo_cxr.py --work runs/demo-cpu --recipe cpu     # about 2 hours on 2 CPU cores
    python scripts/train_demo_cxr.py --work /tmp/demo --recipe quick       # minutes: checks the recipe runs
    python scripts/train_demo_cxr.py --work runs/demo-wav --recipe wavelet-cpu  # Haar wavelet space, about
                                                                           # an hour on 2 CPU cores
    python scripts/train_demo_cxr.py --work runs/wav-flow --recipe wavelet-flow-cpu  # the same on rectified
                                     # flow, then demo-cxr's 4000-step second phase (15 + about 30 min)

Measured cost of the full recipe goes in the CHANGELOG and the models.toml entry when it is run.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from cfgen.models.build import LDM2DSpec
from cfgen.training.recipes import CFGEN, continue_unet, export, finetune_unet, first_stage, sh

ROOT = Path(__file__).resolve().parents[1]

# character-level CLIP text encoder (frozen at its random init): 96 tokens hold the longest caption
GPU_SPEC = LDM2DSpec(resolution=128, image_channels=1, latent_channels=4, vae_channels=(32, 64, 64),
                     unet_channels=(64, 128, 128), layers_per_block=1, attention_head_dim=8, text_hidden=64,
                     text_layers=2, text_heads=4, max_tokens=96, unet_out_scale=0.1)
# what two CPU cores can train in about an hour
CPU_SPEC = LDM2DSpec(resolution=128, image_channels=1, latent_channels=4, vae_channels=(16, 32, 64),
                     unet_channels=(32, 64, 128), layers_per_block=1, attention_head_dim=8, text_hidden=64,
                     text_layers=2, text_heads=4, max_tokens=96, unet_out_scale=0.1)
# the same UNet on the lossless Haar representation (issue 17 item 2): 2 levels turn 1 x 128^2 into
# 16 x 32^2, the latent size of CPU_SPEC, so a step costs the same; nothing to train but the UNet;
# DDPM's linear betas, as pixel-space (and WDM's wavelet-space) models use
WAVELET_SPEC = LDM2DSpec(resolution=128, image_channels=1, wavelet_levels=2, unet_channels=(32, 64, 128),
                         layers_per_block=1, attention_head_dim=8, text_hidden=64, text_layers=2, text_heads=4,
                         max_tokens=96, unet_out_scale=0.1,
                         scheduler=(("beta_schedule", "linear"), ("beta_start", 0.0001), ("beta_end", 0.02)))
# the same on rectified flow (as demo-ct): its last level is pure noise, so an edit inverts all the
# way (strength 1) and still reconstructs (first phase, 1500 steps: 41-43 dB on held-out phantoms)
WAVELET_FLOW_SPEC = replace(WAVELET_SPEC, scheduler=(), kind="rflow")
RECIPES = {
    "gpu": {"spec": GPU_SPEC, "n": 20000, "vae_steps": 20000, "vae_batch": 32, "vae_lr": 1e-4,
            "unet_steps": 40000, "unet_batch": 64, "lr": 2e-4, "warmup": 500, "ema_decay": 0.999},
    "cpu": {"spec": CPU_SPEC, "n": 3000, "vae_steps": 1000, "vae_batch": 8, "vae_lr": 5e-4,
            "unet_steps": 1500, "unet_batch": 16, "lr": 5e-4, "warmup": 100, "ema_decay": 0.995,
            "continue": {"steps": 4000, "batch": 16, "lr": 1e-4, "ema_decay": 0.995}},
    "wavelet-cpu": {"spec": WAVELET_SPEC, "n": 3000, "vae_steps": 0, "unet_steps": 1500, "unet_batch": 16,
                    "lr": 5e-4, "warmup": 100, "ema_decay": 0.995, "checkpoint_every": 250},
    "wavelet-flow-cpu": {"spec": WAVELET_FLOW_SPEC, "n": 3000, "vae_steps": 0, "unet_steps": 1500, "unet_batch": 16,
                         "lr": 5e-4, "warmup": 100, "ema_decay": 0.995, "checkpoint_every": 250, "snr_gamma": None,
                         "continue": {"steps": 4000, "batch": 16, "lr": 1e-4, "ema_decay": 0.995}},
    "wavelet-quick": {"spec": WAVELET_SPEC, "n": 64, "vae_steps": 0, "unet_steps": 20, "unet_batch": 8,
                      "lr": 2e-4, "warmup": 0, "ema_decay": 0.9, "checkpoint_every": 10},
    "quick": {"spec": CPU_SPEC, "n": 64, "vae_steps": 20, "vae_batch": 8, "vae_lr": 1e-3,
              "unet_steps": 20, "unet_batch": 8, "lr": 2e-4, "warmup": 0, "ema_decay": 0.9},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="gpu",
                    help="gpu: the full recipe; cpu: about 2 hours on 2 cores; wavelet-cpu: the same UNet in "
                         "Haar wavelet space (no VAE); wavelet-flow-cpu: that on rectified flow, with the second "
                         "phase; quick, wavelet-quick: check the recipes run")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--export", action="store_true",
                    help="copy the result into cfgen/models/weights/demo-cxr (wavelet-cpu: demo-cxr-wavelet, "
                         "wavelet-flow-cpu: demo-cxr-wavelet-flow)")
    args = ap.parse_args()
    cfg = RECIPES[args.recipe]
    w = args.work
    cfgen = CFGEN
    t0 = time.time()
    data = w / "phantoms"
    if not (data / "labels.csv").is_file():
        sh(*cfgen, "phantoms", "cxr", "-n", str(cfg["n"]), "--seed", "1000", "--size", "128",
           "--no-counterfactuals", "-o", str(data), "-q")
    if not (data / "train.csv").is_file():
        sh(*cfgen, "caption", str(data / "labels.csv"), "-o", str(data / "train.csv"))
    from cfgen.models.build import build_ldm2d
    base = w / "base"
    if not (base / "unet").is_dir():
        build_ldm2d(base, cfg["spec"], seed=0)
    if cfg["vae_steps"]:  # wavelet recipes have no first stage to train
        first_stage(data / "train.csv", base, w / "vae", "vae",
                    [(cfg["vae_steps"], cfg["vae_batch"], cfg["vae_lr"], None)], args.device)
    unet_out = w / "unet"
    finetune_unet(data / "train.csv", base, unet_out, cfg, args.device,
                  ["Chest X-ray showing Pleural Effusion, Support Devices",
                   "Normal chest X-ray with no significant findings"])
    if "continue" in cfg:
        unet_out = continue_unet(data / "train.csv", unet_out / "model", w / "unet2", cfg["continue"], args.device)
    print(f"recipe finished in {time.time() - t0:.0f} s; model: {unet_out / 'model'}")
    if args.export:  # wavelet recipes make demo-cxr-wavelet, the others demo-cxr
        name = {"wavelet-cpu": "demo-cxr-wavelet", "wavelet-quick": "demo-cxr-wavelet",
                "wavelet-flow-cpu": "demo-cxr-wavelet-flow"}.get(args.recipe, "demo-cxr")
        export(unet_out / "model", ROOT / "cfgen" / "models" / "weights" / name, "scripts/train_demo_cxr.py")


if __name__ == "__main__":
    main()
