"""Latent creation, VAE encoding/decoding and inpainting masks, with ComfyUI's inputs and outputs.

Tensor work is imported inside `run` so that listing nodes never imports torch.
"""

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
        return ({"samples": vae.encode(_crop_to_multiple(pixels[..., :3], vae.scale_factor))},)


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
        return (_decode_tiled(vae, samples["samples"], tile_size, overlap),)


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
        return (_encode_for_inpaint(vae, pixels, mask, grow_mask_by),)


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


def _crop_to_multiple(pixels, multiple: int, mask=None):
    """Centre-crop [B,H,W,C] (and a [B,1,H,W] mask) so both sides are multiples of the VAE scale."""
    h, w = pixels.shape[1], pixels.shape[2]
    nh, nw = (h // multiple) * multiple, (w // multiple) * multiple
    if nh == 0 or nw == 0:
        raise ValueError(f"pixels: image {w}x{h} is smaller than the VAE's {multiple} px cell")
    y, x = (h - nh) // 2, (w - nw) // 2
    if (nh, nw) != (h, w):
        pixels = pixels[:, y:y + nh, x:x + nw, :]
        if mask is not None:
            mask = mask[:, :, y:y + nh, x:x + nw]
    return pixels if mask is None else (pixels, mask)


def _feather(length: int, ramp_start: int, ramp_end: int):
    """1-D blend weights: rising over the first `ramp_start` and falling over the last `ramp_end`."""
    import torch

    w = torch.ones(length)
    if ramp_start:
        w[:ramp_start] = torch.linspace(0, 1, ramp_start + 2)[1:-1]
    if ramp_end:
        w[length - ramp_end:] = torch.linspace(1, 0, ramp_end + 2)[1:-1]
    return w


def _tile_starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


def _decode_tiled(vae, latents, tile_size: int, overlap: int):
    """Decode overlapping latent tiles and blend them with linear ramps across each overlap."""
    import torch

    f = vae.scale_factor
    if overlap * 4 > tile_size:
        overlap = tile_size // 4  # tiles must mostly be new content
    tile, lap = max(tile_size // f, 1), overlap // f
    b, _c, h, w = latents.shape
    if h <= tile and w <= tile:
        return vae.decode(latents)
    stride = max(tile - lap, 1)
    ys, xs = _tile_starts(h, tile, stride), _tile_starts(w, tile, stride)
    out = torch.zeros(b, h * f, w * f, 3)
    weight = torch.zeros(1, h * f, w * f, 1)
    for yi, y in enumerate(ys):
        for xi, x in enumerate(xs):
            th, tw = min(tile, h - y), min(tile, w - x)
            pixels = vae.decode(latents[:, :, y:y + th, x:x + tw])
            top = (ys[yi - 1] + tile - y) * f if yi else 0
            left = (xs[xi - 1] + tile - x) * f if xi else 0
            bottom = (y + th - ys[yi + 1]) * f if yi + 1 < len(ys) else 0
            right = (x + tw - xs[xi + 1]) * f if xi + 1 < len(xs) else 0
            wy = _feather(th * f, max(top, 0), max(bottom, 0))
            wx = _feather(tw * f, max(left, 0), max(right, 0))
            wt = (wy[:, None] * wx[None, :])[None, :, :, None]
            out[:, y * f:(y + th) * f, x * f:(x + tw) * f] += pixels * wt
            weight[:, y * f:(y + th) * f, x * f:(x + tw) * f] += wt
    return out / weight.clamp_min(1e-6)


def _encode_for_inpaint(vae, pixels, mask, grow_mask_by: int) -> dict:
    import torch
    import torch.nn.functional as F

    h, w = pixels.shape[1], pixels.shape[2]
    m = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
    m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
    pixels, m = _crop_to_multiple(pixels[..., :3].clone(), vae.scale_factor, m)
    hard = m.round()
    if grow_mask_by > 0:
        kernel = torch.ones(1, 1, grow_mask_by, grow_mask_by)
        pad = grow_mask_by // 2
        grown = F.conv2d(hard, kernel, padding=pad)[:, :, :hard.shape[2], :hard.shape[3]].clamp(0, 1)
    else:
        grown = hard
    keep = (1.0 - hard).movedim(1, -1)  # [B,H,W,1]
    if keep.shape[0] != pixels.shape[0]:
        keep = keep.expand(pixels.shape[0], -1, -1, -1) if keep.shape[0] == 1 else keep
    pixels = (pixels - 0.5) * keep + 0.5
    return {"samples": vae.encode(pixels), "noise_mask": grown.round()}


NODES = [EmptyLatentImage, VAEDecode, VAEEncode, VAEDecodeTiled, VAEEncodeForInpaint, SetLatentNoiseMask]
