"""Upscaling: latents by interpolation, pictures with a super-resolution model (ESRGAN and the
other architectures spandrel knows), as ComfyUI's core nodes do."""

from __future__ import annotations

from genloom.engine import context
from genloom.engine.node import Combo, Float, Input, Int, Node, Out

from .resample import CROP_METHODS, LATENT_METHODS, resize
from .tiling import DEFAULT_OVERLAP, DEFAULT_TILE, MIN_TILE, run_tiled

MAX_RESOLUTION = 16384
LATENT_FACTOR = 8  # pixels per latent cell, as ComfyUI's latent upscale nodes assume
BORDER = 8  # pixels mirrored around a picture before model upscaling


def _upscaled_latent(samples: dict, width: int, height: int, method: str, crop: str = "disabled") -> dict:
    latent = samples["samples"]
    if latent.dim() != 4:
        raise ValueError(f"samples: expected a [B, C, H, W] latent, got shape {tuple(latent.shape)}")
    out = dict(samples)
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
        if width == 0:
            height = max(64, height)
            width = max(64, round(w * height / h))
        elif height == 0:
            width = max(64, width)
            height = max(64, round(h * width / w))
        else:
            width, height = max(64, width), max(64, height)
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


def _upscale_models() -> list[str]:
    return context.current().folders.list_models("upscale_models")


def load_upscale_model(path, node: str = "UpscaleModelLoader", input_name: str = "model_name"):
    """A spandrel ImageModelDescriptor from a weights file; pickles that hold code are refused."""
    from safetensors import SafetensorError
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    from .models.single_file import CheckpointError, read_state_dict

    try:
        state, _ = read_state_dict(path)
    except (CheckpointError, OSError, SafetensorError) as exc:
        message = str(exc) if path.name in str(exc) else f"{path.name}: {exc}"
        raise ValueError(f"{node}: {input_name}: {message}") from exc
    try:
        model = ModelLoader().load_from_state_dict(state)
    except UnsupportedModelError as exc:
        raise ValueError(f"{node}: {input_name}: {path.name} is not an upscale model architecture "
                         f"that spandrel recognises") from exc
    if not isinstance(model, ImageModelDescriptor):
        raise ValueError(f"{node}: {input_name}: {path.name} is not a single-image model")
    return model.eval()


class UpscaleModelLoader(Node):
    """Loads a super-resolution model (ESRGAN, Real-ESRGAN, SwinIR, ...) from models/upscale_models."""

    category = "loaders"
    display_name = "Load Upscale Model"
    inputs = [Combo("model_name", _upscale_models, tooltip="A file in models/upscale_models.")]
    outputs = [Out("UPSCALE_MODEL")]

    @classmethod
    def fingerprint(cls, model_name):
        return context.current().folders.model_stamp("upscale_models", model_name)

    def run(self, model_name):
        try:
            path = context.current().folders.model_path("upscale_models", model_name)
        except (OSError, ValueError) as exc:
            raise ValueError(f"UpscaleModelLoader: model_name: {exc}") from exc
        return (load_upscale_model(path),)


def upscale_padded(model, pixels, device: str, tile: int = DEFAULT_TILE, progress=None):
    """[B, C, H, W] upscaled by `model` (a spandrel descriptor, moved to `device` and back).

    The picture is mirrored outwards by a few pixels first and the margin cut from the result: these
    models pad their convolutions with zeros, which darkens the outermost pixels; mirroring gives
    them real-looking neighbours instead."""
    import torch.nn.functional as F

    margin = min(BORDER, pixels.shape[-2] - 1, pixels.shape[-1] - 1)
    if margin > 0:
        pixels = F.pad(pixels, [margin] * 4, mode="reflect")
    model.to(device)
    try:
        out = run_tiled(model, pixels, model.scale, tile=tile, overlap=DEFAULT_OVERLAP, device=device,
                        progress=progress, min_tile=MIN_TILE)
    finally:
        model.to("cpu")
    if margin > 0:
        cut = margin * model.scale
        out = out[..., cut:out.shape[-2] - cut, cut:out.shape[-1] - cut]
    return out


class ImageUpscaleWithModel(Node):
    """Upscales images with a model, tile by tile so that large pictures fit in memory; the borders
    are mirrored out first so the outermost pixels upscale as well as the rest."""

    category = "image/upscaling"
    display_name = "Upscale Image (using Model)"
    inputs = [Input("upscale_model", "UPSCALE_MODEL"), Input("image", "IMAGE")]
    outputs = [Out("IMAGE")]

    def run(self, upscale_model, image):
        ctx = context.current()
        options = ctx.options or {}
        tile = int(options.get("upscale_tile", DEFAULT_TILE))
        channels = upscale_model.input_channels
        pixels = image.movedim(-1, 1).float()
        if pixels.shape[1] != channels:
            if channels == 1:
                pixels = pixels[:, :3].mean(1, keepdim=True)
            elif channels == 3 and pixels.shape[1] in (1, 4):
                pixels = pixels[:, :3] if pixels.shape[1] == 4 else pixels.expand(-1, 3, -1, -1)
            else:
                raise ValueError(f"ImageUpscaleWithModel: image has {pixels.shape[1]} channels, "
                                 f"the model takes {channels}")
        out = upscale_padded(upscale_model, pixels, ctx.device, tile,
                             progress=lambda done, total: ctx.progress(done, total))
        if out.shape[1] == 1:
            out = out.expand(-1, 3, -1, -1)
        return (out.clamp(0, 1).movedim(1, -1).contiguous(),)


NODES = [LatentUpscale, LatentUpscaleBy, UpscaleModelLoader, ImageUpscaleWithModel]
