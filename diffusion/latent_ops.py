"""LATENT arithmetic, compositing, batching and transforms, as ComfyUI's latent nodes compute them.

A LATENT is a dict {"samples": [B, C, H, W] (or [B, C, T, H, W]), "noise_mask"?: [B or 1, 1, H', W'],
"batch_index"?: [int, ...]}. Every function returns a new dict that keeps the keys it does not
change (a shallow copy of the first latent), as ComfyUI does; tensors given in are never modified.
`batch_index` tells the samplers which noise of a seeded batch each entry gets, so batching nodes
carry it along.
"""

from __future__ import annotations

import math

ROTATIONS = ["none", "90 degrees", "180 degrees", "270 degrees"]
FLIPS = ["x-axis: vertically", "y-axis: horizontally"]
SEED_BEHAVIORS = ["random", "fixed"]
CELL = 8  # pixels per latent cell in the pixel-unit inputs (x, y, width, height, feather)


def with_samples(latent: dict, samples, **changes) -> dict:
    out = dict(latent)
    out["samples"] = samples
    out.update(changes)
    return out


def repeat_to_batch(tensor, size: int):
    """The first `size` entries of the tensor repeated as often as needed (or cut to `size`)."""
    if tensor.shape[0] > size:
        return tensor[:size]
    if tensor.shape[0] < size:
        times = [math.ceil(size / tensor.shape[0])] + [1] * (tensor.dim() - 1)
        return tensor.repeat(times)[:size]
    return tensor


def fit_to(target_shape, samples, repeat_batch: bool = True):
    """`samples` resized (bilinear, centre crop) to the target's spatial size when its non-batch shape
    differs, then (optionally) repeated or cut to the target's batch size."""
    from .resample import resize

    if tuple(samples.shape[1:]) != tuple(target_shape[1:]):
        samples = resize(samples, target_shape[-1], target_shape[-2], "bilinear", "center")
    return repeat_to_batch(samples, target_shape[0]) if repeat_batch else samples


def add(latent1: dict, latent2: dict) -> dict:
    s1 = latent1["samples"]
    return with_samples(latent1, s1 + fit_to(s1.shape, latent2["samples"]))


def subtract(latent1: dict, latent2: dict) -> dict:
    s1 = latent1["samples"]
    return with_samples(latent1, s1 - fit_to(s1.shape, latent2["samples"]))


def multiply(latent: dict, multiplier: float) -> dict:
    return with_samples(latent, latent["samples"] * multiplier)


def interpolate(latent1: dict, latent2: dict, ratio: float) -> dict:
    """Per latent pixel: the direction of ratio * unit(s1) + (1 - ratio) * unit(s2) (channel vectors),
    with the length ratio * |s1| + (1 - ratio) * |s2|. A zero vector has no direction (counts as 0)."""
    import torch

    s1 = latent1["samples"]
    s2 = fit_to(s1.shape, latent2["samples"])
    len1 = torch.linalg.vector_norm(s1, dim=1, keepdim=True)
    len2 = torch.linalg.vector_norm(s2, dim=1, keepdim=True)
    mixed = torch.nan_to_num(s1 / len1) * ratio + torch.nan_to_num(s2 / len2) * (1.0 - ratio)
    direction = torch.nan_to_num(mixed / torch.linalg.vector_norm(mixed, dim=1, keepdim=True))
    return with_samples(latent1, direction * (len1 * ratio + len2 * (1.0 - ratio)))


def blend(latent1: dict, latent2: dict, blend_factor: float) -> dict:
    """blend_factor * samples1 + (1 - blend_factor) * samples2; samples2 is first resized (bicubic,
    centre crop) to samples1's size when the shapes differ."""
    from .resample import resize

    s1, s2 = latent1["samples"], latent2["samples"]
    if s1.shape != s2.shape:
        s2 = resize(s2, s1.shape[-1], s1.shape[-2], "bicubic", "center")
    return with_samples(latent1, s1 * blend_factor + s2 * (1 - blend_factor))


def composite(destination: dict, source: dict, x: int, y: int, feather: int = 0) -> dict:
    """`source` pasted into `destination` at (x, y) pixels (whole latent cells), clipped to the
    destination. With feather (pixels), the pasted block fades in over that many cells on each edge
    that lies inside the destination: the t-th cell from such an edge (t = 1, 2, ...) takes t / n of
    the source."""
    import torch

    x, y, feather = x // CELL, y // CELL, feather // CELL
    target = destination["samples"]
    out = target.clone()
    block = source["samples"][..., :target.shape[-2] - y, :target.shape[-1] - x]
    h, w = block.shape[-2], block.shape[-1]
    region = (..., slice(y, y + h), slice(x, x + w))
    if feather == 0:
        out[region] = block
        return with_samples(destination, out)
    weight = torch.ones_like(block)
    for t in range(feather):
        rate = (t + 1) / feather
        if y != 0:
            weight[..., t, :] *= rate
        if y + h < target.shape[-2]:
            weight[..., h - 1 - t, :] *= rate
        if x != 0:
            weight[..., :, t] *= rate
        if x + w < target.shape[-1]:
            weight[..., :, w - 1 - t] *= rate
    out[region] = block * weight + out[region] * (1 - weight)
    return with_samples(destination, out)


def composite_masked(destination: dict, source: dict, x: int, y: int, resize_source: bool, mask=None,
                     multiplier: int = CELL) -> dict:
    """mask * source + (1 - mask) * destination over the source's footprint at (x, y) (pixels, in steps
    of `multiplier`), clipped to the destination. The source is repeated to the destination's batch
    (and first stretched, bilinear, to its size with resize_source); the mask is stretched
    (bilinear) to the source's size and repeated to its batch. No mask means the source replaces."""
    import torch
    import torch.nn.functional as F

    dest = destination["samples"].clone()
    src = source["samples"].to(dest.device)
    if resize_source:
        src = F.interpolate(src, size=tuple(dest.shape[-2:]), mode="bilinear")
    src = repeat_to_batch(src, dest.shape[0])
    x = max(-src.shape[-1] * multiplier, min(x, dest.shape[-1] * multiplier))
    y = max(-src.shape[-2] * multiplier, min(y, dest.shape[-2] * multiplier))
    left, top = x // multiplier, y // multiplier
    if mask is None:
        weight = torch.ones_like(src)
    else:
        weight = mask.to(dest.device, dtype=torch.float32).reshape((-1, 1, mask.shape[-2], mask.shape[-1]))
        weight = repeat_to_batch(F.interpolate(weight, size=tuple(src.shape[-2:]), mode="bilinear"),
                                 src.shape[0])
    visible_w = dest.shape[-1] - left + min(0, x)
    visible_h = dest.shape[-2] - top + min(0, y)
    weight = weight[..., :visible_h, :visible_w]
    if weight.dim() < src.dim():  # video latents: one mask for every frame
        weight = weight.unsqueeze(1)
    region = (..., slice(top, top + src.shape[-2]), slice(left, left + src.shape[-1]))
    dest[region] = weight * src[..., :visible_h, :visible_w] + (1 - weight) * dest[region]
    return with_samples(destination, dest)


def from_batch(latent: dict, batch_index: int, length: int) -> dict:
    """Entries batch_index .. batch_index + length - 1 (clipped to the batch), with their noise masks
    and batch indices (the positions in the batch when the latent had none)."""
    samples = latent["samples"]
    start = min(samples.shape[0] - 1, batch_index)
    length = min(samples.shape[0] - start, length)
    out = with_samples(latent, samples[start:start + length].clone())
    if "noise_mask" in latent:
        masks = latent["noise_mask"]
        if masks.shape[0] == 1:
            out["noise_mask"] = masks.clone()
        else:
            out["noise_mask"] = repeat_to_batch(masks, max(masks.shape[0], samples.shape[0]))[
                start:start + length].clone()
    indices = latent.get("batch_index", list(range(samples.shape[0])))
    out["batch_index"] = list(indices[start:start + length])
    return out


def repeat(latent: dict, amount: int) -> dict:
    """The batch repeated `amount` times. A per-entry noise mask is repeated with it; batch indices
    continue past the highest one, so repeats get noise of their own."""
    samples = latent["samples"]
    out = with_samples(latent, samples.repeat((amount,) + (1,) * (samples.dim() - 1)))
    masks = latent.get("noise_mask")
    if masks is not None and masks.shape[0] > 1:
        masks = repeat_to_batch(masks, max(masks.shape[0], samples.shape[0]))
        out["noise_mask"] = masks.repeat((amount,) + (1,) * (masks.dim() - 1))
    if "batch_index" in latent:
        indices = list(latent["batch_index"])
        offset = max(indices) - min(indices) + 1
        out["batch_index"] = indices + [i + k * offset for k in range(1, amount) for i in indices]
    return out


def batch(latents: list[dict]) -> dict:
    """All latents in one batch, each resized (bilinear, centre crop) to the first one's size; the
    batch indices of each (their positions when they have none) are concatenated."""
    import torch

    first = latents[0]["samples"]
    tensors, indices = [], []
    for latent in latents:
        tensors.append(fit_to(first.shape, latent["samples"], repeat_batch=False))
        indices.extend(latent.get("batch_index", range(latent["samples"].shape[0])))
    return with_samples(latents[0], torch.cat(tensors, dim=0), batch_index=list(indices))


def rotate(latent: dict, rotation: str) -> dict:
    """Rotated clockwise by the named angle."""
    import torch

    turns = {"90": 1, "180": 2, "270": 3}.get(rotation.split(" ")[0], 0)
    return with_samples(latent, torch.rot90(latent["samples"], k=turns, dims=[-1, -2]))


def flip(latent: dict, flip_method: str) -> dict:
    """'x-axis' mirrors top to bottom, 'y-axis' left to right."""
    import torch

    if flip_method.startswith("x"):
        return with_samples(latent, torch.flip(latent["samples"], dims=[-2]))
    if flip_method.startswith("y"):
        return with_samples(latent, torch.flip(latent["samples"], dims=[-1]))
    return dict(latent)


def crop(latent: dict, width: int, height: int, x: int, y: int) -> dict:
    """The width x height pixel region at (x, y), in whole cells; the corner is kept at least 8 cells
    (64 px) inside the right and bottom edges."""
    samples = latent["samples"]
    x = min(x // CELL, samples.shape[-1] - CELL)
    y = min(y // CELL, samples.shape[-2] - CELL)
    return with_samples(latent, samples[..., y:y + height // CELL, x:x + width // CELL])


def seed_behavior(latent: dict, behavior: str) -> dict:
    """'fixed': every entry gets the first entry's noise; 'random': each gets its own (the batch
    indices are dropped)."""
    out = dict(latent)
    if behavior == "random":
        out.pop("batch_index", None)
    elif behavior == "fixed":
        first = latent.get("batch_index", [0])[0]
        out["batch_index"] = [first] * latent["samples"].shape[0]
    return out
