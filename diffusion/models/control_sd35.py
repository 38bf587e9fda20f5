"""Stability AI's official SD3.5 ControlNets (stable-diffusion-3.5-large-controlnet-{blur,canny,depth}:
`sd3.5_large_controlnet_*.safetensors`), loaded as diffusers' SD3ControlNetModel.

These differ from InstantX's SD3 ControlNets: no text input (no context embedder; its blocks are
single-stream DiT blocks on the image tokens), no patch or position embedding of their own, the real
pooled text (not zeros), the hint latent in the model's full latent format (with its shift). Their
image tokens are ComfyUI's (`input_tokens`): the base model's patch projection (ComfyUI copies the
base model's x_embedder into the ControlNet before the run, so a file's own is never used and is
dropped here) plus a sin-cos table computed for the latent's size, not the base model's stored
table that diffusers' StableDiffusion3ControlNetPipeline lends the ControlNet. Their outputs reach
every joint block of the base model, the last included (controlnet.py `sd3_inputs`).
The file's layout, as Stability saves it (diffusers' convert_sd3_controlnet_to_diffusers.py reads
the same names):
  time_text_embed.{timestep,text}_embedder.linear_{1,2}   diffusers' names already
  pos_embed_input.proj                                     the hint latent's 2x2 patch embedding
  transformer_blocks.N.{adaLN_modulation.1, attn.qkv, attn.proj, mlp.fc1, mlp.fc2}
  controlnet_blocks.N                                      one Linear per block
  control_type                                             0 blur, 1 canny, 2 depth (a scalar)
The width is 64 per head (ComfyUI's reading: heads = width / 64). The control type picks the hint's
preprocessing, as ComfyUI's load_controlnet_sd35 does (`hint_transform`).
"""

from __future__ import annotations

import re
from pathlib import Path

from genloom.diffusion.errors import CheckpointError

from .loading import build_module

MARK = "transformer_blocks.0.adaLN_modulation.1.bias"  # ComfyUI's test for this layout too
HEAD = 64
KINDS = {0: "blur", 1: "canny", 2: "depth"}
# Stability's block names -> diffusers' SD3SingleTransformerBlock names (attn.qkv is cut in three).
BLOCK = {"adaLN_modulation.1": "norm1.linear", "attn.proj": "attn.to_out.0", "mlp.fc1": "ff.net.0.proj",
         "mlp.fc2": "ff.net.2"}
KEPT = ("time_text_embed.", "pos_embed_input.", "controlnet_blocks.")
# A patch embedding in the file: ComfyUI overwrites it with the base model's before every run.
UNUSED = ("x_embedder.", "pos_embed.")


def is_sd35(keys, config) -> bool:
    """SD3.5's official kind: Stability's block names, or a diffusers config without position embedding."""
    return MARK in set(keys) or (config or {}).get("use_pos_embed") is False


def sd35_controlnet(state: dict, config, path: Path):
    """diffusers' SD3ControlNetModel (no context embedder, no pos_embed) from Stability's layout or
    diffusers' converted one; `hint_kind` on the module says the file's control type."""
    from diffusers import SD3ControlNetModel

    state = {k: v for k, v in state.items() if not k.startswith(UNUSED)}
    kind = state.pop("control_type", None)
    if MARK in state:
        state = to_diffusers(state, path)
    if config is None:
        shapes = {k: list(v.shape) for k, v in state.items()}
        width, pooled = shapes.get("time_text_embed.text_embedder.linear_1.weight", (0, 1))
        if width == pooled:  # ComfyUI's double_y_emb kind: it re-embeds the base model's pooled embedding
            raise CheckpointError(f"{path.name}: SD3.5 ControlNets whose pooled-text embedder is {width} wide, "
                                  "the model's width (they take the base model's own), are not supported yet")
        try:
            config = config_from_shapes(shapes)
        except KeyError as exc:
            raise CheckpointError(f"{path.name}: SD3.5 ControlNet weights of a shape genloom cannot read a "
                                  f"configuration from (no {exc}); put its config.json beside it") from None
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    if config.get("extra_conditioning_channels"):
        raise CheckpointError(f"{path.name}: SD3 ControlNets whose hint has extra channels are not supported yet")
    net = build_module(SD3ControlNetModel, config, state, "SD3.5 ControlNet")
    net.hint_kind = KINDS.get(round(float(kind.reshape(-1)[0])) if kind is not None else 0, "blur")
    return net


def config_from_shapes(shapes: dict) -> dict:
    """SD3ControlNetModel's settings from the shapes: width and pooled width from the text embedder,
    latent channels and patch from pos_embed_input, depth from the block indices, 64-wide heads;
    no text, no position embedding, the real pooled text (diffusers' conversion script's settings)."""
    width, pooled = shapes["time_text_embed.text_embedder.linear_1.weight"]
    _, in_channels, patch, _ = shapes["pos_embed_input.proj.weight"]
    return {"patch_size": patch, "in_channels": in_channels, "out_channels": in_channels,
            "num_layers": len({m.group(1) for k in shapes if (m := re.match(r"transformer_blocks\.(\d+)\.", k))}),
            "attention_head_dim": HEAD, "num_attention_heads": width // HEAD, "joint_attention_dim": None,
            "caption_projection_dim": width, "pooled_projection_dim": pooled, "pos_embed_max_size": None,
            "pos_embed_type": None, "use_pos_embed": False, "force_zeros_for_pooled_projection": False}


def to_diffusers(state: dict, path: Path) -> dict:
    """Stability's names -> diffusers'; a tensor with no place is an error naming it."""
    import torch

    out, unread = {}, []
    for key, tensor in state.items():
        m = re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)\.(weight|bias)", key)
        if key.startswith(KEPT):
            out[key] = tensor
        elif m and m.group(2) == "attn.qkv":
            for name, part in zip(("to_q", "to_k", "to_v"), torch.chunk(tensor, 3, dim=0)):
                out[f"transformer_blocks.{m.group(1)}.attn.{name}.{m.group(3)}"] = part
        elif m and m.group(2) in BLOCK:
            out[f"transformer_blocks.{m.group(1)}.{BLOCK[m.group(2)]}.{m.group(3)}"] = tensor
        else:
            unread.append(key)
    if unread:
        raise CheckpointError(f"{path.name}: SD3.5 ControlNet weights with no known name, e.g. {sorted(unread)[:3]}")
    return out


def hint_transform(kind: str):
    """The preprocessing ComfyUI gives the pixel hint (0..1) before the VAE, by control type: canny
    maps to x * 127.5 + 0.5 (ComfyUI's `a * 255 * 0.5 + 0.5`, kept as is), depth is inverted, blur
    untouched. None when there is nothing to do."""
    if kind == "canny":
        return lambda a: a * 127.5 + 0.5
    if kind == "depth":
        return lambda a: 1.0 - a
    return None


def input_tokens(base, x):
    """The ControlNet's image tokens as ComfyUI makes them: the base transformer's patch projection of
    the latent x [B, C, H, W] plus `sincos_table` for its patch grid, added in float32 (ComfyUI adds
    the float32 table into the tokens in place)."""
    tokens = base.pos_embed.proj(x).flatten(2).transpose(1, 2)
    patch = base.config.patch_size
    table = sincos_table(tokens.shape[-1], (x.shape[-2] + 1) // patch, (x.shape[-1] + 1) // patch, x.device)
    return (tokens.float() + table).to(tokens.dtype)


def sincos_table(width: int, h: int, w: int, device=None):
    """ComfyUI's get_2d_sincos_pos_embed_torch (mmdit.py, the default centre and magnitude 7.5):
    positions spread evenly over 15 units on the shorter side (centred on 7.5, the longer side
    proportionally wider), the first half of the width the sin-cos of the column position, the second
    of the row position, rows of the grid one after the other. [h * w, width], float32."""
    import torch

    small = min(h, w)
    rows = torch.linspace(7.5 - 7.5 * h / small, 7.5 + 7.5 * h / small, h, device=device)
    cols = torch.linspace(7.5 - 7.5 * w / small, 7.5 + 7.5 * w / small, w, device=device)
    grid_rows, grid_cols = torch.meshgrid(rows, cols, indexing="ij")
    quarter = width // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter)

    def waves(pos):
        angles = pos.reshape(-1, 1) * freqs
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([waves(grid_cols), waves(grid_rows)], dim=1)
