"""Latent formats: how a model family's latents relate to its VAE's raw latents (ComfyUI's facts).

LATENT carries raw VAE-space samples, as in ComfyUI. The MODEL carries its latent format and the
sampler applies it on the way in (`process_in`: (x - shift) * scale, or per channel
(x - mean) * scale / std) and out (`process_out`, the inverse), so a node editing
LATENT["samples"] sees the numbers ComfyUI's would. Spatial compression stays on the MODEL
(`vae_scale_factor`) and the VAE (`scale_factor`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LatentFormat:
    scale: float = 1.0
    shift: float = 0.0
    channels: int = 4
    mean: tuple | None = None  # per-channel (Wan-style formats); with `std`
    std: tuple | None = None

    def _stats(self, x):
        import torch

        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).reshape(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).reshape(shape)
        return mean, std

    def process_in(self, x):
        if self.mean is not None:
            mean, std = self._stats(x)
            return (x - mean) * self.scale / std
        if self.shift:
            return (x - self.shift) * self.scale
        return x * self.scale

    def process_out(self, x):
        if self.mean is not None:
            mean, std = self._stats(x)
            return x * std / self.scale + mean
        if self.shift:
            return x / self.scale + self.shift
        return x / self.scale


SD1 = LatentFormat(0.18215)
SDXL = LatentFormat(0.13025)
SD3 = LatentFormat(1.5305, 0.0609, channels=16)
FLUX = LatentFormat(0.3611, 0.1159, channels=16)
# Playground v2.5 (ModelSamplingContinuousEDM's edm_playground_v2.5): per-channel mean/std, scale 0.5.
PLAYGROUND_2_5 = LatentFormat(0.5, mean=(-1.6574, 1.886, -1.383, 2.5155), std=(8.4927, 5.9022, 6.5498, 5.2299))
# Model kinds whose latents are videos, [B, C, T, H, W] (Qwen-Image-Layered's frames are its layers).
VIDEO_KINDS = frozenset({"wan", "qwen_image_layered"})
# Model kind (ModelHandle.kind) -> its family's format.
BY_KIND = {"sd1": SD1, "sd2": SD1, "sdxl": SDXL, "sdxl_refiner": SDXL, "sd3": SD3, "flux": FLUX}


def of_model(model) -> LatentFormat:
    """The MODEL's latent format: its own if its loader set one, else its family's."""
    own = getattr(model, "latent_format", None)
    if own is not None:
        return own
    return BY_KIND.get(getattr(model, "kind", "sd1"), SD1)
