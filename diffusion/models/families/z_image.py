"""Z-Image (Turbo and base): the original key layout -> diffusers' ZImageTransformer2DModel, config from
the shapes, the MODEL handle.

Original layout (Tongyi's files, ComfyUI's `z_image_turbo_bf16.safetensors`): a Lumina-2-style NextDiT,
`x_embedder`, `cap_embedder.{0,1}` (an RMS norm and a Linear from the Qwen3 width), `t_embedder.mlp`,
`noise_refiner.N` / `context_refiner.N` / `layers.N` blocks with a fused `attention.qkv`, `attention.out`,
`attention.{q_norm,k_norm}`, `feed_forward.w{1,2,3}`, `final_layer`, `x_pad_token`, `cap_pad_token`.
The renaming is diffusers' own converter; `to_original` is its inverse. Told from Lumina 2 (same
`cap_embedder.1.weight` key) by width: Lumina 2's is 2304.

Config read from the shapes: width and latent channels (x_embedder over 2x2 patches), depth, refiner
depth, head size (q_norm), key/value heads (the fused qkv's height), caption width; the rotary axes
are Z-Image's (32, 48, 48) for 128-wide heads, scaled in proportion for other head sizes.

Sampling as ComfyUI: rectified flow, shift 3 (ModelSamplingAuraFlow changes it), timestep = sigma; the
network takes 1 - sigma and predicts the negated velocity (as ComfyUI's Lumina 2 model and diffusers'
ZImagePipeline both undo), the Flux latent format (the Flux `ae` VAE).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from genloom.diffusion.errors import CheckpointError

from ..handles import ModelHandle
from ..loading import build_module
from ..weights import exact_keys
from . import DiTHandle

NAME = "Z-Image"
PATCH = 2
SHIFT = 3.0
LUMINA2_WIDTH = 2304
SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": SHIFT}
_RENAMES = (("final_layer.", "all_final_layer.2-1."), ("x_embedder.", "all_x_embedder.2-1."),
            (".attention.out.", ".attention.to_out.0."), (".attention.k_norm.", ".attention.norm_k."),
            (".attention.q_norm.", ".attention.norm_q."))


def detect(shapes: dict) -> bool:
    x = shapes.get("x_embedder.weight") or shapes.get("all_x_embedder.2-1.weight")
    return "cap_embedder.1.weight" in shapes and x is not None and x[0] != LUMINA2_WIDTH


def to_diffusers(state: dict) -> dict:
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

    return convert_z_image_transformer_checkpoint_to_diffusers(dict(state))


def to_original(state: dict) -> dict:
    """ZImageTransformer2DModel tensors -> the original layout (q, k, v fused back)."""
    import torch

    out = {}
    for key, value in state.items():
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue
        if ".attention.to_q." in key:
            out[key.replace(".attention.to_q.", ".attention.qkv.")] = torch.cat(
                [value, state[key.replace("to_q", "to_k")], state[key.replace("to_q", "to_v")]], dim=0)
            continue
        for a, b in _RENAMES:
            key = key.replace(b, a)
        out[key] = value
    return out


def rope_axes(head: int) -> list[int]:
    if head == 128:
        return [32, 48, 48]
    first = head // 4 // 2 * 2
    rest = (head - first) // 2 // 2 * 2
    axes = [first, rest, head - first - rest]
    if any(a <= 0 or a % 2 for a in axes):
        raise CheckpointError(f"a Z-Image transformer with {head}-wide heads has no rotary layout genloom knows")
    return axes


def config_from_shapes(shapes: dict) -> dict:
    width, packed = shapes["x_embedder.weight"]
    head = shapes["layers.0.attention.q_norm.weight"][0]
    if width % head:
        raise CheckpointError(f"Z-Image transformer width {width} is not a whole number of {head}-wide heads")

    def depth(name):
        return len({int(m.group(1)) for k in shapes if (m := re.match(rf"{name}\.(\d+)\.", k))})

    return {"all_patch_size": (PATCH,), "all_f_patch_size": (1,), "in_channels": packed // (PATCH * PATCH),
            "dim": width, "n_layers": depth("layers"), "n_refiner_layers": depth("noise_refiner"),
            "n_heads": width // head, "n_kv_heads": (shapes["layers.0.attention.qkv.weight"][0] - width) // 2 // head,
            "norm_eps": 1e-5, "qk_norm": True, "cap_feat_dim": shapes["cap_embedder.1.weight"][1],
            "rope_theta": 256.0, "t_scale": 1000.0, "axes_dims": rope_axes(head), "axes_lens": [1024, 512, 512]}


@dataclass(frozen=True, eq=False)
class ZImageHandle(DiTHandle):
    kind: str = "z_image"
    scheduler_config: dict = field(default_factory=lambda: dict(SCHEDULER))

    def cond_extras(self, extra: dict, height: int, width: int) -> dict:
        return {}

    def predict(self, transformer, x, t, emb, extras: dict):
        import torch

        frames = x if x.ndim == 5 else x.unsqueeze(2)  # [B, C, 1, h, w]
        # The timestep stays float32 for a bfloat16 network, as ZImagePipeline (float32 latents) and ComfyUI
        # (`.float()`) pass it: bfloat16 would round 1 - sigma to 3 digits before the sinusoidal embedding.
        timestep = 1.0 - self.batch_timestep(t, x, torch.float32)
        out = transformer(list(frames.unbind(0)), timestep, list(emb.unbind(0)), return_dict=False)[0]
        out = -torch.stack([o.to(x.dtype) for o in out])
        return out if x.ndim == 5 else out.squeeze(2)


def build(state: dict, *, dtype, name: str) -> ModelHandle:
    from diffusers import ZImageTransformer2DModel

    from genloom.diffusion.sampling import latent_formats, model_sampling

    if "x_embedder.weight" not in state:  # a diffusers-keyed file
        state = to_original(state)
    state = {k: v for k, v in state.items() if k != "norm_final.weight"}  # unused (diffusers drops it too)
    config = config_from_shapes({k: tuple(v.shape) for k, v in state.items()})
    converted = to_diffusers(state)
    module = build_module(ZImageTransformer2DModel, config, converted, "Z-Image transformer")
    exact_keys(converted, module.state_dict().keys(), "Z-Image transformer")
    return ZImageHandle(unet=module.eval(), latent_channels=config["in_channels"], vae_scale_factor=8, name=name,
                        prediction_type="flow", sampling=model_sampling.flow(shift=SHIFT, multiplier=1.0),
                        latent_format=latent_formats.FLUX)


def save_original(transformer, path, prefix: str = "") -> None:
    from safetensors.torch import save_file

    tensors = {prefix + k: v.contiguous() for k, v in to_original(transformer.state_dict()).items()}
    save_file(tensors, str(path))
