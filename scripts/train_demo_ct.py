"""Recipe for the chest CT synth3d chain `demo-ct` (base with lung anatomy channels) and
`demo-ct-sr` (its super-resolution stage), MedSyn's design at a CPU budget.

Base (MedSyn IV.C-D: CT plus lobe, airway and vessel channels, HU windowed [-1024, 600] to [-1, 1]):
  1. phantoms: `cfgen phantoms ct -n N --seed 1000 --size 32 --spacing 12 --no-counterfactuals`
     (384 mm field of view; held-out evaluation uses seed 90000: benchmarks/synth3d.py)
  2. captions: the ct template (`cfgen caption --template ct`): age, sex, effusion, emphysema,
     cardiomegaly, nodules
  3. an untrained model (cfgen.models.ldm3d.build_ldm3d): one level of the lossless Haar transform
     over the image and its label channels (so labels stay exact; the UNet runs at 16^3), a tabular conditioner that reads the captions back (cfgen/models/tabular.py
     CT_FIELDS, so no 48-token limit), [synth] labels = the nine names of the phantoms' label map
     (cfgen.phantoms.ct.LABELS: five lobes, airway, vessel, heart, effusion), [defaults] window
     -1024,600 so training and synthesis are in HU
  4. `cfgen finetune` (image and label channels jointly), EMA; rectified flow (zero terminal SNR)
Super-resolution (MedSyn IV.B: x0 prediction, no text, residual over trilinear upsampling):
  5. phantoms at the output grid: seed 2000, 64^3 x 6 mm
  6. `cfgen finetune` on 32^3 windows (the low-res input is the volume average-pooled by 2)
Then `--export` copies both into cfgen/models/weights/ (fp16) and prints the sha256 lines for
models.toml. Every step resumes: re-run with the same --work after a kill.

    python scripts/train_demo_ct.py --work runs/demo-ct --recipe cpu-image-bands --export  # the shipped chain
    python scripts/train_demo_ct.py --work runs/demo-ct --recipe cpu --export   # the previous base (no band scales)
    python scripts/train_demo_ct.py --work /tmp/demo-ct --recipe quick     # minutes: checks the recipe runs
    python scripts/train_demo_ct.py --work /tmp/ct-q --recipe quick-labels --stage base  # 25 s: the phases' options
    python scripts/train_demo_ct.py --work /tmp/ct-qb --recipe quick-bands --stage base  # the band scales
    python scripts/train_demo_ct.py --work runs/demo-ct --recipe cpu-continue --stage base  # + 2000 steps at lr 2e-4
    python scripts/train_demo_ct.py --work runs/demo-ct --recipe cpu-continue --stage base --first-phase demo-ct
    python scripts/train_demo_ct.py --work runs/ct-bands --recipe cpu-bands --stage base  # detail bands at unit std
    python scripts/train_demo_ct.py --work runs/ct-ibands --recipe cpu-image-bands --stage base  # the image's only
    python scripts/train_demo_ct.py --work runs/ct-ibands --recipe cpu-image-bands-continue --stage base \
        --first-phase runs/ct-ibands/unet/model   # + 2000 steps at lr 2e-4 from the shipped base
    python scripts/train_demo_ct.py --work runs/ct-knee --recipe cpu-lung-window --stage base  # knee window
    python scripts/train_demo_ct.py --work runs/ct-knee --recipe cpu-lung-window-labels --stage base  # + labels given
    python scripts/train_demo_ct.py --work runs/ct-vw --recipe cpu-lung-window-vessels --stage base \
        --first-phase runs/ct-knee/unet2/model   # + vessels and airways weighted 50 times in the loss
    python scripts/train_demo_ct.py --work runs/ct-vb --recipe cpu-lung-window-vessel-bit --stage base \
        --first-phase demo-ct   # vessel on a bit of its own (recode), then the same weighted phase
    python scripts/train_demo_ct.py --work runs/ct-vbg --recipe cpu-lung-window-vessel-bit-given --stage base \
        --first-phase demo-ct   # ... with the weights only where the labels are given clean
    python scripts/train_demo_ct.py --work runs/ct-vg30 --recipe cpu-lung-window-vessel-bit-given-30 --stage base \
        --first-phase runs/ct-knee/unet2/model   # ... labels given in 30%: the shipped demo-ct (2026-12-07)
    python scripts/train_demo_ct.py --work runs/ct-vgm --recipe cpu-lung-window-vessel-bit-given-30-more --stage base \
        --first-phase runs/ct-vg30/unet2/model   # + 2400 more steps of that phase

Status (2026-12-07, late night): demo-ct is the cpu-lung-window-vessel-bit-given-50-more base (1200 steps with
the labels given in half the volumes from the -30-more model, 1218 s alone; exported from
runs/ct-vgh/unet2/model): held-out vessels 0.82, airways 0.87, effusion d 6.91 (488 mL), %LAA-950 d 2.29,
CTR d 4.80 (README). Before it (2026-12-07, night) the cpu-lung-window-vessel-bit-given-30-more base (the base
below + 2400 more steps of its phase, seed 1, 2080 s alone; exported from runs/ct-vgm/unet2/model):
held-out airways 0.84, vessels 0.76, effusion d 5.48 ("large" 461 mL), %LAA-950 d 1.97, CTR d 5.18
(README). Before it, demo-ct was the cpu-lung-window-vessel-bit-given-30 base (the
cpu-lung-window-labels base below, recoded for the vessel bit, + 1200 steps with labels given in 30% and
vessel / airway weighted 50 times where given, 1111 s alone; exported from runs/ct-vg30/unet2/model; synth3d
--mask-from then uses [synth] label_guidance 5 in the vessel and airway cells: held-out vessels 0.76,
airways 0.78, effusion d 5.15, %LAA-950 d 1.71, CTR d 5.06; README), demo-ct-sr the cpu recipe's stage
(models.toml; figures in the README, from benchmarks/synth3d.py and benchmarks/ct_edits.py). Run 1 (nine
one-hot labels, 80 bands, UNet (32, 64, 128), 3000 steps) sampled noise: the first block was narrower
than its input. Run 2 (analog bits, 40 bands, (48, 64, 128), 2500 steps, 4807 s) denoised training
phantoms but from pure noise still gave noise: its x0 prediction at t = 981 missed the low band's mean
(-0.56 vs the data's -1.44), the non-zero terminal SNR of the SD schedule with data far from zero mean
(CT is mostly air). Run 3 (this recipe: the same with rectified flow, whose last level is pure noise, no
Min-SNR; 4633 s beside other work) samples CT: body, dark lungs, heart, coherent labels, an effusion
where the prompt asks for one (shipped 2026-12-05 to -06).
cpu-continue (2026-12-06, from the cpu base, then shipped, with --first-phase demo-ct, 2475 s): lower
loss, better calibrated hearts and effusion edits, worse cardiomegaly / emphysema / nodule edits; not
shipped (README).
cpu-bands (2026-12-06, 3665 s alone): samples' detail bands match the phantoms', but effusion adherence
lost (d 0.03) and %LAA-950 d 0.66; not shipped (README).
cpu-image-bands (2026-12-06, 3114 s alone): only the image's detail bands scaled; effusion d 10.5, %LAA-950
d 1.65, CTR d 8.0; edits at refine_change 0.4 within the CIs of the cpu base's on effusion, better on
cardiomegaly, emphysema and nodules left alone (ratio 1.0); shipped as demo-ct (README).
cpu-image-bands-continue (2026-12-06, from the shipped base, 2759 s alone): smoother lungs but not smooth
enough (6 volumes per prompt, seeds 1000-1005, 25 steps, guidance 2: lung 10-90% HU spread 528-600
against the shipped base's 622-744 and the phantoms' 291-340; %LAA-950 of "no emphysema" 15.6 against
19.6 and 0, of "severe" 17.2); not shipped.
cpu-lung-window (2026-12-07, 3506 s): the window -1024,-700,600 (the lungs get half the model's range);
at guidance 2 (benchmarks/synth3d.py --n 32 --steps 25 --guidance 2) %LAA-950 6.3 / 5.1 (d 0.70; shipped
18.8 / 17.7, phantoms 15.8 / 0.0), lung HU of "no emphysema" -794, spread 398-644 (shipped -733, 615-731;
phantoms -819, 291-340), effusion d 6.7, CTR 0.69 / 0.42; edits at refine_change 0.4 worse than demo-ct's
(the threshold is in model-range units, which the knee changes); not shipped (README).
cpu-lung-window-labels (2026-12-07, from cpu-lung-window's base with --first-phase
runs/ct-knee/unet/model, 2150 s alone): the second phase with --label-condition 0.3; %LAA-950 d 1.96,
effusion d 6.95, CTR d 4.89 (held-out, guidance 2), --mask-from vessels still 0.20; shipped as demo-ct
(README; exported with cfgen.training.recipes.export from runs/ct-knee/unet2/model, what --export does).
cpu-lung-window-vessels (2026-12-07, from the shipped demo-ct's weights, 470 + 826 s): --mask-from vessels
0.45 held-out but free generation 0.44 (it draws vessel-bright voxels where vessels usually run, not where
the given map says), effusion "large" 373 mL (phantoms 628), %LAA-950 d 3.43, edits worse (emphysema 1.62);
not shipped (README).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from cfgen.models.ldm3d import LDM3DSpec
from cfgen.models.tabular import CT_FIELDS
from cfgen.phantoms import ct
from cfgen.training.recipes import CFGEN, band_scales, continue_unet, export, finetune_sr, finetune_unet, sh, world_phantoms

ROOT = Path(__file__).resolve().parents[1]
WINDOW = "-1024,600"
LABELS = list(ct.LABELS)  # the phantoms' label ids 1..9 in order: five lobes, airway, vessel, heart, effusion
SR = {"scale": 2, "patch": 32, "overlap": 0.25, "residual": True}


def base_spec(resolution: int, channels: tuple[int, ...], spacing: float) -> LDM3DSpec:
    """One Haar level over image and label channels, the nine labels as analog bits (4 channels):
    the UNet works on (1 + 4) x 8 = 40 bands at half the side, losslessly (demo-brain-labels, on the
    full voxel grid, was undertrained after 50 min; nine one-hot channels made 80 bands, wider than
    a UNet that trains in time on two cores). Rectified flow: its last level is pure noise, so the
    sampler's start is what training saw (the SD schedule's terminal SNR left the mostly-air CT's
    mean in x_T, and run 2 sampled noise)."""
    return LDM3DSpec(resolution=resolution, ae_channels=None, wavelet_levels=1, unet_channels=channels, text_hidden=64,
                     conditioning=CT_FIELDS, window=WINDOW, scheduler="rflow",
                     synth={"spacing": spacing, "labels": LABELS, "label_encoding": "bits"})


def sr_spec(resolution: int, channels: tuple[int, ...], patch: int) -> LDM3DSpec:
    return LDM3DSpec(resolution=resolution, ae_channels=None, unet_channels=channels, prediction_type="sample",
                     window=WINDOW, synth={**SR, "patch": patch})


RECIPES = {
    "cpu": {"base": {"spec": base_spec(32, (48, 64, 128), 12.0), "n": 2000, "spacing": 12.0, "unet_steps": 2500,
                     "unet_batch": 8, "lr": 1e-3, "warmup": 100, "ema_decay": 0.995, "checkpoint_every": 250,
                     "snr_gamma": None},
            "sr": {"spec": sr_spec(64, (16, 32, 64), 32), "n": 120, "spacing": 6.0, "steps": 200, "batch": 4,
                   "lr": 1e-3, "warmup": 20, "ema_decay": 0.995}},
    "quick": {"base": {"spec": base_spec(32, (8, 16), 12.0), "n": 8, "spacing": 12.0, "unet_steps": 4,
                       "unet_batch": 4, "lr": 2e-4, "warmup": 0, "ema_decay": 0.9, "checkpoint_every": 2,
                       "snr_gamma": None},
              "sr": {"spec": sr_spec(64, (8, 16), 16), "n": 4, "spacing": 6.0, "steps": 4, "batch": 2,
                     "lr": 1e-3, "warmup": 0, "ema_decay": 0.9}},
}
# the cpu base with every detail band scaled to unit std on the training phantoms (cfgen/training/bands.py)
RECIPES["cpu-bands"] = {"base": {**RECIPES["cpu"]["base"], "band_scales": True}, "sr": RECIPES["cpu"]["sr"]}
RECIPES["quick-bands"] = {"base": {**RECIPES["quick"]["base"], "band_scales": True}, "sr": RECIPES["quick"]["sr"]}
# the same with the image's detail bands scaled and the label bits' left as they are
RECIPES["cpu-image-bands"] = {"base": {**RECIPES["cpu"]["base"], "band_scales": "image"}, "sr": RECIPES["cpu"]["sr"]}
# the cpu base, then a second phase at a lower learning rate (as demo-brain's and demo-cxr's)
RECIPES["cpu-continue"] = {"base": {**RECIPES["cpu"]["base"],
                                    "continue": {"steps": 2000, "batch": 8, "lr": 2e-4, "ema_decay": 0.995}},
                           "sr": RECIPES["cpu"]["sr"]}
# the shipped base (image bands), then the same second phase: does it smooth the generated lungs?
RECIPES["cpu-image-bands-continue"] = {"base": {**RECIPES["cpu-image-bands"]["base"],
                                                "continue": RECIPES["cpu-continue"]["base"]["continue"]},
                                       "sr": RECIPES["cpu"]["sr"]}
# the image-bands base with a knee in its window: -1024..-700 HU (lungs, emphysema) to half the model's range,
# so the lungs' HU cost 2.5 times less model error (cfgen.io.intensity.IntensityMap)
LUNG_WINDOW = "-1024,-700,600"
RECIPES["cpu-lung-window"] = {"base": {**RECIPES["cpu-image-bands"]["base"],
                                       "spec": replace(RECIPES["cpu"]["base"]["spec"], window=LUNG_WINDOW)},
                              "sr": RECIPES["cpu"]["sr"]}
# its second phase: 2000 steps at lr 2e-4 with the anatomy labels given clean in 30% of the volumes
# (`cfgen finetune --label-condition 0.3`), so that --mask-from gives them clean and the image follows them
RECIPES["cpu-lung-window-labels"] = {"base": {**RECIPES["cpu-lung-window"]["base"],
                                              "continue": {**RECIPES["cpu-continue"]["base"]["continue"],
                                                           "label_condition": 0.3}},
                                     "sr": RECIPES["cpu"]["sr"]}
# a third phase from cpu-lung-window-labels' model (--first-phase WORK/unet2/model of that recipe's --work):
# 1200 steps with the labels given in half the volumes and the loss weighted 50 times on the latent positions
# of vessels and airways (0.19% and 0.09% of the 16^3 latent grid: ~10 vessel voxels per 32^3 volume), so
# that --mask-from renders the given vessels
RECIPES["cpu-lung-window-vessels"] = {"base": {**RECIPES["cpu-lung-window"]["base"],
                                               "continue": {**RECIPES["cpu-continue"]["base"]["continue"],
                                                            "steps": 1200, "label_condition": 0.5,
                                                            "label_weights": {"vessel": 50.0, "airway": 50.0}}},
                                      "sr": RECIPES["cpu"]["sr"]}
# the same third phase after the shipped weights were recoded (cfgen/training/recode.py) so that the vessel
# has a bit of its own (code 16: a fifth label channel set by vessels only; 48 bands at 16^3): in analog
# bits 1..9 a given vessel was a lobe-dependent pattern on three bits that an airway shares two of
RECIPES["cpu-lung-window-vessel-bit"] = {"base": {**RECIPES["cpu-lung-window-vessels"]["base"],
                                                  "label_codes": [1, 2, 3, 4, 5, 6, 16, 8, 9]},
                                         "sr": RECIPES["cpu"]["sr"]}
# the same with the weights only in the volumes whose labels are given clean (--label-weight-given)
RECIPES["cpu-lung-window-vessel-bit-given"] = {
    "base": {**RECIPES["cpu-lung-window-vessel-bit"]["base"],
             "continue": {**RECIPES["cpu-lung-window-vessel-bit"]["base"]["continue"], "label_weight_given": True}},
    "sr": RECIPES["cpu"]["sr"]}
# ... with the labels given in 30% of the volumes, as the phase before (a joint loss over 70% of the batch
# kept "large effusion" nearer the phantoms' size than 50% did: 444 against 317 mL after 800 steps)
RECIPES["cpu-lung-window-vessel-bit-given-30"] = {
    "base": {**RECIPES["cpu-lung-window-vessel-bit-given"]["base"],
             "continue": {**RECIPES["cpu-lung-window-vessel-bit-given"]["base"]["continue"], "label_condition": 0.3}},
    "sr": RECIPES["cpu"]["sr"]}
# ... and 2400 more steps of that phase from its model (--first-phase a recoded model: no label_codes here),
# another data order (seed 1): given vessels drawn one voxel off inside their 2 x 2 x 2 cell were most of
# the misses left (tuning phantoms, 61% of them), which label guidance's weight does not move (0.79 at 5,
# 0.80 at 8 and 12; weighting the image's detail bands 10 instead of 5: 0.79)
RECIPES["cpu-lung-window-vessel-bit-given-30-more"] = {
    "base": {**{k: v for k, v in RECIPES["cpu-lung-window-vessel-bit-given-30"]["base"].items() if k != "label_codes"},
             "continue": {**RECIPES["cpu-lung-window-vessel-bit-given-30"]["base"]["continue"], "seed": 1, "steps": 2400}},
    "sr": RECIPES["cpu"]["sr"]}
# a trial from that model (--first-phase runs/ct-vgm/unet2/model): the same phase with the labels given in
# half the volumes (0.90 on 16 tuning phantoms from the base before, at a smaller "large effusion")
RECIPES["cpu-lung-window-vessel-bit-given-50-more"] = {
    "base": {**RECIPES["cpu-lung-window-vessel-bit-given-30-more"]["base"],
             "continue": {**RECIPES["cpu-lung-window-vessel-bit-given-30-more"]["base"]["continue"],
                          "seed": 2, "steps": 1200, "label_condition": 0.5}},
    "sr": RECIPES["cpu"]["sr"]}
RECIPES["quick-labels"] = {"base": {**RECIPES["quick"]["base"],
                                    "continue": {"steps": 4, "batch": 2, "lr": 2e-4, "ema_decay": 0.9,
                                                 "label_condition": 0.5, "label_weights": {"vessel": 5.0}}},
                           "sr": RECIPES["quick"]["sr"]}
PROMPTS = ["CT of a 70 year old male with a large pleural effusion, no emphysema, normal heart size, no nodules",
           "CT of a 60 year old female with no pleural effusion, severe emphysema, cardiomegaly, no nodules"]


def train_base(w: Path, cfg: dict, device: str, first: str | None = None) -> Path:
    """``first``: a model that stands for the first phase (e.g. the shipped demo-ct, when the first
    phase's own output is gone); only the recipe's `continue` phase then runs from it."""
    spec = cfg["spec"]
    data = world_phantoms("ct", w / "phantoms", cfg["n"], 1000, spec.resolution, cfg["spacing"])
    if not (data / "train.csv").is_file():
        sh(*CFGEN, "caption", str(data / "labels.csv"), "--template", "ct", "-o", str(data / "train.csv"))
    from cfgen.models.ldm3d import build_ldm3d

    if first is None:
        if not (w / "base" / "unet").is_dir():
            build_ldm3d(w / "base", replace(spec, spacing=cfg["spacing"]), seed=0)
        band_scales(cfg, data / "train.csv", w / "base")
        finetune_unet(data / "train.csv", w / "base", w / "unet", cfg, device, PROMPTS)
        first = str(w / "unet" / "model")
    if "label_codes" in cfg:  # a new label code table, warm-started from the first phase's weights
        from cfgen.training.recode import recode

        if not (w / "recoded" / "model").is_dir():
            recode(first, w / "recoded", cfg["label_codes"])
        first = str(w / "recoded" / "model")
    if "continue" not in cfg:
        return Path(first)
    return continue_unet(data / "train.csv", Path(first), w / "unet2", cfg["continue"], device) / "model"


def train_sr(w: Path, cfg: dict, device: str) -> Path:
    spec = cfg["spec"]
    data = world_phantoms("ct", w / "sr-phantoms", cfg["n"], 2000, spec.resolution, cfg["spacing"])
    from cfgen.models.ldm3d import build_ldm3d

    if not (w / "sr-base" / "unet").is_dir():
        build_ldm3d(w / "sr-base", replace(spec, spacing=cfg["spacing"]), seed=0)
    finetune_sr(data / "labels.csv", w / "sr-base", w / "sr", cfg, device)
    return w / "sr" / "model"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="cpu")
    ap.add_argument("--stage", choices=["base", "sr", "both"], default="both")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--export", action="store_true", help="copy the results into cfgen/models/weights/demo-ct(-sr)")
    ap.add_argument("--first-phase", metavar="MODEL",
                    help="cpu-continue: start the second phase from MODEL (a folder or models.toml entry, e.g. "
                         "demo-ct) instead of training the first phase")
    args = ap.parse_args()
    cfg = RECIPES[args.recipe]
    if args.first_phase and "continue" not in cfg["base"]:
        ap.error(f"--first-phase: recipe {args.recipe} has no second phase (cpu-continue has)")
    weights = ROOT / "cfgen" / "models" / "weights"
    for stage, name in (("base", "demo-ct"), ("sr", "demo-ct-sr")):
        if args.stage in (stage, "both"):
            t0 = time.time()
            model = (train_base(args.work, cfg[stage], args.device, args.first_phase) if stage == "base"
                     else train_sr(args.work, cfg[stage], args.device))
            print(f"{stage} stage finished in {time.time() - t0:.0f} s; model: {model}", flush=True)
            if args.export:
                export(model, weights / name, "scripts/train_demo_ct.py")


if __name__ == "__main__":
    main()
