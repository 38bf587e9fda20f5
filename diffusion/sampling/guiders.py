"""Guiders beyond plain CFG, and the post-CFG model patches (ComfyUI's facts, our code).

DualCFGGuider (two prompts and a negative), with D(c) the denoised estimate for conditioning c:

    regular:  cfg(D(cond2), D(negative), cfg_cond2_negative) + cfg_conds * (D(cond1) - D(cond2))
    nested:   D(negative) + cfg_cond2_negative * (cfg(D(cond1), D(cond2), cfg_conds) - D(negative))

where cfg(c, u, s) is `denoiser.cfg_combine` (u + s (c - u), the model's sampler_cfg_function and
post-CFG functions). In the regular style the negative is skipped when cfg_cond2_negative is 1, and
cond2 as well when cfg_conds is 1 too (their estimate is then zero, as in ComfyUI), unless the
model options say disable_cfg1_optimization or the sampler needs the unconditional estimate.

Post-CFG functions (model_options["sampler_post_cfg_function"], see denoiser.cfg_combine) get the
guided `denoised`, `cond_denoised`, `uncond_denoised`, `cond_scale` and `input`:

    CFGNorm(strength):  denoised * clamp(|cond| / (|denoised| + 1e-8), 0, 1) * strength,
                        the norms taken over the channel dimension at every position
    CFGZeroStar:        alpha = <x - cond, x - uncond> / (|x - uncond|^2 + 1e-8) per batch item,
                        denoised + uncond * (alpha - 1) + cond_scale * uncond * (1 - alpha)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .denoiser import Guider, cfg_combine


@dataclass
class DualCFGGuider(Guider):
    """`positive` is cond1, `middle` cond2, `cfg` cfg_conds and `cfg2` cfg_cond2_negative."""

    middle: list | None = None
    cfg2: float = 1.0
    nested: bool = False

    def cond_sets(self, need_uncond: bool = False) -> list:
        # The set after the positive is the one ComfyUI's cfg step treats as unconditional (the
        # denoiser reports it as `uncond_denoised`): cond2 when nested, the negative otherwise.
        if self.nested:
            return [self.positive, self.middle or None, self.negative or None]
        options = getattr(self.model, "model_options", {}) or {}
        keep = need_uncond or options.get("disable_cfg1_optimization")
        negative = self.negative or None
        middle = self.middle or None
        if not keep and math.isclose(self.cfg2, 1.0):
            negative = None
            if math.isclose(self.cfg, 1.0):
                middle = None
        return [self.positive, negative, middle]

    def combine(self, denoised: list, x, sigma, options: dict):
        import torch

        outs = [torch.zeros_like(x) if d is None else d for d in denoised]
        if self.nested:
            pos, mid, neg = outs
            text = cfg_combine(self.model, pos, mid, self.cfg, x, sigma, options, self.positive, self.middle)
            return neg + (text - neg) * self.cfg2
        pos, neg, mid = outs
        # the post-CFG functions see the conditioning actually evaluated (None where skipped)
        middle, negative = (c if d is not None else None for c, d in ((self.middle, denoised[2]),
                                                                     (self.negative, denoised[1])))
        return cfg_combine(self.model, mid, neg, self.cfg2, x, sigma, options, middle, negative) \
            + (pos - mid) * self.cfg


def as_negative_prompt(conditioning: list) -> list:
    """cond2 of a DualCFGGuider is marked as a negative prompt (`prompt_type`), as ComfyUI does."""
    return [[emb, {**extra, "prompt_type": "negative"}] for emb, extra in conditioning]


@dataclass(frozen=True)
class CFGNorm:
    """Post-CFG: the guided estimate's per-position channel norm capped at the conditional's."""

    strength: float = 1.0

    def __call__(self, args: dict):
        import torch

        cond, guided = args["cond_denoised"], args["denoised"]
        scale = (torch.norm(cond, dim=1, keepdim=True)
                 / (torch.norm(guided, dim=1, keepdim=True) + 1e-8)).clamp(min=0.0, max=1.0)
        return guided * scale * self.strength


@dataclass(frozen=True)
class CFGZeroStar:
    """Post-CFG: CFG-Zero*'s optimised scale of the unconditional estimate."""

    def __call__(self, args: dict):
        x, cond, uncond = args["input"], args["cond_denoised"], args["uncond_denoised"]
        alpha = zero_star_scale(x - cond, x - uncond)
        return args["denoised"] + uncond * (alpha - 1.0) + args["cond_scale"] * uncond * (1.0 - alpha)


def zero_star_scale(positive, negative):
    """Per batch item <positive, negative> / (|negative|^2 + 1e-8), shaped to broadcast."""
    import torch

    pos = positive.reshape(positive.shape[0], -1)
    neg = negative.reshape(negative.shape[0], -1)
    alpha = torch.sum(pos * neg, dim=1) / (torch.sum(neg * neg, dim=1) + 1e-8)
    return alpha.reshape([positive.shape[0]] + [1] * (positive.ndim - 1))
