"""Model patches that return a patched copy of a MODEL (the input is never changed, so a cached
loader output stays right): FreeU, FreeU_V2, RescaleCFG. The computations live in
genloom.diffusion.model_patches."""

from __future__ import annotations

from genloom.engine.errors import NodeInputError
from genloom.engine.node import Float, Input, Node, Out

_B = dict(min=0.0, max=10.0, step=0.01)


def _freeu(model, b1, b2, s1, s2, v2: bool):
    from genloom.diffusion.model_patches import freeu_patch, with_output_block_patch

    config = getattr(getattr(model, "unet", None), "config", None)
    if config is None or "block_out_channels" not in config or not hasattr(model.unet, "up_blocks"):
        raise NodeInputError("model", "FreeU patches UNet models (SD1, SD2, SDXL) only")
    channels = int(config["block_out_channels"][0])
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


NODES = [FreeU, FreeU_V2, RescaleCFG]
