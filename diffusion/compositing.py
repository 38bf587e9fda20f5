"""Putting pictures together: masked pasting, Porter-Duff operators, stitching side by side, and
alpha channels split from / joined to IMAGE tensors ([B, H, W, C] in 0..1).

A MASK here is ComfyUI's: for alpha compositing nodes it is 1 - alpha (1 = transparent), for the
masked paste it is the weight of the source (1 = source)."""

from __future__ import annotations

PORTER_DUFF_MODES = ["ADD", "CLEAR", "DARKEN", "DST", "DST_ATOP", "DST_IN", "DST_OUT", "DST_OVER",
                     "LIGHTEN", "MULTIPLY", "OVERLAY", "SCREEN", "SRC", "SRC_ATOP", "SRC_IN", "SRC_OUT",
                     "SRC_OVER", "XOR"]
STITCH_DIRECTIONS = ["right", "down", "left", "up"]
SPACING_COLORS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "red": (1.0, 0.0, 0.0),
                  "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


def resize_mask(mask, height: int, width: int):
    """MASK [B, H, W] (or [H, W]) bilinearly resized to [B, height, width]."""
    import torch.nn.functional as F

    flat = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
    return F.interpolate(flat, size=(height, width), mode="bilinear").squeeze(1)


def composite_masked(destination, source, x: int, y: int, resize_source: bool, mask=None):
    """`source` pasted into `destination` with its top-left corner at (x, y), weighed by `mask`
    (resized to the source), clipped to the destination: the latent composite at a 1-pixel step.
    A source with alpha loses it on an RGB destination; an RGB source gains an opaque one."""
    from genloom.diffusion.image_ops import pad_channels
    from genloom.diffusion.latent_ops import composite_masked as composite

    source = pad_channels(source, destination.shape[-1])[..., :destination.shape[-1]]
    out = composite({"samples": destination.movedim(-1, 1)}, {"samples": source.movedim(-1, 1).to(destination.dtype)},
                    x, y, resize_source, mask, multiplier=1)
    return out["samples"].movedim(1, -1)


def _porter_duff_terms(mode: str, s, sa, d, da):
    """(alpha, premultiplied colour) of one operator, from premultiplied colours and alphas."""
    import torch

    union = sa + da - sa * da
    table = {
        "ADD": lambda: (torch.clamp(sa + da, 0, 1), torch.clamp(s + d, 0, 1)),
        "CLEAR": lambda: (torch.zeros_like(da), torch.zeros_like(d)),
        "DARKEN": lambda: (union, (1 - da) * s + (1 - sa) * d + torch.min(s, d)),
        "DST": lambda: (da, d),
        "DST_ATOP": lambda: (sa, sa * d + (1 - da) * s),
        "DST_IN": lambda: (sa * da, d * sa),
        "DST_OUT": lambda: ((1 - sa) * da, (1 - sa) * d),
        "DST_OVER": lambda: (da + (1 - da) * sa, d + (1 - da) * s),
        "LIGHTEN": lambda: (union, (1 - da) * s + (1 - sa) * d + torch.max(s, d)),
        "MULTIPLY": lambda: (sa * da, s * d),
        "OVERLAY": lambda: (union, torch.where(2 * d < da, 2 * s * d, sa * da - 2 * (da - s) * (sa - d))),
        "SCREEN": lambda: (union, s + d - s * d),
        "SRC": lambda: (sa, s),
        "SRC_ATOP": lambda: (da, da * s + (1 - sa) * d),
        "SRC_IN": lambda: (sa * da, s * da),
        "SRC_OUT": lambda: ((1 - da) * sa, (1 - da) * s),
        "SRC_OVER": lambda: (sa + (1 - sa) * da, s + (1 - sa) * d),
        "XOR": lambda: ((1 - da) * sa + (1 - sa) * da, (1 - da) * s + (1 - sa) * d),
    }
    return table[mode]()


def porter_duff(source, source_alpha, destination, destination_alpha, mode: str):
    """(IMAGE, MASK) of the operator applied picture by picture; the alphas arrive and leave as masks
    (1 - alpha). Sources and masks of other sizes are resized (bicubic, centre crop) to the destination."""
    import torch

    from genloom.diffusion.resample import resize

    def fit(t, h, w):  # [H, W, C] -> [h, w, C]
        if t.shape[:2] == (h, w):
            return t
        return resize(t.movedim(-1, 0)[None], w, h, "bicubic", "center")[0].movedim(0, -1)

    images, alphas = [], []
    for i in range(min(len(source), len(source_alpha), len(destination), len(destination_alpha))):
        dst = destination[i]
        h, w = dst.shape[:2]
        if source[i].shape[-1] != dst.shape[-1]:
            raise ValueError("source and destination need the same number of channels")
        dst_alpha = fit(destination_alpha[i][..., None], h, w)
        src = fit(source[i], h, w)
        src_alpha = fit(source_alpha[i][..., None], h, w)
        sa, da = 1 - src_alpha, 1 - dst_alpha
        alpha, colour = _porter_duff_terms(mode, src * sa, sa, dst * da, da)
        colour = torch.where(alpha > 1e-5, colour / alpha, torch.zeros_like(colour))
        images.append(torch.clamp(colour, 0, 1))
        alphas.append((1 - alpha)[..., 0])
    return torch.stack(images), torch.stack(alphas)


def split_alpha(image):
    """(RGB IMAGE, MASK = 1 - alpha); a picture without alpha is opaque (mask 0)."""
    import torch

    alpha = image[..., 3] if image.shape[-1] > 3 else torch.ones_like(image[..., 0])
    return image[..., :3], 1.0 - alpha


def join_alpha(image, mask):
    """RGBA IMAGE with alpha = 1 - mask (resized to the picture); batches repeat to the larger one."""
    import torch

    from genloom.diffusion.latent_ops import repeat_to_batch

    size = max(len(image), len(mask))
    image = repeat_to_batch(image, size)
    mask = repeat_to_batch(mask.reshape(-1, mask.shape[-2], mask.shape[-1]), size)
    alpha = 1.0 - resize_mask(mask, image.shape[1], image.shape[2])
    return torch.cat((image[..., :3], alpha.unsqueeze(-1).to(image.dtype)), dim=-1)


def _pad_to(image, size: int, dim: int, value: float):
    """`image` padded evenly (the extra pixel after) along dim 1 (height) or 2 (width) to `size`."""
    import torch.nn.functional as F

    extra = size - image.shape[dim]
    if extra <= 0:
        return image
    before, after = extra // 2, extra - extra // 2
    pads = (0, 0, before, after) if dim == 2 else (0, 0, 0, 0, before, after)
    return F.pad(image, pads, mode="constant", value=value)


def stitch(image1, direction: str, match_image_size: bool, spacing_width: int, spacing_color: str,
           image2=None):
    """image2 placed to the given side of image1, optionally scaled (lanczos) to image1's height
    (left/right) or width (up/down), with an optional even-width spacer strip between them."""
    import torch

    from genloom.diffusion.image_ops import match_channels
    from genloom.diffusion.resample import scale_image

    if image2 is None:
        return image1
    size = max(image1.shape[0], image2.shape[0])
    image1 = torch.cat([image1, image1[-1:].repeat(size - image1.shape[0], 1, 1, 1)])
    image2 = torch.cat([image2, image2[-1:].repeat(size - image2.shape[0], 1, 1, 1)])
    horizontal = direction in ("left", "right")
    colour = SPACING_COLORS[spacing_color]
    if match_image_size:
        h1, w1 = image1.shape[1:3]
        aspect = image2.shape[2] / image2.shape[1]
        tw, th = (int(h1 * aspect), h1) if horizontal else (w1, int(w1 / aspect))
        image2 = scale_image(image2, tw, th, "lanczos")
    else:
        pad_value = colour[0] if spacing_color in ("white", "black") else 0.0
        dim = 1 if horizontal else 2
        target = max(image1.shape[dim], image2.shape[dim])
        image1, image2 = _pad_to(image1, target, dim, pad_value), _pad_to(image2, target, dim, pad_value)
    image1, image2 = match_channels(image1, image2)
    parts = [image2, image1] if direction in ("left", "up") else [image1, image2]
    if spacing_width > 0:
        spacing_width += spacing_width % 2
        channels = image1.shape[-1]
        shape = ((size, max(image1.shape[1], image2.shape[1]), spacing_width, channels) if horizontal
                 else (size, spacing_width, max(image1.shape[2], image2.shape[2]), channels))
        spacer = torch.zeros(shape, dtype=image1.dtype)
        spacer[..., :min(3, channels)] = torch.tensor(colour[:min(3, channels)], dtype=image1.dtype)
        if channels == 4:
            spacer[..., 3] = 1.0
        parts.insert(1, spacer)
    return torch.cat(parts, dim=2 if horizontal else 1)
