"""Resizing [B, C, H, W] tensors the way the scale nodes offer it, for pictures and latents alike.

Torch's interpolate covers nearest-exact, bilinear, area and bicubic. Lanczos goes through PIL one
float channel at a time (no 8-bit rounding). Bislerp is for latents: a latent pixel is a direction
plus a length, and linear blending of two unlike vectors shrinks the length (washing out detail), so
it blends directions on the sphere and lengths linearly.
"""

from __future__ import annotations

IMAGE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
LATENT_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
CROP_METHODS = ["disabled", "center"]


def center_crop_to_aspect(samples, width: int, height: int):
    """The centred region of `samples` with the aspect ratio of width x height."""
    old_h, old_w = samples.shape[-2], samples.shape[-1]
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * new_aspect / old_aspect) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * old_aspect / new_aspect) / 2)
    return samples[..., y:old_h - y, x:old_w - x]


def resize(samples, width: int, height: int, method: str, crop: str = "disabled"):
    """`samples` [B, C, H, W] resized to height x width (optionally centre-cropped to that aspect)."""
    import torch.nn.functional as F

    if crop == "center":
        samples = center_crop_to_aspect(samples, width, height)
    if method == "bislerp":
        return bislerp(samples, width, height)
    if method == "lanczos":
        return lanczos(samples, width, height)
    if method not in ("nearest-exact", "bilinear", "area", "bicubic"):
        raise ValueError(f"unknown upscale_method {method!r}")
    return F.interpolate(samples.float(), size=(height, width), mode=method).to(samples.dtype)


def lanczos(samples, width: int, height: int):
    import numpy as np
    import torch
    from PIL import Image

    flat = samples.detach().float().cpu().reshape(-1, samples.shape[-2], samples.shape[-1]).numpy()
    out = [np.asarray(Image.fromarray(ch, mode="F").resize((width, height), Image.LANCZOS)) for ch in flat]
    return torch.from_numpy(np.stack(out)).reshape(*samples.shape[:-2], height, width).to(samples.dtype)


def bislerp(samples, width: int, height: int):
    """Spherical interpolation between neighbouring latent vectors, first along x, then along y."""
    out = _slerp_axis(samples.float(), width, dim=-1)
    out = _slerp_axis(out, height, dim=-2)
    return out.to(samples.dtype)


def _slerp_axis(samples, size: int, dim: int):
    import torch

    n = samples.shape[dim]
    pos = ((torch.arange(size, dtype=torch.float32) + 0.5) * (n / size) - 0.5).clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    t = pos - lo.float()
    a = samples.index_select(dim, lo)
    b = samples.index_select(dim, hi)
    shape = [1] * samples.dim()
    shape[dim] = size
    return slerp(a, b, t.reshape(shape))


def slerp(a, b, t, eps: float = 1e-6):
    """Blend vectors along dim 1 (channels): direction on the great circle, length linearly."""
    import torch

    len_a = a.norm(dim=1, keepdim=True)
    len_b = b.norm(dim=1, keepdim=True)
    ua = a / len_a.clamp_min(eps)
    ub = b / len_b.clamp_min(eps)
    cos = (ua * ub).sum(dim=1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7)
    omega = torch.acos(cos)
    sin = torch.sin(omega)
    near = sin < 1e-4  # (anti)parallel vectors: the great circle is undefined, blend linearly
    safe_sin = torch.where(near, torch.ones_like(sin), sin)
    wa = torch.where(near, 1 - t, torch.sin((1 - t) * omega) / safe_sin)
    wb = torch.where(near, t, torch.sin(t * omega) / safe_sin)
    direction = wa * ua + wb * ub
    direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(eps)
    return direction * ((1 - t) * len_a + t * len_b)


def keep_aspect(width: int, height: int, src_w: int, src_h: int, minimum: int = 1) -> tuple[int, int]:
    """A 0 width or height follows from the other and the source's aspect ratio; each side is at
    least `minimum` (the latent upscale nodes ask for 64 px)."""
    if width == 0 and height == 0:
        return src_w, src_h
    if width == 0:
        height = max(minimum, height)
        width = max(minimum, round(src_w * height / src_h))
    elif height == 0:
        width = max(minimum, width)
        height = max(minimum, round(src_h * width / src_w))
    else:
        width, height = max(minimum, width), max(minimum, height)
    return width, height


def scale_image(image, width: int, height: int, method: str, crop: str = "disabled"):
    """IMAGE [B, H, W, C] resized, kept in 0..1."""
    out = resize(image.movedim(-1, 1), width, height, method, crop)
    return out.movedim(1, -1).clamp(0, 1).contiguous()
