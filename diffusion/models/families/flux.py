"""Flux.1 (dev, schnell, Kontext) diffusion-model files: Black Forest Labs' own key layout (what
UNETLoader users download) and diffusers-keyed files, read into diffusers' FluxTransformer2DModel.

The configuration comes from the tensor shapes, so tiny test models and full-size ones load alike:
width from `img_in`, head size from the q/k norm scales, depth from the block indices, guidance
embedding present => dev (guidance-distilled), absent => schnell. Kontext has dev's architecture (its
reference images are extra tokens, see flux_model.py). Every tensor of the model must come from the
file and every tensor of the file must go into the model: anything else is an error naming the keys.

BFL layout <-> diffusers (per double block i / single block j):
  img_in, txt_in                          x_embedder, context_embedder
  time_in / vector_in / guidance_in       time_text_embed.timestep_/text_/guidance_embedder
    .in_layer, .out_layer                   .linear_1, .linear_2
  double_blocks.i.img_attn.qkv            transformer_blocks.i.attn.to_q | to_k | to_v (rows)
  double_blocks.i.txt_attn.qkv            ... attn.add_q_proj | add_k_proj | add_v_proj
  single_blocks.j.linear1                 single_transformer_blocks.j.attn.to_q | to_k | to_v | proj_mlp
  final_layer.adaLN_modulation.1          norm_out.linear with its (shift, scale) halves swapped
"""

from __future__ import annotations

import re

from genloom.diffusion.errors import CheckpointError

from ..flux_keys import (DOUBLE, DOUBLE_NORMS, DOUBLE_QKV, FINAL_MOD, MLP_RATIO, SINGLE, SINGLE_FUSED,
                         SINGLE_NORMS, TOP)

NAME = "Flux.1"

BFL_MARKERS = ("double_blocks.0.img_attn.norm.key_norm.scale", "img_in.weight")
DIFFUSERS_MARKERS = ("transformer_blocks.0.attn.norm_added_k.weight", "x_embedder.weight",
                     "single_transformer_blocks.0.norm.linear.weight")


def layout(keys) -> str | None:
    """'bfl', 'diffusers' or None (not a Flux.1 transformer), from key names alone (the wrapper
    prefix already stripped: families.strip_prefix)."""
    names = set(keys)
    if all(m in names for m in BFL_MARKERS) and not any(k.startswith("double_stream_modulation") for k in names):
        if any(k.startswith(("distilled_guidance_layer.", "txt_in.individual_token_refiner")) for k in names):
            return None  # Chroma, HunyuanVideo: other families with Flux-like blocks
        return "bfl"
    if all(m in names for m in DIFFUSERS_MARKERS):
        return "diffusers"
    return None


def detect(keys_to_shapes: dict) -> bool:
    """Is this state dict (name -> shape) a Flux.1 transformer? For the family registry."""
    return layout(keys_to_shapes) is not None


def _count(names, pattern: str) -> int:
    found = {int(m.group(1)) for m in (re.match(pattern, n) for n in names) if m}
    return max(found) + 1 if found else 0


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Flux.1's rotary axes (16, 56, 56) for 128-wide heads; other head sizes (test models) keep the
    same proportions: the two spatial axes equal and even, the index axis the rest."""
    if head_dim == 128:
        return (16, 56, 56)
    side = (head_dim - head_dim // 8) // 2 // 2 * 2
    if side <= 0 or head_dim - 2 * side <= 0:
        raise CheckpointError(f"a Flux head size of {head_dim} is too small for rotary embeddings")
    return (head_dim - 2 * side, side, side)


def config_from_shapes(shapes: dict) -> dict:
    """diffusers' FluxTransformer2DModel config from a BFL or diffusers state dict's shapes."""
    shapes = {k: tuple(v) for k, v in shapes.items()}
    kind = layout(shapes)
    if kind is None:
        raise CheckpointError("not a Flux.1 diffusion model (no double_blocks / img_in keys)")
    if kind == "bfl":
        names = dict(img="img_in.weight", txt="txt_in.weight", vec="vector_in.in_layer.weight",
                     out="final_layer.linear.weight", norm="double_blocks.0.img_attn.norm.query_norm.scale",
                     mlp="double_blocks.0.img_mlp.0.weight", guide="guidance_in.in_layer.weight")
        depth = _count(shapes, r"double_blocks\.(\d+)\.")
        single = _count(shapes, r"single_blocks\.(\d+)\.")
    else:
        names = dict(img="x_embedder.weight", txt="context_embedder.weight",
                     vec="time_text_embed.text_embedder.linear_1.weight", out="proj_out.weight",
                     norm="transformer_blocks.0.attn.norm_q.weight", mlp="transformer_blocks.0.ff.net.0.proj.weight",
                     guide="time_text_embed.guidance_embedder.linear_1.weight")
        depth = _count(shapes, r"transformer_blocks\.(\d+)\.")
        single = _count(shapes, r"single_transformer_blocks\.(\d+)\.")
    try:
        width, in_channels = shapes[names["img"]]
        head_dim = shapes[names["norm"]][0]
        out_channels = shapes[names["out"]][0]
        mlp = shapes[names["mlp"]][0]
        joint, pooled = shapes[names["txt"]][1], shapes[names["vec"]][1]
    except KeyError as exc:
        raise CheckpointError(f"this Flux file lacks {exc.args[0]}") from None
    if width % head_dim:
        raise CheckpointError(f"Flux width {width} is not a multiple of its head size {head_dim}")
    if mlp != MLP_RATIO * width:
        raise CheckpointError(f"Flux blocks with an MLP of {mlp} for width {width} are not supported "
                              f"(diffusers' Flux blocks have ratio {MLP_RATIO})")
    return {"_class_name": "FluxTransformer2DModel", "patch_size": 1, "in_channels": int(in_channels),
            "out_channels": int(out_channels), "num_layers": depth, "num_single_layers": single,
            "attention_head_dim": int(head_dim), "num_attention_heads": int(width // head_dim),
            "joint_attention_dim": int(joint), "pooled_projection_dim": int(pooled),
            "guidance_embeds": names["guide"] in shapes, "axes_dims_rope": list(rope_axes(int(head_dim)))}


def _swap_halves(t):
    import torch

    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


# diffusers block list -> (BFL block list, one-to-one renames, q/k norm renames, fused layers)
_BLOCKS = {"transformer_blocks": ("double_blocks", DOUBLE, DOUBLE_NORMS, DOUBLE_QKV),
           "single_transformer_blocks": ("single_blocks", SINGLE, SINGLE_NORMS, {"linear1": SINGLE_FUSED})}


def to_diffusers(state: dict) -> dict:
    """A BFL-layout (or already diffusers-keyed) Flux state dict in diffusers' names; a key that
    fits no place of the model is an error naming it. Fused layers are cut by rows: q, k, v of the
    model's width each, then (linear1) the MLP."""
    import torch

    if layout(state) == "diffusers":
        return dict(state)
    width = state["img_in.weight"].shape[0]
    out: dict = {}
    left = dict(state)

    def take(src: str, dst: str, fn=None):
        for suffix in (".weight", ".bias"):
            if src + suffix in left:
                t = left.pop(src + suffix)
                out[dst + suffix] = fn(t) if fn else t

    for src, dst in TOP.items():
        take(src, dst)
    take(FINAL_MOD[0], FINAL_MOD[1], _swap_halves)
    for kind, (bfl, plain, norms, fused) in _BLOCKS.items():
        for i in range(_count(state, rf"{bfl}\.(\d+)\.")):
            b, d = f"{bfl}.{i}.", f"{kind}.{i}."
            for src, dst in plain.items():
                take(b + src, d + dst)
            for src, dst in norms.items():
                if b + src in left:
                    out[d + dst] = left.pop(b + src)
            for src, dsts in fused.items():
                for suffix in (".weight", ".bias"):
                    if b + src + suffix in left:
                        whole = left.pop(b + src + suffix)
                        sizes = [width] * 3 + [whole.shape[0] - 3 * width] * (len(dsts) - 3)
                        for dst, part in zip(dsts, torch.split(whole, sizes, dim=0)):
                            out[d + dst + suffix] = part
    if left:
        names = sorted(left)
        raise CheckpointError(f"this Flux file has {len(names)} tensors that fit no place of the model, "
                              f"e.g. {names[:4]}")
    return out


def to_original(state: dict) -> dict:
    """diffusers-named Flux weights -> the BFL layout (the inverse of `to_diffusers`)."""
    inverse = {dst: src for src, dst in TOP.items()}
    out: dict = {}
    for key, t in state.items():
        base, _, suffix = key.rpartition(".")
        m = re.match(r"(single_transformer_blocks|transformer_blocks)\.(\d+)\.(.+)$", base)
        if base in inverse:
            out[f"{inverse[base]}.{suffix}"] = t
        elif base == FINAL_MOD[1]:
            out[f"{FINAL_MOD[0]}.{suffix}"] = _swap_halves(t)
        elif not (m and _block_to_original(state, out, m.group(1), m.group(2), m.group(3), suffix)):
            raise CheckpointError(f"no Flux original name for {key}")
    return out


def _block_to_original(state: dict, out: dict, kind: str, i: str, rest: str, suffix: str) -> bool:
    """One block tensor into `out` under its BFL name (a fused layer when its first part comes);
    False when the name is none of the block's."""
    import torch

    bfl, plain, norms, fused = _BLOCKS[kind]
    b, tensor = f"{bfl}.{i}.", state[f"{kind}.{i}.{rest}.{suffix}"]
    plain_back = {v: k for k, v in plain.items()}
    norms_back = {v: k for k, v in norms.items()}
    if rest in plain_back:
        out[f"{b}{plain_back[rest]}.{suffix}"] = tensor
        return True
    if f"{rest}.{suffix}" in norms_back:
        out[b + norms_back[f"{rest}.{suffix}"]] = tensor
        return True
    for src, dsts in fused.items():
        if rest in dsts:
            if rest == dsts[0]:
                out[f"{b}{src}.{suffix}"] = torch.cat([state[f"{kind}.{i}.{n}.{suffix}"] for n in dsts], dim=0)
            return True
    return False


def build_transformer(state: dict, dtype=None, name: str = ""):
    """A FluxTransformer2DModel holding exactly the file's weights (no random init): every tensor
    of the model from `state` and nothing left over, or a CheckpointError naming the keys."""
    import torch
    from diffusers import FluxTransformer2DModel

    from ..weights import exact_keys

    config = config_from_shapes({k: tuple(v.shape) for k, v in state.items()})
    if config["in_channels"] != config["out_channels"]:
        raise CheckpointError(f"this Flux model takes {config['in_channels']} input channels for "
                              f"{config['out_channels']} out (Flux Fill / Depth / Canny): not supported yet")
    weights = to_diffusers(state)
    with torch.device("meta"):
        module = FluxTransformer2DModel.from_config(config)
    exact_keys(weights, module.state_dict().keys(), f"Flux transformer {name}".strip())
    if dtype is None:
        dtype = next(v.dtype for v in weights.values() if v.is_floating_point())
    module.load_state_dict({k: v.to(dtype) for k, v in weights.items()}, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def build(state: dict, *, dtype=None, name: str = ""):
    """The family registry's entry: a MODEL handle for a Flux.1 state dict."""
    from ..flux_model import FluxHandle

    return FluxHandle.of(build_transformer(state, dtype, name), name=name)


def save_original(transformer, path, dtype=None) -> None:
    """Write a diffusers Flux transformer as a BFL-layout .safetensors file (what UNETLoader reads)."""
    from safetensors.torch import save_file

    state = to_original(transformer.state_dict())
    save_file({k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in state.items()}, str(path))
