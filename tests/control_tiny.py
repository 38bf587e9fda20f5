"""Tiny ControlNets and T2I-Adapters (random weights) shaped for tests/tiny.py's models, written in
the on-disk layouts users have.

The tiny VAE is 2x, so the hint encoders downscale by 2 (ControlNet: two hint channels widths, one
stride-2 step; adapters: pixel-unshuffle by 2 for SD, 4 for SDXL whose adapter starts one level down).
The original-layout writers spell out the published layouts here, independently of genloom's maps.
"""

from __future__ import annotations

import json
from pathlib import Path

# The parts a ControlNet-Union adds (xinsir's names, the same in the cldm and diffusers layouts).
UNION_PARTS = ("task_embedding", "control_add_embedding.", "transformer_layes.", "spatial_ch_projs.")


def build_controlnet(unet_folder: Path, seed: int = 1, hint_channels=(8, 16), scale: float = 0.2):
    """A ControlNetModel copying a tiny UNet's encoder, with its zero convolutions made non-zero
    (trained ControlNets are not zero: zeros would hide a wrong wiring)."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(unet_folder), local_files_only=True)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=hint_channels)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return net.eval()


def build_union(unet_folder: Path, seed: int = 3):
    """A ControlNet-Union (xinsir's ProMax layout, diffusers' ControlNetUnionModel) for a tiny SDXL
    UNet, every zero-initialised part made non-zero."""
    import torch
    from diffusers import ControlNetUnionModel

    plain = build_controlnet(unet_folder, seed=seed)
    width = plain.config.block_out_channels[0]
    net = ControlNetUnionModel.from_config({**dict(plain.config), "num_control_type": 8, "num_trans_channel": width,
                                            "num_trans_head": 8, "num_trans_layer": 1, "num_proj_channel": width})
    net.load_state_dict(plain.state_dict(), strict=False)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith(("spatial_ch_projs", "controlnet_", "task_embedding", "control_add_embedding",
                                "transformer_layes")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return net.eval()


EXAMPLE_CONTROLNET = "control_canny_genloom-tiny.safetensors"  # workflows/controlnet_canny.json's


def write_example_controlnet(models_root: Path) -> Path:
    """An (untrained) ControlNet for the shipped genloom-tiny model, where the example workflow looks
    for it: genloom-tiny's VAE is 4x, so the hint encoder downscales twice."""
    from genloom.engine.folders import PACKAGE_ROOT

    net = build_controlnet(PACKAGE_ROOT / "models" / "diffusers" / "genloom-tiny" / "unet",
                           hint_channels=(8, 16, 32), scale=0.05)
    return save_controlnet_original(net, Path(models_root) / "controlnet" / EXAMPLE_CONTROLNET)


def build_adapter(xl: bool = False, seed: int = 2):
    import torch
    from diffusers import T2IAdapter

    torch.manual_seed(seed)
    if xl:  # SDXL's layout: features from the second UNet level on
        return T2IAdapter(in_channels=3, channels=[32, 64, 64, 64], num_res_blocks=2, downscale_factor=4,
                          adapter_type="full_adapter_xl").eval()
    return T2IAdapter(in_channels=3, channels=[32, 64, 64, 64], num_res_blocks=2, downscale_factor=2).eval()


def save_diffusers_folder(module, folder: Path) -> Path:
    module.save_pretrained(str(folder), safe_serialization=True)
    return folder / "diffusion_pytorch_model.safetensors"


def _cldm_names(net, torch_attention: bool = False) -> dict:
    """diffusers ControlNetModel key -> the original cldm key, written out from the cldm layout. A
    union's own parts keep their names, their attention's input projection spelled as ComfyUI's
    Linear (attn.in_proj.weight) or, with `torch_attention`, torch's MultiheadAttention (in_proj_weight)."""
    cfg = net.config
    names = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "controlnet_mid_block": "middle_block_out.0",
             "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
             "mid_block.resnets.1": "middle_block.2", "controlnet_cond_embedding.conv_in": "input_hint_block.0"}
    n_hint = len(cfg.conditioning_embedding_out_channels)
    for j in range(2 * (n_hint - 1)):
        names[f"controlnet_cond_embedding.blocks.{j}"] = f"input_hint_block.{2 * j + 2}"
    names["controlnet_cond_embedding.conv_out"] = f"input_hint_block.{4 * n_hint - 2}"
    block = 1
    for i, kind in enumerate(cfg.down_block_types):
        for j in range(cfg.layers_per_block):
            names[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{block}.0"
            names[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{block}.1"
            block += 1
        if i < len(cfg.down_block_types) - 1:
            names[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{block}.0.op"
            block += 1
    for i in range(block):
        names[f"controlnet_down_blocks.{i}"] = f"zero_convs.{i}.0"
    resnet = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
              "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
    out = {}
    for key in net.state_dict():
        if key.startswith(UNION_PARTS):
            out[key] = key if torch_attention else key.replace(".attn.in_proj_", ".attn.in_proj.")
            continue
        for prefix in sorted(names, key=len, reverse=True):
            if key.startswith(prefix + "."):
                rest = key[len(prefix) + 1:]
                if ".resnets." in prefix + ".":
                    head, _, tail = rest.partition(".")
                    rest = f"{resnet[head]}.{tail}"
                out[key] = f"{names[prefix]}.{rest}"
                break
        else:
            raise KeyError(key)
    return out


def save_controlnet_original(net, path: Path, prefix: str = "control_model.", configs: bool = True,
                             base_unet=None, torch_attention: bool = False) -> Path:
    """The cldm layout; with `base_unet`, as a diff ControlNet (weights minus the UNet's)."""
    from safetensors.torch import save_file

    names = _cldm_names(net, torch_attention)
    base = base_unet.state_dict() if base_unet is not None else {}
    tensors = {}
    for key, tensor in net.state_dict().items():
        if key in base and base[key].shape == tensor.shape:
            tensor = tensor - base[key]
        tensors[prefix + names[key]] = tensor.contiguous()
    if base_unet is not None:
        import torch

        tensors["difference"] = torch.tensor([0.0])
    meta = {"genloom.configs": json.dumps({"controlnet": dict(net.config)})} if configs else None
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path


def control_lora_paired(net) -> list:
    """The ControlNet modules a control-LoRA stores as (up, down) pairs: every Linear and Conv2d of
    its copy of the UNet's encoder (not the hint encoder, nor the zero convolutions)."""
    import torch

    own = ("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding")
    return [name for name, module in net.named_modules()
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and not name.startswith(own)]


def build_control_lora(unet_folder: Path, path: Path, rank: int = 2, seed: int = 5):
    """Stability's control-LoRA layout, and the ControlNet it stands for (the reference).

    The reference starts as build_controlnet's (the UNet's encoder copied, ControlNet-only parts
    random); every paired weight (control_lora_paired) then gets up @ down added by hand
    (up [out, r(, 1, 1)], down [r, in(, kh, kw)]), and the copy's norms and biases are changed
    (trained ones differ from the UNet's). The file holds the pairs as '<cldm name>.up' / '.down',
    every other weight in full under its cldm name, and the 'lora_controlnet' marker; no config."""
    import torch
    from safetensors.torch import save_file

    net = build_controlnet(unet_folder, seed=seed)
    names = _cldm_names(net)
    paired = {m + ".weight" for m in control_lora_paired(net)}
    gen = torch.Generator().manual_seed(seed)
    tensors = {"lora_controlnet": torch.tensor([])}
    with torch.no_grad():
        for key, p in net.state_dict(keep_vars=True).items():
            if key in paired:
                tail = (1, 1) if p.ndim == 4 else ()
                up = torch.randn(p.shape[0], rank, *tail, generator=gen) * 0.3
                down = torch.randn(rank, *p.shape[1:], generator=gen) * 0.3
                p += (up.reshape(p.shape[0], rank) @ down.reshape(rank, -1)).reshape(p.shape)
                stem = names[key][: -len(".weight")]
                tensors[stem + ".up"], tensors[stem + ".down"] = up, down
                continue
            if not key.startswith("controlnet_"):
                p += torch.randn(p.shape, generator=gen) * 0.05
            tensors[names[key]] = p.detach().clone().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return net.eval(), path


def save_adapter_original(adapter, path: Path) -> Path:
    """TencentARC's layout: adapter.body.I.resnets.J -> body.(I * res_blocks + J), the level's input
    convolution on its first resnet, conv_in at the top; saved as a plain torch file."""
    import torch

    per = adapter.config.num_res_blocks
    out = {}
    for key, tensor in adapter.state_dict().items():
        parts = key.split(".")
        assert parts[0] == "adapter"
        if parts[1] == "conv_in":
            new = ".".join(parts[1:])
        elif parts[3] == "resnets":
            new = f"body.{int(parts[2]) * per + int(parts[4])}." + ".".join(parts[5:])
        else:  # in_conv
            new = f"body.{int(parts[2]) * per}." + ".".join(parts[3:])
        out[new] = tensor.clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, str(path))
    return path
