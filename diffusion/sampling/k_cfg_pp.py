"""CFG++ samplers (Chung et al. 2024): the step towards the next sigma re-noises with the
*unconditional* prediction's noise while landing on the guided prediction, so guidance acts like a
manifold constraint. The denoiser keeps each call's unconditional estimate (`uncond_denoised`).
res_multistep_cfg_pp and gradient_estimation_cfg_pp are in k_multistep.py.
"""

from __future__ import annotations

import math

from .k_base import alpha_of, ancestral_step, expm1, rf_ancestral_step, t_of, to_d, uncond_of
from .k_dpmpp import rf_2s_midpoint


def euler_ancestral_cfg_pp(model, x, sigmas, ctx, eta: float | None = None, s_noise: float | None = None):
    eta = ctx.eta if eta is None else eta
    s_noise = ctx.s_noise if s_noise is None else s_noise
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        if s_next == 0:
            x = denoised
            continue
        alpha_s, alpha_t = alpha_of(ctx, s), alpha_of(ctx, s_next)
        d = to_d(x, s, alpha_s * uncond_of(model, denoised))
        down, up = ancestral_step(s / alpha_s if alpha_s > 0 else math.inf, s_next / alpha_t, eta)
        x = alpha_t * denoised + alpha_t * down * d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * ctx.noise(s, s_next) * s_noise * up
    return x


def euler_cfg_pp(model, x, sigmas, ctx):
    return euler_ancestral_cfg_pp(model, x, sigmas, ctx, eta=0.0, s_noise=0.0)


def dpmpp_2s_ancestral_cfg_pp(model, x, sigmas, ctx):
    if ctx.const:
        return _dpmpp_2s_ancestral_cfg_pp_rf(model, x, sigmas, ctx)
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        uncond = uncond_of(model, denoised)
        guidance = denoised - uncond
        down, up = ancestral_step(s, s_next, ctx.eta)
        if down == 0:
            x = x + to_d(x, s, uncond) * (down - s)
        else:
            t, t_next = t_of(s), t_of(down)
            h = t_next - t
            s_mid = t + 0.5 * h
            x2 = (math.exp(-s_mid) / s) * x - expm1(-0.5 * h) * uncond
            denoised2 = model(x2, math.exp(-s_mid))
            x = (down / s) * x - expm1(-h) * uncond_of(model, denoised2)
        if s_next > 0:
            x = x + ctx.noise(s, s_next) * ctx.s_noise * up
        x = x + guidance
    return x


def _dpmpp_2s_ancestral_cfg_pp_rf(model, x, sigmas, ctx):
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        uncond = uncond_of(model, denoised)
        guidance = denoised - uncond
        down, scale, renoise = rf_ancestral_step(s, s_next, ctx.eta)
        if s_next == 0:
            x = x + to_d(x, s, uncond) * (down - s)
        else:
            mid = rf_2s_midpoint(ctx, s, down)
            ratio = mid / s
            denoised2 = model(ratio * x + (1 - ratio) * uncond, mid)
            ratio = down / s
            x = ratio * x + (1 - ratio) * uncond_of(model, denoised2)
        if s_next > 0 and ctx.eta > 0:
            x = scale * x + ctx.noise(s, s_next) * ctx.s_noise * renoise
        x = x + (1 - s_next) * guidance
    return x


def dpmpp_2m_cfg_pp(model, x, sigmas, ctx):
    old_uncond = None
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        uncond = uncond_of(model, denoised)
        t, t_next = t_of(s), t_of(s_next)
        h = t_next - t
        decay = math.exp(-h)
        if old_uncond is None or s_next == 0:
            mix = -decay * uncond
        else:
            r = (t - t_of(float(sigmas[i - 1]))) / h
            mix = -decay * uncond - expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond)
        x = denoised + mix + decay * x
        old_uncond = uncond
    return x
