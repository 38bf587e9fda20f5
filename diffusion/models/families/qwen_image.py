"""Qwen-Image (text-to-image): the diffusion-model file -> diffusers' QwenImageTransformer2DModel,
config from the shapes, the MODEL handle.

Layout: Qwen's own release and ComfyUI's repackaged files use the same names as diffusers (`img_in`,
`txt_norm` (an RMS norm over the text encoder's width), `txt_in`, `time_text_embed.timestep_embedder`,
`transformer_blocks.N.{img_mod,txt_mod}.1`, `attn.{to_q,add_q_proj,norm_q,...}`, `img_mlp`/`txt_mlp`,
`norm_out.linear`, `proj_out`), ComfyUI's with the `model.diffusion_model.` prefix (stripped by the
registry). So no renaming: every tensor must fit the module, none left over.

Config read from the shapes: width (img_in), head size (norm_q), depth, text width (txt_norm), latent
channels (img_in's input is the 2x2-packed latent: 4 x 16). The rotary axes are Qwen-Image's
(16, 56, 56) for 128-wide heads, scaled in the same proportions for other head sizes.

Sampling as ComfyUI's QwenImage: rectified flow, shift 1.15 (ModelSamplingAuraFlow changes it),
timestep = sigma (multiplier 1; the network's timestep embedding scales it by 1000), the Wan 2.1
latent format (the Qwen-Image VAE is a Wan 2.1 VAE, decoder fine-tuned, same statistics). LATENT is
[B, 16, H/8, W/8] (EmptySD3LatentImage) or one frame [B, 16, 1, H/8, W/8]; the network sees it
padded to even sizes and packed in 2x2 patches, as ComfyUI's and diffusers' pipelines do. Reference
latents (ReferenceLatent; what Qwen-Image-Edit reads) ride along as more image tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from genloom.diffusion.errors import CheckpointError, SamplingError

from ..handles import ModelHandle
from ..loading import build_module
from ..weights import exact_keys
from . import DiTHandle

NAME = "Qwen-Image"
PATCH = 2
SHIFT = 1.15
SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": SHIFT}
_KEYS = ("txt_norm.weight", "img_in.weight", "transformer_blocks.0.img_mod.1.weight")
LAYERED_KEY = "time_text_embed.addition_t_embedding.weight"  # Qwen-Image-Layered: not supported yet


def detect(shapes: dict) -> bool:
    return all(k in shapes for k in _KEYS)


def rope_axes(head: int) -> tuple[int, int, int]:
    """(frame, height, width) rotary widths: Qwen-Image's (16, 56, 56) for 128-wide heads."""
    if head == 128:
        return (16, 56, 56)
    first = max(2, (head // 8) // 2 * 2)
    rest = (head - first) // 2 // 2 * 2
    axes = (first, rest, head - first - rest)
    if any(a <= 0 or a % 2 for a in axes):
        raise CheckpointError(f"a Qwen-Image transformer with {head}-wide heads has no rotary layout genloom knows")
    return axes


def config_from_shapes(shapes: dict) -> dict:
    width, packed = shapes["img_in.weight"]
    head = shapes["transformer_blocks.0.attn.norm_q.weight"][0]
    if width % head:
        raise CheckpointError(f"Qwen-Image transformer width {width} is not a whole number of {head}-wide heads")
    depth = len({int(m.group(1)) for k in shapes if (m := re.match(r"transformer_blocks\.(\d+)\.", k))})
    return {"patch_size": PATCH, "in_channels": packed,
            "out_channels": shapes["proj_out.weight"][0] // (PATCH * PATCH), "num_layers": depth,
            "attention_head_dim": head, "num_attention_heads": width // head,
            "joint_attention_dim": shapes["txt_norm.weight"][0], "guidance_embeds": False,
            "axes_dims_rope": rope_axes(head)}


def pack(x):
    """[B, C, (1,) h, w] -> ([B, h/2 * w/2, 4C], (h/2, w/2)), padded to even h, w (ComfyUI's
    pad_to_patch_size, replicating the edge)."""
    import torch.nn.functional as F

    if x.ndim == 5:
        if x.shape[2] != 1:
            raise SamplingError(f"Qwen-Image makes single images: this latent has {x.shape[2]} frames")
        x = x[:, :, 0]
    b, c, h, w = x.shape
    ph, pw = (-h) % PATCH, (-w) % PATCH
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    gh, gw = x.shape[-2] // PATCH, x.shape[-1] // PATCH
    x = x.reshape(b, c, gh, PATCH, gw, PATCH).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, gh * gw, c * PATCH * PATCH), (gh, gw)


def unpack(tokens, like):
    """The network's [B, h/2 * w/2, 4C] -> the latent's own shape (`like`), padding cut off."""
    h, w = like.shape[-2], like.shape[-1]
    gh, gw = -(-h // PATCH), -(-w // PATCH)
    b, c = tokens.shape[0], tokens.shape[-1] // (PATCH * PATCH)
    x = tokens.reshape(b, gh, gw, c, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5).reshape(b, c, gh * PATCH, gw * PATCH)
    x = x[..., :h, :w]
    return x.unsqueeze(2) if like.ndim == 5 else x


@dataclass(frozen=True, eq=False)
class QwenImageHandle(DiTHandle):
    kind: str = "qwen_image"
    scheduler_config: dict = field(default_factory=lambda: dict(SCHEDULER))

    def cond_extras(self, extra: dict, height: int, width: int) -> dict:
        """The text's attention mask where it has one; reference images (ReferenceLatent, the edit
        models) as packed tokens in the model's latent space, each the next rotary frame index
        (ComfyUI's "index" method, which diffusers' QwenImageEditPipeline also uses)."""
        import torch

        from genloom.diffusion.sampling.latent_formats import of_model

        out = {} if extra.get("attention_mask") is None else {"attention_mask": extra["attention_mask"]}
        refs = extra.get("reference_latents")
        if refs:
            method = extra.get("reference_latents_method", "index")
            if method != "index":
                raise SamplingError(f"Qwen-Image takes reference latents by index; {method!r} is not supported")
            fmt = of_model(self)
            packed = [pack(fmt.process_in(r.float())) for r in refs]
            out["ref_tokens"] = torch.cat([tokens for tokens, _grid in packed], dim=1)
            out["ref_grids"] = tuple(grid for _tokens, grid in packed)
        return out

    def predict(self, transformer, x, t, emb, extras: dict):
        import torch

        tokens, (gh, gw) = pack(x)
        shapes = [(1, gh, gw)]
        if "ref_tokens" in extras:
            tokens = torch.cat([tokens, extras["ref_tokens"].to(tokens.dtype)], dim=1)
            shapes += [(1, h, w) for h, w in extras["ref_grids"]]
        out = transformer(hidden_states=tokens, encoder_hidden_states=emb, timestep=self.batch_timestep(t, x),
                          encoder_hidden_states_mask=extras.get("attention_mask"), img_shapes=[shapes] * x.shape[0],
                          return_dict=False)[0]
        return unpack(out[:, :gh * gw], x)


def build(state: dict, *, dtype, name: str) -> ModelHandle:
    from diffusers import QwenImageTransformer2DModel

    from genloom.diffusion.sampling import model_sampling

    from .wan import wan21_format

    if LAYERED_KEY in state:
        raise CheckpointError(f"{name} is a Qwen-Image-Layered transformer (its extra timestep condition "
                              f"{LAYERED_KEY}); genloom does not run Qwen-Image-Layered yet")
    config = config_from_shapes({k: tuple(v.shape) for k, v in state.items()})

    def rope(module):  # the rotary tables are computed, not stored: built on the CPU
        module.pos_embed = type(module.pos_embed)(theta=10000, axes_dim=list(config["axes_dims_rope"]),
                                                  scale_rope=True)

    module = build_module(QwenImageTransformer2DModel, config, state, "Qwen-Image transformer", buffers=rope)
    exact_keys(state, module.state_dict().keys(), "Qwen-Image transformer")
    channels = config["out_channels"]
    if channels != 16:
        raise CheckpointError(f"a Qwen-Image transformer with {channels} latent channels is not one genloom knows")
    return QwenImageHandle(unet=module.eval(), latent_channels=channels, vae_scale_factor=8, name=name,
                           prediction_type="flow", sampling=model_sampling.flow(shift=SHIFT, multiplier=1.0),
                           latent_format=wan21_format())


def save_original(transformer, path, prefix: str = "") -> None:
    """Write a QwenImageTransformer2DModel as ComfyUI's file has it (`prefix` "model.diffusion_model.")."""
    from safetensors.torch import save_file

    save_file({prefix + k: v.contiguous() for k, v in transformer.state_dict().items()}, str(path))
