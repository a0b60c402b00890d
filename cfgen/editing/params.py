"""Editing parameters: resolved from the command line, the model's defaults and DEFAULTS.

Light on purpose (no torch), so the CLI can validate options before loading anything.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from cfgen.errors import UsageError

MAX_PROMPT_CHARS = 2000
MASK_MODES = ("none", "auto", "refine")  # or a mask file
#: DiffEdit's threshold (a fraction of the largest disagreement) per mode when none is given:
#: refine's first pass is generous on purpose, its second keeps only where the edit changed the scan
MASK_THRESHOLDS = {"auto": 0.5, "refine": 0.3}
AUTOMATIC_MASKS = tuple(MASK_THRESHOLDS)  # the modes whose mask cfgen makes (DiffEdit's first)
REFINE_CHANGE = 0.12  # refine: change that counts, in units of the intensity window (0..1)
#: a model's [defaults] that tune --mask refine and apply only when the mask is refine: its first
#: pass's DiffEdit threshold (under --mask-threshold) and its change threshold (under --refine-change)
REFINE_DEFAULTS = {"refine_threshold": "mask_threshold", "refine_change": "refine_change"}


@dataclass
class EditParams:
    """The field defaults are cfgen's defaults (DEFAULTS), used when neither the command line nor
    the model's models.toml entry sets a value. steps and the scheduler follow PRISM
    (REFERENCE.md); guidance 7.5 is SD v1.5's usual scale."""

    prompt: str = ""
    source_prompt: str = ""
    negative_prompt: str = ""
    steps: int = 50
    guidance: float = 7.5
    strength: float = 1.0
    eta: float = 0.0
    seed: int = 0
    window: str = "auto"
    mask: str = "none"  # none | auto | refine | path to a PNG/NIfTI mask (nonzero = may change)
    mask_threshold: float | None = None  # DiffEdit's; None: the mode's (MASK_THRESHOLDS)
    refine_change: float | None = None  # --mask refine only; None: REFINE_CHANGE
    inversion: str = "ddim"  # ddim | negative-prompt | null-text (cfgen/editing/inversion.py)
    null_text_steps: int = 10  # null-text: inner optimisation steps per timestep (Mokady et al.; PRISM)
    min_inversion_psnr: float | None = None  # the gate: escalate below this reconstruction PSNR (dB)
    solver: str = "ddim"  # ddim | dpm++: DPM-Solver++(2M) sampling and inversion (cfgen/editing/dpm.py)
    attention: str = "none"  # none | replace | refine: prompt-to-prompt (cfgen/editing/attention.py)
    cross_attention: float = 0.8  # fraction of the steps with the source's cross-attention maps (P2P's 0.8)
    self_attention: float = 0.4  # fraction of the steps with the source's self-attention maps (PRISM's 0.4..0.8)
    sweep: str = ""  # "self-attention=0.4,0.5,...": variants in one batch, the best kept (PRISM)
    select_by: str = ""  # the sweep's scorer: a clip or classifier entry [model's defaults]
    labels: str = ""  # the scan's integer label map (NIfTI on its grid), for models that generate anatomy
    # label channels with the image ([synth] labels): inverted and regenerated with it (cfgen/editing/labelled.py)

    @classmethod
    def resolve(cls, model_defaults: dict[str, Any], command: str = "edit", **given: Any) -> "EditParams":
        """Command-line values (None = unset) over the model's defaults over DEFAULTS. For
        ``invert`` the guidance of the reconstruction is 1 unless given (a model's guidance default
        is its edits'): plain DDIM reconstruction, as `cfgen invert` always reported it."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in DEFAULTS.items() if k in names}
        values.update({k: v for k, v in model_defaults.items() if k in names and k not in REFINE_DEFAULTS})
        if command == "invert":
            values["guidance"] = 1.0
        values.update({k: v for k, v in given.items() if v is not None and k in names})
        if values.get("mask") == "refine":
            for key, field in REFINE_DEFAULTS.items():
                if key in model_defaults and given.get(field) is None:
                    values[field] = model_defaults[key]
        return cls(**values)

    def check(self, where: str = "") -> None:
        pre = f"{where}: " if where else ""
        if not 1 <= self.steps <= 500:
            raise UsageError(f"{pre}--steps {self.steps}: must be between 1 and 500")
        if not 0.0 < self.strength <= 1.0:
            raise UsageError(f"{pre}--strength {self.strength}: must be in (0, 1]")
        if not 0.0 <= self.guidance <= 100.0:
            raise UsageError(f"{pre}--guidance {self.guidance}: must be between 0 and 100")
        if not 0.0 <= self.eta <= 1.0:
            raise UsageError(f"{pre}--eta {self.eta}: must be between 0 and 1")
        if not 0 <= self.seed < 2 ** 63:  # torch generators take a signed 64-bit seed
            raise UsageError(f"{pre}--seed {self.seed}: must be between 0 and 2^63 - 1")
        self._check_mask(pre)
        self._check_inversion(pre)
        self._check_attention(pre)
        from cfgen.io.intensity import check_window

        check_window(self.window, pre)
        for name in ("prompt", "source_prompt", "negative_prompt"):
            if len(getattr(self, name)) > MAX_PROMPT_CHARS:
                raise UsageError(f"{pre}{name.replace('_', '-')} is {len(getattr(self, name))} characters "
                                 f"(limit {MAX_PROMPT_CHARS})")

    def _check_mask(self, pre: str) -> None:
        if self.mask_threshold is not None and not 0.0 < self.mask_threshold < 1.0:
            raise UsageError(f"{pre}--mask-threshold {self.mask_threshold}: must be in (0, 1)")
        if self.refine_change is not None:
            if self.mask != "refine":
                raise UsageError(f"{pre}--refine-change {self.refine_change}: only --mask refine uses it "
                                 f"(the mask is {self.mask if self.mask in MASK_MODES else 'a file'})")
            if not 0.0 < self.refine_change < 1.0:
                raise UsageError(f"{pre}--refine-change {self.refine_change}: must be in (0, 1) "
                                 "(units of the intensity window)")

    def diffedit_threshold(self) -> float:
        """The automatic mask's threshold: the one given, else the mode's."""
        return self.mask_threshold if self.mask_threshold is not None else MASK_THRESHOLDS.get(self.mask, MASK_THRESHOLDS["auto"])

    def change_threshold(self) -> float | None:
        """--mask refine: the change that keeps a pixel in the mask; None for other modes."""
        if self.mask != "refine":
            return None
        return self.refine_change if self.refine_change is not None else REFINE_CHANGE

    def _check_inversion(self, pre: str) -> None:
        methods = ("ddim", "negative-prompt", "null-text")
        if self.inversion not in methods:
            raise UsageError(f"{pre}--inversion {self.inversion}: use one of {', '.join(methods)}")
        if self.inversion == "negative-prompt" and self.negative_prompt:
            raise UsageError(f"{pre}--negative-prompt cannot be used with --inversion negative-prompt (some "
                             "models' default), whose unconditional branch is the source prompt; add --inversion ddim")
        if self.solver not in ("ddim", "dpm++"):
            raise UsageError(f"{pre}--solver {self.solver}: use ddim or dpm++")
        if self.solver == "dpm++" and self.eta:
            raise UsageError(f"{pre}--eta {self.eta}: --solver dpm++ is deterministic; use --eta 0 or --solver ddim")
        if not 1 <= self.null_text_steps <= 100:
            raise UsageError(f"{pre}--null-text-steps {self.null_text_steps}: must be between 1 and 100")
        if self.min_inversion_psnr is not None and not 0 < self.min_inversion_psnr <= 100:
            raise UsageError(f"{pre}--min-inversion-psnr {self.min_inversion_psnr}: must be in (0, 100] dB")

    def _check_attention(self, pre: str) -> None:
        modes = ("none", "replace", "refine")
        if self.attention not in modes:
            raise UsageError(f"{pre}--attention {self.attention}: use one of {', '.join(modes)}")
        for name in ("cross_attention", "self_attention"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UsageError(f"{pre}--{name.replace('_', '-')} {getattr(self, name)}: must be in [0, 1] "
                                 "(a fraction of the steps)")
        if self.sweep:
            self.sweep_values()
            if self.attention == "none":
                raise UsageError(f"{pre}--sweep varies prompt-to-prompt's self-attention fraction: "
                                 "give --attention refine (or replace)")

    def sweep_values(self) -> list[float]:
        """The self-attention fractions of ``--sweep self-attention=F,F,...`` ([self_attention] without)."""
        if not self.sweep:
            return [self.self_attention]
        key, _, values = self.sweep.partition("=")
        try:
            fracs = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            fracs = []
        if key.strip() != "self-attention" or not fracs or not all(0.0 <= f <= 1.0 for f in fracs):
            raise UsageError(f"--sweep {self.sweep}: use self-attention=F,F,... with fractions in [0, 1], "
                             "e.g. self-attention=0.4,0.5,0.6,0.7,0.8")
        if len(fracs) > 16:
            raise UsageError(f"--sweep {self.sweep}: at most 16 variants")
        return fracs

    def as_dict(self) -> dict[str, Any]:
        """The values the edit uses (the mask thresholds resolved), for reports and resume keys."""
        return {**asdict(self), "mask_threshold": self.diffedit_threshold(), "refine_change": self.change_threshold()}


#: cfgen's defaults, defined once: the dataclass's (synth3d's base stage reads steps and guidance)
DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(EditParams)}
