"""Recipe for a 3D demo model `demo-brain` (latent diffusion on brain phantoms, MONAI networks).

Steps (every one reproducible from the seeds below):
  1. phantoms: `cfgen phantoms brain -n N --seed 1000 --size 64 --spacing 3 --no-counterfactuals`
     (held-out evaluation uses seed 90000: benchmarks/brain_edits.py)
  2. captions: the brain template (`cfgen caption --template brain`): age, sex, diagnosis, lesion load
  3. an untrained 3D model folder (cfgen.models.ldm3d.build_ldm3d: AutoencoderKL + DiffusionModelUNet
     + a tabular conditioner for age, sex, diagnosis and lesion load that reads the captions back
     (cfgen/models/tabular.py), trained with the UNet)
  4. the autoencoder trained on the phantoms (L1 + KL), scaling factor 1 / latent std
  5. the UNet trained with `cfgen finetune` (only the UNet trains), EMA, Min-SNR
  6. export to cfgen/models/weights/demo-brain in fp16 safetensors, sha256 printed for models.toml

    python scripts/train_demo_brain.py --work runs/demo-brain                 # the full recipe (GPU)
    python scripts/train_demo_brain.py --work /tmp/demo-brain --recipe quick  # minutes: checks the recipe runs
    python scripts/train_demo_brain.py --work runs/demo-brain-wav --recipe wavelet-cpu  # Haar space, no autoencoder
    python scripts/train_demo_brain.py --work runs/brain-wav-flow --recipe wavelet-flow-cpu  # the same on rectified flow, then 2000 more steps
    python scripts/train_demo_brain.py --work runs/brain-bands --recipe wavelet-flow-bands-cpu  # + band scales (cfgen/training/bands.py)

The labels-* recipes train `demo-brain-labels`, a synth3d base with anatomy label channels
(MedSyn IV.C-D): voxel space (no autoencoder: label channels live on the image grid), phantoms
written with `--anatomy ventricles,lesions` (label 1 ventricles, 2 lesions), the same captions and
tabular conditioner; `cfgen finetune` reads the labels column and trains image and labels jointly.

The shipped demo-brain comes from the cpu recipe; the gpu recipe has not been run (no GPU lent yet). The gpu
architecture's cost, measured with random weights (cost does not depend on the values): about
19 MB of fp16 weights, and a 64^3 edit (50 inversion + 50 guided steps, process start included)
in 33.9 s on 2 CPU cores (the issue's bar: under 60 s).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from cfgen.models.ldm3d import LDM3DSpec
from cfgen.models.tabular import BRAIN_FIELDS
from cfgen.training.recipes import CFGEN, band_scales, brain_phantoms, continue_unet, export, finetune_unet, first_stage, sh

ROOT = Path(__file__).resolve().parents[1]

GPU_SPEC = LDM3DSpec(resolution=64, channels=1, latent_channels=4, ae_channels=(32, 64, 64),
                     unet_channels=(32, 64, 128), text_hidden=64, conditioning=BRAIN_FIELDS)
QUICK_SPEC = LDM3DSpec(resolution=32, channels=1, latent_channels=4, ae_channels=(8, 16),
                       unet_channels=(16, 32), text_hidden=32, conditioning=BRAIN_FIELDS)
CPU_SPEC = LDM3DSpec(resolution=64, channels=1, latent_channels=4, ae_channels=(8, 16, 32),
                     unet_channels=(32, 64, 128), text_hidden=64, conditioning=BRAIN_FIELDS)
# the lossless Haar representation (issue 17 item 2): 2 levels turn 1 x 64^3 into 64 x 16^3, the
# latent grid of CPU_SPEC's autoencoder, with nothing to train but the UNet
WAVELET_CPU_SPEC = LDM3DSpec(resolution=64, channels=1, ae_channels=None, wavelet_levels=2,
                             unet_channels=(32, 64, 128), text_hidden=64, conditioning=BRAIN_FIELDS)
# the same on rectified flow (as demo-ct): inversion reaches pure noise and comes back, so edits run
# at strength 1.0 without the DDPM wavelet model's loss (chest: 22 dB at strength 1.0 on DDPM)
# and a first block as wide as its 64 wavelet channels, so that it can carry its input through
WAVELET_FLOW_CPU_SPEC = replace(WAVELET_CPU_SPEC, scheduler="rflow", unet_channels=(64, 64, 128))
WAVELET_QUICK_SPEC = LDM3DSpec(resolution=32, channels=1, ae_channels=None, wavelet_levels=1,
                               unet_channels=(16, 32), text_hidden=32, conditioning=BRAIN_FIELDS)
LABELS = {"labels": ["ventricles", "lesions"]}
LABELS_CPU_SPEC = LDM3DSpec(resolution=32, ae_channels=None, unet_channels=(16, 32, 64), text_hidden=64,
                            conditioning=BRAIN_FIELDS, synth={"spacing": 6.0, **LABELS})
LABELS_GPU_SPEC = LDM3DSpec(resolution=64, ae_channels=None, unet_channels=(32, 64, 128), text_hidden=64,
                            conditioning=BRAIN_FIELDS, synth={"spacing": 3.0, **LABELS, "super_resolution": "demo-brain-sr"})
LABELS_QUICK_SPEC = LDM3DSpec(resolution=16, ae_channels=None, unet_channels=(8, 16), text_hidden=32,
                              conditioning=BRAIN_FIELDS, synth={"spacing": 10.0, **LABELS})
RECIPES = {
    # autoencoder: 600 steps on 32^3 patches (batch 4), then to step 800 on whole volumes (batch 2)
    "cpu": {"spec": CPU_SPEC, "n": 1500, "spacing": 3.0, "ae_phases": [(600, 4, 1e-3, 32), (800, 2, 1e-3, None)],
            "unet_steps": 1200, "unet_batch": 4, "lr": 5e-4, "warmup": 50, "ema_decay": 0.995,
            "checkpoint_every": 100},
    "gpu": {"spec": GPU_SPEC, "n": 4000, "spacing": 3.0, "ae_phases": [(10000, 8, 1e-4, None)],
            "unet_steps": 30000, "unet_batch": 16, "lr": 1e-4, "warmup": 500, "ema_decay": 0.999},
    "quick": {"spec": QUICK_SPEC, "n": 16, "spacing": 6.0, "ae_phases": [(6, 4, 1e-3, 16), (10, 4, 1e-3, None)],
              "unet_steps": 10, "unet_batch": 4, "lr": 2e-4, "warmup": 0, "ema_decay": 0.9},
    "wavelet-cpu": {"spec": WAVELET_CPU_SPEC, "n": 1500, "spacing": 3.0, "ae_phases": [], "unet_steps": 1200,
                    "unet_batch": 4, "lr": 5e-4, "warmup": 50, "ema_decay": 0.995, "checkpoint_every": 100},
    "wavelet-flow-cpu": {"spec": WAVELET_FLOW_CPU_SPEC, "n": 1500, "spacing": 3.0, "ae_phases": [],
                         "unet_steps": 1200, "unet_batch": 4, "lr": 5e-4, "warmup": 50, "ema_decay": 0.995,
                         "checkpoint_every": 100, "snr_gamma": None,
                         "continue": {"steps": 2000, "batch": 4, "lr": 2e-4, "ema_decay": 0.995}},
    "wavelet-quick": {"spec": WAVELET_QUICK_SPEC, "n": 16, "spacing": 6.0, "ae_phases": [], "unet_steps": 6,
                      "unet_batch": 4, "lr": 2e-4, "warmup": 0, "ema_decay": 0.9, "checkpoint_every": 3},
    # voxel space at 32^3 x 6 mm: about 4.9 s per step of batch 4 on one CPU core
    "labels-cpu": {"spec": LABELS_CPU_SPEC, "n": 800, "spacing": 6.0, "ae_phases": [], "unet_steps": 800,
                   "unet_batch": 4, "lr": 1e-3, "warmup": 50, "ema_decay": 0.995, "checkpoint_every": 100},
    "labels-gpu": {"spec": LABELS_GPU_SPEC, "n": 4000, "spacing": 3.0, "ae_phases": [], "unet_steps": 30000,
                   "unet_batch": 16, "lr": 1e-4, "warmup": 500, "ema_decay": 0.999},
    "labels-quick": {"spec": LABELS_QUICK_SPEC, "n": 8, "spacing": 10.0, "ae_phases": [], "unet_steps": 4,
                     "unet_batch": 4, "lr": 2e-4, "warmup": 0, "ema_decay": 0.9},
}

# wavelet-flow-cpu with every detail band scaled to unit std on its training phantoms (cfgen/training/bands.py):
# demo-brain's samples had 1.5-2.5 times the phantoms' std in the finer detail bands (2026-12-06)
# measured 2026-12-06 (3131 s): every edit type worse (ratios 1.7-40, outside 0.013-0.023); not shipped (README)
RECIPES["wavelet-flow-bands-cpu"] = {**RECIPES["wavelet-flow-cpu"], "band_scales": True}
RECIPES["wavelet-quick-bands"] = {**RECIPES["wavelet-quick"], "band_scales": True}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="gpu")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--export", action="store_true",
                    help="copy the result into cfgen/models/weights/demo-brain (labels-*: demo-brain-labels)")
    args = ap.parse_args()
    cfg = RECIPES[args.recipe]
    spec = cfg["spec"]
    w = args.work
    cfgen = CFGEN
    t0 = time.time()
    anatomy = (spec.synth or {}).get("labels", [])
    data = brain_phantoms(w / "phantoms", cfg["n"], 1000, spec.resolution, cfg["spacing"], anatomy)
    if not (data / "train.csv").is_file():
        sh(*cfgen, "caption", str(data / "labels.csv"), "--template", "brain", "-o", str(data / "train.csv"))
    from cfgen.models.ldm3d import build_ldm3d

    base = w / "base"
    if not (base / "unet").is_dir():
        build_ldm3d(base, replace(spec, spacing=cfg["spacing"]), seed=0)
    first_stage(data / "train.csv", base, w / "ae", "autoencoder", cfg["ae_phases"], args.device)
    band_scales(cfg, data / "train.csv", base)
    unet_out = w / "unet"
    finetune_unet(data / "train.csv", base, unet_out, cfg, args.device,
                  ["Brain MRI of a 85 year old female with no cognitive impairment, no lesions",
                   "Brain MRI of a 30 year old male with no cognitive impairment, lesion load 20 mL"])
    if "continue" in cfg:  # a second phase from that model at a lower learning rate (resumes)
        unet_out = continue_unet(data / "train.csv", unet_out / "model", w / "unet2", cfg["continue"], args.device)
    print(f"recipe finished in {time.time() - t0:.0f} s; model: {unet_out / 'model'}")
    if args.export:
        export(unet_out / "model", ROOT / "cfgen" / "models" / "weights" / ("demo-brain-labels" if anatomy else "demo-brain"),
               "scripts/train_demo_brain.py")


if __name__ == "__main__":
    main()
