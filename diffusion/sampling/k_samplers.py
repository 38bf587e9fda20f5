"""Samplers in sigma space, written from the published algorithms (Karras et al. 2022; Lu et al.,
DPM-Solver(++); k-diffusion's formulation, as ComfyUI runs them).

Every sampler is `fn(model, x, sigmas, ctx)`: `model(x, sigma) -> denoised`, `sigmas` a descending
float32 list ending (usually) in 0, and `ctx` a `StepContext` giving the model sampling (for the
samplers whose formulas depend on it), the noise sampler and the per-step callback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class StepContext:
    ms: Any  # ModelSampling
    noise: Callable  # noise(sigma, sigma_next) -> a unit normal tensor shaped like x
    callback: Callable | None = None  # callback(i, x, denoised)
    eta: float = 1.0
    s_noise: float = 1.0

    def step(self, i, x, denoised):
        if self.callback is not None:
            self.callback(i, x, denoised)

    def denoise(self, model, x, sigmas, i):
        """(sigma, next sigma, denoised) for step i, reported to the callback."""
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, s)
        self.step(i, x, denoised)
        return s, s_next, denoised


def to_d(x, sigma, denoised):
    return (x - denoised) / sigma


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0):
    """(sigma_down, sigma_up): where the deterministic step lands and how much noise goes back."""
    if not eta:
        return sigma_to, 0.0
    up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    return (sigma_to ** 2 - up ** 2) ** 0.5, up


def _f(sigmas, i) -> float:
    return float(sigmas[i])


def euler(model, x, sigmas, ctx):
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        x = x + to_d(x, s, denoised) * (s_next - s)
    return x


def euler_ancestral(model, x, sigmas, ctx):
    if ctx.ms.prediction == "const":
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
        down = s_next * (1 + (s_next / s - 1) * eta)
        alpha_next, alpha_down = 1 - s_next, 1 - down
        renoise = (s_next ** 2 - down ** 2 * alpha_next ** 2 / alpha_down ** 2) ** 0.5
        ratio = down / s
        x = ratio * x + (1 - ratio) * denoised
        if eta > 0:
            x = (alpha_next / alpha_down) * x + ctx.noise(s, s_next) * ctx.s_noise * renoise
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


def _log_mid(a: float, b: float) -> float:
    return math.exp(math.log(a) + 0.5 * (math.log(b) - math.log(a)))


def _midpoint(model, x, d, s: float, target: float):
    """DPM-Solver-2's step from sigma `s` to `target` (Euler when the target is 0): one extra model
    call at the log-midpoint."""
    if target == 0:
        return x + d * (target - s)
    mid = _log_mid(s, target)
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
        down, up = ancestral_step(s, s_next, ctx.eta)
        x = _midpoint(model, x, to_d(x, s, denoised), s, down)
        if down != 0:
            x = x + ctx.noise(s, s_next) * ctx.s_noise * up
    return x


def _lms_coeff(order: int, t, i: int, j: int) -> float:
    from scipy import integrate

    def basis(tau):
        prod = 1.0
        for k in range(order):
            if k != j:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(basis, t[i], t[i + 1], epsrel=1e-4)[0]


def lms(model, x, sigmas, ctx, order: int = 4):
    t = [float(v) for v in sigmas]
    ds = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, t[i])
        ctx.step(i, x, denoised)
        ds.append(to_d(x, t[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        cur = min(i + 1, order)
        coeffs = [_lms_coeff(cur, t, i, j) for j in range(cur)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x


def _t(sigma: float) -> float:
    return -math.log(sigma) if sigma > 0 else math.inf


def _expm1(v: float) -> float:
    return math.expm1(v) if v != -math.inf else -1.0


def dpmpp_2s_ancestral(model, x, sigmas, ctx):
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        down, up = ancestral_step(s, s_next, ctx.eta)
        if down == 0:
            x = x + to_d(x, s, denoised) * (down - s)
        else:
            t, t_next = _t(s), _t(down)
            h = t_next - t
            s_mid = t + 0.5 * h
            x2 = (math.exp(-s_mid) / s) * x - _expm1(-0.5 * h) * denoised
            denoised2 = model(x2, math.exp(-s_mid))
            x = (down / s) * x - _expm1(-h) * denoised2
        if s_next > 0:
            x = x + ctx.noise(s, s_next) * ctx.s_noise * up
    return x


def dpmpp_sde(model, x, sigmas, ctx, r: float = 0.5):
    eta = ctx.eta
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        if s_next == 0:
            x = x + to_d(x, s, denoised) * (s_next - s)
            continue
        t, t_next = _t(s), _t(s_next)
        h = t_next - t
        s_mid = math.exp(-(t + h * r))
        fac = 1 / (2 * r)
        down, up = ancestral_step(s, s_mid, eta)
        x2 = (down / s) * x - _expm1(t - _t(down)) * denoised
        x2 = x2 + ctx.noise(s, s_mid) * ctx.s_noise * up
        denoised2 = model(x2, s_mid)
        down, up = ancestral_step(s, s_next, eta)
        mixed = (1 - fac) * denoised + fac * denoised2
        x = (down / s) * x - _expm1(t - _t(down)) * mixed
        x = x + ctx.noise(s, s_next) * ctx.s_noise * up
    return x


def dpmpp_2m(model, x, sigmas, ctx):
    old = None
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        t, t_next = _t(s), _t(s_next)
        h = t_next - t
        if old is None or s_next == 0:
            x = (s_next / s) * x - _expm1(-h) * denoised
        else:
            r = (t - _t(_f(sigmas, i - 1))) / h
            x = (s_next / s) * x - _expm1(-h) * ((1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old)
        old = denoised
    return x


def _lambda(ctx, sigma: float) -> float:
    return float(ctx.ms.half_log_snr(sigma))


def dpmpp_2m_sde(model, x, sigmas, ctx, solver: str = "midpoint"):
    """DPM-Solver++(2M) SDE in half-log-SNR lambda, so rectified flow is stepped in its own terms."""
    eta = ctx.eta
    old, h_last = None, None
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        if s_next == 0:
            x = denoised
        else:
            lam_s, lam_t = _lambda(ctx, s), _lambda(ctx, s_next)
            h = lam_t - lam_s
            eta_h = eta * h
            alpha_t = s_next * math.exp(lam_t)
            x = (s_next / s * math.exp(-eta_h)) * x + (alpha_t * -math.expm1(-h - eta_h)) * denoised
            if old is not None:
                r = h_last / h
                if solver == "heun":
                    coef = alpha_t * (-math.expm1(-h - eta_h) / (-h - eta_h) + 1)
                else:
                    coef = 0.5 * alpha_t * -math.expm1(-h - eta_h)
                x = x + coef * (1 / r) * (denoised - old)
            if eta:
                x = x + ctx.noise(s, s_next) * (s_next * math.sqrt(-math.expm1(-2 * eta_h)) * ctx.s_noise)
            h_last = h
        old = denoised
    return x


def dpmpp_2m_sde_heun(model, x, sigmas, ctx):
    return dpmpp_2m_sde(model, x, sigmas, ctx, solver="heun")


def dpmpp_3m_sde(model, x, sigmas, ctx):
    eta = ctx.eta
    d_1 = d_2 = None
    h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        if s_next == 0:
            x = denoised
        else:
            lam_s, lam_t = _lambda(ctx, s), _lambda(ctx, s_next)
            h = lam_t - lam_s
            h_eta = h * (eta + 1)
            alpha_t = s_next * math.exp(lam_t)
            x = (s_next / s * math.exp(-h * eta)) * x + (alpha_t * -math.expm1(-h_eta)) * denoised
            phi_2 = math.expm1(-h_eta) / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0, d1_1 = (denoised - d_1) / r0, (d_1 - d_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
            elif h_1 is not None:
                x = x + (alpha_t * phi_2) * ((denoised - d_1) / (h_1 / h))
            if eta:
                x = x + ctx.noise(s, s_next) * (s_next * math.sqrt(-math.expm1(-2 * h * eta)) * ctx.s_noise)
            h_1, h_2 = h, h_1
        d_1, d_2 = denoised, d_1
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


def lcm(model, x, sigmas, ctx):
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        x = denoised
        if s_next > 0:
            x = ctx.ms.noise_scaling(s_next, ctx.noise(s, s_next), x)
    return x


_IPNDM = {1: (1,), 2: (3, -1), 3: (23, -16, 5), 4: (55, -59, 37, -9)}
_IPNDM_DIV = {1: 1, 2: 2, 3: 12, 4: 24}


def ipndm(model, x, sigmas, ctx, max_order: int = 4):
    """Improved pseudo numerical methods (Adams-Bashforth on d = (x - denoised) / sigma)."""
    history: list = []
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        d = to_d(x, s, denoised)
        order = min(max_order, i + 1)
        ds = [d] + history[::-1][:order - 1]
        weights = _IPNDM[order]
        x = x + (s_next - s) * sum(w * v for w, v in zip(weights, ds)) / _IPNDM_DIV[order]
        history = (history + [d])[-(max_order - 1):]
    return x


SAMPLERS: dict[str, Callable] = {
    "euler": euler,
    "euler_ancestral": euler_ancestral,
    "heun": heun,
    "dpm_2": dpm_2,
    "dpm_2_ancestral": dpm_2_ancestral,
    "lms": lms,
    "dpmpp_2s_ancestral": dpmpp_2s_ancestral,
    "dpmpp_sde": dpmpp_sde,
    "dpmpp_sde_gpu": dpmpp_sde,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "dpmpp_2m_sde_gpu": dpmpp_2m_sde,
    "dpmpp_2m_sde_heun": dpmpp_2m_sde_heun,
    "dpmpp_2m_sde_heun_gpu": dpmpp_2m_sde_heun,
    "dpmpp_3m_sde": dpmpp_3m_sde,
    "dpmpp_3m_sde_gpu": dpmpp_3m_sde,
    "ddpm": ddpm,
    "lcm": lcm,
    "ipndm": ipndm,
    "ddim": euler,  # ComfyUI's ddim is Euler on the ddim_uniform-style sigmas
}
# Samplers whose noise is a Brownian tree (consistent across step counts) in ComfyUI.
BROWNIAN = {"dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun",
            "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu"}
# ComfyUI's sampler names in its order, limited to those implemented.
SAMPLER_NAMES = [n for n in (
    "euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun",
    "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ddim")
    if n in SAMPLERS]
# KSampler drops the penultimate sigma for these (one step more, the last but one removed).
DISCARD_PENULTIMATE = {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}
