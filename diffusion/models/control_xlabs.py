"""XLabs-AI's Flux ControlNets (flux-controlnet-{canny,depth,hed}-v3 and the like) in the layout XLabs
ships them, loaded as diffusers' FluxControlNetModel.

The file holds a small Flux of its own in Black Forest Labs' module names (img_in, txt_in, time_in,
vector_in, guidance_in, double_blocks.N, single_blocks.N: the v3 files have two double blocks and no
single ones) plus the ControlNet's parts:
  input_hint_block.{0,2,...,14}  eight 3x3 convolutions, 3 -> 16 -> ... -> 16 channels, SiLU between,
                                 stride 2 at the 3rd, 5th and 7th: the PIXEL hint down to the latent's size
  pos_embed_input                a Linear over the 2x2 patches of those 16 channels, added to img_in's tokens
  controlnet_blocks.N            a Linear after each double block (controlnet_single_blocks.N: single)
This is, part for part, diffusers' FluxControlNetModel built with conditioning_embedding_channels=16:
its ControlNetConditioningEmbedding is the same stack (conv_in, blocks.0-5, conv_out) and it packs
the stack's output in 2x2 patches before its controlnet_x_embedder, as ComfyUI's ControlNetFlux does
before pos_embed_input. So the Flux parts take the names families/flux.py gives them and the rest
are renamed here. How the outputs reach the model (cycled over its double blocks, the hint in
pixels) is diffusion/controlnet.py's `flux_inputs`.
"""

from __future__ import annotations

import re
from pathlib import Path

from genloom.diffusion.errors import CheckpointError

from .loading import build_module

MARK = "double_blocks.0.img_attn.norm.key_norm.scale"  # beside controlnet_blocks: ComfyUI's test too
HINT_CHANNELS, HINT_CONVS = 16, 8
# Sequential index of each hint convolution -> its name in diffusers' ControlNetConditioningEmbedding.
HINT_NAMES = {0: "conv_in", **{2 * i + 2: f"blocks.{i}" for i in range(HINT_CONVS - 2)},
              2 * HINT_CONVS - 2: "conv_out"}
OWN = {"pos_embed_input": "controlnet_x_embedder"}


def is_xlabs(keys) -> bool:
    """An XLabs-layout Flux ControlNet (Flux's own block names beside controlnet_blocks)? MistoLine's
    (controlnet_blocks.N.linear) answers yes too, to be refused by name."""
    keys = set(keys)
    return MARK in keys and any(k.startswith("controlnet_blocks.0.") for k in keys)


def xlabs_controlnet(state: dict, config, path: Path):
    """diffusers' FluxControlNetModel with a pixel hint encoder from an XLabs-layout state dict; its
    config from a config.json beside it or from the shapes."""
    from diffusers import FluxControlNetModel

    from .families.flux import to_diffusers

    if not is_xlabs(state):  # diffusers' names already (FluxControlNetModel saved with its hint encoder)
        if config is None:
            raise CheckpointError(f"{path.name}: a Flux ControlNet with a pixel hint encoder in diffusers' names "
                                  "and no config.json beside it; put its config.json beside it")
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        return build_module(FluxControlNetModel, config, state, "Flux ControlNet")
    if "controlnet_blocks.0.linear.weight" in state:
        raise CheckpointError(f"{path.name}: TheMisto's MistoLine Flux ControlNets (controlnet_blocks.N.linear) "
                              "are not supported yet; XLabs' and InstantX's are")
    shapes = {k: list(v.shape) for k, v in state.items()}
    _check_hint_encoder(shapes, path)
    own, flux = {}, {}
    for key, tensor in state.items():
        stem, _, suffix = key.rpartition(".")
        first, _, rest = stem.partition(".")
        if first == "input_hint_block":
            own[f"input_hint_block.{HINT_NAMES[int(rest)]}.{suffix}"] = tensor
        elif first in OWN:
            own[f"{OWN[first]}.{suffix}"] = tensor
        elif first in ("controlnet_blocks", "controlnet_single_blocks"):
            own[key] = tensor
        else:
            flux[key] = tensor
    try:
        mapped = to_diffusers(flux)
        if config is None:
            config = config_from_shapes(shapes)
    except (KeyError, CheckpointError) as exc:
        raise CheckpointError(f"{path.name}: an XLabs-style Flux ControlNet genloom cannot read "
                              f"({exc}); put its config.json beside it") from None
    config = {**{k: v for k, v in config.items() if not k.startswith("_")},
              "patch_size": 2, "conditioning_embedding_channels": HINT_CHANNELS}
    return build_module(FluxControlNetModel, config, {**mapped, **own}, "XLabs Flux ControlNet")


def config_from_shapes(shapes: dict) -> dict:
    """FluxControlNetModel's settings from BFL-named shapes: width and input from img_in, head size
    from the q norm, depth from the block indices, text widths, the guidance embedding."""
    from .families.flux import rope_axes

    width, in_channels = shapes["img_in.weight"]
    head = shapes[MARK][0]
    return {"in_channels": in_channels, "num_attention_heads": width // head, "attention_head_dim": head,
            "axes_dims_rope": list(rope_axes(head)), "num_layers": _count(shapes, "double_blocks"),
            "num_single_layers": _count(shapes, "single_blocks"),
            "joint_attention_dim": shapes["txt_in.weight"][1],
            "pooled_projection_dim": shapes["vector_in.in_layer.weight"][1],
            "guidance_embeds": "guidance_in.in_layer.weight" in shapes}


def _count(shapes: dict, blocks: str) -> int:
    rx = re.compile(rf"{blocks}\.(\d+)\.")
    return len({m.group(1) for k in shapes if (m := rx.match(k))})


def _check_hint_encoder(shapes: dict, path: Path) -> None:
    """The hint encoder must be XLabs' fixed stack (diffusers builds only that one)."""
    convs = sorted(int(m.group(1)) for k in shapes if (m := re.fullmatch(r"input_hint_block\.(\d+)\.weight", k)))
    widths = [shapes[f"input_hint_block.{i}.weight"][:2] for i in convs]
    want = [[HINT_CHANNELS, 3]] + [[HINT_CHANNELS, HINT_CHANNELS]] * (HINT_CONVS - 1)
    if convs != sorted(HINT_NAMES) or widths != want:
        raise CheckpointError(f"{path.name}: an XLabs-style Flux ControlNet whose hint encoder is not XLabs' "
                              f"eight 3x3 convolutions of 16 channels (found convolutions {convs}, "
                              f"{widths[:2]}...)")
