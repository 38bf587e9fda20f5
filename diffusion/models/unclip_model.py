"""The MODEL handle of SD2.1 unCLIP checkpoints: a UNet that also takes a CLIP image embedding.

The original checkpoints (sd21-unclip-h/-l) hold the UNet's ADM input under
`model.diffusion_model.label_emb.0.{0,2}.*` (diffusers: a `class_embedding` of type "projection"
taking `class_labels`), the image encoder under `embedder.model.visual.*` and the noise
augmentor's schedule buffers under `noise_augmentor.*` (betas, alphas_cumprod, ...). The ADM
input is [image embedding noised to a level, embedding of that level], built at sampling time from
the conditioning's `unclip_conditioning` list (unCLIPConditioning) as ComfyUI builds it:

  one image     level = round(999 * noise_augmentation); the embedding is noised by the cosine
                ("squaredcos_cap_v2", 1000 steps) schedule at that level with noise drawn from a
                CPU generator seeded with the sampler's seed - 10; the level's sinusoidal embedding
                (cos half first) is appended; the whole vector is multiplied by `strength`
  several       (several unCLIPConditioning nodes, or a batch of pictures) their vectors are
                summed, then the image part is noised once more at level round(999 * 0.05), with
                noise drawn next from the same generator, and given that level's embedding
  none          zeros (a negative prompt without unCLIPConditioning), as ComfyUI
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import SamplingError
from .handles import ModelHandle

NOISE_LEVELS = 1000  # the augmentor's schedule length and max noise level
MERGE_AUGMENTATION = 0.05  # ComfyUI's re-noising of summed embeddings
SEED_OFFSET = 10


def noise_schedule(levels: int = NOISE_LEVELS):
    """(sqrt(alphas_cumprod), sqrt(1 - alphas_cumprod)) of the cosine schedule capped at 0.999."""
    import torch

    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / levels) / alpha_bar(i / levels), 0.999) for i in range(levels)]
    cumprod = torch.cumprod(1 - torch.tensor(betas, dtype=torch.float64), 0)
    return cumprod.sqrt().float(), (1 - cumprod).sqrt().float()


def level_embedding(level: int, dim: int):
    """[1, dim] sinusoidal embedding of a noise level: cos of the frequencies, then sin."""
    import torch

    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = float(level) * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)])
    if dim % 2:
        emb = torch.cat([emb, torch.zeros(1)])
    return emb[None]


def augment(embeds, level: int, gen, schedule):
    """Noise [1, D] image embeddings to `level` with noise drawn from `gen`; the level's embedding
    appended: [1, 2D]."""
    import torch

    keep, mix = schedule
    noise = torch.randn(embeds.shape, generator=gen, dtype=torch.float32)
    noised = keep[level] * embeds.float() + mix[level] * noise
    return torch.cat([noised, level_embedding(level, embeds.shape[-1])], dim=1)


def adm_input(unclip_conditioning, width: int, seed: int):
    """ComfyUI's ADM vector [1, width] from a conditioning's unclip_conditioning (see the module doc)."""
    import torch

    if not unclip_conditioning:
        return torch.zeros((1, width))
    schedule = noise_schedule()
    dim = width // 2
    parts, gen = [], None
    for entry in unclip_conditioning:
        embeds = entry["clip_vision_output"]["image_embeds"]
        if embeds.ndim != 2 or embeds.shape[-1] != dim:
            raise SamplingError(f"this unCLIP model takes {dim}-wide CLIP image embeddings; the "
                                f"clip_vision_output has shape {tuple(embeds.shape)}: use the CLIP vision "
                                "model of the unCLIP checkpoint")
        level = round((NOISE_LEVELS - 1) * float(entry["noise_augmentation"]))
        for row in embeds:
            gen = torch.Generator().manual_seed(int(seed) - SEED_OFFSET)
            parts.append(augment(row[None], level, gen, schedule) * float(entry["strength"]))
    if len(parts) <= 1:
        return parts[0] if parts else torch.zeros((1, width))
    summed = torch.stack(parts).sum(0)
    return augment(summed[:, :dim], round((NOISE_LEVELS - 1) * MERGE_AUGMENTATION), gen, schedule)


@dataclass(frozen=True, eq=False)
class UnclipHandle(ModelHandle):
    """An SD2 UNet with a "projection" class embedding: `class_labels` is its ADM input."""

    @property
    def adm_width(self) -> int:
        return int(self.unet.config.projection_class_embeddings_input_dim)

    def cond_extras(self, extra: dict, height: int, width: int) -> dict:
        if extra.get("control") is not None:
            raise SamplingError("ControlNets on unCLIP models are not supported yet")
        out = super().cond_extras(extra, height, width)
        out["class_labels"] = adm_input(extra.get("unclip_conditioning"), self.adm_width,
                                        int(extra.get("seed", 0)))
        return out

    def predict(self, unet, x, t, emb, extras: dict):
        return unet(x, t, encoder_hidden_states=emb, class_labels=extras["class_labels"].to(x.dtype),
                    return_dict=False)[0]


def is_unclip_unet(unet) -> bool:
    return getattr(unet.config, "class_embed_type", None) == "projection" and \
        getattr(unet.config, "addition_embed_type", None) is None
