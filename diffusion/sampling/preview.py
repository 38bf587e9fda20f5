"""Latent previews: a small picture of the latent being denoised, without running the VAE."""

from __future__ import annotations


# Linear map from SD 1.x/2.x/XL 4-channel latents to RGB in -1..1 (the well-known approximation
# published by Keturn, "Decoding latents to RGB without upscaling"; rows: latent channels).
LATENT_RGB = [[0.298, 0.207, 0.208],
              [0.187, 0.286, 0.173],
              [-0.158, 0.189, 0.264],
              [-0.184, -0.271, -0.473]]


def latent_preview(latents, max_size: int = 256):
    """A small PIL image of the first latent of a batch, without running the VAE."""
    import torch
    from PIL import Image

    x = latents[0].detach().float()
    if x.ndim == 4:  # a video latent [C, T, h, w]: its first frame
        x = x[:, 0]
    if x.shape[0] == 4:
        factors = torch.tensor(LATENT_RGB, dtype=torch.float32, device=x.device)
        rgb = torch.einsum("chw,cr->hwr", x, factors)
    else:
        rgb = x[:3].movedim(0, -1) if x.shape[0] >= 3 else x[:1].movedim(0, -1).repeat(1, 1, 3)
        rgb = rgb / rgb.abs().amax().clamp_min(1e-6)
    img = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).cpu().numpy()
    image = Image.fromarray(img)
    if max(image.size) > max_size:
        image.thumbnail((max_size, max_size))
    return image

