"""CLIP image embeddings noised the way ComfyUI's unCLIP noise augmentor does it, for the two
models that take one: SD2.1 unCLIP UNets (their ADM input, models/unclip_model.py) and SDXL
base/refiner UNets fed a CLIP-G image embedding in place of the pooled text ("revision",
handles.py). It sits apart from both handles so each can import it.

The ADM vector from a conditioning's `unclip_conditioning` list (unCLIPConditioning entries):

  one image     level = round(999 * noise_augmentation); the embedding is noised by the cosine
                ("squaredcos_cap_v2", 1000 steps) schedule at that level with noise drawn from a
                CPU generator seeded with the sampler's seed - 10; the level's sinusoidal embedding
                (cos half first) is appended; the whole vector is multiplied by `strength`
  several       (several unCLIPConditioning nodes, or a batch of pictures) their vectors are
                summed, then the image part is noised once more at the merge level, with noise
                drawn next from the same generator, and given that level's embedding. The merge
                level is round(999 * 0.05) for unCLIP models and 0 for SDXL, as ComfyUI's
                defaults are (level 0 of the cosine schedule still adds a little noise)
  none          zeros (a negative prompt without unCLIPConditioning), as ComfyUI

SDXL's pooled input is the image part of that vector (its first `pooled width` values): the
noised, strength-scaled embedding; the level embedding is dropped.
"""

from __future__ import annotations

import math

from ..errors import SamplingError

NOISE_LEVELS = 1000  # the augmentor's schedule length and max noise level
MERGE_AUGMENTATION = 0.05  # ComfyUI's re-noising of summed embeddings (unCLIP models)
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


def _check_width(unclip_conditioning, dim: int, what: str, hint: str) -> None:
    for entry in unclip_conditioning:
        embeds = entry["clip_vision_output"]["image_embeds"]
        if embeds.ndim != 2 or embeds.shape[-1] != dim:
            raise SamplingError(f"{what} takes {dim}-wide CLIP image embeddings; the clip_vision_output "
                                f"has shape {tuple(embeds.shape)}: {hint}")


def adm_input(unclip_conditioning, width: int, seed: int, merge: float = MERGE_AUGMENTATION):
    """ComfyUI's ADM vector [1, width] from a conditioning's unclip_conditioning (see the module doc)."""
    import torch

    if not unclip_conditioning:
        return torch.zeros((1, width))
    dim = width // 2
    _check_width(unclip_conditioning, dim, "this unCLIP model", "use the CLIP vision model of the unCLIP checkpoint")
    schedule = noise_schedule()
    parts, gen = [], None
    for entry in unclip_conditioning:
        level = round((NOISE_LEVELS - 1) * float(entry["noise_augmentation"]))
        for row in entry["clip_vision_output"]["image_embeds"]:
            gen = torch.Generator().manual_seed(int(seed) - SEED_OFFSET)
            parts.append(augment(row[None], level, gen, schedule) * float(entry["strength"]))
    if len(parts) <= 1:
        return parts[0] if parts else torch.zeros((1, width))
    summed = torch.stack(parts).sum(0)
    return augment(summed[:, :dim], round((NOISE_LEVELS - 1) * merge), gen, schedule)


def revision_pooled(unclip_conditioning, pooled_width: int, seed: int):
    """SDXL's pooled input [1, pooled_width] from CLIP image embeddings (see the module doc)."""
    _check_width(unclip_conditioning, pooled_width, "this SDXL model's pooled input (revision)",
                 "use the CLIP vision model of its big text encoder (CLIP-G, clip_vision_g)")
    return adm_input(unclip_conditioning, 2 * pooled_width, seed, merge=0.0)[:, :pooled_width]
