"""The MODEL handle of Flux.1 (dev, schnell, Kontext) over diffusers' FluxTransformer2DModel.

What the sampler's latent [B, 16, H, W] becomes for the network, with the numbers of diffusers'
FluxPipeline / FluxKontextPipeline and the behaviour of ComfyUI's Flux model:
  image tokens  2x2 patches, [B, (H/2)(W/2), 64]; a latent of odd size is padded (circular, as
                ComfyUI) and the output cropped back
  position ids  (index, row, column) per token: 0, row, column for the image; zeros for the text
  timestep      sigma itself (the transformer multiplies by 1000, as the pipeline's t / 1000)
  guidance      dev only: CONDITIONING's "guidance" (FluxGuidance; 3.5 when unset, as ComfyUI);
                FluxDisableGuidance's None leaves the guidance embedding out of the sum
  pooled        CONDITIONING's "pooled_output" (CLIP-L)
  attention     CONDITIONING's "attention_mask" [B, text + cells, text + cells] (StyleModelApply's
                attn_bias), additive, over [text, image]: its image part, `attention_mask_img_shape`
                cells, is stretched bilinearly to the image tokens as ComfyUI does (-inf kept finite,
                -1e4); reference tokens get no bias
  references    Kontext: each "reference_latents" entry (raw VAE latents, put into the model's
                latent format) is packed the same way and appended after the image tokens, with
                index and offsets as ComfyUI's reference_latents_method says ("offset", the
                default, "index", "uxo"); the network's output for them is dropped.
  ControlNets   CONDITIONING's "control" chain (diffusion/controlnet.py flux_inputs): its block
                residuals, from the transformer's own inputs, go in as controlnet_block_samples and
                controlnet_single_block_samples; not together with Kontext references yet

Half precision on accelerators is bfloat16 where available (ComfyUI's pick for Flux).
Default model sampling (ComfyUI's supported_models): dev flux(mu=1.15) whatever the resolution
(ModelSamplingFlux makes it resolution dependent), schnell rectified flow with shift 1 and
timestep = sigma.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

from .handles import ModelHandle

DEFAULT_GUIDANCE = 3.5  # ComfyUI's value when a dev model's conditioning has no "guidance"
REF_METHODS = ("offset", "index", "uxo")


@dataclass(frozen=True, eq=False)
class FluxHandle(ModelHandle):
    kind: str = "flux"
    prediction_type: str = "flow"
    latent_channels: int = 16

    @classmethod
    def of(cls, transformer, name: str = "") -> "FluxHandle":
        from genloom.diffusion.sampling import latent_formats
        from genloom.diffusion.sampling import model_sampling as ms

        cfg = transformer.config
        sampling = ms.flux(1.15) if cfg.guidance_embeds else ms.flow(1.0, multiplier=1.0)
        out = int(cfg.out_channels or cfg.in_channels)
        return cls(unet=transformer, scheduler_config={"num_train_timesteps": 1000}, latent_channels=out // 4,
                   vae_scale_factor=8, sampling=sampling, latent_format=latent_formats.FLUX, name=name)

    @property
    def is_dev(self) -> bool:
        """Guidance-distilled (dev, Kontext): the network embeds a guidance value."""
        return bool(self.unet.config.guidance_embeds)

    @contextmanager
    def use(self, device: str | None = None, dtype=None):
        """As ModelHandle.use, but the accelerators' default half precision is bfloat16 where the
        device has it (ComfyUI's choice for Flux: its activations overflow float16); an engine
        option `unet_dtype` is kept as given."""
        with super().use(device, _compute_dtype(device, dtype)) as unet:
            yield unet

    def cond_extras(self, extra: dict, height: int, width: int) -> dict:
        import torch

        from genloom.diffusion.errors import SamplingError
        from genloom.diffusion.sampling import latent_formats

        pooled = extra.get("pooled_output")
        if pooled is None:
            raise SamplingError("a Flux model needs the CLIP-L pooled output (pooled_output) in its "
                                "conditioning: encode the prompt with a flux-type CLIP")
        out = {"pooled": pooled}
        if extra.get("control") is not None:  # a ControlNet chain (genloom.diffusion.controlnet.Control)
            if extra.get("reference_latents"):
                raise SamplingError("ControlNets together with Kontext reference images are not supported yet")
            out["control"] = extra["control"]
        guidance = extra.get("guidance", DEFAULT_GUIDANCE)
        if self.is_dev and guidance is not None:
            out["guidance"] = torch.full((pooled.shape[0],), float(guidance), dtype=torch.float32)
        refs = extra.get("reference_latents") or []
        fmt = latent_formats.of_model(self)
        for i, ref in enumerate(refs):
            out[f"ref_{i}"] = fmt.process_in(ref.float())
        if refs:
            method = extra.get("reference_latents_method", "offset")
            if method not in REF_METHODS:
                raise SamplingError(f"reference_latents_method {method!r} is not one of {REF_METHODS}")
            out["reference_method"] = method
        mask = extra.get("attention_mask")
        if mask is not None:
            tokens = (math.ceil(height / self.vae_scale_factor / 2), math.ceil(width / self.vae_scale_factor / 2))
            out["attention_mask"] = dit_mask(mask, extra.get("attention_mask_img_shape", (1, 1)), tokens)
        return out

    def predict(self, unet, x, t, emb, extras: dict):
        import torch
        import torch.nn.functional as F

        b, _c, h, w = x.shape
        latent, x = x, _pad_even(x)
        hp, wp = x.shape[-2] // 2, x.shape[-1] // 2
        tokens, ids = [pack(x)], [position_ids(hp, wp, 0, 0, 0, x.device)]
        refs = [extras[k] for k in sorted((k for k in extras if k.startswith("ref_")), key=lambda k: int(k[4:]))]
        for ref, (index, dh, dw) in zip(refs, ref_positions([r.shape[-2:] for r in refs], (hp, wp),
                                                            extras.get("reference_method", "offset"))):
            ref = _pad_even(ref.to(x.dtype))
            tokens.append(pack(ref))
            ids.append(position_ids(ref.shape[-2] // 2, ref.shape[-1] // 2, index, dh, dw, x.device))
        img = torch.cat(tokens, dim=1) if len(tokens) > 1 else tokens[0]
        img_ids = torch.cat(ids, dim=0) if len(ids) > 1 else ids[0]
        txt_ids = torch.zeros((emb.shape[1], 3), device=x.device, dtype=img_ids.dtype)
        timestep = t.reshape(-1).expand(b) if t.numel() == 1 else t
        guidance = extras.get("guidance")
        without = self.is_dev and guidance is None
        attention = {}
        if extras.get("attention_mask") is not None:  # reference tokens, after the image's: no bias
            mask = extras["attention_mask"].to(x.dtype)
            extra_tokens = emb.shape[1] + img.shape[1] - mask.shape[-1]
            mask = F.pad(mask, (0, extra_tokens, 0, extra_tokens))[:, None]
            attention["joint_attention_kwargs"] = {"attention_mask": mask}
        call = dict(hidden_states=img, encoder_hidden_states=emb, pooled_projections=extras["pooled"],
                    timestep=timestep.to(x.dtype), img_ids=img_ids, txt_ids=txt_ids, **attention)
        if extras.get("control") is not None:  # its block residuals, from the same inputs
            call.update(extras["control"].flux_inputs(self, latent, {**call, "guidance": guidance}))
        with _no_guidance(unet) if without else nullcontext():
            out = unet(**call, guidance=(torch.zeros(b, device=x.device) if without else guidance),
                       return_dict=False)[0]
        out = out[:, : hp * wp]
        return unpack(out, hp, wp)[:, :, :h, :w]


def dit_mask(mask, cells: tuple, tokens: tuple):
    """A [B, T + h*w, T + h*w] joint mask over `cells` = (h, w) image cells -> over `tokens` image
    tokens: each image part stretched bilinearly along its image axes (ComfyUI's upscale_dit_mask)."""
    import torch
    import torch.nn.functional as F

    mask = mask.float().clamp_min(-1e4)
    (hi, wi), (ho, wo) = (int(cells[0]), int(cells[1])), (int(tokens[0]), int(tokens[1]))
    if (hi, wi) == (ho, wo):
        return mask
    b, t = mask.shape[0], mask.shape[1] - hi * wi

    def stretch(part):  # [B, n, hi*wi] -> [B, n, ho*wo]
        n = part.shape[1]
        return F.interpolate(part.reshape(b, n, hi, wi), size=(ho, wo), mode="bilinear").reshape(b, n, ho * wo)

    txt_img = stretch(mask[:, :t, t:])
    img_txt = stretch(mask[:, t:, :t].transpose(1, 2)).transpose(1, 2)
    img_img = stretch(stretch(mask[:, t:, t:]).transpose(1, 2)).transpose(1, 2)  # keys, then queries
    return torch.cat([torch.cat([mask[:, :t, :t], txt_img], 2), torch.cat([img_txt, img_img], 2)], 1)


def pack(x):
    """[B, C, H, W] (H, W even) -> [B, (H/2)(W/2), C*4]: each 2x2 patch one token, channel-major."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens, hp: int, wp: int):
    b, _n, d = tokens.shape
    c = d // 4
    return tokens.reshape(b, hp, wp, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, hp * 2, wp * 2)


def position_ids(hp: int, wp: int, index: float, row0: int, col0: int, device):
    """[(hp * wp), 3] float ids (index, row, column) of a token grid starting at (row0, col0)."""
    import torch

    ids = torch.zeros(hp, wp, 3, device=device)
    ids[..., 0] = index
    ids[..., 1] = torch.arange(hp, device=device, dtype=torch.float32)[:, None] + row0
    ids[..., 2] = torch.arange(wp, device=device, dtype=torch.float32)[None, :] + col0
    return ids.reshape(hp * wp, 3)


def ref_positions(sizes, image_grid: tuple, method: str) -> list:
    """(index, row offset, column offset) in tokens for each reference latent of (h, w) latent
    cells, as ComfyUI places Kontext references: "offset" tiles them to the right of or below the
    ones before (index 1), "index" gives each its own index 1, 2, ..., "uxo" puts them diagonally
    past the image (index 0)."""
    out = []
    rows = cols = 0  # in latent cells
    index = 0
    for h, w in sizes:
        h, w = int(h), int(w)
        if method == "index":
            index += 1
            dh = dw = 0
        elif method == "uxo":
            index = 0
            dh, dw = image_grid[0] * 2 + rows, image_grid[1] * 2 + cols
            rows, cols = rows + h, cols + w
        else:
            index, dh, dw = 1, 0, 0
            if h + rows > w + cols:
                dw = cols
            else:
                dh = rows
            rows, cols = max(rows, h + dh), max(cols, w + dw)
        out.append((index, (dh + 1) // 2, (dw + 1) // 2))
    return out


def _compute_dtype(device, dtype):
    import torch

    from genloom.engine import context

    chosen = (context.current().options or {}).get("unet_dtype")
    if dtype is torch.float16 and not chosen and str(device).startswith("cuda") and torch.cuda.is_available() \
            and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return dtype


def _pad_even(x):
    import torch.nn.functional as F

    ph, pw = x.shape[-2] % 2, x.shape[-1] % 2
    return F.pad(x, (0, pw, 0, ph), mode="circular") if ph or pw else x


@contextmanager
def _no_guidance(transformer):
    """The guidance embedder contributes nothing (FluxDisableGuidance on a dev model)."""
    embedder = transformer.time_text_embed.guidance_embedder
    handle = embedder.register_forward_hook(lambda _m, _a, output: output * 0)
    try:
        yield
    finally:
        handle.remove()
