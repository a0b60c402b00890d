"""Anatomy label maps as channels beside the image, and back (numpy only).

``one-hot``: label k (1..L) is channel k - 1; decoding takes the strongest channel above the
midpoint. ``bits`` (analog bits, Chen et al. 2022): label k is written as the binary digits of its
code, bit b in channel b; the code of label k is k unless the model's ``[synth] label_codes`` gives
a table (one positive code per label, e.g. a thin structure on a bit no other label sets, so that a
given vessel is one channel's value rather than a lobe-dependent pattern of three). Codes up to C
take C.bit_length() channels (nine labels: 4); decoding thresholds every channel at the midpoint,
reads the number back and looks it up (a number that is no label's code decodes as background).
Channels are 0/1 here; callers map them to the model's range.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Encoding:
    """How a model writes its labels: ``kind`` one-hot or bits; ``codes``: the bits code of label
    k at index k - 1 (None: k itself)."""
    kind: str = "one-hot"
    codes: tuple[int, ...] | None = None


def _parse(encoding: str | Encoding, count: int) -> tuple[str, np.ndarray]:
    enc = Encoding(encoding) if isinstance(encoding, str) else encoding
    codes = np.arange(1, count + 1) if enc.codes is None else np.asarray(enc.codes, dtype=np.int64)
    if len(codes) != count:
        raise ValueError(f"{len(codes)} label codes for {count} labels")
    return enc.kind, codes


def channel_count(count: int, encoding: str | Encoding) -> int:
    """How many channels ``count`` labels take."""
    kind, codes = _parse(encoding, count)
    return int(codes.max()).bit_length() if kind == "bits" and count else count


def encode(labels: np.ndarray, count: int, encoding: str | Encoding) -> np.ndarray:
    """(...) integer labels 0..count -> (channels, ...) float32 in {0, 1}."""
    kind, codes = _parse(encoding, count)
    if kind == "bits":
        values = np.concatenate([[0], codes])[labels]
        return np.stack([((values >> b) & 1).astype(np.float32) for b in range(channel_count(count, encoding))])
    return np.stack([(labels == k).astype(np.float32) for k in range(1, count + 1)])


def decode(channels: np.ndarray, count: int, encoding: str | Encoding, mid: float) -> np.ndarray:
    """(channels, ...) -> (...) uint8 labels; ``mid`` is the midpoint of the model's range."""
    kind, codes = _parse(encoding, count)
    if kind == "bits":
        weights = (1 << np.arange(channels.shape[0])).reshape((-1,) + (1,) * (channels.ndim - 1))
        lookup = np.zeros(1 << channels.shape[0], dtype=np.uint8)  # numbers that are no label's code: background
        lookup[codes] = np.arange(1, count + 1)
        return lookup[((channels > mid) * weights).sum(axis=0)]
    best = channels.argmax(axis=0)
    return np.where(channels.max(axis=0) > mid, best + 1, 0).astype(np.uint8)
