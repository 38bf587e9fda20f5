"""Writing loaded (and patched: LoRAs, merges) models back to single files, as ComfyUI's
CheckpointSave, CLIPSave and VAESave do.

Weights are written as the model computes with them (every patch applied) in the original key
layout ComfyUI loads: a checkpoint's UNet under model.diffusion_model.*, its VAE under
first_stage_model.*, its text encoders where their kind keeps them (single_file / keymaps
PREFIXES); a VAE file in the LDM VAE layout without prefix; a text encoder file per encoder in
transformers' names (ComfyUI's clip_l / clip_g / clip_h files). Each file also carries genloom's
metadata (single_file's "genloom.*" keys), so a model of any size loads back in genloom exactly.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from genloom.diffusion.errors import CheckpointError

from . import keymaps
from .lora import patched
from .owner import model_owner
from .single_file import _tokenizer_files

ARCHITECTURES = {"sdxl": "stable-diffusion-xl-v1-base",  # ComfyUI's modelspec.architecture
                 "sdxl_refiner": "stable-diffusion-xl-v1-refiner"}


def _cpu(state: dict) -> dict:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def unet_state(model) -> dict:
    """The MODEL's diffusers UNet weights with its patches applied, on the CPU."""
    with model.use() as unet:
        return _cpu(unet.state_dict())


def text_states(clip) -> list:
    """Each text encoder's weights (transformers names) with the CLIP's patches applied."""
    out = []
    for i, encoder in enumerate(clip.text_encoders):
        target = "text_encoder" if i == 0 else "text_encoder_2"
        with model_owner().memory.use(encoder, getattr(clip, "device", None)) as enc, \
                patched(enc, clip.patches, target):
            out.append(_cpu({k: v for k, v in enc.state_dict().items() if not k.endswith("position_ids")}))
    return out


def vae_state(vae) -> dict:
    with vae.use() as module:
        return _cpu(module.state_dict())


def _tokenizers(clip) -> list:
    files = []
    for tok in clip.tokenizers:
        with tempfile.TemporaryDirectory() as tmp:
            tok.save_pretrained(tmp)
            files.append(_tokenizer_files(Path(tmp)))
    return files


def checkpoint_file(model, clip, vae) -> tuple[dict, dict]:
    """(tensors, metadata) of a single-file checkpoint of MODEL + CLIP + VAE."""
    import torch

    kind = getattr(model, "kind", "")
    if kind not in keymaps.PREFIXES:
        raise CheckpointError(f"saving a {kind} model as a checkpoint is not supported (SD1, SD2 and SDXL are)")
    prefixes = keymaps.PREFIXES[kind]
    unet_config = dict(model.unet.config)
    configs = {"unet": unet_config, "scheduler": dict(model.scheduler_config)}
    tensors = keymaps.map_keys(unet_state(model), keymaps.unet_map(unet_config), prefixes["unet"], "unet")
    if vae is not None:
        configs["vae"] = dict(vae.vae.config)
        tensors.update(keymaps.map_keys(vae_state(vae), keymaps.vae_map(configs["vae"]), prefixes["vae"], "vae"))
    tokenizers = []
    if clip is not None:
        parts = [p for p in ("text_encoder", "text_encoder_2") if p in prefixes]
        for part, state, encoder in zip(parts, text_states(clip), clip.text_encoders):
            layout, prefix = prefixes[part]
            tensors.update(keymaps.text_to_ldm(state, layout, prefix))
            configs[part] = encoder.config.to_dict()
        tokenizers = _tokenizers(clip)
    if model.prediction_type == "v_prediction":
        tensors["v_pred"] = torch.tensor([])  # how ComfyUI marks a v-prediction checkpoint
    meta = {"genloom.format": "1", "genloom.kind": kind, "genloom.configs": json.dumps(configs, default=str),
            "genloom.tokenizers": json.dumps(tokenizers)}
    if kind in ARCHITECTURES:
        meta.update({"modelspec.sai_model_spec": "1.0.0", "modelspec.implementation": "sgm",
                     "modelspec.architecture": ARCHITECTURES[kind]})
    meta["modelspec.predict_key"] = "v" if model.prediction_type == "v_prediction" else "epsilon"
    return tensors, meta


def vae_file(vae) -> tuple[dict, dict]:
    """(tensors, metadata) of a standalone VAE file in the LDM layout."""
    config = dict(vae.vae.config)
    tensors = keymaps.map_keys(vae_state(vae), keymaps.vae_map(config), "", "vae")
    return tensors, {"genloom.format": "1", "genloom.configs": json.dumps({"vae": config}, default=str)}


def clip_files(clip) -> list[tuple[str, dict]]:
    """[(role suffix, tensors)] per text encoder, as ComfyUI's CLIPSave splits them."""
    roles = getattr(clip, "roles", ()) or {"sd2": ("clip_h",), "sdxl_refiner": ("clip_g",)}.get(
        clip.kind, ("clip_l", "clip_g"))
    out = []
    for role, state in zip(roles, text_states(clip)):
        out.append((role, {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v
                           for k, v in state.items()}))
    return out


def save_output(prefix: str, tensors: dict, metadata: dict, prompt=None, extra_pnginfo=None) -> Path:
    """Write `{prefix}_{counter:05}_.safetensors` under the output folder (the prefix may name
    subfolders; UnsafePath when it would leave the folder) with ComfyUI's "prompt" and workflow
    metadata unless the run disables metadata; returns the file's path."""
    from safetensors.torch import save_file

    from genloom.diffusion.images import save_target, write_new
    from genloom.engine import context

    ctx = context.current()
    target, _subfolder, name = save_target(ctx.folders.output_dir, prefix)
    meta = dict(metadata)
    if not (ctx.options or {}).get("disable_metadata"):
        meta["prompt"] = json.dumps(prompt) if prompt is not None else ""
        for key, value in (extra_pnginfo or {}).items():
            meta[key] = json.dumps(value)
    filename = write_new(target, name, "safetensors", lambda _fh: None)  # reserves the name
    save_file(tensors, str(target / filename), metadata=meta)
    return target / filename
