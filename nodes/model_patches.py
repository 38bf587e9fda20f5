"""Model patches that return a patched copy of a MODEL (the input is never changed, so a cached
loader output stays right): FreeU, FreeU_V2, RescaleCFG, PerturbedAttentionGuidance,
SelfAttentionGuidance, HyperTile, PatchModelAddDownscale. The computations live in
genloom.diffusion.model_patches."""

from __future__ import annotations

from genloom.engine.errors import NodeInputError
from genloom.engine.node import Boolean, Combo, Float, Input, Int, Node, Out

_B = dict(min=0.0, max=10.0, step=0.01)
_RESIZE = ["bicubic", "nearest-exact", "bilinear", "area", "bislerp"]  # ComfyUI's order


def _unet_channels(model, node: str) -> int:
    """The base channel count of a UNet MODEL (SD1, SD2, SDXL); other families are refused."""
    config = getattr(getattr(model, "unet", None), "config", None)
    if config is None or "block_out_channels" not in config or not hasattr(model.unet, "up_blocks"):
        raise NodeInputError("model", f"{node} patches UNet models (SD1, SD2, SDXL) only")
    return int(config["block_out_channels"][0])


def _freeu(model, b1, b2, s1, s2, v2: bool):
    from genloom.diffusion.model_patches import freeu_patch, with_output_block_patch

    channels = _unet_channels(model, "FreeU")
    return (with_output_block_patch(model, freeu_patch(channels, b1, b2, s1, s2, v2)),)


class FreeU(Node):
    """FreeU: strengthens the decoder's backbone features (b1, b2) and damps the low frequencies of
    its skip connections (s1, s2)."""

    category = "model_patches/unet"
    inputs = [Input("model", "MODEL"), Float("b1", 1.1, **_B), Float("b2", 1.2, **_B),
              Float("s1", 0.9, **_B), Float("s2", 0.2, **_B)]
    outputs = [Out("MODEL")]

    def run(self, model, b1, b2, s1, s2):
        return _freeu(model, b1, b2, s1, s2, v2=False)


class FreeU_V2(Node):
    """FreeU v2: the backbone gain follows each position's normalised mean activation."""

    category = "model_patches/unet"
    inputs = [Input("model", "MODEL"), Float("b1", 1.3, **_B), Float("b2", 1.4, **_B),
              Float("s1", 0.9, **_B), Float("s2", 0.2, **_B)]
    outputs = [Out("MODEL")]

    def run(self, model, b1, b2, s1, s2):
        return _freeu(model, b1, b2, s1, s2, v2=True)


class RescaleCFG(Node):
    """Rescales the guided prediction toward the conditional one's spread (for v-prediction and
    zero-terminal-SNR models that overexpose at high CFG)."""

    category = "advanced/model"
    inputs = [Input("model", "MODEL"), Float("multiplier", 0.7, min=0.0, max=1.0, step=0.01)]
    outputs = [Out("MODEL")]

    def run(self, model, multiplier):
        from genloom.diffusion.model_patches import rescale_cfg

        return (model.with_options(sampler_cfg_function=rescale_cfg(float(multiplier))),)


class PerturbedAttentionGuidance(Node):
    """Perturbed-Attention Guidance: pushes the result away from the positive prediction made with
    the middle block's self-attention replaced by the identity (one more network call per step)."""

    category = "model_patches/unet"
    inputs = [Input("model", "MODEL"), Float("scale", 3.0, min=0.0, max=100.0, step=0.01, round=0.01)]
    outputs = [Out("MODEL")]

    def run(self, model, scale):
        from genloom.diffusion.model_patches import perturbed_attention_guidance

        _unet_channels(model, "PerturbedAttentionGuidance")
        m = model.clone()
        m.set_model_sampler_post_cfg_function(perturbed_attention_guidance(float(scale)),
                                              disable_cfg1_optimization=True)
        return (m.handle,)


class SelfAttentionGuidance(Node):
    """Self-Attention Guidance: blurs the negative prediction where the middle block's
    self-attention is high, runs the negative on it again and adds scale times the difference."""

    category = "_for_testing"
    display_name = "Self-Attention Guidance"
    inputs = [Input("model", "MODEL"), Float("scale", 0.5, min=-2.0, max=5.0, step=0.01),
              Float("blur_sigma", 2.0, min=0.0, max=10.0, step=0.1)]
    outputs = [Out("MODEL")]

    def run(self, model, scale, blur_sigma):
        from genloom.diffusion.model_patches import self_attention_guidance

        _unet_channels(model, "SelfAttentionGuidance")
        if blur_sigma <= 0:
            raise NodeInputError("blur_sigma", "must be above 0 (it is the Gaussian blur's sigma)")
        record, post_cfg = self_attention_guidance(float(scale), float(blur_sigma))
        m = model.clone()
        m.set_model_sampler_post_cfg_function(post_cfg, disable_cfg1_optimization=True)
        m.set_model_attn1_replace(record, "middle", 0, 0)
        return (m.handle,)


class HyperTile(Node):
    """HyperTile: the shallowest self-attentions attend within tiles of the latent (faster at large
    sizes)."""

    category = "model_patches/unet"
    inputs = [Input("model", "MODEL"), Int("tile_size", 256, min=1, max=2048),
              Int("swap_size", 2, min=1, max=128), Int("max_depth", 0, min=0, max=10),
              Boolean("scale_depth", False)]
    outputs = [Out("MODEL")]

    def run(self, model, tile_size, swap_size, max_depth, scale_depth):
        from genloom.diffusion.model_patches import hypertile

        _unet_channels(model, "HyperTile")
        tile_in, tile_out = hypertile(int(tile_size), int(swap_size), int(max_depth), bool(scale_depth))
        m = model.clone()
        m.set_model_attn1_patch(tile_in)
        m.set_model_attn1_output_patch(tile_out)
        return (m.handle,)


class PatchModelAddDownscale(Node):
    """Kohya's deep shrink: early in sampling the UNet works on a downscaled hidden state after one
    input block, scaled back up where it meets that block's skip connection."""

    category = "model_patches/unet"
    display_name = "PatchModelAddDownscale (Kohya Deep Shrink)"
    inputs = [Input("model", "MODEL"), Int("block_number", 3, min=1, max=32),
              Float("downscale_factor", 2.0, min=0.1, max=9.0, step=0.001),
              Float("start_percent", 0.0, min=0.0, max=1.0, step=0.001),
              Float("end_percent", 0.35, min=0.0, max=1.0, step=0.001),
              Boolean("downscale_after_skip", True),
              Combo("downscale_method", _RESIZE), Combo("upscale_method", _RESIZE)]
    outputs = [Out("MODEL")]

    def run(self, model, block_number, downscale_factor, start_percent, end_percent,
            downscale_after_skip, downscale_method, upscale_method):
        from genloom.diffusion.model_patches import deep_shrink
        from genloom.diffusion.sampling.model_sampling import of_model

        _unet_channels(model, "PatchModelAddDownscale")
        input_patch, output_patch = deep_shrink(
            of_model(model), int(block_number), float(downscale_factor), float(start_percent),
            float(end_percent), downscale_method, upscale_method)
        m = model.clone()
        if downscale_after_skip:
            m.set_model_input_block_patch_after_skip(input_patch)
        else:
            m.set_model_input_block_patch(input_patch)
        m.set_model_output_block_patch(output_patch)
        return (m.handle,)


NODES = [FreeU, FreeU_V2, RescaleCFG, PerturbedAttentionGuidance, SelfAttentionGuidance, HyperTile,
         PatchModelAddDownscale]
