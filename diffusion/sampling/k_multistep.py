"""Multistep samplers: each step reuses the slopes or predictions of earlier steps.

lms (linear multistep on d, Karras et al.), ipndm / ipndm_v (improved PNDM, Zhang & Chen 2022, fixed
and variable-step Adams-Bashforth), deis (Zhang & Chen, "tab" coefficients integrated in VP time as
ComfyUI does), dpmpp_2m (DPM-Solver++(2M)), res_multistep (Zhang et al. 2023's second-order
multistep exponential integrator, with ancestral and CFG++ forms) and gradient_estimation
(Permenter & Yuan's gradient-estimation step, with a CFG++ form).
"""

from __future__ import annotations

import math

from .k_base import ancestral_step, expm1, t_of, to_d, uncond_of


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
        if t[i + 1] == 0:  # the step into sigma 0 is the prediction itself (ComfyUI)
            x = denoised
            continue
        cur = min(i + 1, order)
        coeffs = [_lms_coeff(cur, t, i, j) for j in range(cur)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x


_IPNDM = {1: (1,), 2: (3, -1), 3: (23, -16, 5), 4: (55, -59, 37, -9)}
_IPNDM_DIV = {1: 1, 2: 2, 3: 12, 4: 24}


def _adams_bashforth(model, x, sigmas, ctx, max_order: int, weights):
    """x += (sigma_next - sigma) * sum(w_k d_{i-k}) with weights(order, sigmas, i); the step into
    sigma 0 is the prediction itself (ComfyUI)."""
    sig = [float(v) for v in sigmas]
    history: list = []
    for i in range(len(sig) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sig, i)
        d = to_d(x, s, denoised)
        if s_next == 0:
            x = denoised
        else:
            ds = [d] + history[::-1]
            x = x + (s_next - s) * sum(w * v for w, v in zip(weights(min(max_order, i + 1), sig, i), ds))
        history = (history + [d])[-(max_order - 1):] if max_order > 1 else []
    return x


def ipndm(model, x, sigmas, ctx, max_order: int = 4):
    """Improved pseudo numerical methods: fixed-step Adams-Bashforth on d = (x - denoised) / sigma."""
    return _adams_bashforth(model, x, sigmas, ctx, max_order,
                            lambda order, sig, i: [w / _IPNDM_DIV[order] for w in _IPNDM[order]])


def _ipndm_v_weights(order: int, sig, i: int) -> list:
    """Variable-step Adams-Bashforth weights for d_i, d_{i-1}, ... (the step sizes are sigma gaps)."""
    if order == 1:
        return [1.0]
    h = sig[i + 1] - sig[i]
    h1 = sig[i] - sig[i - 1]
    a = h / h1
    if order == 2:
        return [(2 + a) / 2, -a / 2]
    h2 = sig[i - 1] - sig[i - 2]
    b = h1 / h2
    p = (1 - h / (3 * (h + h1)) * (h * (h + h1)) / (h1 * (h1 + h2))) / 2
    if order == 3:
        return [(2 + a) / 2 + p, -a / 2 - (1 + b) * p, p * b]
    h3 = sig[i - 2] - sig[i - 3]
    q = ((1 - h / (3 * (h + h1))) / 2 + (1 - h / (2 * (h + h1))) * h / (6 * (h + h1 + h2))) \
        * (h * (h + h1) * (h + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3))
    c = h1 * (h1 + h2) / (h2 * (h2 + h3))
    return [(2 + a) / 2 + p + q,
            -a / 2 - (1 + b) * p - (1 + b + c) * q,
            p * b + (b + c * (1 + h2 / h3)) * q,
            -q * c * b]


def ipndm_v(model, x, sigmas, ctx, max_order: int = 4):
    """Improved PNDM with variable-step Adams-Bashforth weights."""
    return _adams_bashforth(model, x, sigmas, ctx, max_order, _ipndm_v_weights)


# ---- DEIS --------------------------------------------------------------------------------------

def _deis_vp_time(sigmas):
    """The VP-SDE time of each sigma under the fixed EDM-range schedule ComfyUI's DEIS uses
    (eps_s 1e-3, sigma 0.002..80), and that schedule's beta_0, beta_1."""
    eps_s, lo, hi = 1e-3, 0.002, 80.0
    beta_d = 2 * (math.log(lo ** 2 + 1) / eps_s - math.log(hi ** 2 + 1)) / (eps_s - 1)
    beta_min = math.log(hi ** 2 + 1) - 0.5 * beta_d
    ts = [(math.sqrt(beta_min ** 2 + 2 * beta_d * math.log(s * s + 1)) - beta_min) / beta_d for s in sigmas]
    return ts, beta_min, beta_d + beta_min


def deis_coefficients(sigmas, max_order: int = 3, points: int = 10000) -> list:
    """Per step, the weights of d_i, d_{i-1}, ...: the Lagrange basis in VP time integrated against
    dsigma/dt by a `points`-point Riemann sum (DEIS' "tab" mode)."""
    import torch

    ts, b0, b1 = _deis_vp_time(sigmas)
    coeffs = []
    for i in range(len(ts) - 1):
        order = min(i + 1, max_order)
        if order == 1 or float(sigmas[i + 1]) <= 0:
            coeffs.append([])
            continue
        taus = torch.linspace(ts[i], ts[i + 1], points, dtype=torch.float64)
        dtau = (ts[i + 1] - ts[i]) / points
        alpha = torch.exp(-0.5 * taus ** 2 * (b1 - b0) - taus * b0)
        dsigma_dt = 0.5 * (b0 + taus * (b1 - b0)) / torch.sqrt(alpha * (1 - alpha))
        prev = [ts[i - k] for k in range(order)]
        row = []
        for j in range(order):
            basis = torch.ones_like(taus)
            for k in range(order):
                if k != j:
                    basis = basis * (taus - prev[k]) / (prev[j] - prev[k])
            row.append(float((dsigma_dt * basis).sum() * dtau))
        coeffs.append(row)
    return coeffs


def deis(model, x, sigmas, ctx, max_order: int = 3):
    coeffs = deis_coefficients(sigmas, max_order)
    history: list = []
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        d = to_d(x, s, denoised)
        row = coeffs[i]
        if not row:  # first step, or the step into sigma 0: Euler
            x = x + (s_next - s) * d
        else:
            ds = [d] + history[::-1]
            x = x + sum(c * v for c, v in zip(row, ds))
        history = (history + [d])[-(max_order - 1):]
    return x


# ---- DPM-Solver++(2M), res_multistep, gradient estimation --------------------------------------

def dpmpp_2m(model, x, sigmas, ctx):
    old = None
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        t, t_next = t_of(s), t_of(s_next)
        h = t_next - t
        if old is None or s_next == 0:
            x = (s_next / s) * x - expm1(-h) * denoised
        else:
            r = (t - t_of(float(sigmas[i - 1]))) / h
            x = (s_next / s) * x - expm1(-h) * ((1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old)
        old = denoised
    return x


def _nan0(v: float) -> float:
    return 0.0 if math.isnan(v) else v


def res_multistep(model, x, sigmas, ctx, cfg_pp: bool = False, ancestral: bool = False):
    """Second-order multistep exponential integrator in t = -log(sigma); `ancestral` uses the
    context's eta (else 0), `cfg_pp` steps on the unconditional prediction (CFG++)."""
    eta = ctx.eta if ancestral else 0.0
    old, old_down = None, None
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        uncond = uncond_of(model, denoised) if cfg_pp else denoised
        down, up = ancestral_step(s, s_next, eta)
        if down == 0 or old is None:
            if cfg_pp:
                x = denoised + to_d(x, s, uncond) * down
            else:
                x = x + to_d(x, s, denoised) * (down - s)
        else:
            t, t_next = t_of(s), t_of(down)
            t_old, t_prev = t_of(old_down), t_of(float(sigmas[i - 1]))
            h = t_next - t
            c2 = (t_prev - t_old) / h
            phi1 = math.expm1(-h) / -h
            phi2 = (phi1 - 1) / -h
            b1, b2 = _nan0(phi1 - phi2 / c2), _nan0(phi2 / c2)
            if cfg_pp:
                x = x + (denoised - uncond)
            x = math.exp(-h) * x + h * (b1 * uncond + b2 * old)
        if s_next > 0:
            x = x + ctx.noise(s, s_next) * ctx.s_noise * up
        old, old_down = uncond, down
    return x


def res_multistep_cfg_pp(model, x, sigmas, ctx):
    return res_multistep(model, x, sigmas, ctx, cfg_pp=True)


def res_multistep_ancestral(model, x, sigmas, ctx):
    return res_multistep(model, x, sigmas, ctx, ancestral=True)


def res_multistep_ancestral_cfg_pp(model, x, sigmas, ctx):
    return res_multistep(model, x, sigmas, ctx, cfg_pp=True, ancestral=True)


def gradient_estimation(model, x, sigmas, ctx, ge_gamma: float = 2.0, cfg_pp: bool = False):
    """Euler plus (gamma - 1) times the change of the slope since the last step."""
    old_d = None
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        d = to_d(x, s, uncond_of(model, denoised) if cfg_pp else denoised)
        dt = s_next - s
        if s_next == 0:
            x = denoised
        else:
            x = denoised + d * s_next if cfg_pp else x + d * dt
            if i >= 1:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


def gradient_estimation_cfg_pp(model, x, sigmas, ctx, ge_gamma: float = 2.0):
    return gradient_estimation(model, x, sigmas, ctx, ge_gamma=ge_gamma, cfg_pp=True)
