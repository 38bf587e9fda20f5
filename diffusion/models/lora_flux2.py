"""Flux.2 (dev, Klein) LoRA key layouts, turned into the module names of diffusers' Flux2Transformer2DModel.

Layouts seen in the wild (all on target "unet", the diffusion model):
  BFL / ai-toolkit     diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight, ...single_blocks.0.linear1,
                       double_stream_modulation_img.lin (Flux.2's module names)
  kohya (sd-scripts)   lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight (+ .alpha), the same names
                       with underscores
  diffusers / peft     transformer.single_transformer_blocks.0.attn.to_qkv_mlp_proj.lora_A.weight (module
                       names as they are: nothing to do here, the module's own names match)

Flux.2 reuses Flux.1's block names for other layers (`img_mlp.0` is a SwiGLU input twice as wide,
`single_blocks.N.linear1` stays one fused layer in diffusers, `linear2` is the attention's output), so a
file's names alone do not say which model it is for. The shapes do: Flux.1's linear1 is 7 widths tall
(q, k, v and a 4x MLP), Flux.2's is 3 + 2 x 3 = 9; Flux.1's MLP input is as tall as its output is wide,
Flux.2's SwiGLU input twice; and only Flux.2 has the shared `*_stream_modulation` layers. A file with none
of these (attention only) has the same diffusers names either way and is left to Flux.1's mapping.

Fused layers are split as the weights are: a double block's `qkv` rows into q, k, v thirds, each keeping
the group's down matrix and alpha; the final modulation's (shift, scale) halves are swapped, as the
model's own converter does (diffusers' LoRA converter does not swap them).
"""

from __future__ import annotations

import re

from .flux2_keys import DOUBLE, QKV, SINGLE, TOP
from .lora_flux import _bfl_name

_FINAL_MOD = ("final_layer.adaLN_modulation.1", "norm_out.linear")
_TOP = {bfl: diffusers for diffusers, bfl in TOP.items()}
_DOUBLE = {bfl: diffusers for diffusers, bfl in DOUBLE.items()}
_DOUBLE_QKV = {fused: parts for fused, parts in QKV.values()}
_SINGLE = {bfl: diffusers for diffusers, bfl in SINGLE.items()}
_KOHYA_STREAMS = re.compile(r"^(double_stream_modulation_(?:img|txt)|single_stream_modulation)_lin$")


def _name(name: str) -> str:
    """A file's module name (kohya's underscores or BFL's dots) -> BFL's dotted name."""
    return _KOHYA_STREAMS.sub(r"\1.lin", _bfl_name(name))


def is_flux2(named: dict) -> bool:
    """Whether LoRA groups {BFL module name: {"up", "down", ...}} are for a Flux.2 model (module docstring)."""
    if any("stream_modulation" in n for n in named):
        return True
    for name, parts in named.items():
        rows = parts["up"].shape[0]
        if m := re.match(r"double_blocks\.(\d+)\.(img|txt)_mlp\.0$", name):
            out = named.get(f"double_blocks.{m[1]}.{m[2]}_mlp.2")
            if out is not None and rows == 2 * out["down"].flatten(1).shape[1]:
                return True
        elif m := re.match(r"single_blocks\.(\d+)\.linear1$", name):
            out = named.get(f"single_blocks.{m[1]}.linear2")
            if rows % 7 or (out is not None and rows != 7 * out["up"].shape[0]):
                return True
    return False


def _split(name: str, parts: dict) -> list[tuple[str, dict]] | None:
    """BFL module name -> [(diffusers module name, its group)], or None when it is not one."""
    up = parts["up"]
    if name in _TOP:
        return [(_TOP[name], parts)]
    if name == _FINAL_MOD[0]:
        return [(_FINAL_MOD[1], {**parts, "up": up.roll(up.shape[0] // 2, dims=0)})]
    m = re.match(r"(double|single)_blocks\.(\d+)\.(.+)$", name)
    if not m:
        return None
    if m[1] == "single":
        return [(f"single_transformer_blocks.{m[2]}.{_SINGLE[m[3]]}", parts)] if m[3] in _SINGLE else None
    block = f"transformer_blocks.{m[2]}."
    if m[3] in _DOUBLE:
        return [(block + _DOUBLE[m[3]], parts)]
    if m[3] in _DOUBLE_QKV:
        return [(block + d, {**parts, "up": u}) for d, u in zip(_DOUBLE_QKV[m[3]], up.chunk(3, dim=0))]
    return None


def expand(groups: dict) -> dict:
    """LoRA groups {(target, name): {"up", "down", "alpha"?}}: when they are a Flux.2 file's, its BFL/kohya
    names on the diffusion model renamed (fused qkv split) to diffusers module names; otherwise unchanged."""
    named = {_name(name): parts for (target, name), parts in groups.items() if target == "unet"}
    if not is_flux2(named):
        return groups
    out: dict = {}
    for (target, name), parts in groups.items():
        split = _split(_name(name), parts) if target == "unet" else None
        for new, part in split or [(name, parts)]:
            out[(target, new)] = part
    return out
