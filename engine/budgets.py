"""Budgets checked before work: how large an image batch a node may declare, from the engine's
options (`max_pixels`, `max_batch`, `max_bytes`; the server's --max-pixels, --max-batch and
--max-bytes) and the memory free now.

A node whose inputs declare a size (an empty latent, a loaded picture) asks here during validation
or before decoding, so a batch that cannot fit is refused with a message naming the input that is
too large, instead of failing seconds or minutes later in an allocator.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import context

DEFAULT_MAX_PIXELS = 64 * 1024 * 1024  # per picture or frame stack: 8192 x 8192
DEFAULT_MAX_BATCH = 4096
MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_batch: int = DEFAULT_MAX_BATCH
    max_bytes: int | None = None  # None: the memory available now


def limits() -> Limits:
    """The current run context's limits (the defaults outside a run)."""
    options = context.current().options or {}
    return Limits(max_pixels=options.get("max_pixels") or DEFAULT_MAX_PIXELS,
                  max_batch=options.get("max_batch") or DEFAULT_MAX_BATCH,
                  max_bytes=options.get("max_bytes"))


def available_memory() -> int | None:
    """Bytes of RAM available now (Linux MemAvailable), or None where that cannot be told."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def image_batch_problem(width: int, height: int, batch: int = 1, names=("width", "height", "batch_size"),
                        channels: int = 3, bytes_per_value: int = 4) -> str | None:
    """Why a batch of `batch` pictures of width x height cannot be made, or None. The byte estimate
    is the batch as float32 IMAGE pixels, what decoding it will at least allocate."""
    lim = limits()
    w_name, h_name, b_name = names
    if width * height > lim.max_pixels:
        return (f"{w_name} x {h_name} = {width}x{height} is {width * height} pixels, over the limit of "
                f"{lim.max_pixels} (--max-pixels)")
    if batch > lim.max_batch:
        return f"{b_name} {batch} is over the limit of {lim.max_batch} (--max-batch)"
    need = width * height * batch * channels * bytes_per_value
    budget, source = (lim.max_bytes, "--max-bytes") if lim.max_bytes else (available_memory(), "memory available")
    if budget is not None and need > budget:
        return (f"{b_name} {batch} of {width}x{height} needs {need / MiB:.0f} MiB as images, over the "
                f"{budget / MiB:.0f} MiB of {source}")
    return None


def range_problem(specs, values: dict) -> str | None:
    """The declared min/max of `values` (for a node whose validate method takes its range checks
    over), in ComfyUI's words; None values (links) are skipped."""
    for spec in specs:
        value = values.get(spec.name)
        if value is None:
            continue
        if spec.min is not None and value < spec.min:
            return f"{spec.name}: Value {value} smaller than min of {spec.min}"
        if spec.max is not None and value > spec.max:
            return f"{spec.name}: Value {value} bigger than max of {spec.max}"
    return None
