"""Flux.1 LoRA key layouts, turned into the diffusers module names of FluxTransformer2DModel.

Layouts seen in the wild (all on target "unet", the diffusion model):
  kohya (sd-scripts)   lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight, ..._single_blocks_0_linear1
  BFL / ai-toolkit     diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight (BFL module names)
  diffusers / peft     transformer.transformer_blocks.0.attn.to_q.lora_A.weight (module names as they are)
BFL's fused layers are split the way the weights are: `qkv` rows into q, k, v thirds, a single
block's `linear1` rows into q, k, v (width each) and the MLP (4 x width), the final modulation's
(shift, scale) halves swapped. Each part keeps the group's down matrix and alpha, so its delta is
exactly those rows of the fused layer's delta.
"""

from __future__ import annotations

import re

from .flux_keys import DOUBLE, DOUBLE_QKV, FINAL_MOD, SINGLE, SINGLE_FUSED, TOP, MLP_RATIO

PREFIXES = ("transformer.", "diffusion_model.", "model.diffusion_model.", "lora_transformer_")
BARE = ("double_blocks", "single_blocks", "transformer_blocks", "single_transformer_blocks")

_UNDERSCORED = [  # kohya spells BFL module names with underscores
    (re.compile(r"^double_blocks_(\d+)_(img|txt)_(attn|mlp|mod)_(qkv|proj|0|2|lin)$"), r"double_blocks.\1.\2_\3.\4"),
    (re.compile(r"^single_blocks_(\d+)_(linear1|linear2|modulation_lin)$"), r"single_blocks.\1.\2"),
    (re.compile(r"^(img_in|txt_in)$"), r"\1"),
    (re.compile(r"^(time_in|vector_in|guidance_in)_(in_layer|out_layer)$"), r"\1.\2"),
    (re.compile(r"^final_layer_(linear|adaLN_modulation_1)$"), r"final_layer.\1"),
]


def _bfl_name(name: str) -> str:
    for pattern, repl in _UNDERSCORED:
        if pattern.match(name):
            name = pattern.sub(repl, name)
            return name.replace("modulation_lin", "modulation.lin").replace("adaLN_modulation_1",
                                                                               "adaLN_modulation.1")
    return name


def _split(name: str, parts: dict) -> list[tuple[str, dict]] | None:
    """BFL module name -> [(diffusers module name, its group)], or None when it is not one."""
    up = parts["up"]

    def same(dst: str) -> list:
        return [(dst, parts)]

    def fused(dsts, sizes) -> list:
        return [(d, {**parts, "up": u}) for d, u in zip(dsts, up.split(sizes, dim=0))]

    if name in TOP:
        return same(TOP[name])
    if name == FINAL_MOD[0]:
        half = up.shape[0] // 2
        return [(FINAL_MOD[1], {**parts, "up": up.roll(half, dims=0)})]
    m = re.match(r"double_blocks\.(\d+)\.(.+)$", name)
    if m:
        d, rest = f"transformer_blocks.{m.group(1)}.", m.group(2)
        if rest in DOUBLE:
            return same(d + DOUBLE[rest])
        if rest in DOUBLE_QKV:
            third = up.shape[0] // 3
            return fused([d + x for x in DOUBLE_QKV[rest]], [third] * 3)
        return None
    m = re.match(r"single_blocks\.(\d+)\.(.+)$", name)
    if m:
        d, rest = f"single_transformer_blocks.{m.group(1)}.", m.group(2)
        if rest in SINGLE:
            return same(d + SINGLE[rest])
        if rest == "linear1":
            width = up.shape[0] // (3 + MLP_RATIO)
            return fused([d + x for x in SINGLE_FUSED], [width] * 3 + [MLP_RATIO * width])
    return None


def expand(groups: dict) -> dict:
    """LoRA groups {(target, name): {"up", "down", "alpha"?}} with Flux's BFL/kohya names on the
    diffusion model renamed (and fused layers split) to diffusers module names; others unchanged."""
    out: dict = {}
    for (target, name), parts in groups.items():
        split = _split(_bfl_name(name), parts) if target == "unet" else None
        if split is None:
            out[(target, name)] = parts
            continue
        for new, part in split:
            out[(target, new)] = part
    return out

