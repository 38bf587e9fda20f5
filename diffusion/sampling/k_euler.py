"""Single-step samplers on the Karras ODE derivative d = (x - denoised) / sigma: Euler, Heun and
Heun++ (Karras et al. 2022), DPM-Solver-2 (Lu et al. 2022, k-diffusion's form), their ancestral
variants (with the rectified-flow forms ComfyUI uses for CONST models), DDPM and LCM.
"""

from __future__ import annotations

import math

from .k_base import ancestral_step, log_mid, rf_ancestral_step, to_d


def euler(model, x, sigmas, ctx):
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        x = x + to_d(x, s, denoised) * (s_next - s)
    return x


def euler_ancestral(model, x, sigmas, ctx):
    if ctx.const:
        return _euler_ancestral_rf(model, x, sigmas, ctx)
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        down, up = ancestral_step(s, s_next, ctx.eta)
        if down == 0:
            x = denoised
        else:
            x = x + to_d(x, s, denoised) * (down - s) + ctx.noise(s, s_next) * ctx.s_noise * up
    return x


def _euler_ancestral_rf(model, x, sigmas, ctx):
    """The rectified-flow form: step down to sigma_down, then re-noise to sigma_next, keeping
    x = (1 - sigma) * x0 + sigma * noise."""
    eta = ctx.eta
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        if s_next == 0:
            x = denoised
            continue
        down, scale, renoise = rf_ancestral_step(s, s_next, eta)
        ratio = down / s
        x = ratio * x + (1 - ratio) * denoised
        if eta > 0:
            x = scale * x + ctx.noise(s, s_next) * ctx.s_noise * renoise
    return x


def heun(model, x, sigmas, ctx):
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        d = to_d(x, s, denoised)
        dt = s_next - s
        if s_next == 0:
            x = x + d * dt
        else:
            x2 = x + d * dt
            d2 = to_d(x2, s_next, model(x2, s_next))
            x = x + (d + d2) / 2 * dt
    return x


def heunpp2(model, x, sigmas, ctx):
    """Heun++: up to three slopes per step (at this, the next and the one after), weighted by
    sigma / (k * sigma_max); Euler into the last sigma, two slopes into the one before."""
    s_end, s_first = float(sigmas[-1]), float(sigmas[0])
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        d = to_d(x, s, denoised)
        dt = s_next - s
        if s_next == s_end:
            x = x + d * dt
            continue
        x2 = x + d * dt
        d2 = to_d(x2, s_next, model(x2, s_next))
        s_after = float(sigmas[i + 2])
        if s_after == s_end:
            w2 = s_next / (2 * s_first)
            x = x + (d * (1 - w2) + d2 * w2) * dt
        else:
            x3 = x2 + d2 * (s_after - s_next)
            d3 = to_d(x3, s_after, model(x3, s_after))
            w2, w3 = s_next / (3 * s_first), s_after / (3 * s_first)
            x = x + ((1 - w2 - w3) * d + w2 * d2 + w3 * d3) * dt
    return x


def _midpoint(model, x, d, s: float, target: float):
    """DPM-Solver-2's step from sigma `s` to `target` (Euler when the target is 0): one extra model
    call at the log-midpoint."""
    if target == 0:
        return x + d * (target - s)
    mid = log_mid(s, target)
    x2 = x + d * (mid - s)
    return x + to_d(x2, mid, model(x2, mid)) * (target - s)


def dpm_2(model, x, sigmas, ctx):
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        x = _midpoint(model, x, to_d(x, s, denoised), s, s_next)
    return x


def dpm_2_ancestral(model, x, sigmas, ctx):
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        if ctx.const:  # rectified flow: step to sigma_down, rescale and re-noise
            down, scale, up = rf_ancestral_step(s, s_next, ctx.eta)
        else:
            (down, up), scale = ancestral_step(s, s_next, ctx.eta), 1.0
        x = _midpoint(model, x, to_d(x, s, denoised), s, down)
        if down != 0:
            x = scale * x + ctx.noise(s, s_next) * ctx.s_noise * up
    return x


def ddpm(model, x, sigmas, ctx):
    """Ancestral DDPM steps taken in variance-preserving units."""
    for i in range(len(sigmas) - 1):
        s, s_prev, denoised = ctx.denoise(model, x, sigmas, i)
        eps = (x - denoised) / s
        ac, ac_prev = 1 / (s * s + 1), 1 / (s_prev * s_prev + 1)
        alpha = ac / ac_prev
        x_vp = x / math.sqrt(1.0 + s * s)
        mu = math.sqrt(1.0 / alpha) * (x_vp - (1 - alpha) * eps / math.sqrt(1 - ac))
        if s_prev > 0:
            mu = mu + math.sqrt((1 - alpha) * (1.0 - ac_prev) / (1.0 - ac)) * ctx.noise(s, s_prev)
            mu = mu * math.sqrt(1.0 + s_prev * s_prev)
        x = mu
    return x


def lcm(model, x, sigmas, ctx, s_noise_end: float | None = None, noise_clip_std: float = 0.0):
    """Every step predicts x0 and re-noises it to the next sigma; the noise multiplier runs linearly
    from s_noise to s_noise_end over the steps, and noise_clip_std > 0 clamps it to that many stds."""
    n = max(1, len(sigmas) - 1)
    start = float(ctx.s_noise)
    end = start if s_noise_end is None else float(s_noise_end)
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        x = denoised
        if s_next > 0:
            noise = ctx.noise(s, s_next)
            if noise_clip_std > 0:
                limit = float(noise_clip_std * noise.std())
                noise = noise.clamp(-limit, limit)
            mult = start + (end - start) * (i / (n - 1) if n > 1 else 0.0)
            if mult != 1.0:
                noise = noise * mult
            x = ctx.ms.noise_scaling(s_next, noise, x)
    return x
