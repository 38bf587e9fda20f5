"""ComfyUI's `comfy.sampler_helpers` for node packs that drive sampling themselves: genloom's
memory manager loads models inside sampling, so preparing and cleaning up are light."""

from __future__ import annotations

import uuid


def convert_cond(cond) -> list:
    """CONDITIONING [[tensor, dict], ...] -> ComfyUI's inner form: dicts with "cross_attn"."""
    out = []
    for entry in cond or []:
        temp = dict(entry[1]) if len(entry) > 1 else {}
        if entry[0] is not None:
            temp["cross_attn"] = entry[0]
        temp["model_conds"] = temp.get("model_conds", {})
        temp["uuid"] = uuid.uuid4()
        out.append(temp)
    return out


def get_models_from_cond(cond, model_type: str) -> list:
    return [entry[1][model_type] for entry in cond or []
            if len(entry) > 1 and entry[1].get(model_type) is not None]


def get_additional_models(conds: dict, dtype=None) -> tuple:
    models = [m for c in conds.values() for m in get_models_from_cond(c, "control")]
    return models, 0


def prepare_mask(noise_mask, shape, device):
    """A noise mask resized to the latent [B, C, H, W] (repeated over channels)."""
    from genloom.diffusion.sampling.noise import prepare_mask as resize_mask

    mask = resize_mask(noise_mask, tuple(shape), device)
    return mask.expand(shape[0], shape[1], *mask.shape[2:]).contiguous()


def prepare_sampling(model, noise_shape, conds, model_options=None):
    """(the network view, conds, models loaded): genloom loads the network inside sampling."""
    return model.model, conds, []


def cleanup_models(conds, models) -> None:
    """Nothing to free: genloom's memory manager keeps or offloads models by its own budget."""


def cleanup_additional_models(models) -> None:
    """As cleanup_models."""
