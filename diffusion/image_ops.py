"""Pixel operations on IMAGE tensors ([B, H, W, C] float in 0..1 on the CPU) and MASK tensors
([B, H, W]): batches, crops, flips, filters, colour quantisation, noise, solid images and sizes.

The filters follow ComfyUI's definitions: the Gaussian kernel is sampled on a grid spanning -1..1
whatever its size (so `sigma` is relative to the radius, not in pixels), borders are reflected, and
8-bit conversions for PIL truncate (`(x * 255).to(uint8)`).
"""

from __future__ import annotations

import math

BLEND_MODES = ["normal", "multiply", "screen", "overlay", "soft_light", "difference"]
DITHERS = ["none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16"]
ROTATIONS = ["none", "90 degrees", "180 degrees", "270 degrees"]
FLIPS = ["x-axis: vertically", "y-axis: horizontally"]


def pad_channels(image, channels: int):
    """`image` with opaque (1.0) channels appended up to `channels`."""
    import torch

    missing = channels - image.shape[-1]
    if missing <= 0:
        return image
    return torch.cat([image, torch.ones(*image.shape[:-1], missing, dtype=image.dtype)], dim=-1)


def match_channels(a, b):
    """(a, b) with the same channel count: the one with fewer gets opaque channels appended."""
    channels = max(a.shape[-1], b.shape[-1])
    return pad_channels(a, channels), pad_channels(b, channels)


def batch_images(images: list):
    """One batch of `images`: every later image is resized (bilinear, centre crop) to the first's size;
    pictures without alpha get an opaque one when another has it."""
    import torch

    from genloom.diffusion.resample import scale_image

    channels = max(image.shape[-1] for image in images)
    first = pad_channels(images[0], channels)
    out = [first]
    for image in images[1:]:
        image = pad_channels(image, channels)
        if image.shape[1:3] != first.shape[1:3]:
            image = scale_image(image, first.shape[2], first.shape[1], "bilinear", "center")
        out.append(image)
    return torch.cat(out, dim=0)


def from_batch(image, batch_index: int, length: int):
    index = min(image.shape[0] - 1, batch_index)
    length = min(image.shape[0] - index, length)
    return image[index:index + length].clone()


def crop(image, width: int, height: int, x: int, y: int):
    """The region at (x, y), clipped to the picture; x and y stay inside it."""
    x = min(x, image.shape[2] - 1)
    y = min(y, image.shape[1] - 1)
    return image[:, y:y + height, x:x + width, :]


def flip(image, method: str):
    import torch

    return torch.flip(image, dims=[1] if method.startswith("x") else [2])


def rotate(image, rotation: str):
    """Clockwise quarter turns."""
    import torch

    turns = ROTATIONS.index(rotation)
    return torch.rot90(image, k=turns, dims=[2, 1]) if turns else image


def blend(image1, image2, factor: float, mode: str):
    import torch

    from genloom.diffusion.resample import scale_image

    if image1.shape != image2.shape:
        image2 = scale_image(image2, image1.shape[2], image1.shape[1], "bicubic", "center")
    a, b = image1, image2
    if mode == "normal":
        mixed = b
    elif mode == "multiply":
        mixed = a * b
    elif mode == "screen":
        mixed = 1 - (1 - a) * (1 - b)
    elif mode == "overlay":
        mixed = torch.where(a <= 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b))
    elif mode == "soft_light":
        d = torch.where(a <= 0.25, ((16 * a - 12) * a + 4) * a, torch.sqrt(a))
        mixed = torch.where(b <= 0.5, a - (1 - 2 * b) * a * (1 - a), a + (2 * b - 1) * (d - a))
    elif mode == "difference":
        mixed = a - b
    else:
        raise ValueError(f"unknown blend mode {mode!r}")
    return torch.clamp(a * (1 - factor) + mixed * factor, 0, 1)


def gaussian_kernel(size: int, sigma: float):
    """[size, size] weights summing to 1, sampled on a -1..1 grid."""
    import torch

    axis = torch.linspace(-1, 1, size)
    d2 = axis[:, None] ** 2 + axis[None, :] ** 2
    weights = torch.exp(-d2 / (2.0 * sigma * sigma))
    return weights / weights.sum()


def _filter(image, kernel, radius: int):
    """Per-channel 2D convolution over the reflect-padded picture, keeping its size."""
    import torch.nn.functional as F

    channels = image.shape[-1]
    x = F.pad(image.movedim(-1, 1), (radius, radius, radius, radius), mode="reflect")
    weight = kernel.to(x.dtype).expand(channels, 1, *kernel.shape)
    return F.conv2d(x, weight, groups=channels).movedim(1, -1)


def blur(image, radius: int, sigma: float):
    if radius == 0:
        return image
    return _filter(image, gaussian_kernel(radius * 2 + 1, sigma), radius)


def sharpen(image, radius: int, sigma: float, alpha: float):
    """Unsharp kernel: the negated Gaussian scaled by alpha*10, its centre lifted so it sums to 1."""
    import torch

    if radius == 0:
        return image
    kernel = gaussian_kernel(radius * 2 + 1, sigma) * -(alpha * 10)
    kernel[radius, radius] = kernel[radius, radius] - kernel.sum() + 1.0
    return torch.clamp(_filter(image, kernel, radius), 0, 1)


def bayer_matrix(order: int):
    """The normalised ordered-dither matrix of side `order` (a power of two), values in -0.5..0.5."""
    import numpy as np

    m = np.zeros((1, 1), np.float32)
    for n in range(1, int(math.log2(order)) + 1):
        q = 4.0 ** n
        m = np.block([[m - 1.5 / q, m + 0.5 / q], [m + 1.5 / q, m - 0.5 / q]])
    return m


def quantize(image, colors: int, dither: str):
    """Each picture reduced to a palette of `colors` (PIL's median cut), dithered as asked."""
    import numpy as np
    import torch
    from PIL import Image

    out = torch.zeros_like(image)
    for b in range(image.shape[0]):
        picture = Image.fromarray((image[b, ..., :3] * 255).to(torch.uint8).numpy(), mode="RGB")
        palette = picture.quantize(colors=colors)
        if dither.startswith("bayer"):
            order = int(dither.split("-")[1])
            spread = 2 * 256 / (len(palette.getpalette()) // 3)
            matrix = spread * bayer_matrix(order) + 0.5
            h, w = image.shape[1], image.shape[2]
            tiled = np.tile(matrix, (math.ceil(h / order), math.ceil(w / order)))[:h, :w, None]
            shifted = np.clip(np.asarray(picture, np.float32) + tiled, 0, 255).astype(np.uint8)
            reduced = Image.fromarray(shifted).quantize(palette=palette, dither=Image.Dither.NONE)
        else:
            mode = Image.Dither.FLOYDSTEINBERG if dither == "floyd-steinberg" else Image.Dither.NONE
            reduced = picture.quantize(palette=palette, dither=mode)
        out[b, ..., :3] = torch.from_numpy(np.asarray(reduced.convert("RGB"), np.float32) / 255)
    return out


def add_noise(image, seed: int, strength: float):
    """image + strength * N(0, 1) noise from a CPU generator seeded with `seed`, clipped to 0..1."""
    import torch

    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(image.size(), generator=generator).to(image)
    return torch.clip(image + strength * noise, 0.0, 1.0)


def rgb_of(color: int) -> tuple[float, float, float]:
    return ((color >> 16) & 0xFF) / 255.0, ((color >> 8) & 0xFF) / 255.0, (color & 0xFF) / 255.0


def empty_image(width: int, height: int, batch_size: int, color: int):
    import torch

    return torch.tensor(rgb_of(color), dtype=torch.float32).expand(batch_size, height, width, 3).clone()


def color_to_mask(image, color: int):
    """1.0 where the pixel (rounded to 8 bits) is exactly `color` (0xRRGGBB), else 0.0."""
    import torch

    q = (torch.clamp(image, 0, 1.0) * 255.0).round().to(torch.int)
    packed = (q[..., 0] << 16) + (q[..., 1] << 8) + q[..., 2]
    return (packed == color).float()


RESIZE_TYPES = ["scale by multiplier", "scale dimensions", "scale longer dimension", "scale shorter dimension",
                "scale width", "scale height", "scale total pixels", "match size", "scale to multiple"]


def _aspect(w: int, h: int, width: int, height: int) -> tuple[int, int]:
    """width x height where a 0 side follows the other and the w:h aspect ratio."""
    if width == 0 and height == 0:
        return w, h
    if width == 0:
        return max(1, round(w * height / h)), height
    if height == 0:
        return width, max(1, round(h * width / w))
    return width, height


def resize_target(w: int, h: int, resize_type: str, params: dict, match=None) -> tuple[int, int]:
    """The (width, height) a ResizeImageMaskNode option asks for, for a w x h picture."""
    if resize_type == "scale dimensions":
        return _aspect(w, h, params["width"], params["height"])
    if resize_type == "scale by multiplier":
        return max(1, round(w * params["multiplier"])), max(1, round(h * params["multiplier"]))
    if resize_type in ("scale longer dimension", "scale shorter dimension"):
        size = params["longer_size" if resize_type == "scale longer dimension" else "shorter_size"]
        width_side = (w >= h) == (resize_type == "scale longer dimension")
        return _aspect(w, h, size, 0) if width_side else _aspect(w, h, 0, size)
    if resize_type == "scale width":
        return _aspect(w, h, params["width"], 0)
    if resize_type == "scale height":
        return _aspect(w, h, 0, params["height"])
    if resize_type == "scale total pixels":
        return total_pixels_size(w, h, params["megapixels"], 1)
    if resize_type == "match size":
        return (match.shape[2], match.shape[1]) if match.dim() == 4 else (match.shape[-1], match.shape[-2])
    if resize_type == "scale to multiple":
        m = params["multiple"]
        return max(m, round(w / m) * m), max(m, round(h / m) * m)
    raise ValueError(f"unknown resize_type {resize_type!r}")


def total_pixels_size(w: int, h: int, megapixels: float, steps: int) -> tuple[int, int]:
    """About megapixels * 2^20 pixels with w:h's aspect, each side rounded to a multiple of `steps`."""
    scale = math.sqrt(megapixels * 1024 * 1024 / (w * h))
    return max(steps, round(w * scale / steps) * steps), max(steps, round(h * scale / steps) * steps)


def resize_image_or_mask(value, width: int, height: int, method: str, crop: str = "disabled"):
    """An IMAGE [B, H, W, C] or MASK [B, H, W] / [H, W] resized to width x height."""
    from genloom.diffusion.resample import scale_image

    if value.dim() == 4:
        return scale_image(value, width, height, method, crop)
    mask = value.reshape(-1, value.shape[-2], value.shape[-1])[..., None]
    return scale_image(mask, width, height, method, crop)[..., 0]


def max_dimension_size(w: int, h: int, largest: int) -> tuple[int, int]:
    if h > w:
        return round(w / h * largest), largest
    if w > h:
        return largest, round(h / w * largest)
    return largest, largest


def resize_and_pad(image, target_width: int, target_height: int, padding_color: str, method: str):
    """The picture scaled to fit inside the target (aspect kept, sizes truncated) and centred on a
    white or black canvas."""
    import torch

    from genloom.diffusion.resample import scale_image

    batch, h, w, channels = image.shape
    scale = min(target_width / w, target_height / h)
    new_w, new_h = int(w * scale), int(h * scale)
    canvas = torch.full((batch, target_height, target_width, channels),
                        0.0 if padding_color == "black" else 1.0, dtype=image.dtype)
    top, left = (target_height - new_h) // 2, (target_width - new_w) // 2
    canvas[:, top:top + new_h, left:left + new_w] = scale_image(image, new_w, new_h, method)
    return canvas
