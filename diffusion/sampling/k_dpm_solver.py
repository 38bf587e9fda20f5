"""DPM-Solver (Lu et al. 2022, arXiv:2206.00927) in k-diffusion's noise-prediction form, in time
t = -log(sigma): dpm_fast (fixed steps of orders 3, 2, 1 spending exactly the step count in model
calls) and dpm_adaptive (embedded 1/2 or 2/3 pairs with a PID step-size controller).

Both ignore the intermediate sigmas, as ComfyUI: they run from the first sigma down to the last
non-zero one (the result keeps that much noise). Their eta defaults to 0 (k_samplers.ETA_DEFAULT).
"""

from __future__ import annotations

import math

from .k_base import ancestral_step


class _Solver:
    def __init__(self, model, ctx, total: int):
        self.model, self.ctx, self.total = model, ctx, max(1, total)

    @staticmethod
    def sigma(t: float) -> float:
        return math.exp(-t)

    @staticmethod
    def t(sigma: float) -> float:
        return -math.log(sigma)

    def eps(self, cache: dict, key: str, x, t: float):
        if key not in cache:
            cache[key] = (x - self.model(x, self.sigma(t))) / self.sigma(t)
        return cache[key]

    def report(self, i: int, x, eps, t: float):
        self.ctx.step(min(i, self.total - 1), x, x - self.sigma(t) * eps)

    def step1(self, x, t, t_next, cache):
        eps = self.eps(cache, "eps", x, t)
        return x - self.sigma(t_next) * math.expm1(t_next - t) * eps

    def step2(self, x, t, t_next, cache, r1: float = 0.5):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * math.expm1(r1 * h) * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return x - self.sigma(t_next) * math.expm1(h) * eps \
            - self.sigma(t_next) / (2 * r1) * math.expm1(h) * (eps_r1 - eps)

    def step3(self, x, t, t_next, cache, r1: float = 1 / 3, r2: float = 2 / 3):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - self.sigma(s1) * math.expm1(r1 * h) * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = x - self.sigma(s2) * math.expm1(r2 * h) * eps \
            - self.sigma(s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (eps_r1 - eps)
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return x - self.sigma(t_next) * math.expm1(h) * eps \
            - self.sigma(t_next) / r2 * (math.expm1(h) / h - 1) * (eps_r2 - eps)

    def ancestral(self, s: float, t: float, t_end: float, eta: float):
        """(t to step to, noise to add back) of an ancestral step from time s to t."""
        if not eta:
            return t, 0.0
        down, _ = ancestral_step(self.sigma(s), self.sigma(t), eta)
        t_ = min(t_end, self.t(down))
        return t_, (self.sigma(t) ** 2 - self.sigma(t_) ** 2) ** 0.5


def _ends(sigmas):
    """(sigma_max, sigma_min): the first sigma and the last non-zero one."""
    last = float(sigmas[-1]) if float(sigmas[-1]) != 0 else float(sigmas[-2])
    return float(sigmas[0]), last


def dpm_fast(model, x, sigmas, ctx):
    if len(sigmas) <= 1:
        return x
    n = len(sigmas) - 1
    sigma_max, sigma_min = _ends(sigmas)
    solver = _Solver(model, ctx, n)
    t_start, t_end = solver.t(sigma_max), solver.t(sigma_min)
    m = n // 3 + 1
    ts = [t_start + (t_end - t_start) * k / m for k in range(m + 1)]
    orders = [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]
    eta = ctx.eta
    for i, order in enumerate(orders):
        cache: dict = {}
        t, t_next = ts[i], ts[i + 1]
        t_to, up = solver.ancestral(t, t_next, t_end, eta)
        eps = solver.eps(cache, "eps", x, t)
        solver.report(i, x, eps, t)
        x = (solver.step1, solver.step2, solver.step3)[order - 1](x, t, t_to, cache)
        if up:
            x = x + up * ctx.s_noise * ctx.noise(solver.sigma(t), solver.sigma(t_next))
    return x


class _PID:
    """PID step-size control of the error's inverse (accept when the factor clears the safety)."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order, accept_safety, eps=1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety, self.eps = accept_safety, eps
        self.errs: list = []

    def propose(self, error: float) -> bool:
        inv = 1 / (error + self.eps)
        if not self.errs:
            self.errs = [inv, inv, inv]
        self.errs[0] = inv
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


def dpm_adaptive(model, x, sigmas, ctx, order: int = 3, rtol: float = 0.05, atol: float = 0.0078,
                 h_init: float = 0.05, pcoeff: float = 0.0, icoeff: float = 1.0, dcoeff: float = 0.0,
                 accept_safety: float = 0.81):
    import torch

    if len(sigmas) <= 1:
        return x
    if order not in (2, 3):
        raise ValueError("order should be 2 or 3")
    sigma_max, sigma_min = _ends(sigmas)
    solver = _Solver(model, ctx, len(sigmas) - 1)
    t_start, t_end = solver.t(sigma_max), solver.t(sigma_min)
    eta = ctx.eta
    forward = t_end > t_start
    if not forward and eta:
        raise ValueError("eta must be 0 for reverse sampling")
    pid = _PID(abs(h_init) * (1 if forward else -1), pcoeff, icoeff, dcoeff, 1.5 if eta else order,
               accept_safety)
    s, x_prev, steps = t_start, x, 0
    while (s < t_end - 1e-5) if forward else (s > t_end + 1e-5):
        cache: dict = {}
        t = min(t_end, s + pid.h) if forward else max(t_end, s + pid.h)
        t_to, up = solver.ancestral(s, t, t_end, eta)
        eps = solver.eps(cache, "eps", x, s)
        denoised = x - solver.sigma(s) * eps
        if order == 2:
            x_low = solver.step1(x, s, t_to, cache)
            x_high = solver.step2(x, s, t_to, cache)
        else:
            x_low = solver.step2(x, s, t_to, cache, r1=1 / 3)
            x_high = solver.step3(x, s, t_to, cache)
        delta = torch.maximum(torch.tensor(atol), rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = float(torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5)
        if pid.propose(error):
            x_prev = x_low
            x = x_high
            if up:
                x = x + up * ctx.s_noise * ctx.noise(solver.sigma(s), solver.sigma(t))
            s = t
        steps += 1
        ctx.step(min(steps - 1, solver.total - 1), x, denoised)
    return x
