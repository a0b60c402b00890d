"""cfgen: language-guided counterfactual editing of medical images with diffusion models.

Importing this package is cheap: torch, diffusers and monai are imported inside the
functions that need them.
"""
from __future__ import annotations

__version__ = "0.1.0"

from cfgen.errors import CfgenError  # noqa: E402  (light: no third-party imports)

__all__ = ["CfgenError", "__version__"]
