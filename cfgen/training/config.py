"""Fine-tuning options (light: no torch), with PRISM's recipe as the defaults where it gives one."""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field

from cfgen.errors import UsageError


def derived_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ints/strings: the same parts, the same seed, on any machine."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & ((1 << 63) - 1)


def parse_label_weights(items: list[str] | None) -> dict[str, float]:
    """``--label-weight NAME=W`` (repeatable) as {name: weight}; a usage error names a malformed item."""
    return _named_weights(items, "--label-weight", "NAME=WEIGHT, e.g. vessel=20")


def parse_region_weights(items: list[str] | None) -> dict[str, float]:
    """``--region-weight COLUMN=W`` (repeatable) as {column: weight}."""
    return _named_weights(items, "--region-weight", "COLUMN=WEIGHT, e.g. lesion_mask=20")


def _named_weights(items: list[str] | None, option: str, form: str) -> dict[str, float]:
    weights: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = None
        if not sep or not name.strip() or weight is None:
            raise UsageError(f"{option} {item}: write it as {form}")
        if name.strip() in weights:
            raise UsageError(f"{option} {item}: {name.strip()} is given twice")
        weights[name.strip()] = weight
    return weights


LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
PRECISIONS = ("no", "bf16", "fp16")
TRACKERS = ("tensorboard",)


@dataclass
class FinetuneConfig:
    # PRISM (REFERENCE.md): AdamW lr 1e-5, betas (0.9, 0.999), weight decay 1e-2, eps 1e-8, clip 1.0
    learning_rate: float = 1e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    batch_size: int = 8
    gradient_accumulation: int = 1
    mixed_precision: str | None = None  # None: accelerate's (accelerate launch --mixed_precision, its config), else "no"
    gradient_checkpointing: bool = False
    ema: bool = False
    ema_decay: float = 0.9999
    snr_gamma: float | None = None  # Min-SNR weighting (Hang et al.); 5.0 is the usual value
    noise_offset: float = 0.0
    caption_dropout: float = 0.1  # empty captions, so classifier-free guidance has an unconditional model
    # share of training volumes whose anatomy label channels are given clean (not noised, not in the
    # loss): the model learns to generate the image around given labels (`synth3d --mask-from`)
    label_condition: float = 0.0
    # loss weight of the latent positions that hold a voxel of a named anatomy label (the largest weight
    # of the labels there, else 1): thin structures (vessels: ~0.1% of a 12 mm chest volume) get a say
    label_weights: dict[str, float] = field(default_factory=dict)
    # label_weights only in the volumes whose labels are given clean (label_condition): they teach the
    # image to follow given labels without pushing free generation towards the weighted structures
    label_weight_given: bool = False
    # loss weight inside the region of a CSV column's mask file (nonzero = region; any model, 2D or 3D):
    # small findings (brain lesions: a few hundred voxels of 262144) get a say; {column: weight}
    region_weights: dict[str, float] = field(default_factory=dict)
    max_steps: int | None = None
    epochs: int = 1
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    validation_prompts: list[str] = field(default_factory=list)
    validate_every: int = 0  # 0: only at the end
    validation_steps: int = 20
    validation_guidance: float = 3.0
    seed: int = 0
    window: str | None = None  # None: the model's [defaults] window (a CT model's HU window), else auto
    report_to: str | None = None  # "tensorboard": loss, learning rate and validation images under OUT/logs

    def check(self) -> None:
        if self.report_to is not None and self.report_to not in TRACKERS:
            raise UsageError(f"--report-to {self.report_to}: use one of {', '.join(TRACKERS)} (or leave it out)")
        if self.learning_rate <= 0:
            raise UsageError(f"--learning-rate {self.learning_rate}: must be positive")
        if self.lr_scheduler not in LR_SCHEDULES:
            raise UsageError(f"--lr-scheduler {self.lr_scheduler}: use one of {', '.join(LR_SCHEDULES)}")
        if self.mixed_precision is not None and self.mixed_precision not in PRECISIONS:
            raise UsageError(f"--mixed-precision {self.mixed_precision}: use one of {', '.join(PRECISIONS)}")
        for name in ("batch_size", "gradient_accumulation", "epochs", "checkpoint_every", "validation_steps"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise UsageError(f"--max-steps {self.max_steps}: must be at least 1")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise UsageError(f"--caption-dropout {self.caption_dropout}: must be between 0 and 1")
        if not 0.0 <= self.label_condition <= 1.0:
            raise UsageError(f"--label-condition {self.label_condition}: must be between 0 and 1")
        for option, weights in (("--label-weight", self.label_weights), ("--region-weight", self.region_weights)):
            for name, w in weights.items():
                if not (math.isfinite(w) and w > 0):
                    raise UsageError(f"{option} {name}={w}: the weight must be a positive number")
        if self.label_weight_given and not (self.label_weights and self.label_condition > 0):
            raise UsageError("--label-weight-given: needs --label-weight and --label-condition (it applies the "
                             "weights in the volumes whose labels are given clean)")
        if not 0.0 < self.ema_decay < 1.0:
            raise UsageError(f"--ema-decay {self.ema_decay}: must be between 0 and 1")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise UsageError(f"--snr-gamma {self.snr_gamma}: must be positive")
        if self.window is not None:
            from cfgen.io.intensity import check_window

            check_window(self.window)

    def as_dict(self) -> dict:
        return asdict(self)
