"""Budgets checked before work: how large a picture, frame stack or batch a node may declare, from
the engine's options (`max_pixels`, `max_batch`, `max_bytes`: the --max-pixels, --max-batch and
--max-bytes flags that `genloom run` and `genloom serve` share, `add_limit_arguments`) and the memory
free now: RAM, and on a CUDA run also the device's memory not held by other processes.

A node whose inputs declare a size (an empty latent or image, a mask, a video's frames, a repeated
batch) asks here during validation or before allocating, so a tensor that cannot fit is refused with
a message naming the inputs that are too large, instead of failing seconds or minutes later in an
allocator.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from . import context
from .sizes import parse_size

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


def cuda_memory() -> int | None:
    """Bytes of the CUDA device's memory this process could use now (free, plus what torch's caching
    allocator holds: the memory manager can offload models), or None when the run is not on CUDA.
    Never imports torch: a run on CUDA has imported it by the time a node asks."""
    torch = sys.modules.get("torch")
    ctx = context.current()
    if torch is None or ctx.device_choice not in ("auto", "cuda") or not str(ctx.device).startswith("cuda"):
        return None
    try:
        free, _total = torch.cuda.mem_get_info(ctx.device)
        return int(free + torch.cuda.memory_reserved(ctx.device))
    except (RuntimeError, AssertionError, ValueError):
        return None


def image_batch_problem(width: int, height: int, batch: int = 1, names=("width", "height", "batch_size"),
                        channels: int = 3, bytes_per_value: int = 4, frames: int = 1,
                        frames_name: str = "length") -> str | None:
    """Why a batch of `batch` pictures (or stacks of `frames` video frames) of width x height cannot be
    made, or None. The pixel limit is per picture or frame stack; the byte estimate is the batch as
    float32 IMAGE pixels (frames x h x w x c), what decoding it will at least allocate."""
    lim = limits()
    w_name, h_name, b_name = names
    pixels = width * height * frames
    if pixels > lim.max_pixels:
        shown = f"{w_name} x {h_name} = {width}x{height}" + (f" x {frames_name} {frames}" if frames > 1 else "")
        return f"{shown} is {pixels} pixels, over the limit of {lim.max_pixels} (--max-pixels)"
    if batch > lim.max_batch:
        return f"{b_name} {batch} is over the limit of {lim.max_batch} (--max-batch)"
    need = pixels * batch * channels * bytes_per_value
    for budget, source in _budgets(lim):
        if need > budget:
            what = f"{batch} x {frames} frames" if frames > 1 else f"{b_name} {batch}"
            return (f"{what} of {width}x{height} needs {need / MiB:.0f} MiB as images, over the "
                    f"{budget / MiB:.0f} MiB of {source}")
    return None


def _budgets(lim: Limits):
    if lim.max_bytes:
        yield lim.max_bytes, "--max-bytes"
        return
    ram = available_memory()
    if ram is not None:
        yield ram, "memory available"
    device = cuda_memory()
    if device is not None:
        yield device, "CUDA memory available"


def tensor_problem(shape, what: str, bytes_per_value: int = 4) -> str | None:
    """Why a batch tensor of `shape` (known only when a node runs: a batch repeated, a picture resized)
    cannot be made, or None; `what` names it in the message, shape[0] is its batch."""
    lim = limits()
    if shape and int(shape[0]) > lim.max_batch:
        return f"{what} would hold {int(shape[0])} entries, over the limit of {lim.max_batch} (--max-batch)"
    count = 1
    for n in shape:
        count *= max(int(n), 0)
    need = count * bytes_per_value
    for budget, source in _budgets(lim):
        if need > budget:
            dims = "x".join(str(int(n)) for n in shape)
            return f"{what} ({dims}) needs {need / MiB:.0f} MiB, over the {budget / MiB:.0f} MiB of {source}"
    return None


def add_limit_arguments(parser) -> None:
    """--max-pixels, --max-batch and --max-bytes on an argparse parser (genloom run and serve)."""
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="largest picture or frame stack in pixels, every frame counted: uploads, LoadImage, "
                             f"empty latents and images (default {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                        help=f"largest batch a node may declare (default {DEFAULT_MAX_BATCH})")
    parser.add_argument("--max-bytes", type=parse_size, default=None,
                        help="largest tensor a node may make, e.g. 8GB (default: the memory available)")


def limit_options(args) -> dict:
    """The engine options the limit flags set (`engine.options.update(limit_options(args))`)."""
    return {"max_pixels": args.max_pixels, "max_batch": args.max_batch, "max_bytes": args.max_bytes}


def declared_size(specs, values: dict, width: str = "width", height: str = "height", batch: str | None = "batch_size",
                  frames: str | None = None, channels: int = 3):
    """What a node's `validate` classmethod returns for inputs that declare a tensor's size: the
    declared ranges first (a validate method takes them over), then the budgets; True when both hold.
    A linked value (None at validation) is checked when the node runs."""
    problem = range_problem(specs, values)
    if problem is None and None not in values.values():
        problem = image_batch_problem(values[width], values[height], values[batch] if batch else 1,
                                      names=(width, height, batch or "batch"), channels=channels,
                                      frames=values[frames] if frames else 1, frames_name=frames or "length")
    return problem or True


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
