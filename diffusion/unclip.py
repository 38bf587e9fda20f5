"""unCLIP: SD2.1 unCLIP checkpoints (MODEL, CLIP, VAE and their image encoder) and the
conditioning that hands a CLIP image embedding to their UNet.

A checkpoint loads as CheckpointLoaderSimple loads it (its UNet gets the unCLIP handle,
models/unclip_model.py, which builds the UNet's ADM input while sampling), plus the CLIP vision
tower under `embedder.model.visual.*` (open-clip layout). unCLIPConditioning only records what to
use, as ComfyUI's does: each conditioning entry's "unclip_conditioning" list gains one
{clip_vision_output, strength, noise_augmentation}; the noise is drawn at sampling time, from the
sampler's seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genloom.diffusion.errors import CheckpointError


@dataclass(frozen=True, eq=False)
class UnclipBundle:
    """What unCLIPCheckpointLoader returns (owner.LoadedModels holds its fields weakly)."""

    model: Any
    clip: Any
    vae: Any
    clip_vision: Any


def load_unclip_checkpoint(path) -> UnclipBundle:
    from .clip_vision import clip_vision_from_state, vision_state
    from .models.single_file import bundle_from_state
    from .models.unclip_model import UnclipHandle
    from .models.weights import read_state_dict

    path = Path(path)
    state, meta = read_state_dict(path)
    try:
        tower = vision_state(state)
    except CheckpointError:
        raise CheckpointError(f"{path.name} has no CLIP vision model (embedder.model.visual.*): "
                              "not an unCLIP checkpoint; load it with CheckpointLoaderSimple") from None
    vision = clip_vision_from_state(tower, path.stem)
    bundle = bundle_from_state(state, meta, path.stem)
    if not isinstance(bundle.model, UnclipHandle):
        raise CheckpointError(f"{path.name} has a CLIP vision model but its UNet takes no image embedding "
                              "(no label_emb weights): not an unCLIP checkpoint")
    return UnclipBundle(bundle.model, bundle.clip, bundle.vae, vision)


def unclip_conditioning(conditioning: list, clip_vision_output, strength: float, noise_augmentation: float) -> list:
    """Each entry with {clip_vision_output, strength, noise_augmentation} appended to its
    "unclip_conditioning" list (a new list and dict: the input is not changed)."""
    if strength == 0:
        return conditioning
    item = {"clip_vision_output": clip_vision_output, "strength": float(strength),
            "noise_augmentation": float(noise_augmentation)}
    out = []
    for entry in conditioning:
        extra = dict(entry[1])
        extra["unclip_conditioning"] = list(extra.get("unclip_conditioning") or []) + [item]
        out.append([entry[0], extra])
    return out
