"""Flux.2 (dev, and Klein 4B / 9B): Black Forest Labs' key layout -> diffusers' Flux2Transformer2DModel,
config from the shapes, the MODEL handle.

Layout (BFL's `flux2-dev.safetensors`, `flux-2-klein-*.safetensors`, ComfyUI's repackages with the
`model.diffusion_model.` prefix): `img_in`, `txt_in`, `time_in.{in,out}_layer`, `guidance_in.*` (dev
only: Klein is not guidance-distilled), one shared modulation per stream
(`double_stream_modulation_{img,txt}.lin`, `single_stream_modulation.lin`), `double_blocks.N` with fused
`{img,txt}_attn.qkv`, `*_attn.norm.{query,key}_norm.scale`, `*_attn.proj`, SwiGLU `*_mlp.{0,2}`,
`single_blocks.N.linear1` (q, k, v and the MLP's input fused) / `linear2`, `final_layer.adaLN_modulation.1`
(shift, scale) and `final_layer.linear`; no biases anywhere. The renaming is diffusers' own converter;
`to_original` is its inverse. Klein's weights differ from dev's only in size (and the absent guidance
embedder), so one family covers both.

Config read from the shapes: width and latent channels (img_in), head size (the q norm), depth, single
depth, text width (txt_in: three stacked LLM layers), MLP ratio (the SwiGLU's doubled input), guidance
embedder present or not; the rotary axes are Flux.2's four (32, 32, 32, 32) for 128-wide heads, a
quarter of the head each for other sizes.

What the sampler's latent [B, 128, H/16, W/16] (EmptyFlux2LatentImage; the VAE's 2x2 patches already
folded into channels) becomes, as ComfyUI's Flux.2 model and diffusers' Flux2Pipeline both do:
  image tokens  one per latent cell, [B, h*w, 128], ids (0, row, column, 0)
  text          the conditioning left-padded with zeros to 512 tokens (ComfyUI's Flux2.extra_conds;
                the Qwen3 encodings of Klein are 512 already), ids (0, 0, 0, index)
  timestep      sigma (the network multiplies by 1000)
  guidance      dev only: CONDITIONING's "guidance" (FluxGuidance; 3.5 when unset, as ComfyUI)
  references    ReferenceLatent's latents (VAEEncode of the Flux.2 VAE: [B, 128, h, w], any size): one token
                per cell appended after the image's, ids (10 * i, row, column, 0) for the i-th (ComfyUI's
                Flux.2 default "index", equal to Flux2Pipeline's image=[...]); "offset" and "uxo" as for
                Kontext. Each step sees the references unnoised at the step's timestep and their output is
                dropped. One reference image is an edit, several are multi-reference generation.
Model sampling as ComfyUI's Flux2: ModelSamplingFlux with shift 2.02 (Flux2Scheduler's sigmas carry the
resolution-dependent shift of BFL's schedule); latent format identity (the VAE normalises, flux2_vae.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from genloom.diffusion.errors import CheckpointError

from ..flux2_keys import DOUBLE, QKV, SINGLE, TOP
from ..handles import ModelHandle
from ..loading import build_module
from ..weights import exact_keys
from . import DiTHandle

NAME = "Flux.2"
SHIFT = 2.02
TEXT_TOKENS = 512
DEFAULT_GUIDANCE = 3.5
REF_METHODS = ("index", "offset", "uxo")  # ComfyUI's reference_latents_method values, "index" Flux.2's default
REF_INDEX_SCALE = 10  # the time-index step between Flux.2's reference images (ComfyUI's and diffusers')
SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000}
_MARKER = "double_stream_modulation_img.lin.weight"
_DIFFUSERS_MARKER = "double_stream_modulation_img.linear.weight"


def detect(shapes: dict) -> bool:
    return _MARKER in shapes or _DIFFUSERS_MARKER in shapes


def to_diffusers(state: dict) -> dict:
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

    return convert_flux2_transformer_checkpoint_to_diffusers(dict(state))


def _swap_halves(t):
    import torch

    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def to_original(state: dict) -> dict:
    """Flux2Transformer2DModel tensors -> BFL's layout (q, k, v fused back, the final shift/scale swapped)."""
    import torch

    out = {}
    for key, value in state.items():
        base, _, leaf = key.rpartition(".")
        m = re.match(r"(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$", base)
        if base in TOP:
            out[f"{TOP[base]}.{leaf}"] = value
        elif base == "norm_out.linear":
            out[f"final_layer.adaLN_modulation.1.{leaf}"] = _swap_halves(value)
        elif m and m[1] == "single_transformer_blocks" and m[3] in SINGLE:
            out[f"single_blocks.{m[2]}.{SINGLE[m[3]]}.{'scale' if 'norm' in m[3] else leaf}"] = value
        elif m and m[3] in DOUBLE:
            out[f"double_blocks.{m[2]}.{DOUBLE[m[3]]}.{'scale' if 'norm' in m[3] else leaf}"] = value
        elif m and m[3] in QKV:
            fused, parts = QKV[m[3]]
            out[f"double_blocks.{m[2]}.{fused}.{leaf}"] = torch.cat(
                [state[f"{m[1]}.{m[2]}.{p}.{leaf}"] for p in parts], dim=0)
        elif not (m and any(m[3] in parts for _f, parts in QKV.values())):
            raise CheckpointError(f"no Flux.2 original name for {key}")
    return out


def empirical_mu(tokens: int, steps: int) -> float:
    """BFL's shift for an image of `tokens` latent cells sampled in `steps` (Flux.2's sampling code, as
    ComfyUI's Flux2Scheduler and diffusers' Flux2Pipeline use it): linear in the token count, and below
    4300 tokens interpolated in the step count between its 10- and 200-step fits."""
    a_200, b_200 = 0.00016927, 0.45666666
    if tokens > 4300:
        return a_200 * tokens + b_200
    a_10, b_10 = 8.73809524e-05, 1.89833333
    mu_200, mu_10 = a_200 * tokens + b_200, a_10 * tokens + b_10
    slope = (mu_200 - mu_10) / 190.0
    return slope * steps + (mu_200 - 200.0 * slope)


def schedule(steps: int, width: int, height: int):
    """Flux2Scheduler: `steps` + 1 sigmas from 1 to 0, the linear ramp t mapped to e^mu / (e^mu + 1/t - 1)."""
    import math

    import torch

    mu = empirical_mu(round(width * height / 256), steps)
    t = torch.linspace(1, 0, steps + 1)
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


def rope_axes(head: int) -> list[int]:
    """Four rotary axes (time, row, column, text index): (32, 32, 32, 32) for 128-wide heads."""
    if head % 8:
        raise CheckpointError(f"a Flux.2 transformer with {head}-wide heads has no rotary layout genloom knows")
    return [head // 4] * 4


def config_from_shapes(shapes: dict) -> dict:
    try:
        width, packed = shapes["img_in.weight"]
        head = shapes["double_blocks.0.img_attn.norm.query_norm.scale"][0]
        mlp = shapes["double_blocks.0.img_mlp.0.weight"][0]
        joint = shapes["txt_in.weight"][1]
        out = shapes["final_layer.linear.weight"][0]
        time_channels = shapes["time_in.in_layer.weight"][1]
    except KeyError as exc:
        raise CheckpointError(f"this Flux.2 file lacks {exc.args[0]}") from None
    if width % head:
        raise CheckpointError(f"Flux.2 transformer width {width} is not a whole number of {head}-wide heads")

    def depth(name):
        return len({int(m.group(1)) for k in shapes if (m := re.match(rf"{name}\.(\d+)\.", k))})

    return {"patch_size": 1, "in_channels": packed, "out_channels": out, "num_layers": depth("double_blocks"),
            "num_single_layers": depth("single_blocks"), "attention_head_dim": head,
            "num_attention_heads": width // head, "joint_attention_dim": joint,
            "timestep_guidance_channels": time_channels, "mlp_ratio": mlp / 2 / width,
            "axes_dims_rope": rope_axes(head), "rope_theta": 2000, "eps": 1e-6,
            "guidance_embeds": "guidance_in.in_layer.weight" in shapes}


def positions(rows: int, cols: int, device, index: float = 0, row0: int = 0, col0: int = 0):
    """[(rows * cols), 4] ids (index, row0 + row, col0 + column, 0) of a token grid, row-major: the image
    is (0, row, column, 0), a reference image its own time index and offsets."""
    import torch

    from ..flux_model import position_ids  # Flux.1's three axes; Flux.2 adds a fourth, zero here

    return torch.nn.functional.pad(position_ids(rows, cols, index, row0, col0, device), (0, 1))


def reference_positions(sizes, grid: tuple, method: str) -> list:
    """(time index, row offset, column offset) in tokens of each reference latent of (h, w) cells, as
    ComfyUI's Flux.2 places them: "index" (its default) gives the i-th reference time index 10 * i,
    which is also diffusers' Flux2Pipeline's rule (10 + 10 * i from 0); "offset" and "uxo" are
    Kontext's placements. Flux.2 has one token per latent cell where Kontext's tokens are 2x2 cells,
    so Kontext's rule is asked with every size doubled; only "index" steps by 10 (ComfyUI's
    ref_index_scale for Flux.2)."""
    from ..flux_model import ref_positions

    doubled = [(2 * int(h), 2 * int(w)) for h, w in sizes]
    return [(index * REF_INDEX_SCALE if method == "index" else index, dh, dw)
            for index, dh, dw in ref_positions(doubled, grid, method)]


def text_positions(tokens: int, device):
    import torch

    ids = torch.zeros(tokens, 4, device=device)
    ids[:, 3] = torch.arange(tokens, device=device, dtype=torch.float32)
    return ids


@dataclass(frozen=True, eq=False)
class Flux2Handle(DiTHandle):
    kind: str = "flux2"
    prediction_type: str = "flow"
    scheduler_config: dict = field(default_factory=lambda: dict(SCHEDULER))

    @property
    def is_dev(self) -> bool:
        """Guidance-distilled (dev): the network embeds a guidance value; Klein takes CFG instead."""
        return bool(self.unet.config.guidance_embeds)

    def cond_extras(self, extra: dict, height: int, width: int) -> dict:
        import torch

        from genloom.diffusion.errors import SamplingError

        if extra.get("control") is not None:
            raise SamplingError("ControlNets on Flux.2 models are not supported yet")
        out = self._references(extra.get("reference_latents") or [],
                               extra.get("reference_latents_method", "index"))
        guidance = extra.get("guidance", DEFAULT_GUIDANCE)
        if self.is_dev and guidance is not None:
            out["guidance"] = torch.full((1,), float(guidance), dtype=torch.float32)
        return out

    def _references(self, refs: list, method: str) -> dict:
        """ReferenceLatent's latents (VAEEncode's, [B, 128, h, w]) as `ref_<i>` in the model's latent
        format, with the placement method; a latent of another model is refused by name."""
        from genloom.diffusion.errors import SamplingError
        from genloom.diffusion.sampling.latent_formats import of_model

        if not refs:
            return {}
        if method not in REF_METHODS:
            raise SamplingError(f"reference_latents_method {method!r} is not one Flux.2 takes "
                                f"({', '.join(REF_METHODS)})")
        fmt, out = of_model(self), {"reference_method": method}
        for i, ref in enumerate(refs):
            if ref.ndim != 4 or ref.shape[1] != self.latent_channels:
                raise SamplingError(f"reference latent {i + 1} has shape {tuple(ref.shape)}; a Flux.2 model takes "
                                    f"[B, {self.latent_channels}, H/16, W/16] latents (VAEEncode with the Flux.2 VAE)")
            out[f"ref_{i}"] = fmt.process_in(ref.float())
        return out

    def predict(self, transformer, x, t, emb, extras: dict):
        import torch
        import torch.nn.functional as F

        b, c, h, w = x.shape
        tokens, ids = [_tokens(x)], [positions(h, w, x.device)]
        refs = [extras[k] for k in sorted((k for k in extras if k.startswith("ref_")), key=lambda k: int(k[4:]))]
        places = reference_positions([r.shape[-2:] for r in refs], (h, w), extras.get("reference_method", "index"))
        for ref, (index, dh, dw) in zip(refs, places):  # after the image's tokens; their output is dropped
            tokens.append(_tokens(ref.to(x.dtype).expand(b, -1, -1, -1)))
            ids.append(positions(ref.shape[-2], ref.shape[-1], x.device, index, dh, dw))
        if emb.shape[1] < TEXT_TOKENS:  # ComfyUI's rule: zeros before the text
            emb = F.pad(emb, (0, 0, TEXT_TOKENS - emb.shape[1], 0))
        guidance = extras.get("guidance")  # None (Klein, FluxDisableGuidance): the embedder's term left out
        out = transformer(hidden_states=torch.cat(tokens, dim=1), encoder_hidden_states=emb,
                          timestep=self.batch_timestep(t, x), img_ids=torch.cat(ids),
                          txt_ids=text_positions(emb.shape[1], x.device),
                          guidance=None if guidance is None else guidance.reshape(-1).to(x.dtype),
                          return_dict=False)[0]
        return out[:, :h * w].permute(0, 2, 1).reshape(b, -1, h, w).to(x.dtype)


def _tokens(latent):
    """[B, C, h, w] -> [B, h*w, C]: one token per latent cell, row-major."""
    b, c, h, w = latent.shape
    return latent.reshape(b, c, h * w).permute(0, 2, 1)


def build(state: dict, *, dtype, name: str) -> ModelHandle:
    from diffusers import Flux2Transformer2DModel

    from genloom.diffusion.sampling import latent_formats, model_sampling

    if _MARKER not in state:  # a diffusers-keyed file
        state = to_original(state)
    config = config_from_shapes({k: tuple(v.shape) for k, v in state.items()})
    converted = to_diffusers(state)
    module = build_module(Flux2Transformer2DModel, config, converted, "Flux.2 transformer")
    exact_keys(converted, module.state_dict().keys(), "Flux.2 transformer")
    channels = config["out_channels"]
    return Flux2Handle(unet=module.eval(), latent_channels=channels, vae_scale_factor=16, name=name,
                       sampling=model_sampling.flux(SHIFT),
                       latent_format=latent_formats.LatentFormat(channels=channels))


def save_original(transformer, path, prefix: str = "") -> None:
    """Write a Flux2Transformer2DModel as BFL's file has it (`prefix` "model.diffusion_model." for ComfyUI's)."""
    from safetensors.torch import save_file

    tensors = {prefix + k: v.contiguous() for k, v in to_original(transformer.state_dict()).items()}
    save_file(tensors, str(path))
