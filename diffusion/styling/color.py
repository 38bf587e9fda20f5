"""Colour transfer: give a picture the colour statistics of a reference.

Reinhard et al. match per-channel mean and standard deviation in a perceptual opponent space (here
CIE Lab, with our own sRGB <-> Lab conversion, D65 white); histogram matching maps each RGB channel's
value distribution onto the reference's through their quantile functions.
"""

from __future__ import annotations

METHODS = ["reinhard_lab", "histogram"]
_D65 = (0.95047, 1.0, 1.08883)
_RGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375),
               (0.2126729, 0.7151522, 0.0721750),
               (0.0193339, 0.1191920, 0.9503041))


def srgb_to_lab(rgb):
    """[..., 3] sRGB in 0..1 -> CIE Lab (L 0..100)."""
    import torch

    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb.clamp_min(0) + 0.055) / 1.055) ** 2.4)
    xyz = linear @ torch.tensor(_RGB_TO_XYZ, dtype=rgb.dtype).T / torch.tensor(_D65, dtype=rgb.dtype)
    eps, kappa = 216 / 24389, 24389 / 27
    f = torch.where(xyz > eps, xyz.clamp_min(1e-12) ** (1 / 3), (kappa * xyz + 16) / 116)
    return torch.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                        200 * (f[..., 1] - f[..., 2])], dim=-1)


def lab_to_srgb(lab):
    """CIE Lab -> [..., 3] sRGB, not clamped (out-of-gamut colours fall outside 0..1)."""
    import torch

    fy = (lab[..., 0] + 16) / 116
    f = torch.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], dim=-1)
    eps, kappa = 216 / 24389, 24389 / 27
    xyz = torch.where(f ** 3 > eps, f ** 3, (116 * f - 16) / kappa)
    xyz = xyz * torch.tensor(_D65, dtype=lab.dtype)
    linear = xyz @ torch.linalg.inv(torch.tensor(_RGB_TO_XYZ, dtype=torch.float64)).to(lab.dtype).T
    return torch.where(linear <= 0.0031308, linear * 12.92,
                       1.055 * linear.clamp_min(0) ** (1 / 2.4) - 0.055)


def reinhard(image, reference):
    """[H, W, 3] image with the Lab mean and standard deviation of `reference` (any size)."""
    src = srgb_to_lab(image.double()).reshape(-1, 3)
    ref = srgb_to_lab(reference.double()).reshape(-1, 3)
    scale = ref.std(0) / src.std(0).clamp_min(1e-6)
    out = (src - src.mean(0)) * scale + ref.mean(0)
    return lab_to_srgb(out.reshape(image.shape)).clamp(0, 1).to(image.dtype)


def match_histograms(image, reference):
    """[H, W, 3] image whose per-channel value distribution is the reference's: each pixel's rank in
    its channel is mapped to the reference value at the same quantile."""
    import torch

    out = torch.empty_like(image)
    n = image.shape[0] * image.shape[1]
    for c in range(image.shape[-1]):
        src = image[..., c].reshape(-1)
        ref_sorted = reference[..., c].reshape(-1).sort().values
        order = src.argsort(stable=True)
        ranks = torch.empty(n, dtype=torch.float64)
        ranks[order] = torch.arange(n, dtype=torch.float64)
        # ties share the mean rank of their group, so equal input values stay equal
        values, inverse = torch.unique(src, return_inverse=True)
        mean_rank = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, ranks)
        mean_rank /= torch.bincount(inverse, minlength=len(values)).double()
        quantile = mean_rank[inverse] / max(n - 1, 1)
        out[..., c] = _interp(quantile, ref_sorted.double()).reshape(image.shape[:2]).to(image.dtype)
    return out


def _interp(quantile, sorted_values):
    """Linear interpolation into a sorted sample at quantiles in 0..1."""
    pos = quantile * (len(sorted_values) - 1)
    lo = pos.floor().long().clamp(0, len(sorted_values) - 1)
    hi = (lo + 1).clamp(max=len(sorted_values) - 1)
    t = pos - lo.double()
    return sorted_values[lo] * (1 - t) + sorted_values[hi] * t


def transfer_colours(image, reference, method: str, strength: float):
    """IMAGE batch with the colours of `reference` (reference i % n serves image i) by one of
    METHODS, blended with the original by `strength`."""
    import torch

    match = {"reinhard_lab": reinhard, "histogram": match_histograms}[method]
    out = torch.stack([match(img[..., :3].float(), reference[b % reference.shape[0]][..., :3].float())
                       for b, img in enumerate(image)])
    return (image[..., :3] * (1 - strength) + out * strength).clamp(0, 1)
