"""Plans: which scheduler entries a run covers, and the noise level of each boundary.

LATENT convention: a latent that still carries noise (return_with_leftover_noise) is stored as
ComfyUI stores it, `x0 + sigma * noise` ("VE" space, unscaled), whatever the scheduler. Schedulers
that work in variance-preserving space ("vp": DDIM, DPM-Solver, UniPC, ...) convert on entry and
exit, so a base pass with one sampler can be finished by a refiner pass with another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .schedulers import SAMPLERS, timed_scheduler

@dataclass
class Plan:
    scheduler: Any
    space: str  # "ve" | "vp"
    start: int  # first scheduler entry to run
    end: int  # entry to stop before
    full_denoise_at: int | None  # entry at which to return the clean prediction instead of stepping
    timesteps_cpu: Any = None
    step_params: frozenset = frozenset()  # the parameters the scheduler's step() takes

    def level(self, entry: int) -> float:
        """Noise level (VE sigma) of the sample state at the start of `entry`."""
        sched = self.scheduler
        sigmas = getattr(sched, "sigmas", None)
        if sigmas is not None and len(sigmas) > entry:
            return float(sigmas[entry])
        if entry >= len(self.timesteps_cpu):
            return 0.0
        ac = float(sched.alphas_cumprod[int(self.timesteps_cpu[entry])])
        return math.sqrt((1.0 - ac) / ac)

    def vp_scale(self, sigma: float) -> float:
        """Factor from VE space (x0 + sigma*eps) into this scheduler's sample space."""
        return 1.0 if self.space == "ve" else 1.0 / math.sqrt(1.0 + sigma * sigma)


def make_plan(config: dict, sampler_name: str, scheduler: str, steps: int, start_step: int,
              end_step: int, force_full_denoise: bool, seed: int, device) -> Plan:
    """Set up a scheduler for `steps` steps and find the entries of steps [start_step, end_step)."""
    import inspect

    sched = timed_scheduler(config, sampler_name, scheduler, steps, seed, device)
    order = int(getattr(sched, "order", 1))
    n_entries = len(sched.timesteps)
    start = min(start_step * order, n_entries)
    end = min(end_step * order, n_entries) if end_step < steps else n_entries
    full_at = None
    if force_full_denoise and end < n_entries and end > start:
        full_at = (end_step - 1) * order
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(start)
    return Plan(sched, SAMPLERS[sampler_name][2], start, end, full_at,
                timesteps_cpu=sched.timesteps.detach().cpu(),
                step_params=frozenset(inspect.signature(sched.step).parameters))
