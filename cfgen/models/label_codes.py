"""Anatomy label maps as channels beside the image, and back (numpy only).

``one-hot``: label k (1..L) is channel k - 1; decoding takes the strongest channel above the
midpoint. ``bits`` (analog bits, Chen et al. 2022): label k is written as its binary digits, bit b
in channel b, so L labels take ceil(log2(L + 1)) channels; decoding thresholds every channel at the
midpoint and reads the number back (a number above L, which no label has, decodes as background).
Channels are 0/1 here; callers map them to the model's range.
"""
from __future__ import annotations

import numpy as np


def encode(codes: np.ndarray, count: int, encoding: str) -> np.ndarray:
    """(...) integer labels 0..count -> (channels, ...) float32 in {0, 1}."""
    if encoding == "bits":
        return np.stack([((codes >> b) & 1).astype(np.float32) for b in range(count.bit_length())])
    return np.stack([(codes == k).astype(np.float32) for k in range(1, count + 1)])


def decode(channels: np.ndarray, count: int, encoding: str, mid: float) -> np.ndarray:
    """(channels, ...) -> (...) uint8 labels; ``mid`` is the midpoint of the model's range."""
    if encoding == "bits":
        weights = (1 << np.arange(channels.shape[0])).reshape((-1,) + (1,) * (channels.ndim - 1))
        codes = ((channels > mid) * weights).sum(axis=0)
        return np.where(codes <= count, codes, 0).astype(np.uint8)
    best = channels.argmax(axis=0)
    return np.where(channels.max(axis=0) > mid, best + 1, 0).astype(np.uint8)
