"""SA-Solver (Xue et al. 2023, arXiv:2309.05019): stochastic Adams predictor-corrector on data
predictions in half-log-SNR time. tau(sigma) sets the stochasticity: eta inside
[percent_to_sigma(sde_start_percent), percent_to_sigma(sde_end_percent)] (0.2 .. 0.8 by default),
0 outside; the orders drop near the end when the last sigma is 0; PECE re-evaluates the corrected
state.
"""

from __future__ import annotations

import math

from .k_base import lam, offset_first_sigma


def _exp_integrals(s: float, t: float, order: int, tau: float) -> list:
    """(1 + tau^2) * integral_s^t e^((1 + tau^2)(v - t)) v^p dv for p = 0 .. order - 1, by the
    integration-by-parts recursion."""
    k = 1 + tau ** 2
    h = t - s
    ends = [t ** p - s ** p * math.exp(-k * h) for p in range(order)]
    out = []
    for p in range(order):
        total = 0.0
        for q in range(p + 1):
            total += (-1) ** (p - q) * math.factorial(p) / math.factorial(q) / k ** (p - q) * ends[q]
        out.append(total)
    return out


def _b_coeffs(sigma_next: float, lams: list, lam_s: float, lam_t: float, tau: float,
              simple_order_2: bool, corrector: bool) -> list:
    """The Adams weights of the predictions at `lams` for a step from lam_s to lam_t."""
    import torch

    n = len(lams)
    alpha_t = sigma_next * math.exp(lam_t)
    k = 1 + tau ** 2
    h = lam_t - lam_s
    if simple_order_2 and n == 2:
        if corrector:
            b1 = alpha_t * (0.5 * k * h)
            b2 = alpha_t * -math.expm1(-h * k) - b1
        else:
            b2 = alpha_t * (0.5 * k * h ** 2) / (lams[-2] - lam_s)
            b1 = alpha_t * -math.expm1(-h * k) - b2
        return [b2, b1]
    vander = torch.tensor([[v ** p for v in lams] for p in range(n)], dtype=torch.float64)
    rhs = torch.tensor(_exp_integrals(lam_s, lam_t, n, tau), dtype=torch.float64)
    return (alpha_t * torch.linalg.solve(vander, rhs)).tolist()


def _combine(weights, preds):
    return sum(w * p for w, p in zip(weights, preds))


def sa_solver(model, x, sigmas, ctx, predictor_order: int = 3, corrector_order: int = 4,
              use_pece: bool = False, simple_order_2: bool = False, sde_start_percent: float = 0.2,
              sde_end_percent: float = 0.8):
    if len(sigmas) <= 1:
        return x
    sigmas = offset_first_sigma(ctx, sigmas)
    lams = [lam(ctx, s) for s in sigmas]
    start = float(ctx.ms.percent_to_sigma(sde_start_percent))
    end = float(ctx.ms.percent_to_sigma(sde_end_percent))
    eta, s_noise = ctx.eta, ctx.s_noise

    def tau_of(sigma: float) -> float:
        return eta if eta > 0 and start >= sigma >= end else 0.0

    keep = max(predictor_order, corrector_order)
    n = len(sigmas)
    to_end = sigmas[-1] == 0
    x_pred, h, tau, noise = x, 0.0, 0.0, 0.0
    preds: list = []
    for i in range(n - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = model(x_pred, s)
        ctx.step(i, x_pred, denoised)
        preds = (preds + [denoised])[-keep:]
        p_order = min(predictor_order, len(preds))
        c_order = 0 if i == 0 or (s_next == 0 and not use_pece) else min(corrector_order, len(preds))
        if to_end:
            p_order = min(p_order, n - 2 - i)
            c_order = min(c_order, n - 1 - i)
        if c_order == 0:
            x = x_pred
        else:
            b = _b_coeffs(s, lams[i - c_order + 1:i + 1], lams[i - 1], lams[i], tau, simple_order_2, True)
            x = s / sigmas[i - 1] * math.exp(-(tau ** 2) * h) * x + _combine(b, preds[-c_order:])
            if tau > 0 and s_noise > 0:
                x = x + noise  # the previous predictor's noise
            if use_pece:
                denoised = model(x, s)
                preds[-1] = denoised
        if s_next == 0:
            x_pred = denoised
            continue
        tau = tau_of(s_next)
        b = _b_coeffs(s_next, lams[i - p_order + 1:i + 1], lams[i], lams[i + 1], tau, simple_order_2, False)
        h = lams[i + 1] - lams[i]
        x_pred = s_next / s * math.exp(-(tau ** 2) * h) * x + _combine(b, preds[-p_order:])
        if tau > 0 and s_noise > 0:
            noise = ctx.noise(s, s_next) * (s_next * math.sqrt(-math.expm1(-2 * tau ** 2 * h)) * s_noise)
            x_pred = x_pred + noise
    return x_pred


def sa_solver_pece(model, x, sigmas, ctx, **options):
    return sa_solver(model, x, sigmas, ctx, use_pece=True, **options)
