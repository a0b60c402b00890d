"""Model registry (pure data, no torch) and the one loader that turns an entry into components."""
from __future__ import annotations

from cfgen.models.registry import ModelEntry, Registry, load_registry

__all__ = ["ModelEntry", "Registry", "load_registry"]
