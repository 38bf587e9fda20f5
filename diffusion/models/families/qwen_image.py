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

Two variants are told from the file, as ComfyUI tells them:
  Qwen-Image-Edit-2511   ComfyUI's file carries an empty `__index_timestep_zero__` tensor (no weights
                         differ): its reference tokens are modulated at timestep 0 while the generated
                         image's follow the sampler (ComfyUI's "index_timestep_zero" reference method,
                         diffusers' `zero_cond_t`). FluxKontextMultiReferenceLatentMethod can ask any
                         Qwen-Image model for "index" or "index_timestep_zero"; the file only sets the
                         default.
  Qwen-Image-Layered     `time_text_embed.addition_t_embedding` (diffusers' `use_additional_t_cond`,
                         always 0 here as in its pipeline, and `use_layer3d_rope`). LATENT
                         [B, 16, layers + 1, h, w] (EmptyQwenImageLayeredLatentImage): the composite
                         picture, then one frame per layer, each packed as its own image and given its
                         frame index; the picture to split is one reference latent (VAEEncode ->
                         ReferenceLatent), whose tokens get frame index -1.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
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
LAYERED_KEY = "time_text_embed.addition_t_embedding.weight"  # Qwen-Image-Layered
LAYERED_KIND = "qwen_image_layered"  # in latent_formats.VIDEO_KINDS: its LATENT has frames
ZERO_MARKER = "__index_timestep_zero__"  # Qwen-Image-Edit-2511 in ComfyUI's files (an empty tensor)
REF_METHODS = ("index", "index_timestep_zero")


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
            "axes_dims_rope": rope_axes(head), "zero_cond_t": ZERO_MARKER in shapes,
            "use_additional_t_cond": LAYERED_KEY in shapes, "use_layer3d_rope": LAYERED_KEY in shapes}


def pack(x, frames: bool = False):
    """[B, C, (F,) h, w] -> ([B, F * h/2 * w/2, 4C], (h/2, w/2)), padded to even h, w (ComfyUI's
    pad_to_patch_size, replicating the edge); frame by frame, each packed as its own image (Layered's
    frames: `frames` True; otherwise a latent must have one frame)."""
    import torch.nn.functional as F

    count = 1
    if x.ndim == 5:
        count = x.shape[2]
        if count != 1 and not frames:
            raise SamplingError(f"Qwen-Image makes single images: this latent has {count} frames (only "
                                f"Qwen-Image-Layered samples a frame per layer)")
        b, c, _f, h, w = x.shape
        x = x.movedim(2, 1).reshape(b * count, c, h, w)  # frames into the batch, in order
    b, c, h, w = x.shape
    ph, pw = (-h) % PATCH, (-w) % PATCH
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    gh, gw = x.shape[-2] // PATCH, x.shape[-1] // PATCH
    x = x.reshape(b, c, gh, PATCH, gw, PATCH).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b // count, count * gh * gw, c * PATCH * PATCH), (gh, gw)


def unpack(tokens, like):
    """The network's [B, F * h/2 * w/2, 4C] -> the latent's own shape (`like`), padding cut off."""
    h, w = like.shape[-2], like.shape[-1]
    count = like.shape[2] if like.ndim == 5 else 1
    gh, gw = -(-h // PATCH), -(-w // PATCH)
    b, c = tokens.shape[0], tokens.shape[-1] // (PATCH * PATCH)
    x = tokens.reshape(b, count, gh, gw, c, PATCH, PATCH).permute(0, 1, 4, 2, 5, 3, 6)
    x = x.reshape(b, count, c, gh * PATCH, gw * PATCH)[..., :h, :w]
    return x.movedim(1, 2) if like.ndim == 5 else x[:, 0]


@contextmanager
def timestep_zero(transformer, on: bool):
    """The transformer with its reference tokens at timestep 0 (`on`) or at the sampler's, for one call:
    diffusers reads `zero_cond_t` from the model and from each block at call time, so a 2509 file can
    run ComfyUI's "index_timestep_zero" and a 2511 one plain "index"."""
    if bool(transformer.zero_cond_t) == on:
        yield
        return
    parts = [transformer, *transformer.transformer_blocks]
    for part in parts:
        part.zero_cond_t = on
    try:
        yield
    finally:
        for part in parts:
            part.zero_cond_t = not on


@dataclass(frozen=True, eq=False)
class QwenImageHandle(DiTHandle):
    kind: str = "qwen_image"
    scheduler_config: dict = field(default_factory=lambda: dict(SCHEDULER))
    zero_cond: bool = False  # Qwen-Image-Edit-2511: references at timestep 0 unless the conditioning says

    @property
    def layered(self) -> bool:
        """Qwen-Image-Layered: a frame per layer (a video kind to the sampler), the picture as the reference."""
        return self.kind == LAYERED_KIND

    def cond_extras(self, extra: dict, height: int, width: int) -> dict:
        """The text's attention mask where it has one; reference images (ReferenceLatent, the edit
        models) as packed tokens in the model's latent space, each the next rotary frame index
        (ComfyUI's "index" method, which diffusers' QwenImageEditPipeline also uses; at timestep 0 with
        "index_timestep_zero"). Layered takes one reference, the picture it splits."""
        import torch

        from genloom.diffusion.sampling.latent_formats import of_model

        out = {} if extra.get("attention_mask") is None else {"attention_mask": extra["attention_mask"]}
        refs = extra.get("reference_latents")
        if refs:
            if self.layered:
                if len(refs) != 1:
                    raise SamplingError(f"Qwen-Image-Layered splits one picture into layers: give it one "
                                        f"reference latent, not {len(refs)}")
                zero = self.zero_cond
            else:
                method = extra.get("reference_latents_method", "index_timestep_zero" if self.zero_cond else "index")
                if method not in REF_METHODS:
                    raise SamplingError(f"Qwen-Image takes reference latents by {' or '.join(REF_METHODS)}; "
                                        f"{method!r} is not supported")
                zero = method == "index_timestep_zero"
            fmt = of_model(self)
            packed = [pack(fmt.process_in(r.float())) for r in refs]
            out["ref_tokens"] = torch.cat([tokens for tokens, _grid in packed], dim=1)
            out["ref_grids"] = tuple(grid for _tokens, grid in packed)
            out["ref_timestep_zero"] = zero
        return out

    def predict(self, transformer, x, t, emb, extras: dict):
        import torch

        tokens, (gh, gw) = pack(x, frames=self.layered)
        count = tokens.shape[1] // (gh * gw)
        shapes = [(1, gh, gw)] * count
        more = {}
        if self.layered:
            if "ref_tokens" not in extras:
                raise SamplingError("Qwen-Image-Layered splits a picture into layers: give the picture as a "
                                    "reference latent (VAEEncode -> ReferenceLatent, on the positive and the "
                                    "negative)")
            more["additional_t_cond"] = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        if "ref_tokens" in extras:
            tokens = torch.cat([tokens, extras["ref_tokens"].to(tokens.dtype)], dim=1)
            shapes += [(1, h, w) for h, w in extras["ref_grids"]]
        with timestep_zero(transformer, extras.get("ref_timestep_zero", self.zero_cond)):
            out = transformer(hidden_states=tokens, encoder_hidden_states=emb, timestep=self.batch_timestep(t, x),
                              encoder_hidden_states_mask=extras.get("attention_mask"),
                              img_shapes=[shapes] * x.shape[0], return_dict=False, **more)[0]
        return unpack(out[:, :count * gh * gw], x)


def build(state: dict, *, dtype, name: str) -> ModelHandle:
    from diffusers import QwenImageTransformer2DModel

    from genloom.diffusion.sampling import model_sampling

    from .wan import wan21_format

    config = config_from_shapes({k: tuple(v.shape) for k, v in state.items()})
    state = {k: v for k, v in state.items() if k != ZERO_MARKER}

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
                           latent_format=wan21_format(), zero_cond=config["zero_cond_t"],
                           kind=LAYERED_KIND if config["use_layer3d_rope"] else "qwen_image")


def save_original(transformer, path, prefix: str = "") -> None:
    """Write a QwenImageTransformer2DModel as ComfyUI's file has it (`prefix` "model.diffusion_model."),
    with ComfyUI's empty 2511 marker when the model takes its references at timestep 0."""
    import torch
    from safetensors.torch import save_file

    state = {prefix + k: v.contiguous() for k, v in transformer.state_dict().items()}
    if transformer.config.zero_cond_t:
        state[prefix + ZERO_MARKER] = torch.empty(0)
    save_file(state, str(path))
