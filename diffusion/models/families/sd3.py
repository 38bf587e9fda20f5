"""SD3 / SD3.5 (MMDiT): the original key layout <-> diffusers' SD3Transformer2DModel, config from the
shapes, the MODEL handle.

Original layout (Stability's files, ComfyUI's): `joint_blocks.N.{x_block,context_block}.attn.qkv`
(q, k, v stacked), `attn.ln_q/ln_k` (SD3.5's RMS qk-norm), `x_block.attn2.*` (SD3.5 medium's dual
attention layers), `adaLN_modulation.1`, `mlp.fc1/fc2`; `x_embedder`, `pos_embed` (a fixed
[1, P*P, width] table), `t_embedder`, `y_embedder` (pooled text), `context_embedder`,
`final_layer`. The last block's context half has no output projection and no MLP, and its
modulation (like final_layer's) is stored (shift, scale) where diffusers keeps (scale, shift).

Config read from the shapes: width and patch size (x_embedder), depth (joint_blocks), head size
(qk-norm weights; 64 without them, as every SD3 model has), dual-attention layers, pos-embed size,
text widths (context_embedder, y_embedder), output channels (final_layer).
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass, field

from genloom.diffusion.errors import CheckpointError, SamplingError

from ..handles import ModelHandle
from ..loading import build_module
from ..weights import exact_keys
from ..sd3_keys import entries
from . import DiTHandle

NAME = "SD3"
_ORIGINAL = "joint_blocks.0.context_block.attn.qkv.weight"
_DIFFUSERS = ("transformer_blocks.0.attn.add_q_proj.weight", "pos_embed.pos_embed",
              "time_text_embed.text_embedder.linear_1.weight")
SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}


def detect(shapes: dict) -> bool:
    return _ORIGINAL in shapes or all(k in shapes for k in _DIFFUSERS)


def _blocks(keys, pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in keys if (m := re.match(pattern, k))})


def _swap(t):
    a, b = t.chunk(2, dim=0)
    import torch

    return torch.cat([b, a], dim=0)


def layout_of(keys) -> tuple[int, set, bool]:
    """(depth, dual-attention layers, qk-norm) from original or diffusers keys."""
    keys = list(keys)
    if any(k.startswith("joint_blocks.") for k in keys):
        depth = len(_blocks(keys, r"joint_blocks\.(\d+)\."))
        dual = set(_blocks(keys, r"joint_blocks\.(\d+)\.x_block\.attn2\."))
        return depth, dual, any(".attn.ln_q." in k for k in keys)
    depth = len(_blocks(keys, r"transformer_blocks\.(\d+)\."))
    dual = set(_blocks(keys, r"transformer_blocks\.(\d+)\.attn2\."))
    return depth, dual, any(".attn.norm_q." in k for k in keys)


def to_diffusers(state: dict) -> dict:
    """Original-layout tensors -> SD3Transformer2DModel's; missing or unexpected keys are an error."""
    table = entries(*layout_of(state))
    exact_keys(state, [orig for orig, _d, _op in table], "SD3 transformer")
    out = {}
    for orig, diff, op in table:
        t = state[orig]
        if op == "qkv":
            out.update(zip(diff, t.chunk(3, dim=0)))
        else:
            out[diff] = _swap(t) if op == "swap" else t
    return out


def to_original(state: dict) -> dict:
    """SD3Transformer2DModel tensors -> the original layout (the writer)."""
    import torch

    out = {}
    for orig, diff, op in entries(*layout_of(state)):
        if op == "qkv":
            out[orig] = torch.cat([state[k] for k in diff], dim=0)
        else:
            out[orig] = _swap(state[diff]) if op == "swap" else state[diff]
    return out


def config_from_shapes(shapes: dict) -> dict:
    """diffusers' SD3Transformer2DModel config from original-layout shapes."""
    depth, dual, qk = layout_of(shapes)
    width, in_channels, patch, _ = shapes["x_embedder.proj.weight"]
    head = shapes["joint_blocks.0.x_block.attn.ln_q.weight"][0] if qk else 64
    if width % head:
        raise CheckpointError(f"SD3 transformer width {width} is not a whole number of {head}-wide heads")
    side = math.isqrt(shapes["pos_embed"][1])
    caption, joint = shapes["context_embedder.weight"]
    return {"sample_size": 128, "patch_size": patch, "in_channels": in_channels, "num_layers": depth,
            "attention_head_dim": head, "num_attention_heads": width // head,
            "joint_attention_dim": joint, "caption_projection_dim": caption,
            "pooled_projection_dim": shapes["y_embedder.mlp.0.weight"][1],
            "out_channels": shapes["final_layer.linear.weight"][0] // (patch * patch),
            "pos_embed_max_size": side, "dual_attention_layers": tuple(sorted(dual)),
            "qk_norm": "rms_norm" if qk else None}


# -- the MODEL -----------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class SD3Handle(DiTHandle):
    kind: str = "sd3"
    scheduler_config: dict = field(default_factory=lambda: dict(SCHEDULER))
    skip_layers: tuple = ()  # joint blocks left out of the call (skip-layer guidance's extra pass)

    def cond_extras(self, extra: dict, height: int, width: int) -> dict:
        if extra.get("pooled_output") is None:
            raise SamplingError("an SD3 model needs pooled text embeddings (pooled_output) in its "
                                "conditioning: encode the prompt with an SD3 CLIP (TripleCLIPLoader)")
        out = {"pooled_projections": extra["pooled_output"]}
        if extra.get("control") is not None:  # a ControlNet chain (genloom.diffusion.controlnet.Control)
            out["control"] = extra["control"]
        return out

    def predict(self, transformer, x, t, emb, extras: dict):
        timestep = self.batch_timestep(t, x)
        more = {"skip_layers": list(self.skip_layers)} if self.skip_layers else {}
        if extras.get("control") is not None:  # its block residuals, from the same inputs
            more.update(extras["control"].sd3_inputs(self, x, timestep, emb, extras["pooled_projections"]))
        with _after_last_block(transformer, more.get("block_controlnet_hidden_states")):
            return transformer(hidden_states=x, encoder_hidden_states=emb, timestep=timestep,
                               pooled_projections=extras["pooled_projections"], return_dict=False, **more)[0]


@contextmanager
def _after_last_block(transformer, residuals):
    """ComfyUI adds a ControlNet residual after every joint block, the last included; diffusers'
    SD3Transformer2DModel skips the last (its context half is pre-only). For this call the last
    block's residual is added to what reaches the final norm (norm_out's first argument): the last
    block's output, as nothing else comes between, skipped or not."""
    if not residuals:
        yield
        return
    last = residuals[-1]
    hook = transformer.norm_out.register_forward_pre_hook(lambda _module, args: (args[0] + last, *args[1:]))
    try:
        yield
    finally:
        hook.remove()


def skip_layer_guidance(model: SD3Handle, layers: tuple, scale: float, start_percent: float,
                        end_percent: float) -> SD3Handle:
    """ComfyUI's SkipLayerGuidanceSD3 (SkipLayerGuidanceDiT on the joint blocks): while sigma lies in
    [percent_to_sigma(start), percent_to_sigma(end)], the positive conditioning is run once more with
    `layers` left out and the result moves by (cond - that) * scale, after CFG, in denoised space."""
    from dataclasses import replace

    from genloom.diffusion.sampling.guidance import prepare_conds
    from genloom.diffusion.sampling.model_sampling import of_model

    depth = len(model.unet.transformer_blocks)
    bad = [i for i in layers if not 0 <= i < depth]
    if bad:
        raise SamplingError(f"layers {bad} are not joint blocks of this model (0..{depth - 1})")

    def post_cfg(args):
        import torch

        sigma = float(torch.as_tensor(args["sigma"]).reshape(-1)[0])
        current = args["model"]
        ms = of_model(current)
        if scale == 0 or not ms.percent_to_sigma(start_percent) >= sigma >= ms.percent_to_sigma(end_percent):
            return args["denoised"]
        x = args["input"]
        skipping = replace(current, skip_layers=tuple(layers), model_options={})
        guide = prepare_conds(skipping, [args["cond"]], tuple(x.shape), x.device)
        guide.use_sigmas(ms)
        t = ms.timestep(torch.tensor(sigma))
        (out,) = guide.predictions(current.unet, ms.calculate_input(sigma, x), t.to(x.device), float(t), sigma)
        return args["denoised"] + (args["cond_denoised"] - ms.calculate_denoised(sigma, out.to(x.dtype), x)) * scale

    return model.with_post_cfg(post_cfg)


def build(state: dict, *, dtype, name: str) -> ModelHandle:
    from diffusers import SD3Transformer2DModel

    from genloom.diffusion.sampling import latent_formats, model_sampling

    if _ORIGINAL not in state:  # a diffusers-keyed file
        table = entries(*layout_of(state))
        exact_keys(state, [k for _o, d, _op in table for k in ([d] if isinstance(d, str) else d)],
                   "SD3 transformer")
        state = to_original(state)
    config = config_from_shapes({k: tuple(v.shape) for k, v in state.items()})
    module = build_module(SD3Transformer2DModel, config, to_diffusers(state), "SD3 transformer")
    return SD3Handle(unet=module, latent_channels=config["in_channels"], vae_scale_factor=8, name=name,
                     prediction_type="flow", sampling=model_sampling.flow(shift=3.0),
                     latent_format=latent_formats.SD3)


def save_original(transformer, path, prefix: str = "") -> None:
    """Write an SD3Transformer2DModel in the original layout (`prefix` e.g. "model.diffusion_model.")."""
    from safetensors.torch import save_file

    tensors = {prefix + k: v.contiguous() for k, v in to_original(transformer.state_dict()).items()}
    save_file(tensors, str(path))
