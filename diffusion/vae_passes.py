"""VAE passes beyond a plain encode/decode: cropping to the VAE's cell, tiled decoding with blended
seams, and encoding for inpainting."""

from __future__ import annotations

from genloom.engine import context


def crop_to_multiple(pixels, multiple: int, mask=None):
    """Centre-crop [B,H,W,C] (and a [B,1,H,W] mask) so both sides are multiples of the VAE scale."""
    h, w = pixels.shape[1], pixels.shape[2]
    nh, nw = (h // multiple) * multiple, (w // multiple) * multiple
    y, x = (h - nh) // 2, (w - nw) // 2
    if (nh, nw) != (h, w):
        pixels = pixels[:, y:y + nh, x:x + nw, :]
        if mask is not None:
            mask = mask[:, :, y:y + nh, x:x + nw]
    return pixels if mask is None else (pixels, mask)


def _feather(length: int, ramp_start: int, ramp_end: int):
    """1-D blend weights: rising over the first `ramp_start` and falling over the last `ramp_end`."""
    import torch

    w = torch.ones(length)
    if ramp_start:
        w[:ramp_start] = torch.linspace(0, 1, ramp_start + 2)[1:-1]
    if ramp_end:
        w[length - ramp_end:] = torch.linspace(1, 0, ramp_end + 2)[1:-1]
    return w


def _tile_starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


def decode_tiled(vae, latents, tile_size: int, overlap: int):
    """Decode overlapping latent tiles and blend them with linear ramps across each overlap."""
    import torch

    f = vae.scale_factor
    if overlap * 4 > tile_size:
        overlap = tile_size // 4  # tiles must mostly be new content
    tile, lap = max(tile_size // f, 1), overlap // f
    b, _c, h, w = latents.shape
    if h <= tile and w <= tile:
        return vae.decode(latents)
    stride = max(tile - lap, 1)
    ys, xs = _tile_starts(h, tile, stride), _tile_starts(w, tile, stride)
    out = torch.zeros(b, h * f, w * f, 3)
    weight = torch.zeros(1, h * f, w * f, 1)
    check_interrupt = context.current().check_interrupt
    for yi, y in enumerate(ys):
        for xi, x in enumerate(xs):
            check_interrupt()  # between tiles; inside one, the VAE's blocks check (VaeHandle.use)
            th, tw = min(tile, h - y), min(tile, w - x)
            pixels = vae.decode(latents[:, :, y:y + th, x:x + tw])
            top = (ys[yi - 1] + tile - y) * f if yi else 0
            left = (xs[xi - 1] + tile - x) * f if xi else 0
            bottom = (y + th - ys[yi + 1]) * f if yi + 1 < len(ys) else 0
            right = (x + tw - xs[xi + 1]) * f if xi + 1 < len(xs) else 0
            wy = _feather(th * f, max(top, 0), max(bottom, 0))
            wx = _feather(tw * f, max(left, 0), max(right, 0))
            wt = (wy[:, None] * wx[None, :])[None, :, :, None]
            out[:, y * f:(y + th) * f, x * f:(x + tw) * f] += pixels * wt
            weight[:, y * f:(y + th) * f, x * f:(x + tw) * f] += wt
    return out / weight.clamp_min(1e-6)


def encode_for_inpaint(vae, pixels, mask, grow_mask_by: int) -> dict:
    """A LATENT of `pixels` with the masked part greyed out, its noise mask the mask grown by
    `grow_mask_by` pixels."""
    import torch
    import torch.nn.functional as F

    h, w = pixels.shape[1], pixels.shape[2]
    m = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
    m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
    pixels, m = crop_to_multiple(pixels[..., :3].clone(), vae.scale_factor, m)
    hard = m.round()
    if grow_mask_by > 0:
        kernel = torch.ones(1, 1, grow_mask_by, grow_mask_by)
        pad = grow_mask_by // 2
        grown = F.conv2d(hard, kernel, padding=pad)[:, :, :hard.shape[2], :hard.shape[3]].clamp(0, 1)
    else:
        grown = hard
    keep = (1.0 - hard).movedim(1, -1)  # [B,H,W,1]
    if keep.shape[0] != pixels.shape[0]:
        keep = keep.expand(pixels.shape[0], -1, -1, -1) if keep.shape[0] == 1 else keep
    pixels = (pixels - 0.5) * keep + 0.5
    return {"samples": vae.encode(pixels), "noise_mask": grown.round()}
