"""Running an image model over overlapping tiles, so a picture of any size fits in memory.

Tiles are spread evenly so each is full-sized and they overlap by at least `overlap` pixels. Where
tiles overlap, their outputs are blended with weights that ramp up from the tile's inner edge: a
convolutional model is least reliable at a tile border (it sees padding instead of neighbours), so
that is where it counts least, and seams vanish. When the device runs out of memory the tile size
halves and the picture starts again, down to `min_tile`.
"""

from __future__ import annotations

import math
from typing import Callable

from genloom.diffusion.models.memory import is_out_of_memory, release_cache
from genloom.engine import context

DEFAULT_TILE = 512
DEFAULT_OVERLAP = 32
MIN_TILE = 64


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of full tiles covering 0..size, neighbours overlapping by >= overlap."""
    if size <= tile:
        return [0]
    count = math.ceil((size - overlap) / (tile - overlap))
    step = (size - tile) / (count - 1)
    return [round(i * step) for i in range(count)]


def _ramp(length: int, fade: int, fade_start: bool, fade_end: bool):
    import torch

    weights = torch.ones(length)
    fade = min(fade, length // 2)
    if fade > 0:
        rise = (torch.arange(fade, dtype=torch.float32) + 1) / (fade + 1)
        if fade_start:
            weights[:fade] = rise
        if fade_end:
            weights[length - fade:] = rise.flip(0)
    return weights


def run_tiled(model: Callable, image, scale: int, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
              device: str = "cpu", progress: Callable[[int, int], None] | None = None,
              min_tile: int = MIN_TILE):
    """`model` applied to `image` [B, C, H, W] (CPU) tile by tile; returns [B, C', H*scale, W*scale] on
    the CPU. The overlap is at most a quarter of the tile. Halves the tile on out-of-memory errors;
    re-raises once the tile would drop below min_tile."""
    overlap = max(0, min(overlap, tile // 4))
    while True:
        try:
            return _run_tiles(model, image, scale, tile, overlap, device, progress)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
            if not is_out_of_memory(exc) or tile // 2 < min_tile:
                raise
            tile //= 2
            overlap = min(overlap, tile // 4)
            release_cache()


def _run_tiles(model, image, scale, tile, overlap, device, progress):
    import torch

    batch, _, height, width = image.shape
    ys = tile_starts(height, tile, overlap)
    xs = tile_starts(width, tile, overlap)
    th, tw = min(tile, height), min(tile, width)
    total, done = batch * len(ys) * len(xs), 0
    out = acc = None
    check_interrupt = context.current().check_interrupt
    for b in range(batch):
        for y in ys:
            wy = _ramp(th * scale, overlap * scale, y > 0, y + th < height)
            for x in xs:
                check_interrupt()  # a tile at a time: /interrupt lands within one
                piece = image[b:b + 1, :, y:y + th, x:x + tw].to(device)
                with torch.no_grad():
                    result = model(piece).float().cpu()
                if out is None:
                    out = torch.zeros(batch, result.shape[1], height * scale, width * scale)
                    acc = torch.zeros(batch, 1, height * scale, width * scale)
                wx = _ramp(tw * scale, overlap * scale, x > 0, x + tw < width)
                weight = wy[:, None] * wx[None, :]
                region = (b, slice(None), slice(y * scale, (y + th) * scale), slice(x * scale, (x + tw) * scale))
                out[region] += result[0] * weight
                acc[region] += weight
                done += 1
                if progress is not None:
                    progress(done, total)
    return out / acc
