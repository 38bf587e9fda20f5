"""What every sigma-space sampler shares: the step context, the Karras ODE derivative, the ancestral
split of a step, and the half-log-SNR time that makes a formula hold for rectified flow too.

A sampler is `fn(model, x, sigmas, ctx, **options)`: `model(x, sigma) -> denoised` (after a call,
`model.uncond_denoised` holds that call's unconditional estimate, used by the CFG++ samplers),
`sigmas` a descending list of floats (usually ending in 0) and `ctx` a `StepContext`.
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

    @property
    def const(self) -> bool:
        """Rectified flow (x = (1 - sigma) x0 + sigma noise)?"""
        return self.ms.prediction == "const"


def to_d(x, sigma, denoised):
    return (x - denoised) / sigma


def uncond_of(model, denoised):
    """The unconditional denoised estimate of the model's last call (the denoised itself when the
    denoiser does not keep one: no negative, or a plain function)."""
    uncond = getattr(model, "uncond_denoised", None)
    return denoised if uncond is None else uncond


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0):
    """(sigma_down, sigma_up): where the deterministic step lands and how much noise goes back."""
    if not eta:
        return sigma_to, 0.0
    up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    return (sigma_to ** 2 - up ** 2) ** 0.5, up


def rf_ancestral_step(sigma: float, sigma_next: float, eta: float):
    """Rectified flow's ancestral split: (sigma_down, alpha_next / alpha_down, renoise), stepping
    down to sigma_down and re-noising so x stays (1 - sigma) x0 + sigma noise."""
    down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    alpha_next, alpha_down = 1 - sigma_next, 1 - down
    renoise = (sigma_next ** 2 - down ** 2 * alpha_next ** 2 / alpha_down ** 2) ** 0.5
    return down, alpha_next / alpha_down, renoise


def log_mid(a: float, b: float) -> float:
    return math.exp(math.log(a) + 0.5 * (math.log(b) - math.log(a)))


def t_of(sigma: float) -> float:
    """k-diffusion's time t = -log(sigma) (inf at sigma 0)."""
    return -math.log(sigma) if sigma > 0 else math.inf


def expm1(v: float) -> float:
    return math.expm1(v) if v != -math.inf else -1.0


def lam(ctx, sigma: float) -> float:
    """Half-log-SNR log(alpha / sigma): -log(sigma), or log((1 - sigma) / sigma) for rectified flow."""
    if sigma <= 0:
        return math.inf
    if ctx.const:
        return math.log((1 - sigma) / sigma) if sigma < 1 else -math.inf
    return -math.log(sigma)


def sigma_of(ctx, lam_value: float) -> float:
    """The inverse of `lam`."""
    if ctx.const:
        return 1 / (math.exp(lam_value) + 1)
    return math.exp(-lam_value)


def alpha_of(ctx, sigma: float) -> float:
    """The signal scale: 1, or 1 - sigma for rectified flow."""
    return 1 - sigma if ctx.const else 1.0


def offset_first_sigma(ctx, sigmas) -> list:
    """Rectified flow's sigma 1 has no finite log-SNR: such a first sigma moves to 1e-4 % of the way."""
    sigmas = [float(s) for s in sigmas]
    if ctx.const and len(sigmas) > 1 and sigmas[0] >= 1:
        sigmas[0] = float(ctx.ms.percent_to_sigma(1e-4))
    return sigmas


def phi1_h(h: float) -> float:
    """h * phi_1(h) = e^h - 1."""
    return math.expm1(h)


def phi2_h(h: float) -> float:
    """h * phi_2(h) = (e^h - 1 - h) / h."""
    return (math.expm1(h) - h) / h
