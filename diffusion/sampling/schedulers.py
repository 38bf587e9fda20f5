"""ComfyUI's sampler and scheduler names, and the diffusers schedulers behind the few names that are
not yet written in sigma space (k_samplers.py has the rest).

Every run builds a fresh scheduler from the model's ORIGINAL scheduler config (never from another
swapped one), so a name always means the same numbers. The name tables are plain data so the node
packs can build their COMBOs without importing torch.
"""

from __future__ import annotations

from genloom.diffusion.errors import SamplingError

from .k_samplers import SAMPLERS as K_SAMPLERS
from .sigma_schedules import SCHEDULER_NAMES as SIGMA_SCHEDULER_NAMES

# The names not yet written in sigma space run on diffusers schedulers:
# ComfyUI sampler name -> (diffusers class, config overrides, space). "vp": alpha*x0 + sigma*eps.
SAMPLERS: dict[str, tuple[str, dict, str]] = {
    "deis": ("DEISMultistepScheduler", {"solver_order": 2}, "vp"),
    "sa_solver": ("SASolverScheduler", {}, "vp"),
    # bh1's last step to sigma 0 divides by zero in diffusers: it stops at the smallest sigma.
    "uni_pc": ("UniPCMultistepScheduler",
               {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}, "vp"),
    "uni_pc_bh2": ("UniPCMultistepScheduler", {"solver_type": "bh2"}, "vp"),
}

# ComfyUI's KSampler list, in its order.
COMFY_SAMPLER_NAMES = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "exp_heun_2_x0", "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive",
    "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m",
    "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep",
    "res_multistep_cfg_pp", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp",
    "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver",
    "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2"]

# ComfyUI scheduler (sigma schedule) name -> diffusers config overrides.
SCHEDULES: dict[str, dict] = {
    "simple": {"timestep_spacing": "trailing"},
    "sgm_uniform": {"timestep_spacing": "trailing"},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "ddim_uniform": {"timestep_spacing": "leading"},
    "beta": {"use_beta_sigmas": True},
    "normal": {"timestep_spacing": "linspace"},
}

# What KSampler offers: the names written in sigma space (k_samplers) and the diffusers ones above.
SAMPLER_NAMES = [n for n in COMFY_SAMPLER_NAMES if n in K_SAMPLERS or n in SAMPLERS]
SCHEDULER_NAMES = list(SIGMA_SCHEDULER_NAMES)

def supported_schedules(sampler_name: str) -> list[str]:
    if sampler_name in K_SAMPLERS:
        return list(SCHEDULER_NAMES)
    return list(SCHEDULES)  # the diffusers classes: the schedules diffusers' config flags give


def check_names(sampler_name: str, scheduler: str) -> None:
    if sampler_name not in SAMPLER_NAMES:
        raise SamplingError(f"sampler_name {sampler_name!r} is not supported; choose one of "
                            f"{', '.join(SAMPLER_NAMES)}")
    if scheduler not in SCHEDULER_NAMES:
        raise SamplingError(f"scheduler {scheduler!r} is not supported; choose one of "
                            f"{', '.join(SCHEDULER_NAMES)}")
    if scheduler not in supported_schedules(sampler_name):
        raise SamplingError(f"sampler {sampler_name!r} cannot use the {scheduler!r} scheduler; with "
                            f"{sampler_name!r} use one of {', '.join(supported_schedules(sampler_name))}")


def build_scheduler(config: dict, sampler_name: str, scheduler: str, seed: int = 0):
    """A new diffusers scheduler for this (sampler, scheduler) pair, from the model's own config."""
    import diffusers

    check_names(sampler_name, scheduler)
    cls_name, overrides, _space = SAMPLERS[sampler_name]
    cls = getattr(diffusers, cls_name)
    kwargs = _own_config(cls, config)
    kwargs.update(overrides)
    kwargs.update(SCHEDULES[scheduler])
    return cls.from_config(kwargs)


def _own_config(cls, config: dict) -> dict:
    """The original config's keys that `cls` knows (no warnings about foreign ones), without sigma
    flags: a model config may ask for karras sigmas, but the chosen schedule decides."""
    import inspect

    known = set(inspect.signature(cls.__init__).parameters)
    sigma_flags = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
    own = {k: v for k, v in config.items() if k in known and k not in sigma_flags}
    return own


def timed_scheduler(config: dict, sampler_name: str, scheduler: str, steps: int, seed: int, device):
    """A new scheduler for this name pair with the timesteps of a `steps`-step run set."""
    sched = build_scheduler(config, sampler_name, scheduler, seed)
    sched.set_timesteps(steps, device=device)
    return sched
