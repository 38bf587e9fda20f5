"""Inpainting models (9-channel UNets: SD1.5/SD2/SDXL inpainting) and the conditioning they take.

Such a UNet reads, besides the noisy latent, a mask channel and the latent of the image with the
masked part greyed out, concatenated along the channels, as ComfyUI builds them (its concat_cond):
  mask          the CONDITIONING's "concat_mask" (InpaintModelConditioning), else the run's noise
                mask (VAEEncodeForInpaint, SetLatentNoiseMask); resized to the latent bilinearly
                and rounded. With neither: ones.
  masked image  the CONDITIONING's "concat_latent_image" mapped by the model's latent format, else
                the run's latent image (already mapped). With no mask at all: the latent of a
                grey image (ComfyUI's constants for "zero" in pixel space).
"""

from __future__ import annotations

# The SD VAE latent of a mid-grey picture (ComfyUI's blank_inpaint_image_like), per channel.
BLANK_LATENT = (0.8223, -0.6876, 0.6364, 0.1380)


def extra_channels(model) -> int:
    """How many channels the network takes beyond the latent (5 for inpainting UNets)."""
    unet = getattr(model, "unet", None)
    config = getattr(unet, "config", None)
    if config is None or "in_channels" not in config:
        return 0
    return int(config["in_channels"]) - int(model.latent_channels)


def _fit(t, h: int, w: int, batch: int):
    import torch.nn.functional as F

    if tuple(t.shape[-2:]) != (h, w):
        t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
    if t.shape[0] != batch:
        t = t.repeat(-(-batch // t.shape[0]), *([1] * (t.ndim - 1)))[:batch]
    return t


def concat_channels(model, extra: dict, height: int, width: int):
    """[B, 1 + C, h, w]: the mask and masked-image latent an inpainting UNet takes (see above)."""
    import torch

    from .sampling import latent_formats

    latent = extra.get("latent_image")
    scale = int(model.vae_scale_factor)
    if latent is not None:
        batch, h, w = latent.shape[0], latent.shape[-2], latent.shape[-1]
    else:
        batch, h, w = 1, height // scale, width // scale
    mask = extra.get("concat_mask")
    if mask is None:
        mask = extra.get("denoise_mask")
    image = extra.get("concat_latent_image")
    if image is not None:
        image = latent_formats.of_model(model).process_in(image.float())
    elif latent is not None:
        image = latent.float()
    if mask is None:
        ones = torch.ones((batch, 1, h, w))
        blank = torch.tensor(BLANK_LATENT[: model.latent_channels]).reshape(1, -1, 1, 1)
        return torch.cat([ones, blank.expand(batch, -1, h, w)], dim=1)
    mask = mask.float()
    mask = mask.reshape(-1, 1, *mask.shape[-2:]) if mask.ndim != 4 else mask[:, :1]
    mask = _fit(mask.cpu(), h, w, batch).round()
    image = _fit(image.cpu(), h, w, batch)
    return torch.cat([mask, image], dim=1)


def model_conditioning(vae, pixels, mask) -> tuple:
    """InpaintModelConditioning's pieces: (latent of the masked-out picture, latent of the picture,
    the mask at the cropped picture's size [B, 1, H, W])."""
    import torch.nn.functional as F

    from .vae_passes import crop_to_multiple

    h, w = pixels.shape[1], pixels.shape[2]
    m = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
    m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
    pixels, m = crop_to_multiple(pixels[..., :3].clone(), vae.scale_factor, m)
    keep = (1.0 - m.round()).movedim(1, -1)
    masked = (pixels - 0.5) * keep + 0.5
    return vae.encode(masked), vae.encode(pixels), m
