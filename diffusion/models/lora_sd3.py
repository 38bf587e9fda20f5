"""SD3 / SD3.5 LoRA key layouts, turned into the module names of diffusers' SD3Transformer2DModel.

Layouts seen in the wild (target "unet", the diffusion model):
  kohya (sd-scripts)   lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight (original names, underscored)
  original, dotted     diffusion_model.joint_blocks.0.context_block.attn.qkv.lora_A.weight
  diffusers / peft     transformer.transformer_blocks.0.attn.to_q.lora_A.weight (module names as they are:
                       nothing to do here)
The original names go through the SD3 key table (sd3_keys.py), so a fused `qkv` is split
the way its weight is: the up matrix's rows into q, k, v thirds, each keeping the group's down matrix
and alpha, so each part's delta is exactly those rows of the fused layer's delta.
"""

from __future__ import annotations

import re

from .sd3_keys import entries

_KOHYA = re.compile(r"^joint_blocks_(\d+)_(x_block|context_block)_(attn2|attn|mlp|adaLN_modulation)_(qkv|proj|fc1|fc2|1)$")
_DOTTED = re.compile(r"^joint_blocks\.(\d+)\.(x_block|context_block)\.(.+)$")


def _original(name: str) -> str:
    m = _KOHYA.match(name)
    return f"joint_blocks.{m[1]}.{m[2]}.{m[3]}.{m[4]}" if m else name


def _targets(name: str):
    """An original module name -> (its diffusers module name(s), op) from the SD3 key table."""
    m = _DOTTED.match(name)
    if not m:
        return None
    block = int(m[1])
    for orig, diff, op in entries(block + 2, {block}, False):  # block is not the last: no swapped halves
        if orig == f"{name}.weight":
            strip = lambda k: k[: -len(".weight")]  # noqa: E731
            return ([strip(k) for k in diff] if isinstance(diff, list) else [strip(diff)]), op
    return None


def expand(groups: dict) -> dict:
    """LoRA groups {(target, name): {"up", "down", "alpha"?}} with SD3's original or kohya names on the
    diffusion model renamed (fused qkv split) to diffusers module names; others unchanged."""
    out: dict = {}
    for (target, name), parts in groups.items():
        found = _targets(_original(name)) if target == "unet" else None
        if found is None:
            out[(target, name)] = parts
            continue
        names, op = found
        if op == "qkv":
            for new, up in zip(names, parts["up"].chunk(3, dim=0)):
                out[(target, new)] = {**parts, "up": up}
        else:
            out[(target, names[0])] = parts
    return out
