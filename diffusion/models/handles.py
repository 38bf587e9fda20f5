"""The objects that flow through MODEL, CLIP and VAE sockets.

Handles are small immutable wrappers around shared diffusers/transformers modules. The modules hold
the *base* weights and are never modified: LoRA and similar changes live in `patches` and are applied
only inside `use()`, on the device copy, and removed on exit. That is why a cached loader output can
feed one sampler with a LoRA and another without it, in any order.

What other node authors (sampling, VAE, latent nodes) can rely on
-----------------------------------------------------------------
ModelHandle (MODEL)
  .unet              UNet2DConditionModel with base weights; do not call it directly, use `use()`.
  .scheduler_config  dict, the model's ORIGINAL diffusers scheduler config: build every swapped
                     scheduler from it (`EulerDiscreteScheduler.from_config(m.scheduler_config)`).
  .kind              "sd1" | "sd2" | "sdxl" | "sdxl_refiner" (from the UNet and text encoder configs)
  .prediction_type   "epsilon" | "v_prediction"
  .latent_channels, .vae_scale_factor (pixels per latent cell, 8 for SD)
  .needs_time_ids    True when the UNet wants SDXL's added_cond_kwargs
  .time_ids(extra, height, width) -> float32 [6] tensor for SDXL from a CONDITIONING entry's dict
  .with_lora(lora, strength) -> new handle sharing the base weights
  .sampling          ModelSampling or None; .with_sampling(ms) -> a patched copy
  .model_options     ComfyUI's model_options dict (cfg functions ...); .with_options(**kw) -> a copy
  .cond_extras(extra, height, width) -> the network's inputs from one CONDITIONING entry's dict
                     (with the run's latent_image and denoise_mask; an inpainting UNet's extra
                     channels come out as "c_concat", genloom.diffusion.inpaint)
  .predict(unet, x, t, emb, extras) -> the network's output: a new family overrides these two
  .latent_format     LatentFormat or None (the family's): the sampler maps raw VAE latents in/out
  with model.use(device, dtype=None) as unet: ...   # unet on device, patches applied, pinned in VRAM
  .clone() -> a mutable ModelPatcher facade with ComfyUI's methods (patcher.py); the handle answers
                     ComfyUI's reads (get_model_object, model.model_sampling, load_device, ...)
ClipHandle (CLIP)
  .encode(text, text_2=None) -> (cond [1, T, D] float32 CPU, pooled [1, P] float32 CPU)
                     SDXL: text feeds CLIP-L, text_2 (default: text) the big encoder.
  .encode_roles({"clip_l": text, "clip_g": ..., "t5xxl": ...}) -> the same, for split encoders
                     (kind "sd3", "flux"; `.roles` names each encoder, encoding.FAMILY_ENCODERS)
  .kind, .stop_at_layer, .text_encoders, .tokenizers
  .with_stop_at_layer(n), .with_lora(lora, strength)
VaeHandle (VAE)
  .scaling_factor, .shift_factor (0.0 when the model has none), .latent_channels, .scale_factor
  .encode(images [B,H,W,C] 0..1) -> raw VAE latents [B,C,H/f,W/f] float32 CPU (unscaled, as
                     ComfyUI's LATENT; the MODEL's latent format scales them inside sampling)
  .decode(raw latents) -> images [B,H,W,C] 0..1 float32 CPU
  with vae.use(device, dtype=None) as autoencoder: ...  # for tiled or custom passes
Memory: all `use()` calls go through the engine's manager, `model_owner().memory` (owner.py); wrap
a whole sampling loop in `model_owner().memory.retry_on_oom(fn)` to get "free and retry once, then a
clear error" on CUDA OOM.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import SamplingError
from ..gligen_boxes import fused
from ..inpaint import concat_channels, extra_channels
from ..model_patches import output_block_patched
from .attention import attention_patched
from .comfy_objects import ComfyClipMethods, ComfyVaeMethods
from .encoding import encode_prompt, encode_texts
from .lora import patched
from .noise_augment import revision_pooled
from .owner import interruptible, model_owner
from .patcher import ComfyModelMethods


@dataclass(frozen=True, eq=False)  # identity semantics: handles wrap live modules
class ModelHandle(ComfyModelMethods):  # ComfyUI's ModelPatcher reads; clone() -> a mutable facade
    unet: Any
    scheduler_config: dict
    kind: str = "sd1"
    prediction_type: str = "epsilon"
    latent_channels: int = 4
    vae_scale_factor: int = 8
    patches: tuple = ()  # ((LoraWeights, strength), ...) applied in order inside use()
    name: str = ""
    # ModelSampling (genloom.diffusion.sampling.model_sampling) set by the ModelSampling* nodes;
    # None: derived from scheduler_config (discrete EPS / V_PREDICTION).
    sampling: Any = None
    # LatentFormat (genloom.diffusion.sampling.latent_formats); None: the family's (by `kind`).
    latent_format: Any = None
    # ComfyUI's model_options: sampler_cfg_function, sampler_pre/post_cfg_function (lists), ...
    # Never mutated: `with_options` returns a copy holding a new dict.
    model_options: Any = field(default_factory=dict)

    def with_options(self, **changes) -> "ModelHandle":
        return replace(self, model_options={**self.model_options, **changes})

    def with_post_cfg(self, fn) -> "ModelHandle":
        """A copy with `fn` appended to the post-CFG functions (CFGNorm, CFGZeroStar, plugins)."""
        return self.with_options(sampler_post_cfg_function=[
            *self.model_options.get("sampler_post_cfg_function", []), fn])

    def with_sampling(self, sampling) -> "ModelHandle":
        """A copy sampling differently (ModelSamplingSD3 etc.); the input is never changed."""
        return replace(self, sampling=sampling)

    @property
    def needs_time_ids(self) -> bool:
        return getattr(self.unet.config, "addition_embed_type", None) == "text_time"

    def time_ids(self, extra: dict, height: int, width: int):
        """SDXL micro-conditioning: (orig h, w, crop top, left, target h, w) in pixels; the refiner's
        (orig h, w, crop top, left, aesthetic score) (CLIPTextEncodeSDXLRefiner's ascore, else 6).

        Missing values default to the image being generated, as diffusers' pipeline does."""
        import torch

        if self.kind == "sdxl_refiner":
            return torch.tensor([extra.get("height", height), extra.get("width", width), extra.get("crop_h", 0),
                                 extra.get("crop_w", 0), extra.get("aesthetic_score", 6.0)], dtype=torch.float32)
        return torch.tensor([extra.get("height", height), extra.get("width", width),
                             extra.get("crop_h", 0), extra.get("crop_w", 0),
                             extra.get("target_height", height), extra.get("target_width", width)],
                            dtype=torch.float32)

    def cond_extras(self, extra: dict, height: int, width: int) -> dict:
        """What the network takes from one CONDITIONING entry besides its embedding, batch-first
        tensors (or shared objects) that guidance batches: SDXL's pooled output and time ids, the
        entry's ControlNet chain ("control", genloom.diffusion.controlnet.Control) and its GLIGEN
        boxes ("gligen")."""
        out = {} if extra.get("control") is None else {"control": extra["control"]}
        if extra.get("gligen") is not None:  # GLIGENTextBoxApply's boxes (genloom.diffusion.gligen)
            out["gligen"] = extra["gligen"]
        if extra_channels(self):  # inpainting UNets: mask and masked-image latent (inpaint.py)
            out["c_concat"] = concat_channels(self, extra, height, width)
        if not self.needs_time_ids:
            return out
        if extra.get("unclip_conditioning"):  # SDXL revision: a CLIP-G image embedding as the pooled
            pooled = revision_pooled(extra["unclip_conditioning"], self.pooled_width, int(extra.get("seed", 0)))
        elif extra.get("pooled_output") is None:
            raise SamplingError("this SDXL-type model needs pooled text embeddings (pooled_output) "
                                "in its conditioning")
        else:
            pooled = extra["pooled_output"]
        return {**out, "text_embeds": pooled, "time_ids": self.time_ids(extra, height, width).reshape(1, -1)}

    @property
    def pooled_width(self) -> int:
        """SDXL: the pooled text width, what the added embedding takes besides the time ids."""
        c, n_ids = self.unet.config, len(self.time_ids({}, 1, 1))
        return int(c.projection_class_embeddings_input_dim) - n_ids * int(c.addition_time_embed_dim)

    def predict(self, unet, x, t, emb, extras: dict):
        """One call of the network on a batch (the one place the UNet is called while sampling);
        a ControlNet chain adds its residuals; an inpainting UNet gets its extra channels."""
        import torch

        added = {k: v for k, v in extras.items() if k not in ("control", "c_concat", "gligen")}
        kwargs = {"added_cond_kwargs": added} if added else {}
        if extras.get("control") is not None:
            kwargs.update(extras["control"].unet_inputs(self, x, t, emb, added))
        if extras.get("c_concat") is not None:
            x = torch.cat([x, extras["c_concat"].to(x.dtype)], dim=1)
        if extras.get("gligen") is not None:
            with fused(unet, extras["gligen"], x) as gligen:
                return unet(x, t, encoder_hidden_states=emb, return_dict=False, cross_attention_kwargs=gligen,
                            **kwargs)[0]
        return unet(x, t, encoder_hidden_states=emb, return_dict=False, **kwargs)[0]

    def with_lora(self, lora, strength: float) -> "ModelHandle":
        if strength == 0 or not lora.has_unet:
            return self
        return replace(self, patches=self.patches + ((lora, float(strength)),))

    @contextmanager
    def use(self, device: str | None = None, dtype=None):
        with model_owner().memory.use(self.unet, device, dtype) as unet:
            with patched(unet, self.patches, "unet"), interruptible(unet), \
                    attention_patched(unet, self.model_options), \
                    output_block_patched(unet, self.model_options):
                yield unet


@dataclass(frozen=True, eq=False)
class ClipHandle(ComfyClipMethods):  # ComfyUI's CLIP methods; clone() -> a mutable facade
    """One or two (SDXL) tokenizer + text encoder pairs.

    `stop_at_layer` follows CLIPSetLastLayer: -1 is the model's own output, -2 one layer earlier..."""

    tokenizers: tuple
    text_encoders: tuple
    kind: str = "sd1"
    stop_at_layer: int = -1
    patches: tuple = ()
    name: str = ""
    # Split text encoders (SD3, Flux): the role of each encoder ("clip_l", "clip_g", "t5xxl"), in
    # the order of `text_encoders`; empty for SD1/SD2/SDXL, whose encoders are positional.
    roles: tuple = ()
    device: str | None = None  # where the encoders run; None: the run's device (CLIPLoader's "device")
    # A family's own encode(clip, {role: text}) -> (cond, pooled) where encoding.py lists none (its
    # module would otherwise import encoding.py's importers): Wan's UMT5.
    family_encode: Any = None

    def with_stop_at_layer(self, layer: int) -> "ClipHandle":
        return replace(self, stop_at_layer=int(layer))

    def with_lora(self, lora, strength: float) -> "ClipHandle":
        if strength == 0 or not lora.has_text:
            return self
        return replace(self, patches=self.patches + ((lora, float(strength)),))

    def encode(self, text: str, text_2: str | None = None):
        """Same numbers as the diffusers pipeline's encode_prompt for this kind of model."""
        return encode_prompt(self, text, text if text_2 is None else text_2)

    def encode_roles(self, texts: dict):
        """SD3/Flux: one prompt per encoder role ({"clip_l": ..., "t5xxl": ...}; None: no tokens)."""
        return encode_texts(self, texts)


@dataclass(frozen=True, eq=False)
class VaeHandle(ComfyVaeMethods):  # ComfyUI's VAE methods (tiled passes, compression ratios)
    vae: Any  # AutoencoderKL with base weights
    name: str = ""

    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 0.18215) or 0.18215)

    @property
    def shift_factor(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @contextmanager
    def use(self, device: str | None = None, dtype=None):
        with model_owner().memory.use(self.vae, device, dtype) as vae, interruptible(vae):
            yield vae

    def encode(self, images):
        """Images [B,H,W,C] 0..1 -> raw latents: the posterior mean, so equal inputs give equal latents."""
        import torch

        with torch.no_grad(), self.use() as vae:
            param = next(vae.parameters())
            x = images.movedim(-1, 1).to(param.device, param.dtype) * 2.0 - 1.0
            return vae.encode(x).latent_dist.mean.float().cpu()

    def decode(self, latents):
        import torch

        with torch.no_grad(), self.use() as vae:
            param = next(vae.parameters())
            images = vae.decode(latents.to(param.device, param.dtype)).sample
            return ((images.float() + 1.0) / 2.0).clamp(0, 1).movedim(1, -1).cpu()
