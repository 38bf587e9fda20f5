"""UniPC (Zhao et al. 2023, arXiv:2302.04867): multistep predictor-corrector on data predictions in
half-log-SNR time, B(h) = h (bh1) or e^h - 1 (bh2), as ComfyUI runs it in sigma space.

The state is carried in variance-preserving units (x / sqrt(1 + sigma^2)); a last sigma of 0 is
replaced by 0.001 (the result keeps that little noise); up to order 3, lowering the order over the
last steps, with the corrector on every step but the last.
"""

from __future__ import annotations

import math


def _alpha(s: float) -> float:
    return 1 / math.sqrt(1 + s * s)


def _std(s: float) -> float:
    return s / math.sqrt(1 + s * s)


def _lam(s: float) -> float:
    return -math.log(s)


def _solve(rows, rhs) -> list:
    import torch

    a = torch.tensor(rows, dtype=torch.float64)
    return torch.linalg.solve(a, torch.tensor(rhs, dtype=torch.float64)).tolist()


class _UniPC:
    def __init__(self, model, variant: str):
        if variant not in ("bh1", "bh2"):
            raise ValueError("variant must be 'bh1' or 'bh2'")
        self.model, self.variant = model, variant

    def data(self, x_vp, s: float):
        return self.model(x_vp / _alpha(s), s)

    def update(self, x, preds: list, prev: list, s_t: float, order: int, corrector: bool):
        """One step from prev[-1] to s_t; returns (x, the prediction at s_t when corrected)."""
        s0, m0 = prev[-1], preds[-1]
        lam0 = _lam(s0)
        h = _lam(s_t) - lam0
        rks, d1s = [], []
        for i in range(1, order):
            rk = (_lam(prev[-(i + 1)]) - lam0) / h
            rks.append(rk)
            d1s.append((preds[-(i + 1)] - m0) / rk)
        rks.append(1.0)
        hh = -h
        h_phi_1 = math.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.variant == "bh1" else math.expm1(hh)
        rows, b, factorial = [], [], 1
        for i in range(1, order + 1):
            rows.append([rk ** (i - 1) for rk in rks])
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        alpha_t = _alpha(s_t)
        base = (_std(s_t) / _std(s0)) * x - (alpha_t * h_phi_1) * m0
        pred = 0
        if d1s:
            rhos_p = [0.5] if order == 2 else _solve([r[:-1] for r in rows[:-1]], b[:-1])
            pred = sum(r * d for r, d in zip(rhos_p, d1s))
        x_t = base - (alpha_t * b_h) * pred
        if not corrector:
            return x_t, None
        rhos_c = [0.5] if order == 1 else _solve(rows, b)
        model_t = self.data(x_t, s_t)
        corr = sum(r * d for r, d in zip(rhos_c[:-1], d1s)) if d1s else 0
        return base - (alpha_t * b_h) * (corr + rhos_c[-1] * (model_t - m0)), model_t


def uni_pc(model, x, sigmas, ctx, variant: str = "bh1"):
    ts = [float(s) for s in sigmas]
    if ts[-1] == 0:
        ts[-1] = 0.001
    steps = len(ts) - 1
    order = min(3, len(ts) - 2)
    solver = _UniPC(model, variant)
    x = x * _alpha(ts[0])
    preds: list = []
    prev: list = []
    for k in range(steps):
        if k == 0:
            preds, prev = [solver.data(x, ts[0])], [ts[0]]
        elif k < order:  # warm-up: orders 1 .. order - 1, always corrected
            x, m = solver.update(x, preds, prev, ts[k], k, corrector=True)
            preds.append(m)
            prev.append(ts[k])
        else:
            for step in range(k, k + 1 + (1 if k == steps - 1 else 0)):
                step_order = min(order, steps + 1 - step)
                x, m = solver.update(x, preds, prev, ts[step], step_order, corrector=step != steps)
                prev = prev[1:] + [ts[step]]
                if step < steps:
                    preds = preds[1:] + [m]
        ctx.step(k, x, preds[-1])
    return x / _alpha(ts[-1])


def uni_pc_bh2(model, x, sigmas, ctx):
    return uni_pc(model, x, sigmas, ctx, variant="bh2")
