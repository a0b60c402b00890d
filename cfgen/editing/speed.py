"""Speed options of the edit path: channels_last memory layout and ``torch.compile``.

The rest of the fast path needs no switch: classifier-free guidance is one batched forward
(ddim.predict), scheduler arithmetic runs in fp32 whatever the model's dtype, diffusers' and
MONAI's attention use PyTorch SDPA, ``--dtype float16|bfloat16`` loads the weights in half
precision, and ``--batch-size`` shares every forward between items.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cfgen.models.loader import LoadedModel


def tune(model: LoadedModel, compile_unet: bool = False) -> dict:
    """channels_last for 2D networks on CUDA (convolutions pick faster kernels); the UNet
    compiled once per process when asked (later batches reuse it). Returns what was done."""
    import torch

    done = {"channels_last": False, "compiled": False}
    if str(model.device).startswith("cuda") and model.entry.spatial_dims == 2:
        for name in ("unet", "vae"):
            getattr(model, name).to(memory_format=torch.channels_last)
        done["channels_last"] = True
    if compile_unet:
        backend = os.environ.get("CFGEN_COMPILE_BACKEND", "inductor")  # tests: "eager" (no C compiler run)
        unet = model.unet
        unet.forward = torch.compile(unet.forward, backend=backend, dynamic=False)
        done["compiled"] = backend
    return done


class full_precision:
    """``with full_precision(model):`` runs with every network in float32, then gives every
    tensor back the dtype it was loaded in (a half model may hold float32 parts, e.g. the 3D
    family's tabular conditioner; half weights widened to float32 and narrowed back are unchanged)."""

    def __init__(self, model: LoadedModel):
        self.model, self.saved_dtype = model, model.dtype

    def __enter__(self):
        import torch

        self.saved = {name: {k: t.dtype for k, t in _tensors(comp)} for name, comp in self.model.networks()}
        cast(self.model, torch.float32)
        return self.model

    def __exit__(self, *exc) -> None:
        for name, comp in self.model.networks():
            dtypes = self.saved[name]
            for k, t in _tensors(comp):
                if t.dtype != dtypes[k]:
                    t.data = t.data.to(dtypes[k])
        self.model.dtype = self.saved_dtype


def _tensors(module):
    from itertools import chain

    return chain(module.named_parameters(), module.named_buffers())


def cast(model: LoadedModel, dtype) -> None:
    """Every network of a loaded model wholly to ``dtype``."""
    for _, comp in model.networks():
        comp.to(dtype)
    model.dtype = dtype
