"""The console script's garbage collection: a process start without repeated full collections.

Importing torch, diffusers and transformers and loading a model create about half a million
long-lived objects. With the default thresholds the collector traces them again and again while
they are created (about 1 s of a 128 px CPU edit, as long as the model load itself), and once
more at interpreter exit. The console script (``cfgen.cli.main.main``) holds automatic collection
back until the model is loaded; the loader then keeps what exists for good (``gc.freeze``) and
restores the thresholds, so collections over what the run creates afterwards stay cheap. In-process
callers (notebooks, tests) never hold, and ``release`` does nothing for them.
"""
from __future__ import annotations

import gc

#: while held: a young-generation collection only after this many new container objects (a
#: backstop for commands that load no model; a model load creates fewer)
HELD_THRESHOLD = 2_000_000

_held: tuple[int, int, int] | None = None


def hold() -> None:
    """No automatic collection (below ``HELD_THRESHOLD`` allocations) until ``release``."""
    global _held
    if _held is None:
        _held = gc.get_threshold()
        gc.set_threshold(HELD_THRESHOLD, *_held[1:])


def release() -> None:
    """After a model load: what exists is permanent (not traced again), thresholds as before."""
    global _held
    if _held is not None:
        gc.freeze()
        gc.set_threshold(*_held)
        _held = None


def held() -> bool:
    return _held is not None
