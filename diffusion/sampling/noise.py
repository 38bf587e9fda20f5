"""Seeded starting noise and noise masks."""

from __future__ import annotations


def initial_noise(latent: dict, seed: int):
    """Noise drawn on the CPU from one generator in the latent's shape, so a seed gives the same
    image on every device; with batch_index, the noise of those positions in a larger batch."""
    import torch

    samples = latent["samples"]
    gen = torch.Generator("cpu").manual_seed(int(seed))
    indices = latent.get("batch_index")
    if not indices:
        return torch.randn(samples.shape, generator=gen, dtype=torch.float32), gen
    full = torch.randn((max(indices) + 1, *samples.shape[1:]), generator=gen, dtype=torch.float32)
    return full[list(indices)], gen


def prepare_mask(mask, latent_shape, device):
    """A noise mask [B?,(1,)H,W] in any size -> [B,1,h,w] at latent size (1 = regenerate)."""
    import torch
    import torch.nn.functional as F

    m = mask.to(device=device, dtype=torch.float32)
    if len(latent_shape) == 5:
        return _video_mask(m, latent_shape)
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[:, None]
    m = m[:, :1]
    b, _c, h, w = latent_shape
    if tuple(m.shape[-2:]) != (h, w):
        m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
    if m.shape[0] != b:
        reps = -(-b // m.shape[0])
        m = m.repeat(reps, 1, 1, 1)[:b]
    return m


def _video_mask(m, latent_shape):
    """A video latent's noise mask ([B, 1, T, h, w], or frames of [h, w]) -> [B, 1, T, h, w] at its size,
    trilinear like ComfyUI's reshape_mask."""
    import torch.nn.functional as F

    if m.ndim < 5:
        m = m.reshape(1, 1, -1, m.shape[-2], m.shape[-1])
    m = m[:, :1]
    if tuple(m.shape[2:]) != tuple(latent_shape[2:]):
        m = F.interpolate(m, size=tuple(latent_shape[2:]), mode="trilinear", align_corners=False)
    b = latent_shape[0]
    if m.shape[0] != b:
        m = m.repeat(-(-b // m.shape[0]), 1, 1, 1, 1)[:b]
    return m
