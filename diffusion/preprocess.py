"""Image preprocessors for control hints."""

from __future__ import annotations


def canny(images, low_threshold: float, high_threshold: float, device: str = "cpu"):
    """Canny edges of images [B,H,W,C] 0..1 as a white-on-black [B,H,W,3] image, computed as ComfyUI's
    Canny node does with kornia (5x5 Gaussian blur with sigma 1, Sobel gradients, non-maximum
    suppression, hysteresis between the two thresholds on the gradient magnitude)."""
    from kornia.filters import canny as kornia_canny

    x = images.to(device).movedim(-1, 1).float()
    _magnitude, edges = kornia_canny(x, float(low_threshold), float(high_threshold))
    return edges.cpu().repeat(1, 3, 1, 1).movedim(1, -1)
