"""Latent creation, VAE encoding/decoding and inpainting masks, with ComfyUI's inputs and outputs.

The tensor work is genloom.diffusion.vae_passes, imported inside `run` so that listing nodes never
imports torch.
"""

from genloom.engine.errors import NodeInputError
from genloom.engine.node import Input, Int, Node, Out

MAX_RESOLUTION = 16384

_VAE = Input("vae", "VAE", tooltip="The VAE that maps between pixels and latents.")


class EmptyLatentImage(Node):
    """A batch of all-zero latents to start text-to-image sampling from."""

    category = "latent"
    display_name = "Empty Latent Image"
    inputs = [
        Int("width", 512, min=16, max=MAX_RESOLUTION, step=8, tooltip="Image width in pixels."),
        Int("height", 512, min=16, max=MAX_RESOLUTION, step=8, tooltip="Image height in pixels."),
        Int("batch_size", 1, min=1, max=4096, tooltip="Number of images in the batch."),
    ]
    outputs = [Out("LATENT", tooltip="Zeros [batch, 4, height/8, width/8].")]

    @classmethod
    def validate(cls, width, height, batch_size=1):
        """The declared ranges (a validate method takes them over), then the engine's size budgets:
        a batch that cannot fit is refused before anything is allocated."""
        from genloom.engine.budgets import declared_size

        return declared_size(cls.inputs, {"width": width, "height": height, "batch_size": batch_size})

    def run(self, width, height, batch_size=1):
        import torch

        return ({"samples": torch.zeros([batch_size, 4, height // 8, width // 8])},)


class VAEDecode(Node):
    """Turns latents into images."""

    category = "latent"
    display_name = "VAE Decode"
    inputs = [Input("samples", "LATENT", tooltip="The latents to decode."), _VAE]
    outputs = [Out("IMAGE", tooltip="The decoded images.")]

    def run(self, samples, vae):
        return (vae.decode(samples["samples"]),)


class VAEEncode(Node):
    """Turns images into latents (cropped to a multiple of the VAE's scale)."""

    category = "latent"
    display_name = "VAE Encode"
    inputs = [Input("pixels", "IMAGE", tooltip="The images to encode."), _VAE]
    outputs = [Out("LATENT", tooltip="The encoded latents.")]

    def run(self, pixels, vae):
        from genloom.diffusion.vae_passes import crop_to_multiple

        _check_fits(pixels, vae)
        return ({"samples": vae.encode(crop_to_multiple(pixels[..., :3], vae.scale_factor))},)


class VAEDecodeTiled(Node):
    """Decodes latents tile by tile, blending the seams, to bound memory on large images."""

    category = "_for_testing"
    display_name = "VAE Decode (Tiled)"
    inputs = [
        Input("samples", "LATENT", tooltip="The latents to decode."), _VAE,
        Int("tile_size", 512, min=64, max=4096, step=32, tooltip="Tile size in pixels."),
        Int("overlap", 64, min=0, max=4096, step=32, tooltip="Overlap between tiles in pixels."),
        Int("temporal_size", 64, min=8, max=4096, step=4,
            tooltip="Frames per tile for video VAEs; ignored for image VAEs."),
        Int("temporal_overlap", 8, min=4, max=4096, step=4,
            tooltip="Frame overlap for video VAEs; ignored for image VAEs."),
    ]
    outputs = [Out("IMAGE", tooltip="The decoded images.")]

    def run(self, samples, vae, tile_size, overlap, temporal_size=64, temporal_overlap=8):
        from genloom.diffusion.vae_passes import decode_tiled

        return (decode_tiled(vae, samples["samples"], tile_size, overlap),)


class VAEEncodeForInpaint(Node):
    """Encodes an image for inpainting: the masked part is greyed out before encoding and the
    grown mask becomes the latent's noise mask."""

    category = "latent/inpaint"
    display_name = "VAE Encode (for Inpainting)"
    inputs = [
        Input("pixels", "IMAGE", tooltip="The image to inpaint."), _VAE,
        Input("mask", "MASK", tooltip="1 where new content goes."),
        Int("grow_mask_by", 6, min=0, max=64, step=1,
            tooltip="Pixels to grow the mask by, so new content blends into its surroundings."),
    ]
    outputs = [Out("LATENT", tooltip="The latents with their noise mask.")]

    def run(self, pixels, vae, mask, grow_mask_by=6):
        from genloom.diffusion.vae_passes import encode_for_inpaint

        _check_fits(pixels, vae)
        return (encode_for_inpaint(vae, pixels, mask, grow_mask_by),)


class SetLatentNoiseMask(Node):
    """Limits sampling to the masked part of a latent; the rest is kept from the input."""

    category = "latent/inpaint"
    display_name = "Set Latent Noise Mask"
    inputs = [Input("samples", "LATENT", tooltip="The latents."),
              Input("mask", "MASK", tooltip="1 where the sampler may change the latent.")]
    outputs = [Out("LATENT", tooltip="The latents with the noise mask set.")]

    def run(self, samples, mask):
        out = dict(samples)
        out["noise_mask"] = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))
        return (out,)


def _check_fits(pixels, vae) -> None:
    """A picture smaller than one VAE cell has nothing to encode."""
    if min(pixels.shape[1], pixels.shape[2]) < vae.scale_factor:
        raise NodeInputError("pixels", f"image {pixels.shape[2]}x{pixels.shape[1]} is smaller than the "
                                       f"VAE's {vae.scale_factor} px cell")


NODES = [EmptyLatentImage, VAEDecode, VAEEncode, VAEDecodeTiled, VAEEncodeForInpaint, SetLatentNoiseMask]
