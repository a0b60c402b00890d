"""Mapping scan intensities to a model's value range and back, recorded for the report."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cfgen.errors import InputError, UsageError

WINDOW_CHOICES = "auto, minmax, dtype, percentile, or LOW,HIGH"


@dataclass(frozen=True)
class IntensityMap:
    """Linear map [low, high] (scan units) <-> [a, b] (model units), clipped."""

    low: float
    high: float
    model_low: float = -1.0
    model_high: float = 1.0
    rule: str = "auto"

    def to_model(self, x: np.ndarray) -> np.ndarray:
        t = (np.asarray(x, dtype=np.float32) - self.low) / (self.high - self.low)
        return np.clip(t, 0.0, 1.0) * (self.model_high - self.model_low) + self.model_low

    def from_model(self, y: np.ndarray) -> np.ndarray:
        t = (np.asarray(y, dtype=np.float32) - self.model_low) / (self.model_high - self.model_low)
        return np.clip(t, 0.0, 1.0) * (self.high - self.low) + self.low

    def as_dict(self) -> dict:
        return asdict(self)


WINDOW_RULES = ("auto", "minmax", "dtype", "percentile")


def fixed_window(window: str | None, pre: str = "") -> tuple[float, float] | None:
    """(LOW, HIGH) of a fixed window (e.g. a model default "-1024,600" HU); None for a rule; a
    usage error (prefixed ``pre``) for anything else."""
    if window is None or str(window) in WINDOW_RULES:
        return None
    try:
        low, high = (float(v) for v in str(window).split(","))
    except ValueError:
        raise UsageError(f"{pre}--window {window}: use {WINDOW_CHOICES}") from None
    return low, high


def check_window(window: str, pre: str = "") -> None:
    """A usage error (prefixed ``pre``) unless ``window`` is a rule or LOW,HIGH with HIGH > LOW."""
    got = fixed_window(window, pre)
    if got is not None and not got[1] > got[0]:
        raise UsageError(f"{pre}--window {window}: HIGH must be above LOW")


def _dtype_range(dtype: str) -> tuple[float, float] | None:
    dt = np.dtype(dtype)
    if dt.kind in "ui":
        info = np.iinfo(dt)
        return float(info.min), float(info.max)
    return None


def choose_window(pixels: np.ndarray, source_dtype: str, window: str = "auto",
                  model_range: tuple[float, float] = (-1.0, 1.0), where: str = "") -> IntensityMap:
    """Pick the scan-intensity window that maps to the model's range.

    auto: the full dtype range for 8-bit images (what photos and PNG exports use), else the
    scan's min..max (CT in HU, MR, 16-bit radiographs that use 12 bits); percentile: the
    0.5..99.5 percentiles; dtype: the storage type's range; LOW,HIGH: given (e.g. -1024,600 HU).
    """
    finite = pixels[np.isfinite(pixels)]
    if finite.size != pixels.size:
        raise InputError(f"{where}: scan has {pixels.size - finite.size} NaN/Inf values")
    rule = window
    if window == "auto":
        rule = "dtype" if np.dtype(source_dtype) in (np.uint8, np.int8) else "minmax"
    if rule == "dtype":
        rng = _dtype_range(source_dtype)
        if rng is None:
            rule = "minmax"
        else:
            low, high = rng
    if rule == "minmax":
        low, high = float(finite.min()), float(finite.max())
    elif rule == "percentile":
        low, high = (float(v) for v in np.percentile(finite, [0.5, 99.5]))
    elif rule not in ("dtype",):
        low, high = fixed_window(window)
        rule = "fixed"
    if not high > low:
        high = low + 1.0  # a constant image: any window maps it to one value
    return IntensityMap(low=low, high=high, model_low=model_range[0], model_high=model_range[1], rule=rule)
