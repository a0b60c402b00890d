"""Memory plan of the edit path: how many items share each batch (``--batch-size auto``) and how
many the VAE encodes/decodes at once (whole batch, slices, or tiles) for the memory that is free.

The cost of one item is measured, not guessed: a probe runs one guided UNet step (two rows:
conditional and unconditional) and one VAE encode + decode at batch 1 and reads the peak memory
above what was in use before it (CUDA: the allocator's peak; CPU on Linux: the process's peak
resident size, VmHWM, reset through /proc/self/clear_refs). Where neither can be read, the
plan keeps batch 1.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cfgen.models.loader import LoadedModel

#: share of the free memory a plan may fill (the rest: allocator fragmentation, output buffers)
FILL = 0.7
#: batch caps: GPUs gain up to dozens of items; on CPU a batch of 4 gave 1.1-1.25x (README)
CAPS = {"cuda": 64, "cpu": 8}


@dataclass
class MemoryPlan:
    batch_size: int
    vae_chunk: int  # items per VAE encode/decode call
    vae_tiling: bool  # one item's decode does not fit: tiled decode (2D diffusers VAEs)
    free_mb: float | None
    unet_item_mb: float | None
    vae_item_mb: float | None
    measured_by: str | None  # cuda-peak | vmhwm | None (nothing to measure with: batch 1)

    def record(self) -> dict:
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _kb(field: str, text: str) -> int | None:
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


def free_bytes(device: str) -> int | None:
    """Memory a batch may still use on ``device``: CUDA free plus this process's cached blocks;
    CPU: MemAvailable (Linux)."""
    import torch

    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        return _kb("MemAvailable", Path("/proc/meminfo").read_text())
    except OSError:
        return None


def _trim_heap() -> None:
    """Give freed heap pages back to the system (glibc), so that RSS growth is real use."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMeter:
    """Peak bytes above the starting point while the ``with`` body runs (None: cannot measure)."""

    def __init__(self, device: str):
        self.device, self.peak, self.how = device, None, None

    def __enter__(self) -> "PeakMeter":
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base, self.how = torch.cuda.memory_allocated(self.device), "cuda-peak"
        elif self.device == "cpu":
            try:
                _trim_heap()  # freed-but-resident heap would hide the probe's growth
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
                self._base, self.how = _kb("VmRSS", Path("/proc/self/status").read_text()), "vmhwm"
            except OSError:
                self._base = None
        else:
            self._base = None
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self._base is None or exc[0] is not None:
            return
        if self.how == "cuda-peak":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            hwm = _kb("VmHWM", Path("/proc/self/status").read_text())
            self.peak = None if hwm is None else max(hwm - self._base, 0)


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc)


def _probe(model: LoadedModel) -> tuple[int | None, int | None, str | None, bool]:
    """(UNet bytes per item, VAE bytes per item, how measured, tiling needed)."""
    import torch

    from cfgen.editing.components import decode_latents, encode_images, encode_prompts

    e = model.entry
    x = torch.full((1, e.channels) + (e.resolution,) * e.spatial_dims, e.value_range[0], dtype=torch.float32)
    with torch.no_grad():
        with PeakMeter(model.device) as vae_meter:
            try:
                z = encode_images(model, x, chunk=1)
                decode_latents(model, z, chunk=1)
                tiling = False
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is an answer here
                if not _is_oom(exc):
                    raise
                tiling, z = True, None
        if z is None:
            return None, None, vae_meter.how, True
        cond = encode_prompts(model, ["", ""])
        t = torch.full((2,), 500, device=model.device)
        with PeakMeter(model.device) as unet_meter:
            model.unet(torch.cat([z, z]).to(model.dtype), t, encoder_hidden_states=cond)
    return unet_meter.peak, vae_meter.peak, unet_meter.how, tiling


def choose(free: int | None, per_item: int | None, cap: int) -> int:
    """Items that fit in FILL x free at per_item bytes each, within [1, cap]."""
    if not free or not per_item:
        return 1
    return max(1, min(cap, math.floor(FILL * free / per_item)))


def plan(model: LoadedModel, n_jobs: int, batch_size: int | None = None) -> MemoryPlan:
    """The memory plan for ``n_jobs`` items on the model's device; ``batch_size`` given: only
    the VAE's slicing/tiling is planned for it."""
    device = str(model.device)
    cap = min(max(n_jobs, 1), CAPS["cuda" if device.startswith("cuda") else "cpu"])
    free = free_bytes(device)
    unet_item, vae_item, how, tiling = _probe(model)
    if batch_size is not None:
        batch = batch_size
    elif how is None or unet_item is None:
        batch = 1
    else:
        # both live at once in the worst case: the batch's latents are tiny next to either peak
        batch = choose(free, max(unet_item, vae_item or 0), cap)
    vae_chunk = 1 if tiling else choose(free, vae_item, batch) if how else batch
    mb = lambda b: None if b is None else b / 2**20  # noqa: E731
    return MemoryPlan(batch_size=batch, vae_chunk=vae_chunk, vae_tiling=tiling, free_mb=mb(free),
                      unet_item_mb=mb(unet_item), vae_item_mb=mb(vae_item), measured_by=how)


def apply(model: LoadedModel, p: MemoryPlan) -> None:
    """The plan's VAE tiling on the loaded model (its chunk size the run passes to each encode/decode)."""
    if p.vae_tiling:
        vae = model.vae
        if not hasattr(vae, "enable_tiling"):
            from cfgen.errors import ModelError

            raise ModelError(f"{model.folder}: one item's VAE decode does not fit in the free memory "
                             f"({p.free_mb:.0f} MiB) and this VAE cannot decode in tiles; free memory or use a "
                             "smaller model")
        vae.enable_tiling()
