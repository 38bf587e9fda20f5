"""The Wan 2.1 video VAE (also Wan 2.2 14B's): its original key layout, and the VAE handle for 5-D
video latents.

Original layout (Wan's `Wan2.1_VAE.pth` / ComfyUI's `wan_2.1_vae.safetensors`): `encoder.conv1`,
`encoder.downsamples.N` (residual blocks `residual.{0,2,3,6}` + `shortcut`, resamplers with
`resample.1` and `time_conv`), `encoder.middle.{0,1,2}`, `encoder.head.{0,2}`, `conv1`/`conv2` (the
quant convolutions) and the decoder's mirror with `upsamples.N` in groups of four (three residual
blocks and a resampler). diffusers' converter renames these for the fixed Wan 2.1 structure (channel
multipliers 1, 2, 4, 4 and two residual blocks a level); the width and latent channels are read from
the shapes. `to_original` is its inverse, checked against it in the tests.

Wan 2.2 5B's VAE (`wan2.2_vae.safetensors`) nests its levels: `encoder.downsamples.L.downsamples.N`
(residual blocks, then the resampler) and `decoder.upsamples.L.upsamples.N`, with parameter-free
average/duplicate shortcuts; it patchifies 2x2 (12 input channels), has 48 latent channels, its own
decoder width and 16x spatial compression. diffusers' single-file converter does not know it; the
renaming here follows diffusers' Wan 2.2 conversion (`resnets.N`, `downsampler`/`upsampler`) into
AutoencoderKLWan(is_residual=True).

As in ComfyUI, VAEEncode takes an IMAGE batch as the frames of one video ([T, H, W, 3] ->
[1, 16, 1 + (T - 1) / 4, H / 8, W / 8]; Wan 2.2's [1, 48, ..., H / 16, W / 16]) and VAEDecode returns
the frames as an IMAGE batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from genloom.diffusion.errors import CheckpointError

from .handles import VaeHandle
from .loading import build_module
from .weights import exact_keys

_DETECT = ("encoder.downsamples.0.residual.0.gamma", "decoder.upsamples.0.residual.0.gamma")
_DETECT22 = ("encoder.downsamples.0.downsamples.0.residual.0.gamma", "decoder.upsamples.0.upsamples.0.residual.0.gamma")
_RESIDUAL = {"norm1.gamma": "residual.0.gamma", "conv1": "residual.2", "norm2.gamma": "residual.3.gamma",
             "conv2": "residual.6", "conv_shortcut": "shortcut"}
# diffusers' names -> the original ones, for the parts outside the levels
_FIXED = {"encoder.conv_in": "encoder.conv1", "decoder.conv_in": "decoder.conv1", "quant_conv": "conv1",
          "post_quant_conv": "conv2", "encoder.norm_out": "encoder.head.0", "encoder.conv_out": "encoder.head.2",
          "decoder.norm_out": "decoder.head.0", "decoder.conv_out": "decoder.head.2"}
# a Wan 2.2 level in diffusers' names: its residual blocks, then its resampler
_LEVEL22 = r"(encoder\.down|decoder\.up)_blocks\.(\d+)\.(resnets\.(\d+)|downsampler|upsampler)\.(.*)"


def detect(shapes: dict) -> bool:
    return all(k in shapes for k in _DETECT) or is_wan22(shapes)


def is_wan22(shapes) -> bool:
    """Wan 2.2 5B's VAE (nested levels), in the original layout."""
    return all(k in shapes for k in _DETECT22)


def _resnet(rest: str) -> str:
    for a, b in _RESIDUAL.items():
        if rest == a or rest.startswith(a + "."):
            return b + rest[len(a):]
    return rest


def _diffusers_resnet(rest: str) -> str:
    for a, b in _RESIDUAL.items():
        if rest == b or rest.startswith(b + "."):
            return a + rest[len(b):]
    return rest


def wan22_to_diffusers(state: dict) -> dict:
    """Wan 2.2 VAE tensors (original layout) -> AutoencoderKLWan(is_residual=True)'s names."""
    back = {v: k for k, v in _FIXED.items()}
    out = {}
    for key, value in state.items():
        head, _, leaf = key.rpartition(".")
        if head in back:
            out[f"{back[head]}.{leaf}"] = value
        elif m := re.match(r"(encoder|decoder)\.middle\.(\d)\.(.*)", key):
            block = f"attentions.0.{m[3]}" if m[2] == "1" else f"resnets.{int(m[2]) // 2}.{_diffusers_resnet(m[3])}"
            out[f"{m[1]}.mid_block.{block}"] = value
        elif m := re.match(r"(encoder\.down|decoder\.up)samples\.(\d+)\.(?:down|up)samples\.(\d+)\.(.*)", key):
            side, level, index, rest = m[1], m[2], m[3], m[4]
            if rest.startswith(("resample.", "time_conv.")):
                out[f"{side}_blocks.{level}.{side.split('.')[1]}sampler.{rest}"] = value
            else:
                out[f"{side}_blocks.{level}.resnets.{index}.{_diffusers_resnet(rest)}"] = value
        else:
            raise CheckpointError(f"unexpected tensor {key} in a Wan 2.2 VAE")
    return out


def to_original(state: dict) -> dict:
    """AutoencoderKLWan tensors -> the original layout (the inverse of diffusers' converter)."""
    nested = any(k.startswith("encoder.down_blocks.0.resnets.") for k in state)  # Wan 2.2's levels
    out = {}
    for key, value in state.items():
        head, _, leaf = key.rpartition(".")
        if head in _FIXED:
            out[f"{_FIXED[head]}.{leaf}"] = value
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.*)", key):
            out[f"{m[1]}.middle.{2 * int(m[2])}.{_resnet(m[3])}"] = value
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
            out[f"{m[1]}.middle.1.{m[2]}"] = value
        elif nested and (m := re.match(_LEVEL22, key)):  # Wan 2.2: residual blocks, then the resampler
            inner = "downsamples" if m[1].startswith("encoder") else "upsamples"
            index = m[4] if m[4] is not None else _resnet_count(state, f"{m[1]}_blocks.{m[2]}.")
            rest = _resnet(m[5]) if m[4] is not None else m[5]
            out[f"{m[1]}samples.{m[2]}.{inner}.{index}.{rest}"] = value
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.(.*)", key):
            out[f"encoder.downsamples.{m[1]}.{_resnet(m[2])}"] = value
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            out[f"decoder.upsamples.{4 * int(m[1]) + int(m[2])}.{_resnet(m[3])}"] = value
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
            out[f"decoder.upsamples.{4 * int(m[1]) + 3}.{m[2]}"] = value
        else:
            raise CheckpointError(f"no original-layout name for the Wan VAE tensor {key}")
    return out


def _resnet_count(state: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[1] for k in state if k.startswith(prefix + "resnets.")})


def config_from_shapes(shapes: dict) -> dict:
    base = shapes["encoder.conv1.weight"][0]
    z_dim = shapes["conv2.weight"][0]
    if is_wan22(shapes):
        pixels = shapes["encoder.conv1.weight"][1]  # 3 colours x patch x patch
        patch = round((pixels // 3) ** 0.5)
        return {"base_dim": base, "decoder_base_dim": shapes["decoder.head.2.weight"][1], "z_dim": z_dim,
                "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
                "temperal_downsample": [False, True, True], "is_residual": True, "in_channels": pixels,
                "out_channels": shapes["decoder.head.2.weight"][0], "patch_size": patch,
                "scale_factor_spatial": 8 * patch}
    if any(k.startswith("encoder.downsamples.11.") for k in shapes):
        raise CheckpointError("this Wan VAE has more levels than Wan 2.1's (a Wan 2.2 5B VAE?): not supported yet")
    return {"base_dim": base, "z_dim": z_dim, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
            "attn_scales": [], "temperal_downsample": [False, True, True],
            "in_channels": shapes["encoder.conv1.weight"][1], "out_channels": shapes["decoder.head.2.weight"][0]}


@dataclass(frozen=True, eq=False)
class VideoVaeHandle(VaeHandle):
    """A video VAE: frames in, 5-D latents out and back."""

    temporal_factor: int = 4

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.z_dim)

    @property
    def scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.dim_mult) - 1) * int(self.vae.config.patch_size or 1)

    @property
    def scaling_factor(self) -> float:
        return 1.0  # the MODEL's latent format (per-channel mean/std) does the scaling

    def encode(self, images):
        """Frames [T, H, W, C] 0..1 -> raw latents [1, C, 1 + (T - 1) // 4, H / 8, W / 8] (posterior mean).
        An RGBA VAE (Qwen-Image-Layered's) given RGB frames gets them opaque: alpha 1, as ComfyUI pads."""
        import torch
        import torch.nn.functional as F

        channels = int(self.vae.config.in_channels) // int(self.vae.config.patch_size or 1) ** 2  # Wan 2.2: 12 / 2x2
        with torch.no_grad(), self.use() as vae:
            param = next(vae.parameters())
            x = images[..., :channels].movedim(-1, 0).unsqueeze(0).to(param.device, param.dtype) * 2.0 - 1.0
            if x.shape[1] < channels:
                x = F.pad(x, (0, 0, 0, 0, 0, 0, 0, channels - x.shape[1]), value=1.0)
            return vae.encode(x).latent_dist.mode().float().cpu()

    def decode(self, latents):
        """Raw latents [B, C, T, h, w] (or [B, C, h, w]: one frame) -> frames [B * T', H, W, 3 or 4 (RGBA)]."""
        import torch

        if latents.ndim == 4:
            latents = latents.unsqueeze(2)
        with torch.no_grad(), self.use() as vae:
            param = next(vae.parameters())
            video = vae.decode(latents.to(param.device, param.dtype)).sample  # [B, 3, T', H, W]
            frames = ((video.float() + 1.0) / 2.0).clamp(0, 1).permute(0, 2, 3, 4, 1)
            return frames.reshape(-1, *frames.shape[2:]).cpu()


def build(state: dict, name: str = "") -> VideoVaeHandle:
    """A Wan 2.1 or 2.2 VAE from its original-layout tensors (every tensor used, none missing)."""
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    shapes = {k: tuple(v.shape) for k, v in state.items()}
    config = config_from_shapes(shapes)
    converted = wan22_to_diffusers(state) if is_wan22(shapes) else convert_wan_vae_to_diffusers(dict(state))
    module = build_module(AutoencoderKLWan, config, converted, "Wan VAE")
    exact_keys(converted, module.state_dict().keys(), "Wan VAE")
    return VideoVaeHandle(vae=module.eval(), name=name)


def save_original(vae: Any, path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in to_original(vae.state_dict()).items()}, str(path))
