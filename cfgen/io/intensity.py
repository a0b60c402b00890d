"""Mapping scan intensities to a model's value range and back, recorded for the report."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cfgen.errors import InputError, UsageError

WINDOW_CHOICES = "auto, minmax, dtype, percentile, LOW,HIGH or LOW,KNEE,HIGH"


@dataclass(frozen=True)
class IntensityMap:
    """Linear map [low, high] (scan units) <-> [a, b] (model units), clipped. With a ``knee``
    (low < knee < high) piecewise linear: [low, knee] to the lower half of [a, b], [knee, high] to
    the upper half, e.g. "-1024,-700,600" gives CT's lungs (-1024..-700 HU) as much of the model's
    range as the soft tissue and bone above them, so a model's error in model units costs the
    lungs 2.5 times fewer HU."""

    low: float
    high: float
    model_low: float = -1.0
    model_high: float = 1.0
    rule: str = "auto"
    knee: float | None = None

    def to_model(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.knee is None:
            t = (x - self.low) / (self.high - self.low)
        else:
            t = np.where(x < self.knee, 0.5 * (x - self.low) / (self.knee - self.low),
                         0.5 + 0.5 * (x - self.knee) / (self.high - self.knee))
        return (np.clip(t, 0.0, 1.0) * (self.model_high - self.model_low) + self.model_low).astype(np.float32)

    def from_model(self, y: np.ndarray) -> np.ndarray:
        t = np.clip((np.asarray(y, dtype=np.float32) - self.model_low) / (self.model_high - self.model_low), 0.0, 1.0)
        if self.knee is None:
            return (t * (self.high - self.low) + self.low).astype(np.float32)
        return np.where(t < 0.5, self.low + 2.0 * t * (self.knee - self.low),
                        self.knee + (2.0 * t - 1.0) * (self.high - self.knee)).astype(np.float32)

    def width_fraction(self, y: np.ndarray) -> np.ndarray:
        """Model values -> fractions (0..1) of the window's width in scan units: the model range's
        own fraction for a linear window; through a knee proportional to the scan's units (HU)."""
        t = np.clip((np.asarray(y, dtype=np.float32) - self.model_low) / (self.model_high - self.model_low), 0.0, 1.0)
        if self.knee is None:
            return t
        return ((self.from_model(y) - self.low) / (self.high - self.low)).astype(np.float32)

    def as_dict(self) -> dict:
        return asdict(self)


WINDOW_RULES = ("auto", "minmax", "dtype", "percentile")


def fixed_window(window: str | None, pre: str = "") -> tuple[float, float, float | None] | None:
    """(LOW, HIGH, KNEE or None) of a fixed window (e.g. a model default "-1024,600" HU, or
    "-1024,-700,600" with a knee); None for a rule; a usage error (prefixed ``pre``) for anything else."""
    if window is None or str(window) in WINDOW_RULES:
        return None
    try:
        values = [float(v) for v in str(window).split(",")]
    except ValueError:
        values = []
    if len(values) == 2:
        return values[0], values[1], None
    if len(values) == 3:
        return values[0], values[2], values[1]
    raise UsageError(f"{pre}--window {window}: use {WINDOW_CHOICES}")


def window_map(window: str | None, model_range: tuple[float, float] = (0.0, 1.0)) -> IntensityMap | None:
    """The IntensityMap of a fixed window onto ``model_range``; None for a rule."""
    got = fixed_window(window)
    if got is None:
        return None
    low, high, knee = got
    return IntensityMap(low, high, model_range[0], model_range[1], "fixed", knee)


def check_window(window: str, pre: str = "") -> None:
    """A usage error (prefixed ``pre``) unless ``window`` is a rule, LOW,HIGH with HIGH > LOW, or
    LOW,KNEE,HIGH rising."""
    got = fixed_window(window, pre)
    if got is not None and not got[1] > got[0]:
        raise UsageError(f"{pre}--window {window}: HIGH must be above LOW")
    if got is not None and got[2] is not None and not got[0] < got[2] < got[1]:
        raise UsageError(f"{pre}--window {window}: KNEE must lie between LOW and HIGH")


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
    0.5..99.5 percentiles; dtype: the storage type's range; LOW,HIGH: given (e.g. -1024,600 HU);
    LOW,KNEE,HIGH: given, piecewise linear (IntensityMap).
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
        return window_map(window, model_range)
    if not high > low:
        high = low + 1.0  # a constant image: any window maps it to one value
    return IntensityMap(low=low, high=high, model_low=model_range[0], model_high=model_range[1], rule=rule)
