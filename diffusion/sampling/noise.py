"""Noise and latent conversions: seeded starting noise, noise masks, clean-latent predictions."""

from __future__ import annotations

import math


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


def predict_x0(model_out, sample, sigma: float, space: str, prediction_type: str):
    """The clean latent implied by one model output at noise level `sigma` (VE), in VE units."""
    alpha = 1.0 / math.sqrt(1.0 + sigma * sigma)
    x_vp = sample * alpha if space == "ve" else sample
    if prediction_type == "epsilon":
        return (x_vp - (sigma * alpha) * model_out) / alpha
    if prediction_type == "v_prediction":
        return alpha * x_vp - (sigma * alpha) * model_out
    return model_out

