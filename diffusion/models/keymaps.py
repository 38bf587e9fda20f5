"""Key names of the original (LDM) single-file layout, derived from a diffusers config.

diffusers only converts LDM -> diffusers, for the block counts of the released models. These maps
are built from the config itself, so they hold for any number of blocks, layers and channels, and
work in both directions (saving genloom's single files and loading anyone's).
"""

from __future__ import annotations

import re

# Where each component lives inside a single-file checkpoint, per model kind.
PREFIXES = {
    "sd1": {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
            "text_encoder": ("hf", "cond_stage_model.transformer.")},
    "sd2": {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
            "text_encoder": ("openclip", "cond_stage_model.model.")},
    "sdxl": {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
             "text_encoder": ("hf", "conditioner.embedders.0.transformer."),
             "text_encoder_2": ("openclip", "conditioner.embedders.1.model.")},
    # the SDXL refiner: CLIP-G alone (diffusers' text_encoder_2) as the first embedder
    "sdxl_refiner": {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
                     "text_encoder_2": ("openclip", "conditioner.embedders.0.model.")},
}


def _resnet(m: dict, d: str, l: str) -> None:
    for a, b in (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                 ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")):
        m[f"{d}{a}."] = f"{l}{b}."


def _per_block(value, n: int) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def unet_map(cfg: dict) -> dict[str, str]:
    """diffusers module prefix -> LDM module prefix (both ending with '.')."""
    down, up = cfg["down_block_types"], cfg["up_block_types"]
    for t in list(down) + list(up):
        if t not in ("CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"):
            raise ValueError(f"block type {t} has no single-file layout")
    mid_type = cfg.get("mid_block_type") or "UNetMidBlock2DCrossAttn"
    if mid_type != "UNetMidBlock2DCrossAttn":
        raise ValueError(f"mid block {mid_type} has no single-file layout")
    m = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
         "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",
         "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    if cfg.get("class_embed_type") == "projection":  # SD2 unCLIP: the image-embedding (ADM) input
        m.update({"class_embedding.linear_1.": "label_emb.0.0.", "class_embedding.linear_2.": "label_emb.0.2."})
    layers = _per_block(cfg.get("layers_per_block", 2), len(down))
    idx = 1
    for i, kind in enumerate(down):
        for j in range(layers[i]):
            _resnet(m, f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{idx}.0.")
            if kind.startswith("CrossAttn"):
                m[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{idx}.1."
            idx += 1
        if i < len(down) - 1:
            m[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{idx}.0.op."
            idx += 1
    _resnet(m, "mid_block.resnets.0.", "middle_block.0.")
    m["mid_block.attentions.0."] = "middle_block.1."
    _resnet(m, "mid_block.resnets.1.", "middle_block.2.")
    rev = list(reversed(layers))
    out = 0
    for i, kind in enumerate(up):
        attn = kind.startswith("CrossAttn")
        for j in range(rev[i] + 1):
            _resnet(m, f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{out}.0.")
            if attn:
                m[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{out}.1."
            if j == rev[i] and i < len(up) - 1:
                m[f"up_blocks.{i}.upsamplers.0.conv."] = f"output_blocks.{out}.{2 if attn else 1}.conv."
            out += 1
    return m


def vae_map(cfg: dict) -> dict[str, str]:
    n = len(cfg["block_out_channels"])
    layers = cfg.get("layers_per_block", 2)
    m = {p: p for p in ("encoder.conv_in.", "encoder.conv_out.", "decoder.conv_in.", "decoder.conv_out.",
                        "quant_conv.", "post_quant_conv.")}

    def res(d, l):
        for a, b in (("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2"),
                     ("conv_shortcut", "nin_shortcut")):
            m[f"{d}{a}."] = f"{l}{b}."

    for side in ("encoder", "decoder"):
        m[f"{side}.conv_norm_out."] = f"{side}.norm_out."
        res(f"{side}.mid_block.resnets.0.", f"{side}.mid.block_1.")
        res(f"{side}.mid_block.resnets.1.", f"{side}.mid.block_2.")
        for a, b in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
                     ("to_out.0", "proj_out")):
            m[f"{side}.mid_block.attentions.0.{a}."] = f"{side}.mid.attn_1.{b}."
    for i in range(n):
        for j in range(layers):
            res(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.")
        if i < n - 1:
            m[f"encoder.down_blocks.{i}.downsamplers.0.conv."] = f"encoder.down.{i}.downsample.conv."
        li = n - 1 - i
        for j in range(layers + 1):
            res(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{li}.block.{j}.")
        if i < n - 1:
            m[f"decoder.up_blocks.{i}.upsamplers.0.conv."] = f"decoder.up.{li}.upsample.conv."
    return m


_VAE_ATTN = re.compile(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$")


def _translate(key: str, table: dict[str, str]) -> str | None:
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:n]) + "."
        if prefix in table:
            return table[prefix] + ".".join(parts[n:])
    return None


def map_keys(state: dict, table: dict[str, str], prefix: str, what: str) -> dict:
    """diffusers state dict -> LDM keys under `prefix`."""
    out = {}
    for key, tensor in state.items():
        new = _translate(key, table)
        if new is None:
            raise ValueError(f"{what} weight {key!r} has no single-file name")
        if what == "vae" and _VAE_ATTN.search(new) and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        out[prefix + new] = tensor
    return out


def unmap_keys(state: dict, table: dict[str, str], prefix: str, what: str) -> dict:
    """LDM keys under `prefix` -> diffusers state dict (keys outside the table are ignored)."""
    back = {v: k for k, v in table.items()}
    out = {}
    for key, tensor in state.items():
        if not key.startswith(prefix):
            continue
        new = _translate(key[len(prefix):], back)
        if new is None:
            continue
        if what == "vae" and _VAE_ATTN.search(key) and tensor.ndim == 4:
            tensor = tensor[:, :, 0, 0]
        out[new] = tensor
    return out


# -- text encoders --------------------------------------------------------------------------

_OPENCLIP_LAYER = (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
                   ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))


def text_to_ldm(state: dict, layout: str, prefix: str) -> dict:
    """A transformers CLIP text model state dict (with or without 'text_model.') -> LDM keys."""
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    if layout == "hf":
        return {prefix + ("text_model." + k if k != "text_projection.weight" else k): v
                for k, v in state.items()}
    out = {}
    for key, tensor in state.items():
        if key == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = tensor
        elif key == "embeddings.position_embedding.weight":
            out["positional_embedding"] = tensor
        elif key.startswith("final_layer_norm."):
            out["ln_final." + key.split(".")[-1]] = tensor
        elif key == "text_projection.weight":
            out["text_projection"] = tensor.t().contiguous()
        elif key.startswith("encoder.layers."):
            i, rest = key.split(".")[2], ".".join(key.split(".")[3:])
            if rest.startswith(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")):
                if rest.startswith("self_attn.q_proj"):
                    kind = rest.split(".")[-1]
                    parts = [state[f"encoder.layers.{i}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
                    out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = __import__("torch").cat(parts)
                continue
            for a, b in _OPENCLIP_LAYER:
                if rest.startswith(b + "."):
                    out[f"transformer.resblocks.{i}.{a}.{rest[len(b) + 1:]}"] = tensor
                    break
            else:
                raise ValueError(f"text encoder weight {key!r} has no single-file name")
        else:
            raise ValueError(f"text encoder weight {key!r} has no single-file name")
    return {prefix + k: v for k, v in out.items()}


def text_from_ldm(state: dict, layout: str, prefix: str, num_layers: int | None = None) -> dict:
    """LDM keys under `prefix` -> a transformers CLIP text model state dict (no 'text_model.')."""
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if layout == "hf":
        return {k.removeprefix("text_model."): v for k, v in sub.items() if not k.endswith("position_ids")}
    out = {}
    for key, tensor in sub.items():
        if key == "token_embedding.weight":
            out["embeddings.token_embedding.weight"] = tensor
        elif key == "positional_embedding":
            out["embeddings.position_embedding.weight"] = tensor
        elif key.startswith("ln_final."):
            out["final_layer_norm." + key.split(".")[-1]] = tensor
        elif key == "text_projection":
            out["text_projection.weight"] = tensor.t().contiguous()
        elif key.startswith("transformer.resblocks."):
            i, rest = key.split(".")[2], ".".join(key.split(".")[3:])
            if num_layers is not None and int(i) >= num_layers:
                continue  # SD2 uses the penultimate layer: diffusers' encoder stops before the last
            if rest.startswith("attn.in_proj_"):
                kind = rest.split("_")[-1]
                for p, chunk in zip("qkv", tensor.chunk(3, dim=0)):
                    out[f"encoder.layers.{i}.self_attn.{p}_proj.{kind}"] = chunk.contiguous()
                continue
            for a, b in _OPENCLIP_LAYER:
                if rest.startswith(a + "."):
                    out[f"encoder.layers.{i}.{b}.{rest[len(a) + 1:]}"] = tensor
                    break
    return out


# -- ControlNets and T2I-Adapters ---------------------------------------------------------------

def controlnet_map(cfg: dict) -> dict[str, str]:
    """diffusers ControlNetModel prefix -> the original (cldm) prefix, without 'control_model.'.

    The copy of the UNet's encoder keeps the UNet's names; the zero convolutions and the hint
    encoder have their own (the hint encoder alternates convolutions and SiLUs in one Sequential)."""
    m = {k: v for k, v in unet_map({**cfg, "up_block_types": []}).items()
         if not k.startswith(("conv_norm_out.", "conv_out."))}
    layers = _per_block(cfg.get("layers_per_block", 2), len(cfg["down_block_types"]))
    outputs = 1 + sum(layers) + len(layers) - 1  # conv_in, every resnet, every downsampler
    for i in range(outputs):
        m[f"controlnet_down_blocks.{i}."] = f"zero_convs.{i}.0."
    m["controlnet_mid_block."] = "middle_block_out.0."
    hint = list(cfg.get("conditioning_embedding_out_channels") or (16, 32, 96, 256))
    m["controlnet_cond_embedding.conv_in."] = "input_hint_block.0."
    for j in range(2 * (len(hint) - 1)):
        m[f"controlnet_cond_embedding.blocks.{j}."] = f"input_hint_block.{2 * (j + 1)}."
    m["controlnet_cond_embedding.conv_out."] = f"input_hint_block.{2 * (2 * (len(hint) - 1) + 1)}."
    return m


def t2i_adapter_map(levels: int, res_blocks: int) -> dict[str, str]:
    """diffusers T2IAdapter prefix -> the original (TencentARC) prefix: one flat list of resnets."""
    m = {"adapter.conv_in.": "conv_in."}
    for i in range(levels):
        m[f"adapter.body.{i}.in_conv."] = f"body.{i * res_blocks}.in_conv."
        for j in range(res_blocks):
            m[f"adapter.body.{i}.resnets.{j}."] = f"body.{i * res_blocks + j}."
    return m
