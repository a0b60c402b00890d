"""Quiet Hugging Face libraries: cfgen draws its own progress and reports its own errors."""
from __future__ import annotations


def quiet_hf() -> None:
    """diffusers/transformers: errors only, no progress bars (cfgen draws its own)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    for lib in (dlog, tlog):
        lib.set_verbosity_error()
        lib.disable_progress_bar()
