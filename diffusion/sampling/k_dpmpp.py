"""Exponential-integrator samplers in half-log-SNR time lambda = log(alpha / sigma), so the same
formulas step EPS/V models (alpha 1) and rectified flow (alpha = 1 - sigma):

DPM-Solver++(2S) ancestral, DPM-Solver++ SDE, (2M) SDE, (3M) SDE (Lu et al. 2022), SEEDS-2/3
(Gonzalez et al. 2023, stochastic explicit exponential derivative-free solvers; exp_heun_2_x0 is
SEEDS-2 with r = 1 and phi_2 weights) and ER-SDE-Solver-3 (Cui et al. 2023).
"""

from __future__ import annotations

import math

from .k_base import (alpha_of, ancestral_step, expm1, lam, offset_first_sigma, phi1_h, phi2_h,
                     rf_ancestral_step, sigma_of, t_of, to_d)


def dpmpp_2s_ancestral(model, x, sigmas, ctx):
    if ctx.const:
        return _dpmpp_2s_ancestral_rf(model, x, sigmas, ctx)
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        down, up = ancestral_step(s, s_next, ctx.eta)
        if down == 0:
            x = x + to_d(x, s, denoised) * (down - s)
        else:
            t, t_next = t_of(s), t_of(down)
            h = t_next - t
            s_mid = t + 0.5 * h
            x2 = (math.exp(-s_mid) / s) * x - expm1(-0.5 * h) * denoised
            denoised2 = model(x2, math.exp(-s_mid))
            x = (down / s) * x - expm1(-h) * denoised2
        if s_next > 0:
            x = x + ctx.noise(s, s_next) * ctx.s_noise * up
    return x


def rf_2s_midpoint(ctx, s: float, down: float) -> float:
    """The rectified-flow DPM-Solver++(2S) midpoint between sigma and sigma_down (in lambda)."""
    if s == 1.0:
        return 0.9999
    return sigma_of(ctx, lam(ctx, s) + 0.5 * (lam(ctx, down) - lam(ctx, s)))


def _dpmpp_2s_ancestral_rf(model, x, sigmas, ctx):
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        down, scale, renoise = rf_ancestral_step(s, s_next, ctx.eta)
        if s_next == 0:
            x = x + to_d(x, s, denoised) * (down - s)
        else:
            mid = rf_2s_midpoint(ctx, s, down)
            ratio = mid / s
            denoised2 = model(ratio * x + (1 - ratio) * denoised, mid)
            ratio = down / s
            x = ratio * x + (1 - ratio) * denoised2
        if s_next > 0 and ctx.eta > 0:
            x = scale * x + ctx.noise(s, s_next) * ctx.s_noise * renoise
    return x


def dpmpp_sde(model, x, sigmas, ctx, r: float = 0.5):
    eta, s_noise = ctx.eta, ctx.s_noise
    sigmas = offset_first_sigma(ctx, sigmas)
    noisy = eta > 0 and s_noise > 0
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        if s_next == 0:
            x = denoised
            continue
        lam_s, lam_t = lam(ctx, s), lam(ctx, s_next)
        h = lam_t - lam_s
        lam_mid = lam_s + r * h
        s_mid = sigma_of(ctx, lam_mid)
        alpha_s, alpha_mid, alpha_t = alpha_of(ctx, s), alpha_of(ctx, s_mid), alpha_of(ctx, s_next)
        # Step 1, to the intermediate lambda (ancestral split in sigma / alpha units)
        down, up = ancestral_step(math.exp(-lam_s), math.exp(-lam_mid), eta)
        h_ = -math.log(down) - lam_s
        x2 = (alpha_mid / alpha_s) * math.exp(-h_) * x - alpha_mid * math.expm1(-h_) * denoised
        if noisy:
            x2 = x2 + alpha_mid * ctx.noise(s, s_mid) * s_noise * up
        denoised2 = model(x2, s_mid)
        # Step 2, to the next sigma, on the mixed prediction
        down, up = ancestral_step(math.exp(-lam_s), math.exp(-lam_t), eta)
        h_ = -math.log(down) - lam_s
        fac = 1 / (2 * r)
        mixed = (1 - fac) * denoised + fac * denoised2
        x = (alpha_t / alpha_s) * math.exp(-h_) * x - alpha_t * math.expm1(-h_) * mixed
        if noisy:
            x = x + alpha_t * ctx.noise(s, s_next) * s_noise * up
    return x


def _sde_noise(ctx, s, s_next, h_eta_noise: float):
    """The SDE samplers' fresh noise for one step: sigma_next * sqrt(1 - e^(-2 eta h)) * s_noise."""
    return ctx.noise(s, s_next) * (s_next * math.sqrt(-math.expm1(-2 * h_eta_noise)) * ctx.s_noise)


def dpmpp_2m_sde(model, x, sigmas, ctx, solver: str = "midpoint"):
    """DPM-Solver++(2M) SDE in half-log-SNR lambda, so rectified flow is stepped in its own terms."""
    eta = ctx.eta
    sigmas = offset_first_sigma(ctx, sigmas)
    old, h_last = None, None
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        if s_next == 0:
            x = denoised
        else:
            lam_s, lam_t = lam(ctx, s), lam(ctx, s_next)
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
            if eta > 0 and ctx.s_noise > 0:
                x = x + _sde_noise(ctx, s, s_next, eta_h)
            h_last = h
        old = denoised
    return x


def dpmpp_2m_sde_heun(model, x, sigmas, ctx):
    return dpmpp_2m_sde(model, x, sigmas, ctx, solver="heun")


def dpmpp_3m_sde(model, x, sigmas, ctx):
    eta = ctx.eta
    sigmas = offset_first_sigma(ctx, sigmas)
    d_1 = d_2 = None
    h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        if s_next == 0:
            x = denoised
        else:
            lam_s, lam_t = lam(ctx, s), lam(ctx, s_next)
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
            if eta > 0 and ctx.s_noise > 0:
                x = x + _sde_noise(ctx, s, s_next, h * eta)
            h_1, h_2 = h, h_1
        d_1, d_2 = denoised, d_1
    return x


# ---- SEEDS ------------------------------------------------------------------------------------

def _seeds_stage(ctx, x, s, s_to, frac: float, h: float, eta: float, weighted):
    """x carried from sigma s to the stage at fraction `frac` of the step (decayed by e^(-frac eta h))
    minus alpha_to times the weighted predictions."""
    return s_to / s * math.exp(-frac * h * eta) * x - alpha_of(ctx, s_to) * weighted


def _carry_noise(ctx, noise, a: float, b: float, seg: float):
    """Brownian-consistent noise carried over a sub-interval: decay by e^seg plus fresh noise."""
    return noise * math.exp(seg) + math.sqrt(-math.expm1(2 * seg)) * ctx.noise(a, b)


class _SeedsStep:
    """One SEEDS step from sigma s to s_next in lambda: its stage sigmas and the first stage."""

    def __init__(self, ctx, s: float, s_next: float, eta: float, s_noise: float):
        self.ctx, self.s, self.s_next, self.eta, self.s_noise = ctx, s, s_next, eta, s_noise
        self.inject = eta > 0 and s_noise > 0
        self.lam_s, lam_t = lam(ctx, s), lam(ctx, s_next)
        self.h = lam_t - self.lam_s
        self.h_eta = self.h * (eta + 1)
        self.noise = None

    def sigma_at(self, frac: float) -> float:
        return sigma_of(self.ctx, self.lam_s + frac * self.h)

    def stage(self, x, s_to: float, frac: float, weighted):
        return _seeds_stage(self.ctx, x, self.s, s_to, frac, self.h, self.eta, weighted)

    def first(self, x, s1: float, r: float, denoised):
        """The stage at fraction r from the first prediction, with its fresh noise."""
        x2 = self.stage(x, s1, r, phi1_h(-r * self.h_eta) * denoised)
        if self.inject:
            self.noise = math.sqrt(-math.expm1(-2 * r * self.h * self.eta)) * self.ctx.noise(self.s, s1)
            x2 = x2 + self.noise * s1 * self.s_noise
        return x2

    def renoise(self, x, a: float, b: float, frac_a: float, frac_b: float):
        """Carry the step's noise from stage a (fraction frac_a) to stage b and add it at b."""
        if not self.inject:
            return x
        self.noise = _carry_noise(self.ctx, self.noise, a, b, (frac_a - frac_b) * self.h * self.eta)
        return x + self.noise * b * self.s_noise


def seeds_2(model, x, sigmas, ctx, r: float = 0.5, solver_type: str = "phi_1", eta: float | None = None,
            s_noise: float | None = None):
    if solver_type not in ("phi_1", "phi_2"):
        raise ValueError("solver_type must be 'phi_1' or 'phi_2'")
    eta = ctx.eta if eta is None else eta
    s_noise = ctx.s_noise if s_noise is None else s_noise
    sigmas = offset_first_sigma(ctx, sigmas)
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        if s_next == 0:
            x = denoised
            continue
        step = _SeedsStep(ctx, s, s_next, eta, s_noise)
        s1 = step.sigma_at(r)
        denoised2 = model(step.first(x, s1, r, denoised), s1)
        if solver_type == "phi_1":
            weighted = phi1_h(-step.h_eta) * (denoised + (denoised2 - denoised) / (2 * r))
        else:
            b2 = phi2_h(-step.h_eta) / r
            weighted = (phi1_h(-step.h_eta) - b2) * denoised + b2 * denoised2
        x = step.renoise(step.stage(x, s_next, 1.0, weighted), s1, s_next, r, 1.0)
    return x


def exp_heun_2_x0(model, x, sigmas, ctx):
    """Deterministic exponential Heun (second order) in data prediction and log-SNR time."""
    return seeds_2(model, x, sigmas, ctx, r=1.0, solver_type="phi_2", eta=0.0, s_noise=0.0)


def exp_heun_2_x0_sde(model, x, sigmas, ctx):
    return seeds_2(model, x, sigmas, ctx, r=1.0, solver_type="phi_2")


def seeds_3(model, x, sigmas, ctx, r_1: float = 1.0 / 3, r_2: float = 2.0 / 3):
    sigmas = offset_first_sigma(ctx, sigmas)
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        if s_next == 0:
            x = denoised
            continue
        step = _SeedsStep(ctx, s, s_next, ctx.eta, ctx.s_noise)
        s1, s2 = step.sigma_at(r_1), step.sigma_at(r_2)
        denoised2 = model(step.first(x, s1, r_1, denoised), s1)
        a32 = r_2 / r_1 * phi2_h(-r_2 * step.h_eta)
        a31 = phi1_h(-r_2 * step.h_eta) - a32
        x3 = step.renoise(step.stage(x, s2, r_2, a31 * denoised + a32 * denoised2), s1, s2, r_1, r_2)
        denoised3 = model(x3, s2)
        b3 = phi2_h(-step.h_eta) / r_2
        b1 = phi1_h(-step.h_eta) - b3
        x = step.renoise(step.stage(x, s_next, 1.0, b1 * denoised + b3 * denoised3), s2, s_next, r_2, 1.0)
    return x


# ---- ER-SDE -----------------------------------------------------------------------------------

def er_sde_default_scaler(v):
    return v * ((v ** 0.3).exp() + 10.0)


def er_sde(model, x, sigmas, ctx, max_stage: int = 3, solver_type: str = "ER-SDE"):
    """ER-SDE-Solver-3 in lambda_er = sigma / alpha; solver_type "Reverse-time SDE" or "ODE" uses
    the noise scaler lambda^(eta + 1) (SamplerER_SDE), "ER-SDE" the paper's default one."""
    import torch

    if solver_type == "ER-SDE":
        scaler = er_sde_default_scaler
    else:
        power = ctx.eta + 1

        def scaler(v):
            return v ** power

    def scale(v: float) -> float:
        return float(scaler(torch.tensor(v, dtype=torch.float32)))

    points = 200
    index = torch.arange(0, points, dtype=torch.float32)
    sigmas = offset_first_sigma(ctx, sigmas)
    ers = [0.0 if s <= 0 else math.exp(-lam(ctx, s)) for s in sigmas]
    old = old_d = None
    for i in range(len(sigmas) - 1):
        s, s_next, denoised = ctx.denoise(model, x, sigmas, i)
        stage = min(max_stage, i + 1)
        if s_next == 0:
            x = denoised
        else:
            er_s, er_t = ers[i], ers[i + 1]
            alpha_s, alpha_t = s / er_s, s_next / er_t
            ratio = scale(er_t) / scale(er_s)
            x = (alpha_t / alpha_s) * ratio * x + alpha_t * (1 - ratio) * denoised
            if stage >= 2:
                dt = er_t - er_s
                step = -dt / points
                pos = er_t + index * step
                scaled = scaler(pos)
                integral = float((1 / scaled).sum()) * step
                dd = (denoised - old) / (er_s - ers[i - 1])
                x = x + alpha_t * (dt + integral * scale(er_t)) * dd
                if stage >= 3:
                    integral_u = float(((pos - er_s) / scaled).sum()) * step
                    du = (dd - old_d) / ((er_s - ers[i - 2]) / 2)
                    x = x + alpha_t * (dt ** 2 / 2 + integral_u * scale(er_t)) * du
                old_d = dd
            if ctx.s_noise > 0:
                var = er_t ** 2 - er_s ** 2 * ratio ** 2
                x = x + alpha_t * ctx.noise(s, s_next) * ctx.s_noise * (math.sqrt(var) if var >= 0 else 0.0)
        old = denoised
    return x
