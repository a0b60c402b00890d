"""cfgen: language-guided counterfactual editing of medical images with diffusion models.

Importing this package is cheap: torch, diffusers and monai are imported inside the
functions that need them.
"""
from __future__ import annotations

__version__ = "0.1.0"

from cfgen.errors import CfgenError  # noqa: E402  (light: no third-party imports)

#: the Python API (cfgen/api.py), imported on first use so that `import cfgen` stays cheap
_API = ("Result", "Scan", "as_scan", "edit", "evaluate", "invert", "load_model", "read_scan", "write_scan")

__all__ = ["CfgenError", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from cfgen import api

        return getattr(api, name) if name != "Scan" else api.Scan
    raise AttributeError(f"module 'cfgen' has no attribute {name!r}")
