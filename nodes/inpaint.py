"""Inpainting-model conditioning (ComfyUI's InpaintModelConditioning) and DifferentialDiffusion.

VAEEncodeForInpaint and SetLatentNoiseMask live in nodes/latent.py; a 9-channel inpainting UNet
reads the mask and masked-image latent these give (genloom.diffusion.inpaint)."""

from __future__ import annotations

from genloom.engine.node import Boolean, Float, Input, Node, Out


class InpaintModelConditioning(Node):
    """Prepares an inpainting model's conditioning: the masked-out picture's latent and the mask go
    into both conditionings, the picture's own latent (with the mask as its noise mask) to the sampler."""

    category = "conditioning/inpaint"
    inputs = [Input("positive", "CONDITIONING"), Input("negative", "CONDITIONING"),
              Input("vae", "VAE"), Input("pixels", "IMAGE"), Input("mask", "MASK"),
              Boolean("noise_mask", True, tooltip="Add a noise mask to the latent so sampling only "
                      "changes the masked part; off can give better results with some models.")]
    outputs = [Out("CONDITIONING", "positive"), Out("CONDITIONING", "negative"), Out("LATENT", "latent")]

    def run(self, positive, negative, vae, pixels, mask, noise_mask=True):
        from genloom.diffusion.inpaint import model_conditioning

        masked, original, m = model_conditioning(vae, pixels, mask)
        latent = {"samples": original}
        if noise_mask:
            latent["noise_mask"] = m
        extra = {"concat_latent_image": masked, "concat_mask": m}
        out = [[[c[0], {**c[1], **extra}] for c in conds] for conds in (positive, negative)]
        return (out[0], out[1], latent)


class DifferentialDiffusion(Node):
    """Makes a soft noise mask work as a map of how much each part may change: at each step only the
    part whose mask value is at least the remaining noise level is regenerated."""

    category = "_for_testing"
    display_name = "Differential Diffusion"
    inputs = [Input("model", "MODEL"),
              Float("strength", 1.0, min=0.0, max=1.0, step=0.01, optional=True,
                    tooltip="Below 1, the step's mask is blended with the soft mask.")]
    outputs = [Out("MODEL")]

    def run(self, model, strength=1.0):
        from genloom.diffusion.model_patches import differential_mask

        return (model.with_options(denoise_mask_function=differential_mask(strength)),)


NODES = [InpaintModelConditioning, DifferentialDiffusion]
