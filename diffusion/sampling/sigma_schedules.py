"""ComfyUI's schedulers: a descending float32 sigma list of steps + 1 values ending in 0.

Each takes the model's `ModelSampling` (its table and sigma range) and the step count.
"""

from __future__ import annotations

import math

SCHEDULER_NAMES = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                   "linear_quadratic", "kl_optimal"]


def _zero_ended(values):
    import torch

    return torch.cat([torch.as_tensor(values, dtype=torch.float32).reshape(-1), torch.zeros(1)])


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0):
    import torch

    ramp = torch.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _zero_ended((hi + ramp * (lo - hi)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float):
    import torch

    return _zero_ended(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0):
    import torch

    ramp = torch.linspace(1, 0, n) ** rho
    return _zero_ended(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def vp(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3):
    import torch

    t = torch.linspace(1, eps_s, n)
    return _zero_ended(torch.sqrt(torch.exp(beta_d * t ** 2 / 2 + beta_min * t) - 1))


def laplace(n: int, sigma_min: float, sigma_max: float, mu: float = 0.0, beta: float = 0.5):
    import torch

    eps = 1e-5
    x = torch.linspace(0, 1, n)
    clamp = lambda v: torch.clamp(v, min=sigma_min, max=sigma_max)  # noqa: E731
    lmb = mu - beta * torch.sign(0.5 - x) * torch.log(1 - 2 * torch.abs(0.5 - x) + eps)
    return _zero_ended(clamp(torch.exp(lmb)))


def normal(ms, steps: int, sgm: bool = False):
    import torch

    start, end = ms.timestep(ms.sigma_max), ms.timestep(ms.sigma_min)
    zero = True
    if sgm:
        ts = torch.linspace(float(start), float(end), steps + 1)[:-1]
    else:
        if math.isclose(float(ms.sigma(end)), 0, abs_tol=1e-5):
            steps, zero = steps + 1, False
        ts = torch.linspace(float(start), float(end), steps)
    sig = torch.stack([ms.sigma(t) for t in ts]).float()
    return _zero_ended(sig) if zero else sig


def simple(ms, steps: int):
    n = len(ms.sigmas)
    stride = n / steps
    return _zero_ended([float(ms.sigmas[-(1 + int(i * stride))]) for i in range(steps)])


def ddim_uniform(ms, steps: int):
    sig = ms.sigmas
    i = 1
    if math.isclose(float(sig[1]), 0, abs_tol=1e-5):
        steps, out = steps + 1, []
    else:
        out = [0.0]
    stride = max(len(sig) // steps, 1)
    while i < len(sig):
        out.append(float(sig[i]))
        i += stride
    import torch

    return torch.tensor(out[::-1], dtype=torch.float32)


def beta(ms, steps: int, alpha: float = 0.6, beta_: float = 0.6):
    import numpy as np
    import scipy.stats

    total = len(ms.sigmas) - 1
    ts = np.rint(scipy.stats.beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), alpha, beta_) * total)
    out, last = [], -1
    for t in ts:
        if t != last:
            out.append(float(ms.sigmas[int(t)]))
        last = t
    return _zero_ended(out)


def linear_quadratic(ms, steps: int, threshold_noise: float = 0.025, linear_steps: int | None = None):
    import torch

    if steps == 1:
        sched = [1.0, 0.0]
    else:
        lin = steps // 2 if linear_steps is None else linear_steps
        quad = steps - lin
        diff = lin - threshold_noise * steps
        q_coef = diff / (lin * quad ** 2)
        l_coef = threshold_noise / lin - 2 * diff / quad ** 2
        const = q_coef * lin ** 2
        sched = ([i * threshold_noise / lin for i in range(lin)]
                 + [q_coef * i ** 2 + l_coef * i + const for i in range(lin, steps)] + [1.0])
        sched = [1.0 - v for v in sched]
    return torch.tensor(sched, dtype=torch.float32) * ms.sigma_max


def kl_optimal(n: int, sigma_min: float, sigma_max: float):
    import torch

    idx = torch.arange(n, dtype=torch.float32) / max(n - 1, 1)
    return _zero_ended((idx * math.atan(sigma_min) + (1 - idx) * math.atan(sigma_max)).tan())


def calculate_sigmas(ms, scheduler: str, steps: int):
    """The sigmas of `scheduler` for `steps` steps on model sampling `ms`."""
    lo, hi = ms.sigma_min, ms.sigma_max
    if scheduler == "karras":
        return karras(steps, lo, hi)
    if scheduler == "exponential":
        return exponential(steps, lo, hi)
    if scheduler == "normal":
        return normal(ms, steps)
    if scheduler == "sgm_uniform":
        return normal(ms, steps, sgm=True)
    if scheduler == "simple":
        return simple(ms, steps)
    if scheduler == "ddim_uniform":
        return ddim_uniform(ms, steps)
    if scheduler == "beta":
        return beta(ms, steps)
    if scheduler == "linear_quadratic":
        return linear_quadratic(ms, steps)
    if scheduler == "kl_optimal":
        return kl_optimal(steps, lo, hi)
    raise ValueError(f"unknown scheduler {scheduler!r}")


# ---- table schedules (AlignYourSteps, GITS, OptimalSteps) and sigma refinement ----------------

def loglinear_interp(levels, num: int):
    """`num` levels spread over a descending list by linear interpolation of log sigma against an
    evenly spaced position (float64, as the published recipe)."""
    import numpy as np

    rising = np.log(np.asarray(levels, dtype=np.float64)[::-1])
    out = np.interp(np.linspace(0, 1, num), np.linspace(0, 1, len(levels)), rising)
    return np.exp(out)[::-1].copy()


def _from_table(levels, steps: int, denoise: float):
    """The last round(steps * denoise) + 1 levels of a table (interpolated to steps + 1 levels
    when it has another length), the final one set to 0."""
    import torch

    keep = steps
    if denoise < 1.0:
        if denoise <= 0.0:
            return torch.zeros(0)
        keep = round(steps * denoise)
    levels = list(levels)
    if len(levels) != steps + 1:
        levels = list(loglinear_interp(levels, steps + 1))
    levels = levels[-(keep + 1):]
    levels[-1] = 0.0
    return torch.tensor(levels, dtype=torch.float32)


def align_your_steps(model_type: str, steps: int, denoise: float = 1.0):
    from .sigma_tables import ALIGN_YOUR_STEPS

    return _from_table(ALIGN_YOUR_STEPS[model_type], steps, denoise)


def optimal_steps(model_type: str, steps: int, denoise: float = 1.0):
    from .sigma_tables import OPTIMAL_STEPS

    return _from_table(OPTIMAL_STEPS[model_type], steps, denoise)


def gits_levels(coeff: float):
    """GITS' rows for a coefficient (rounded to 0.01), or None when the table has none."""
    from .sigma_tables import GITS

    return GITS.get(round(float(coeff), 2))


def gits(coeff: float, steps: int, denoise: float = 1.0):
    """GITS' table row for `steps` (2..20); more steps interpolate its 20-step row."""
    rows = gits_levels(coeff)
    if rows is None:
        raise ValueError(f"GITS has no table for coefficient {coeff}")
    return _from_table(rows[steps - 2] if steps <= 20 else rows[-1], steps, denoise)


def extend_intermediate(sigmas, steps: int, start_at_sigma: float, end_at_sigma: float,
                        spacing: str = "linear"):
    """ExtendIntermediateSigmas: `steps - 1` extra levels inside every interval whose upper sigma is
    in [end_at_sigma, start_at_sigma] (start < 0: no upper bound), spaced linearly, or bunched
    towards the lower (cosine) or the upper (sine) end."""
    import torch

    top = float("inf") if start_at_sigma < 0 else start_at_sigma
    frac = torch.linspace(0, 1, steps + 1)[1:-1]
    if spacing == "cosine":
        frac = torch.sin(frac * math.pi / 2)
    elif spacing == "sine":
        frac = 1 - torch.cos(frac * math.pi / 2)
    out = []
    for cur, nxt in zip(sigmas[:-1], sigmas[1:]):
        out.append(float(cur))
        if end_at_sigma <= float(cur) <= top:
            out.extend((frac * (nxt - cur) + cur).tolist())
    if len(sigmas):
        out.append(float(sigmas[-1]))
    return torch.tensor(out, dtype=torch.float32)
