"""ControlNet and T2I-Adapter files in the layouts users have, loaded as diffusers modules.

Layouts read:
  ControlNet, diffusers   ControlNetModel keys (conv_in, down_blocks, controlnet_down_blocks, ...), a
                          folder's diffusion_pytorch_model.* beside its config.json, or a lone file
  ControlNet, original    the cldm layout (input_blocks, zero_convs, input_hint_block, ...), with or
                          without 'control_model.'; a 'difference' key marks a diff ControlNet, whose
                          weights are added to the base UNet's (DiffControlNetLoader)
  ControlNet-Union        xinsir's SDXL union / ProMax: diffusers ControlNetUnionModel keys, or the cldm
                          layout with the union parts beside it (task_embedding, control_add_embedding,
                          transformer_layes, spatial_ch_projs; attention as attn.in_proj.* or in_proj_*)
  control-LoRA            Stability's: a 'lora_controlnet' marker, the ControlNet's own parts as full cldm
                          weights, and (up, down) pairs for its copy of the UNet's encoder; the ControlNet
                          is made from the model it is applied to (ControlLora)
  T2I-Adapter, diffusers  T2IAdapter keys (adapter.conv_in, adapter.body.N.resnets.M, ...)
  T2I-Adapter, original   TencentARC's flat list (conv_in, body.K.block1, ...)
  Flux ControlNet         InstantX / Shakker-Labs, diffusers FluxControlNetModel keys (controlnet_x_embedder,
                          transformer_blocks, controlnet_blocks, controlnet_single_blocks, ...); AliMama's
                          inpainting ones too (controlnet_x_embedder 4 inputs wider: the packed mask)
  SD3 ControlNet          InstantX's, diffusers SD3ControlNetModel keys (pos_embed_input, transformer_blocks,
                          controlnet_blocks, ...); AliMama's inpainting one too (pos_embed_input one
                          channel wider: the mask)
The configuration comes from a config.json beside the weights, from genloom metadata
("genloom.configs": {"controlnet" | "t2i_adapter": config}), or else from the weights' shapes with the
conventions of the released SD1/SD2/SDXL models (8 heads for SD1, 64-channel heads otherwise, SDXL's
256-wide time-id embedding). Not read yet: the light/style adapters; they are refused with a message
saying so. XLabs' Flux ControlNets (BFL block names, a pixel hint encoder) are read in control_xlabs.py,
Stability's SD3.5 ControlNets (no text input, the base model's patch embedding) in control_sd35.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from genloom.diffusion.errors import CheckpointError

from . import keymaps
from .control_sd35 import is_sd35, sd35_controlnet
from .control_xlabs import is_xlabs, xlabs_controlnet
from .loading import build_module
from .weights import read_state_dict

CONTROLNET, ADAPTER, CONTROL_LORA = "controlnet", "t2i_adapter", "control_lora"
FLUX_CONTROLNET, SD3_CONTROLNET = "flux_controlnet", "sd3_controlnet"
# The parts a ControlNet-Union adds to a ControlNet; the same names in both layouts.
UNION_PARTS = ("task_embedding", "control_add_embedding.", "transformer_layes.", "spatial_ch_projs.")


def load_control(path: Path, base_unet=None):
    """(module, kind, family) from one ControlNet / T2I-Adapter file. `base_unet`: the model a diff
    ControlNet's weights are relative to."""
    path = Path(path)
    state, meta = read_state_dict(path)
    config, kind = _given_config(path, meta)
    diff = state.pop("difference", None) is not None
    if any(k.startswith("control_model.") for k in state):
        state = {k[len("control_model."):]: v for k, v in state.items() if k.startswith("control_model.")}
    found = kind or _layout_kind(state, path)
    if found == FLUX_CONTROLNET:
        return flux_controlnet(state, config, path), FLUX_CONTROLNET, "flux"
    if found == SD3_CONTROLNET:
        return sd3_controlnet(state, config, path), SD3_CONTROLNET, "sd3"
    if found == CONTROL_LORA:
        lora = ControlLora.read(state, path.name)
        return lora, CONTROL_LORA, lora.family
    if found == ADAPTER:
        module = _adapter(state, config)
        return module, ADAPTER, "sdxl" if module.config.adapter_type == "full_adapter_xl" else "sd"
    module = _controlnet(state, config, base_unet, diff, path)
    xl = getattr(module.config, "addition_embed_type", None) == "text_time"
    return module, CONTROLNET, "sdxl" if xl else "sd"


def _given_config(path: Path, meta: dict):
    if "genloom.configs" in meta:
        configs = json.loads(meta["genloom.configs"])
        for kind in (CONTROLNET, ADAPTER):
            if kind in configs:
                return configs[kind], kind
    beside = path.parent / "config.json"
    if beside.is_file():
        config = json.loads(beside.read_text())
        name = str(config.get("_class_name", ""))
        kinds = {"T2IAdapter": ADAPTER, "FluxControlNetModel": FLUX_CONTROLNET, "SD3ControlNetModel": SD3_CONTROLNET}
        if name in ("ControlNetModel", "ControlNetUnionModel", *kinds):
            return config, kinds.get(name, CONTROLNET)
        raise CheckpointError(f"{path.name}: the config.json beside it describes a {name or 'model'}, not a "
                              "ControlNet (ControlNetModel, ControlNetUnionModel, FluxControlNetModel, "
                              "SD3ControlNetModel) or T2I-Adapter")
    return None, None


def _layout_kind(state: dict, path: Path) -> str:
    keys = state.keys()
    if "controlnet_x_embedder.weight" in keys and "x_embedder.weight" in keys:
        return FLUX_CONTROLNET
    if "pos_embed_input.proj.weight" in keys and "controlnet_blocks.0.weight" in keys:
        return SD3_CONTROLNET
    if is_xlabs(keys):
        return FLUX_CONTROLNET
    if "lora_controlnet" in keys:
        return CONTROL_LORA
    if any(k.startswith("adapter.") for k in keys) or ("conv_in.weight" in keys and "body.0.block1.weight" in keys):
        return ADAPTER
    if "controlnet_cond_embedding.conv_in.weight" in keys or "input_hint_block.0.weight" in keys:
        return CONTROLNET
    if any(k.startswith(("body.0.", "adapter.body.")) for k in keys):
        raise CheckpointError(f"{path.name} is a T2I-Adapter of a kind genloom does not read yet "
                              "(light or style adapter)")
    raise CheckpointError(f"{path.name} is not a ControlNet or T2I-Adapter of SD1/SD2/SDXL, nor a Flux or "
                          "SD3 ControlNet in diffusers layout")


# -- ControlNets -------------------------------------------------------------------------------

def _controlnet(state: dict, config, base_unet, diff: bool, path: Path):
    from diffusers import ControlNetModel, ControlNetUnionModel

    original = "input_hint_block.0.weight" in state
    union = "task_embedding" in state
    shapes = {k: list(v.shape) for k, v in state.items()}
    what = "ControlNet-Union" if union else "ControlNet"
    try:
        if config is None:
            config = controlnet_config_original(shapes) if original else controlnet_config_diffusers(shapes)
        if union and config.get("_class_name") != "ControlNetUnionModel":
            config = {**config, **union_config(shapes), "_class_name": "ControlNetUnionModel"}
    except (KeyError, IndexError) as exc:
        raise CheckpointError(f"{path.name}: {what} weights of a shape genloom cannot read a configuration "
                              f"from (no {exc}); put its config.json beside it") from None
    if original:
        # The union parts keep their names; ComfyUI's attention is one Linear (attn.in_proj.*),
        # torch's (and diffusers') MultiheadAttention a pair of parameters (attn.in_proj_*).
        extra = {k.replace(".attn.in_proj.", ".attn.in_proj_"): v for k, v in state.items()
                 if k.startswith(UNION_PARTS)}
        table = keymaps.controlnet_map(config)
        back = {v: k for k, v in table.items()}
        unread = [k for k in state if not k.startswith(UNION_PARTS) and keymaps._translate(k, back) is None]
        if unread:
            raise CheckpointError(f"{path.name}: {what} weights with no known name, e.g. {unread[:3]}")
        state = {**keymaps.unmap_keys(state, table, "", CONTROLNET), **extra}
    if diff:
        if base_unet is None:
            raise CheckpointError(f"{path.name} is a diff ControlNet (its weights are differences from a "
                                  "base model): load it with DiffControlNetLoader and the model")
        base = base_unet.state_dict()
        state = {k: (v + base[k].to(v.dtype) if k in base and base[k].shape == v.shape else v)
                 for k, v in state.items()}
    return build_module(ControlNetUnionModel if union else ControlNetModel, config, state, what)


def union_config(shapes: dict) -> dict:
    """ControlNet-Union's own settings (xinsir's ProMax layout): the task embeddings and the small
    transformer over them; its heads follow the released model (8)."""
    types, width = shapes["task_embedding"]
    return {"num_control_type": types, "num_trans_channel": width, "num_trans_head": 8,
            "num_trans_layer": _count(shapes, r"transformer_layes\.(\d+)\."),
            "num_proj_channel": shapes["spatial_ch_projs.weight"][0]}


def _count(shapes: dict, pattern: str) -> int:
    """How many distinct indices the one '(\\d+)' group of `pattern` takes in the key names."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in shapes if (m := rx.match(k))})


def controlnet_config_original(shapes: dict) -> dict:
    """A ControlNetModel config from the shapes of a cldm-layout state dict."""
    n_inputs = _count(shapes, r"input_blocks\.(\d+)\.")
    downs = [i for i in range(n_inputs) if f"input_blocks.{i}.0.op.weight" in shapes]
    bounds = [0] + downs + [n_inputs]
    levels = [list(range(a + 1, b)) for a, b in zip(bounds, bounds[1:])]
    channels, depth = [], []
    for blocks in levels:
        first = blocks[0]
        channels.append(shapes[f"input_blocks.{first}.0.out_layers.3.weight"][0])
        depth.append(_count(shapes, rf"input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\."))
    cfg = {"layers_per_block": len(levels[0]), "block_out_channels": channels,
           "in_channels": shapes["input_blocks.0.0.weight"][1],
           "label": shapes.get("label_emb.0.0.weight"), "proj": _first(shapes, "proj_in.weight")}
    return _finish(cfg, depth, shapes, *hint_encoder(shapes))


def hint_encoder(shapes: dict) -> tuple[list, int]:
    """(conditioning_embedding_out_channels, conditioning_channels) of a cldm input_hint_block: its
    convolutions alternate with SiLUs; every second one from the third on widens, the last maps to
    the UNet's width."""
    hint = sorted(int(m.group(1)) for k in shapes if (m := re.match(r"input_hint_block\.(\d+)\.weight$", k)))
    first = shapes[f"input_hint_block.{hint[0]}.weight"]
    return [first[0]] + [shapes[f"input_hint_block.{i}.weight"][0] for i in hint[2:-1:2]], first[1]


def controlnet_config_diffusers(shapes: dict) -> dict:
    """A ControlNetModel config from the shapes of a diffusers-layout state dict."""
    n = _count(shapes, r"down_blocks\.(\d+)\.")
    channels = [shapes[f"down_blocks.{i}.resnets.0.conv2.weight"][0] for i in range(n)]
    depth = [_count(shapes, rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\.") for i in range(n)]
    cfg = {"layers_per_block": _count(shapes, r"down_blocks\.0\.resnets\.(\d+)\."), "block_out_channels": channels,
           "in_channels": shapes["conv_in.weight"][1],
           "label": shapes.get("add_embedding.linear_1.weight"), "proj": _first(shapes, "proj_in.weight")}
    blocks = _count(shapes, r"controlnet_cond_embedding\.blocks\.(\d+)\.")
    hint_channels = [shapes["controlnet_cond_embedding.conv_in.weight"][0]] + \
        [shapes[f"controlnet_cond_embedding.blocks.{j}.weight"][0] for j in range(1, blocks, 2)]
    return _finish(cfg, depth, shapes, hint_channels, shapes["controlnet_cond_embedding.conv_in.weight"][1])


def _first(shapes: dict, suffix: str):
    """The shape of the first weight (in name order) whose name ends with `suffix`, or None."""
    return next((shapes[k] for k in sorted(shapes) if k.endswith(suffix)), None)


def _finish(cfg: dict, depth: list, shapes: dict, hint_channels: list, hint_in: int) -> dict:
    """The parts both layouts decide alike: block types, attention widths, SDXL's extra embedding."""
    cross = (_first(shapes, "attn2.to_k.weight") or [0, 768])[1]
    linear = cfg["proj"] is not None and len(cfg["proj"]) == 2
    channels = cfg["block_out_channels"]
    out = {"_class_name": "ControlNetModel", "in_channels": cfg["in_channels"],
           "conditioning_channels": hint_in, "block_out_channels": channels,
           "layers_per_block": cfg["layers_per_block"], "cross_attention_dim": cross,
           "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depth],
           "transformer_layers_per_block": [max(d, 1) for d in depth] if cfg["label"] else 1,
           "use_linear_projection": linear, "conditioning_embedding_out_channels": hint_channels,
           # SD1 was trained with 8 heads per block; SD2 and SDXL with 64 channels per head.
           "attention_head_dim": [c // 64 for c in channels] if (linear or cfg["label"]) else 8}
    if cfg["label"]:
        out.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                   projection_class_embeddings_input_dim=cfg["label"][1])
    return out


# -- Flux and SD3 ControlNets ---------------------------------------------------------------------------

def flux_controlnet(state: dict, config, path: Path):
    """diffusers' FluxControlNetModel (InstantX / Shakker-Labs files, union ones too; XLabs' with their
    pixel hint encoder through control_xlabs.py), its config from config.json or the shapes: width
    from x_embedder, head size from the q norm, depth from the block indices, the number of union
    modes from controlnet_mode_embedder."""
    from diffusers import FluxControlNetModel

    from .families.flux import rope_axes

    if any(k.startswith("input_hint_block.") for k in state):  # XLabs-style: a pixel hint encoder
        return xlabs_controlnet(state, config, path)
    hint_in, latent_in = (state.get(k + ".weight") for k in ("controlnet_x_embedder", "x_embedder"))
    extra = 0 if hint_in is None or latent_in is None else hint_in.shape[1] - latent_in.shape[1]
    if extra not in (0, 4):
        raise CheckpointError(f"{path.name}: a Flux ControlNet whose hint has {extra} extra inputs per token; "
                              "genloom reads those with none (InstantX) or 4, one packed mask channel "
                              "(AliMama's inpainting ones)")
    if config is None:
        shapes = {k: list(v.shape) for k, v in state.items()}
        try:
            width, in_channels = shapes["x_embedder.weight"]
            head = shapes[_first_key(shapes, r"(single_)?transformer_blocks\.0\.attn\.norm_q\.weight")][0]
            config = {"in_channels": in_channels, "num_attention_heads": width // head,
                      "attention_head_dim": head, "axes_dims_rope": list(rope_axes(head)),
                      "num_layers": _count(shapes, r"transformer_blocks\.(\d+)\."),
                      "num_single_layers": _count(shapes, r"single_transformer_blocks\.(\d+)\."),
                      "joint_attention_dim": shapes["context_embedder.weight"][1],
                      "pooled_projection_dim": shapes["time_text_embed.text_embedder.linear_1.weight"][1],
                      "guidance_embeds": "time_text_embed.guidance_embedder.linear_1.weight" in shapes,
                      "num_mode": (shapes.get("controlnet_mode_embedder.weight") or [None])[0]}
        except (KeyError, StopIteration) as exc:
            raise CheckpointError(f"{path.name}: Flux ControlNet weights of a shape genloom cannot read a "
                                  f"configuration from (no {exc}); put its config.json beside it") from None
    config = {k: v for k, v in config.items() if not k.startswith("_") and k != "patch_size"}
    config.pop("extra_condition_channels", None)  # AliMama's config.json; the weights say it
    widen = _hint_embedder(hint_in.shape[1]) if extra else None
    return build_module(FluxControlNetModel, config, state, "Flux ControlNet", buffers=widen)


def _hint_embedder(width: int):
    """AliMama's Flux inpainting ControlNets embed the packed hint latent and the packed mask (64 + 4
    inputs per token, ComfyUI's 17-channel hint patchified); diffusers' FluxControlNetModel has no
    setting for that, so its hint embedder is made that wide, on the meta device, before the weights
    are assigned (its forward only adds the embedder's output to the latent's)."""
    def widen(module):
        import torch

        module.controlnet_x_embedder = torch.nn.Linear(width, module.inner_dim, device="meta")
    return widen


def sd3_controlnet(state: dict, config, path: Path):
    """diffusers' SD3ControlNetModel (InstantX's SD3 ControlNets), its config from config.json or the
    shapes, with the conventions of the family's own reader: 64-wide heads unless a qk-norm says
    otherwise, InstantX's zeroed pooled text. SD3.5's official ControlNets (no text, no position
    embedding of their own) go to control_sd35.py."""
    from diffusers import SD3ControlNetModel

    if is_sd35(state, config):  # Stability's SD3.5 ControlNets: no text, the base model's patch embedding
        return sd35_controlnet(state, config, path)
    if config is None:
        shapes = {k: list(v.shape) for k, v in state.items()}
        try:
            width, in_channels, patch, _ = shapes["pos_embed.proj.weight"]
            caption, joint = shapes["context_embedder.weight"]
            head = (shapes.get("transformer_blocks.0.attn.norm_q.weight") or [64])[0]
            config = {"patch_size": patch, "in_channels": in_channels, "out_channels": in_channels,
                      "num_layers": _count(shapes, r"transformer_blocks\.(\d+)\."),
                      "attention_head_dim": head, "num_attention_heads": width // head,
                      "joint_attention_dim": joint, "caption_projection_dim": caption,
                      "pooled_projection_dim": shapes["time_text_embed.text_embedder.linear_1.weight"][1],
                      "pos_embed_max_size": round(shapes["pos_embed.pos_embed"][1] ** 0.5),
                      "extra_conditioning_channels": shapes["pos_embed_input.proj.weight"][1] - in_channels,
                      "dual_attention_layers": sorted(int(m.group(1)) for k in shapes
                                                      if (m := re.fullmatch(r"transformer_blocks\.(\d+)\.attn2\.to_q\.weight", k))),
                      "qk_norm": "rms_norm" if "transformer_blocks.0.attn.norm_q.weight" in shapes else None}
        except KeyError as exc:
            raise CheckpointError(f"{path.name}: SD3 ControlNet weights of a shape genloom cannot read a "
                                  f"configuration from (no {exc}); put its config.json beside it") from None
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    extra = config.get("extra_conditioning_channels") or 0
    if extra not in (0, 1):
        raise CheckpointError(f"{path.name}: an SD3 ControlNet whose hint has {extra} extra channels; genloom "
                              "reads those with none (InstantX) or one, the mask (AliMama's inpainting ones)")
    return build_module(SD3ControlNetModel, config, state, "SD3 ControlNet")


def _first_key(shapes: dict, pattern: str) -> str:
    rx = re.compile(pattern)
    return next(k for k in sorted(shapes) if rx.fullmatch(k))


# -- control-LoRAs ----------------------------------------------------------------------------

@dataclass(eq=False)
class ControlLora:
    """Stability's control-LoRA as read, in the cldm names: full weights for what only a ControlNet
    has (hint encoder, zero convolutions, and whatever else training replaced: norms, biases) and
    (up, down) pairs whose product is added to the model's own encoder weight. There is no
    ControlNet without a model: `network` makes it from the UNet it is applied to, as ComfyUI does
    when sampling starts (the UNet's weights as they are then, its LoRAs included)."""

    full: dict  # cldm name -> tensor
    pairs: dict  # cldm module name -> (up, down)
    name: str
    _last: tuple = ()  # (weak reference to the UNet, its patches, the ControlNet made for them)

    @classmethod
    def read(cls, state: dict, name: str) -> "ControlLora":
        full, halves = {}, {}
        for key, tensor in state.items():
            stem, _, last = key.rpartition(".")
            if last in ("up", "down"):
                halves.setdefault(stem, {})[last] = tensor
            elif key != "lora_controlnet":
                full[key] = tensor
        unpaired = [k for k, v in halves.items() if len(v) != 2]
        if unpaired:
            raise CheckpointError(f"{name} is a control-LoRA with unpaired low-rank weights, e.g. {unpaired[:3]}")
        hint = full.get("input_hint_block.0.weight")
        if hint is None or hint.ndim != 4:
            raise CheckpointError(f"{name} is a control-LoRA without its hint encoder (input_hint_block)")
        return cls(full, {k: (v["up"], v["down"]) for k, v in halves.items()}, name)

    @property
    def family(self) -> str:
        """SDXL's ControlNets copy the UNet's label embedding (the pooled text and size input)."""
        return "sdxl" if any(k.startswith("label_emb.") for k in (*self.full, *self.pairs)) else "sd"

    def network(self, unet, patches: tuple = ()):
        """The ControlNet for `unet` (with `patches`, the model's LoRAs applied to it right now); the
        last one made is kept while that UNet lives and its patches are the same."""
        import weakref

        if self._last and self._last[0]() is unet and _same_patches(self._last[1], patches):
            return self._last[2]
        net = controlnet_from_lora(self, unet)
        self._last = (weakref.ref(unet), tuple(patches), net)
        return net


def _same_patches(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x is y and s == t for (x, s), (y, t) in zip(a, b))


def controlnet_from_lora(lora: ControlLora, unet):
    """A ControlNetModel: the UNet's configuration and encoder weights, the pairs' products added
    (weight + up @ down, both flattened past their first axis, reshaped to the weight, as ComfyUI),
    the file's full weights in place of the model's."""
    import inspect

    import torch
    from diffusers import ControlNetModel

    accepted = inspect.signature(ControlNetModel.__init__).parameters
    channels, hint_in = hint_encoder({k: list(v.shape) for k, v in lora.full.items()})
    config = {**{k: v for k, v in dict(unet.config).items() if k in accepted and k != "self"},
              "conditioning_channels": hint_in, "conditioning_embedding_out_channels": channels}
    table = keymaps.controlnet_map(config)
    back = {v: k for k, v in table.items()}

    def name(key: str) -> str:
        new = keymaps._translate(key, back)
        if new is None:
            raise CheckpointError(f"{lora.name}: control-LoRA weight {key!r} has no place in a ControlNet "
                                  "of this model (a control-LoRA made for another model family?)")
        return new

    dtype = next(unet.parameters()).dtype
    state = {k: v.detach().to("cpu") for k, v in unet.state_dict().items()
             if keymaps._translate(k, table) is not None}
    state.update({name(k): v.to(dtype) for k, v in lora.full.items()})
    with torch.no_grad():
        for module, (up, down) in lora.pairs.items():
            key = name(module + ".weight")
            weight = state.get(key)
            if weight is None:
                raise CheckpointError(f"{lora.name}: control-LoRA pair {module!r} has no weight to add to "
                                      "in this model")
            delta = up.float().flatten(1) @ down.float().flatten(1)
            if delta.numel() != weight.numel():
                raise CheckpointError(f"{lora.name}: control-LoRA pair {module!r} makes a {list(delta.shape)} "
                                      f"change for a {list(weight.shape)} weight (made for another model?)")
            state[key] = (weight.float() + delta.reshape(weight.shape)).to(dtype)
    return build_module(ControlNetModel, config, state, f"control-LoRA {lora.name!r} ControlNet")


# -- T2I-Adapters ------------------------------------------------------------------------------

def _adapter(state: dict, config):
    from diffusers import T2IAdapter

    if not any(k.startswith("adapter.") for k in state):  # TencentARC's original layout
        resnets = _count(state, r"body\.(\d+)\.block1\.")
        state = keymaps.unmap_keys(state, keymaps.t2i_adapter_map(4, resnets // 4), "", ADAPTER)
    if config is None:
        config = adapter_config({k: list(v.shape) for k, v in state.items()})
    config = {k: v for k, v in config.items() if k in ("in_channels", "channels", "num_res_blocks",
                                                       "downscale_factor", "adapter_type")}
    if config.get("adapter_type", "full_adapter") not in ("full_adapter", "full_adapter_xl"):
        raise CheckpointError(f"T2I-Adapters of type {config['adapter_type']!r} are not supported yet")
    return build_module(T2IAdapter, config, state, "T2I-Adapter")


def adapter_config(shapes: dict) -> dict:
    """A T2IAdapter config from diffusers-layout shapes. SD and SDXL adapters differ only in how far
    the input is pixel-unshuffled (8 or 16): conv_in's input width says it."""
    levels = _count(shapes, r"adapter\.body\.(\d+)\.")
    wide = shapes["adapter.conv_in.weight"][1]
    in_channels = 3 if wide % 3 == 0 else 1
    factor = round((wide // in_channels) ** 0.5)
    return {"in_channels": in_channels, "downscale_factor": factor,
            "channels": [shapes[f"adapter.body.{i}.resnets.0.block2.weight"][0] for i in range(levels)],
            "num_res_blocks": _count(shapes, r"adapter\.body\.0\.resnets\.(\d+)\."),
            "adapter_type": "full_adapter_xl" if factor == 16 else "full_adapter"}
