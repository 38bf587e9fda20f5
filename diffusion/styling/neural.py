"""Neural style transfer by optimisation (Gatys et al.): the picture's pixels are optimised so its
deep features match the content image and its feature Gram matrices match the style image.

Both losses are divided by the size of their target (squared norm of the content features or of
each style Gram matrix), so the weights mean the same whether VGG-19 or the random network supplies
the features, and whatever the picture size.
"""

from __future__ import annotations

from typing import Callable

from genloom.diffusion.models.owner import model_owner
from genloom.engine import context


def gram(features):
    """Channel correlations [B, C, C], averaged over positions: what 'style' means here."""
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2) / (h * w)


class StyleLoss:
    """Weighted, normalised content + style loss against fixed targets; returns (total, style part)."""

    def __init__(self, net, content, style, content_weight: float, style_weight: float):
        import torch

        with torch.no_grad():
            _, self.content_target = net(content)
            style_feats, _ = net(style)
            self.gram_targets = [gram(f) for f in style_feats]
        self.net, self.content_weight, self.style_weight = net, content_weight, style_weight
        self.content_scale = self.content_target.pow(2).mean().clamp_min(1e-8)
        self.gram_scales = [g.pow(2).mean().clamp_min(1e-8) for g in self.gram_targets]

    def __call__(self, picture):
        style_feats, content = self.net(picture)
        content_loss = (content - self.content_target).pow(2).mean() / self.content_scale
        style_loss = sum((gram(f) - g).pow(2).mean() / s
                         for f, g, s in zip(style_feats, self.gram_targets, self.gram_scales))
        style_loss = style_loss / len(self.gram_targets)
        return self.content_weight * content_loss + self.style_weight * style_loss, style_loss


def transfer(net, content, style, iterations: int, content_weight: float, style_weight: float,
             learning_rate: float, seed: int, device: str,
             on_step: Callable[[int, float], None] | None = None):
    """Content [1, 3, H, W] restyled; starts from the content picture plus a little seeded noise and
    runs Adam on the pixels, kept in 0..1. `on_step(i, style_loss)` is called after every iteration."""
    import torch
    import torch.nn.functional as F

    content = content.to(device)
    style = F.interpolate(style.to(device), size=content.shape[-2:], mode="bilinear", antialias=True,
                          align_corners=False).clamp(0, 1)
    loss_fn = StyleLoss(net, content, style, content_weight, style_weight)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(content.shape, generator=gen).to(device) * 0.02
    picture = (content + noise).clamp(0, 1).requires_grad_(True)
    opt = torch.optim.Adam([picture], lr=learning_rate)
    check_interrupt = context.current().check_interrupt
    for i in range(iterations):
        check_interrupt()
        opt.zero_grad()
        total, style_loss = loss_fn(picture)
        total.backward()
        opt.step()
        with torch.no_grad():
            picture.clamp_(0, 1)
        if on_step is not None:
            on_step(i, style_loss.item())
    return picture.detach().cpu()


def restyle(net, content, style, iterations: int, content_weight: float, style_weight: float,
            learning_rate: float, seed: int, device: str,
            progress: Callable[[int, int], None] | None = None):
    """IMAGE batch `content` [B, H, W, C] restyled; style image i % n styles content i, with seed
    (seed + i). The feature network is on `device` (through the engine's memory manager) meanwhile;
    `progress(done, total)` counts iterations over the whole batch."""
    import torch

    total = iterations * content.shape[0]
    results = []
    with model_owner().memory.use(net.layers, device, name="style feature network"):
        for b in range(content.shape[0]):
            done = b * iterations
            picture = content[b:b + 1, ..., :3].movedim(-1, 1).float()
            source = style[b % style.shape[0]][None, ..., :3].movedim(-1, 1).float()
            step = None if progress is None else (lambda i, _loss, done=done: progress(done + i + 1, total))
            results.append(transfer(net, picture, source, iterations, content_weight, style_weight,
                                    learning_rate, (seed + b) % 2 ** 63, device, on_step=step))
    return torch.cat(results).movedim(1, -1).contiguous()
