"""MASK tensors: [B, H, W] float in 0..1 (a single [H, W] mask is accepted everywhere and read as a
batch of one). Conversions to and from IMAGE ([B, H, W, C]), crops, compositing by operation, edge
feathering, growing/shrinking, thresholds and batching, as ComfyUI's mask nodes compute them."""

from __future__ import annotations

CHANNELS = ["red", "green", "blue", "alpha"]
OPERATIONS = ["multiply", "add", "subtract", "and", "or", "xor"]


def as_batch(mask):
    """[B, H, W] for a mask given as [H, W], [B, H, W] or [B, 1, H, W]."""
    return mask.reshape((-1, mask.shape[-2], mask.shape[-1]))


def mask_to_image(mask):
    """IMAGE [B, H, W, 3]: the mask's value in each of the three colour channels."""
    return as_batch(mask)[..., None].expand(-1, -1, -1, 3)


def image_to_mask(image, channel: str):
    """One channel of each picture as a mask; 'alpha' needs an RGBA image."""
    return image[..., CHANNELS.index(channel)]


def crop(mask, x: int, y: int, width: int, height: int):
    return as_batch(mask)[:, y:y + height, x:x + width]


def composite(destination, source, x: int, y: int, operation: str):
    """`source` combined into `destination` with its top-left corner at (x, y), clipped to the
    destination, then clamped to 0..1. The logical operations treat values above 0.5 as set
    (rounded half to even, so 0.5 itself is unset)."""
    import torch

    out = as_batch(destination).clone()
    source = as_batch(source)
    bottom = min(y + source.shape[-2], out.shape[-2])
    right = min(x + source.shape[-1], out.shape[-1])
    if bottom <= y or right <= x:
        return out.clamp(0.0, 1.0)
    under = out[:, y:bottom, x:right]
    over = source[:, :bottom - y, :right - x]
    if operation == "multiply":
        value = under * over
    elif operation == "add":
        value = under + over
    elif operation == "subtract":
        value = under - over
    elif operation in ("and", "or", "xor"):
        logic = {"and": torch.logical_and, "or": torch.logical_or, "xor": torch.logical_xor}[operation]
        value = logic(under.round().bool(), over.round().bool()).float()
    else:
        raise ValueError(f"unknown operation {operation!r}")
    out[:, y:bottom, x:right] = value
    return out.clamp(0.0, 1.0)


def feather(mask, left: int, top: int, right: int, bottom: int):
    """Fade the mask linearly towards each edge over the given number of pixels: the k-th column
    from the left (k = 1, 2, ...) is multiplied by k / left, the k-th row from the top by k / top.

    The right and bottom edges follow ComfyUI's indexing, which counts them from -0: their factor
    1 / n falls on the first column/row (the left/top one), the last column/row gets 2 / n, the one
    before it 3 / n, and so on. Kept so that the same workflow gives the same mask."""
    out = as_batch(mask).clone()
    h, w = out.shape[-2], out.shape[-1]
    left, right, top, bottom = min(left, w), min(right, w), min(top, h), min(bottom, h)
    for i in range(left):
        out[:, :, i] *= (i + 1) / left
    for i in range(right):
        out[:, :, -i] *= (i + 1) / right
    for i in range(top):
        out[:, i, :] *= (i + 1) / top
    for i in range(bottom):
        out[:, -i, :] *= (i + 1) / bottom
    return out


def grow(mask, expand: int, tapered_corners: bool):
    """Dilate (expand > 0) or erode (expand < 0) by |expand| steps of a 3x3 neighbourhood: the plus
    shape when tapered_corners, the full square otherwise."""
    import numpy as np
    import scipy.ndimage
    import torch

    corner = 0 if tapered_corners else 1
    footprint = np.array([[corner, 1, corner], [1, 1, 1], [corner, 1, corner]])
    step = scipy.ndimage.grey_erosion if expand < 0 else scipy.ndimage.grey_dilation
    out = []
    for single in as_batch(mask):
        values = single.detach().cpu().numpy()
        for _ in range(abs(expand)):
            values = step(values, footprint=footprint)
        out.append(torch.from_numpy(np.ascontiguousarray(values)))
    return torch.stack(out)


def threshold(mask, value: float):
    """1 where the mask is above `value`, else 0."""
    return (mask > value).float()


def batch(masks: list):
    """One batch of all masks, each resized (bilinear, centre crop) to the first one's size."""
    import torch

    from .resample import resize

    first = as_batch(masks[0])
    h, w = first.shape[-2], first.shape[-1]
    out = [first]
    for mask in masks[1:]:
        mask = as_batch(mask)
        if mask.shape[-2:] != (h, w):
            mask = resize(mask[:, None], w, h, "bilinear", "center")[:, 0]
        out.append(mask)
    return torch.cat(out, dim=0)
