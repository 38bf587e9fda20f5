"""ComfyUI's `comfy.sd` for node packs: loading checkpoints and LoRAs through genloom's loaders, and
the CLIP / VAE types (genloom's handles answer ComfyUI's methods: diffusion/models/comfy_objects.py)."""

from __future__ import annotations

from pathlib import Path

from genloom.diffusion.models.comfy_objects import ClipPatcher
from genloom.diffusion.models.handles import ClipHandle, VaeHandle


class _Kind(type):
    def __instancecheck__(cls, obj):
        return isinstance(obj, cls._accepts)


class CLIP(metaclass=_Kind):
    """isinstance(x, comfy.sd.CLIP) holds for genloom's CLIP objects; genloom builds them in its
    loaders, so the class is not constructed by packs."""

    _accepts = (ClipHandle, ClipPatcher)

    def __new__(cls, *args, **kwargs):
        raise NotImplementedError("genloom builds CLIP objects in its loaders (CheckpointLoaderSimple, "
                                  "comfy.sd.load_checkpoint_guess_config)")


class VAE(metaclass=_Kind):
    """`comfy.sd.VAE(sd=state_dict)` builds a VAE from its weights (LDM or diffusers keys), as
    genloom's VAELoader does; isinstance holds for genloom's VAE objects."""

    _accepts = (VaeHandle,)

    def __new__(cls, sd=None, device=None, config=None, dtype=None, metadata=None):
        from genloom.diffusion.models.single_file import vae_from_state

        if sd is None:
            raise TypeError("comfy.sd.VAE needs its state dict (sd=...)")
        return vae_from_state(sd, "vae").vae


def _loaded(path: Path, build, tag: str = ""):
    from genloom.diffusion.models.owner import model_owner

    return model_owner().loaded.get(path, build, tag)


def load_checkpoint_guess_config(ckpt_path, output_vae=True, output_clip=True, output_clipvision=False,
                                 embedding_directory=None, output_model=True, model_options=None,
                                 te_model_options=None):
    """(MODEL, CLIP, VAE, CLIP_VISION) from a single-file checkpoint (the same objects genloom's
    CheckpointLoaderSimple gives for that file); None where an output is not asked for. genloom has
    no CLIP vision models: that one is always None."""
    from genloom.diffusion.models.single_file import load_single_file

    path = Path(ckpt_path)
    bundle = _loaded(path, lambda: load_single_file(path))
    return (bundle.model if output_model else None, bundle.clip if output_clip else None,
            bundle.vae if output_vae else None, None)


def load_checkpoint(config_path=None, ckpt_path=None, output_vae=True, output_clip=True,
                    embedding_directory=None, state_dict=None, config=None):
    """ComfyUI's older loader: the config file is not needed (genloom reads the layout)."""
    return load_checkpoint_guess_config(ckpt_path, output_vae, output_clip)[:3]


def load_lora_for_models(model, clip, lora, strength_model, strength_clip):
    """(model, clip) with a LoRA state dict applied (the inputs unchanged), as LoraLoader does with a
    file; either may be None."""
    from genloom.diffusion.models.lora import lora_from_state

    weights = lora_from_state(lora, "lora") if isinstance(lora, dict) else lora
    new_model = model.with_lora(weights, strength_model) if model is not None else None
    new_clip = clip.with_lora(weights, strength_clip) if clip is not None else None
    return (new_model, new_clip)
