"""ComfyUI's `node_helpers` for node packs: conditioning_set_values, pillow, hasher."""

from __future__ import annotations

import hashlib


def conditioning_set_values(conditioning, values: dict | None = None, append: bool = False) -> list:
    """A copy of CONDITIONING with `values` set in every entry's dict (append: list values are
    added to the lists already there)."""
    out = []
    for entry in conditioning:
        extra = dict(entry[1]) if len(entry) > 1 else {}
        for key, value in (values or {}).items():
            if append and key in extra and isinstance(value, list):
                value = list(extra[key]) + value
            extra[key] = value
        out.append([entry[0], extra])
    return out


def pillow(fn, arg):
    """`fn(arg)` with PIL, retried once allowing truncated images (as ComfyUI loads pictures)."""
    from PIL import ImageFile, UnidentifiedImageError

    try:
        return fn(arg)
    except (OSError, UnidentifiedImageError, ValueError):
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            return fn(arg)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def hasher():
    """The hash function for file fingerprints (ComfyUI's default: sha256)."""
    return hashlib.sha256


def string_to_torch_dtype(string: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(string)


def image_alpha_fix(destination, source):
    """Matching channel counts for compositing: RGB and RGBA brought to the larger one."""
    import torch

    if destination.shape[-1] < source.shape[-1]:
        source = source[..., :destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:
        pad = torch.ones_like(source[..., :1])
        source = torch.cat([source] + [pad] * (destination.shape[-1] - source.shape[-1]), dim=-1)
    return destination, source
