"""Upscaling: latents by interpolation, pictures with a super-resolution model (ESRGAN and the
other architectures spandrel knows), as ComfyUI's core nodes do. The work is in
genloom.diffusion.resample and genloom.diffusion.upscale_models."""

from __future__ import annotations

from genloom.diffusion.resample import CROP_METHODS, LATENT_METHODS, keep_aspect
from genloom.diffusion.tiling import DEFAULT_TILE
from genloom.engine import context
from genloom.engine.errors import NodeInputError
from genloom.engine.node import Combo, Float, Input, Int, Node, Out

from .loaders import load_model_file, model_names, model_stamp

MAX_RESOLUTION = 16384
LATENT_FACTOR = 8  # pixels per latent cell, as ComfyUI's latent upscale nodes assume


def _upscaled_latent(samples: dict, width: int, height: int, method: str, crop: str = "disabled") -> dict:
    from genloom.diffusion.resample import resize

    latent = samples["samples"]
    if latent.dim() not in (4, 5):
        raise NodeInputError("samples", f"expected a [B, C, H, W] or video [B, C, T, H, W] latent, "
                                        f"got shape {tuple(latent.shape)}")
    out = dict(samples)
    if latent.dim() == 5:  # a video latent: every frame resized alike, as ComfyUI's common_upscale does
        b, c, t, h, w = latent.shape
        frames = resize(latent.movedim(2, 1).reshape(b * t, c, h, w), width, height, method, crop)
        out["samples"] = frames.reshape(b, t, c, *frames.shape[-2:]).movedim(1, 2)
    else:
        out["samples"] = resize(latent, width, height, method, crop)
    return out


class LatentUpscale(Node):
    """Resizes latents to a size in pixels; a 0 width or height keeps the aspect ratio."""

    category = "latent"
    display_name = "Upscale Latent"
    inputs = [
        Input("samples", "LATENT"),
        Combo("upscale_method", LATENT_METHODS, "nearest-exact"),
        Int("width", 512, min=0, max=MAX_RESOLUTION, step=8),
        Int("height", 512, min=0, max=MAX_RESOLUTION, step=8),
        Combo("crop", CROP_METHODS, "disabled"),
    ]
    outputs = [Out("LATENT")]

    def run(self, samples, upscale_method, width, height, crop):
        if width == 0 and height == 0:
            return (samples,)
        h, w = samples["samples"].shape[-2:]
        width, height = keep_aspect(width, height, w, h, minimum=64)
        return (_upscaled_latent(samples, width // LATENT_FACTOR, height // LATENT_FACTOR,
                                 upscale_method, crop),)


class LatentUpscaleBy(Node):
    """Resizes latents by a factor."""

    category = "latent"
    display_name = "Upscale Latent By"
    inputs = [
        Input("samples", "LATENT"),
        Combo("upscale_method", LATENT_METHODS, "nearest-exact"),
        Float("scale_by", 1.5, min=0.01, max=8.0, step=0.01),
    ]
    outputs = [Out("LATENT")]

    def run(self, samples, upscale_method, scale_by):
        h, w = samples["samples"].shape[-2:]
        return (_upscaled_latent(samples, max(1, round(w * scale_by)), max(1, round(h * scale_by)),
                                 upscale_method),)


class UpscaleModelLoader(Node):
    """Loads a super-resolution model (ESRGAN, Real-ESRGAN, SwinIR, ...) from models/upscale_models."""

    category = "loaders"
    display_name = "Load Upscale Model"
    inputs = [Combo("model_name", model_names("upscale_models"), tooltip="A file in models/upscale_models.")]
    outputs = [Out("UPSCALE_MODEL")]

    @classmethod
    def fingerprint(cls, model_name):
        return model_stamp("upscale_models", model_name)

    def run(self, model_name):
        from genloom.diffusion.upscale_models import load_upscale_model

        return (load_model_file("model_name", "upscale_models", model_name, load_upscale_model),)


class ImageUpscaleWithModel(Node):
    """Upscales images with a model, tile by tile so that large pictures fit in memory; the borders
    are mirrored out first so the outermost pixels upscale as well as the rest."""

    category = "image/upscaling"
    display_name = "Upscale Image (using Model)"
    inputs = [Input("upscale_model", "UPSCALE_MODEL"), Input("image", "IMAGE")]
    outputs = [Out("IMAGE")]

    def run(self, upscale_model, image):
        from genloom.diffusion.upscale_models import fits_channels, upscale_image

        ctx = context.current()
        if not fits_channels(image.shape[-1], upscale_model.input_channels):
            raise NodeInputError("image", f"has {image.shape[-1]} channels, the model takes "
                                          f"{upscale_model.input_channels}")
        tile = int((ctx.options or {}).get("upscale_tile", DEFAULT_TILE))
        return (upscale_image(upscale_model, image, ctx.device, tile,
                              progress=lambda done, total: ctx.progress(done, total)),)


NODES = [LatentUpscale, LatentUpscaleBy, UpscaleModelLoader, ImageUpscaleWithModel]
