"""Super-resolution models (ESRGAN and the other architectures spandrel knows): loading them from a
weights file, and upscaling pictures of any size with them, tile by tile, through the engine's
memory manager."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from genloom.diffusion.errors import CheckpointError
from genloom.diffusion.models.owner import interruptible, model_owner
from genloom.diffusion.models.weights import read_weights
from genloom.diffusion.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, MIN_TILE, run_tiled

BORDER = 8  # pixels mirrored around a picture before model upscaling


def load_upscale_model(path: Path):
    """A spandrel ImageModelDescriptor from a weights file; pickles that hold code are refused.
    Every failure is a CheckpointError naming the file."""
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    path = Path(path)
    state = read_weights(path)
    try:
        model = ModelLoader().load_from_state_dict(state)
    except UnsupportedModelError as exc:
        raise CheckpointError(f"{path.name} is not an upscale model architecture that spandrel "
                              "recognises") from exc
    if not isinstance(model, ImageModelDescriptor):
        raise CheckpointError(f"{path.name} is not a single-image model")
    return model.eval()


def fits_channels(channels: int, wanted: int) -> bool:
    """Whether a picture with `channels` channels can feed a model taking `wanted`."""
    return channels == wanted or wanted == 1 or (wanted == 3 and channels in (1, 4))


def upscale_image(model, image, device: str, tile: int = DEFAULT_TILE,
                  progress: Callable[[int, int], None] | None = None):
    """IMAGE [B, H, W, C] upscaled by `model`, with its channels fitted to the model's (see
    `fits_channels`); a one-channel result is repeated to RGB."""
    wanted = model.input_channels
    pixels = image.movedim(-1, 1).float()
    if pixels.shape[1] != wanted:
        if wanted == 1:
            pixels = pixels[:, :3].mean(1, keepdim=True)
        else:
            pixels = pixels[:, :3] if pixels.shape[1] == 4 else pixels.expand(-1, 3, -1, -1)
    out = upscale_padded(model, pixels, device, tile, progress)
    if out.shape[1] == 1:
        out = out.expand(-1, 3, -1, -1)
    return out.clamp(0, 1).movedim(1, -1).contiguous()


def upscale_padded(model, pixels, device: str, tile: int = DEFAULT_TILE, progress=None):
    """[B, C, H, W] upscaled by `model` (a spandrel descriptor, on `device` through the memory manager).

    The picture is mirrored outwards by a few pixels first and the margin cut from the result: these
    models pad their convolutions with zeros, which darkens the outermost pixels; mirroring gives
    them real-looking neighbours instead."""
    import torch.nn.functional as F

    margin = min(BORDER, pixels.shape[-2] - 1, pixels.shape[-1] - 1)
    if margin > 0:
        pixels = F.pad(pixels, [margin] * 4, mode="reflect")
    name = f"upscale model {model.architecture.name}"
    with model_owner().memory.use(model.model, device, name=name), interruptible(model.model):
        out = run_tiled(model, pixels, model.scale, tile=tile, overlap=DEFAULT_OVERLAP, device=device,
                        progress=progress, min_tile=MIN_TILE)
    if margin > 0:
        cut = margin * model.scale
        out = out[..., cut:out.shape[-2] - cut, cut:out.shape[-1] - cut]
    return out
