"""Tabular labels -> text captions (PRISM section 2.1, Listing 1)."""
from __future__ import annotations

from cfgen.captions.templates import CHEXPERT_CONDITIONS, UncertainPolicy, caption_rows

__all__ = ["CHEXPERT_CONDITIONS", "UncertainPolicy", "caption_rows"]
