"""ComfyUI's sampler and scheduler names on diffusers schedulers.

Every run builds a fresh scheduler from the model's ORIGINAL scheduler config (never from another
swapped one), so a name always means the same numbers. The name tables are plain data so the node
packs can build their COMBOs without importing torch.
"""

from __future__ import annotations

from genloom.diffusion.errors import SamplingError

_SDE = {"algorithm_type": "sde-dpmsolver++"}
# ComfyUI sampler name -> (diffusers class, config overrides, space). "ve": the scheduler's sample is
# x0 + sigma*eps (k-diffusion style, input scaled by scale_model_input); "vp": alpha*x0 + sigma*eps.
SAMPLERS: dict[str, tuple[str, dict, str]] = {
    "euler": ("EulerDiscreteScheduler", {}, "ve"),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}, "ve"),
    "heun": ("HeunDiscreteScheduler", {}, "ve"),
    "dpm_2": ("KDPM2DiscreteScheduler", {}, "ve"),
    "dpm_2_ancestral": ("KDPM2AncestralDiscreteScheduler", {}, "ve"),
    "lms": ("LMSDiscreteScheduler", {}, "ve"),
    "dpmpp_sde": ("DPMSolverSDEScheduler", {}, "ve"),
    "dpmpp_sde_gpu": ("DPMSolverSDEScheduler", {}, "ve"),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, "vp"),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {**_SDE, "solver_order": 2}, "vp"),
    "dpmpp_2m_sde_gpu": ("DPMSolverMultistepScheduler", {**_SDE, "solver_order": 2}, "vp"),
    "dpmpp_3m_sde": ("DPMSolverMultistepScheduler", {**_SDE, "solver_order": 3}, "vp"),
    "dpmpp_3m_sde_gpu": ("DPMSolverMultistepScheduler", {**_SDE, "solver_order": 3}, "vp"),
    "ddpm": ("DDPMScheduler", {}, "vp"),
    "lcm": ("LCMScheduler", {}, "vp"),
    "deis": ("DEISMultistepScheduler", {"solver_order": 2}, "vp"),
    "sa_solver": ("SASolverScheduler", {}, "vp"),
    "ddim": ("DDIMScheduler", {}, "vp"),
    # bh1's last step to sigma 0 divides by zero in diffusers: it stops at the smallest sigma.
    "uni_pc": ("UniPCMultistepScheduler",
               {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}, "vp"),
    "uni_pc_bh2": ("UniPCMultistepScheduler", {"solver_type": "bh2"}, "vp"),
}

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

SAMPLER_NAMES = list(SAMPLERS)
SCHEDULER_NAMES = list(SCHEDULES)

_SPACING_ONLY = ("normal", "simple", "sgm_uniform", "ddim_uniform")
# Which schedules each diffusers class can produce (checked against diffusers in the tests).
# euler_ancestral has no sigma options in diffusers: it gets the sigmas of an Euler scheduler built
# with them (the ancestral step only reads `sigmas`), see `_transplant_sigmas`.
_UNSUPPORTED: dict[str, tuple[str, ...]] = {
    "DDIMScheduler": ("karras", "exponential", "beta"),
    "DDPMScheduler": ("karras", "exponential", "beta"),
    "LCMScheduler": ("karras", "exponential", "beta", "ddim_uniform"),
}


def supported_schedules(sampler_name: str) -> list[str]:
    cls_name = SAMPLERS[sampler_name][0]
    return [s for s in SCHEDULER_NAMES if s not in _UNSUPPORTED.get(cls_name, ())]


def check_names(sampler_name: str, scheduler: str) -> None:
    if sampler_name not in SAMPLERS:
        raise SamplingError(f"sampler_name {sampler_name!r} is not supported; choose one of "
                            f"{', '.join(SAMPLER_NAMES)}")
    if scheduler not in SCHEDULES:
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
    if cls_name not in ("EulerAncestralDiscreteScheduler", "LCMScheduler"):
        kwargs.update(SCHEDULES[scheduler])
    elif cls_name == "EulerAncestralDiscreteScheduler" and scheduler in _SPACING_ONLY:
        kwargs.update(SCHEDULES[scheduler])
    if cls_name == "DPMSolverSDEScheduler":
        kwargs["noise_sampler_seed"] = int(seed) % (2**63)
    return cls.from_config(kwargs)


def _own_config(cls, config: dict) -> dict:
    """The original config's keys that `cls` knows (no warnings about foreign ones), without sigma
    flags: a model config may ask for karras sigmas, but the chosen schedule decides."""
    import inspect

    known = set(inspect.signature(cls.__init__).parameters)
    sigma_flags = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
    own = {k: v for k, v in config.items() if k in known and k not in sigma_flags}
    if "clip_sample" in known:
        # DDIM/DDPM default to clipping x0 to [-1, 1], which is for pixel models: latents are not
        # clipped unless the model's own config asks for it (an Euler config never says).
        own.setdefault("clip_sample", False)
    return own


def transplant_sigmas(sched, config: dict, scheduler: str, steps: int, device) -> None:
    """Give an EulerAncestral scheduler the sigmas of a karras/exponential/beta Euler schedule."""
    import diffusers

    kwargs = _own_config(diffusers.EulerDiscreteScheduler, config)
    kwargs.update(SCHEDULES[scheduler])
    donor = diffusers.EulerDiscreteScheduler.from_config(kwargs)
    donor.set_timesteps(steps, device=device)
    sched.sigmas = donor.sigmas.clone()
    sched.timesteps = donor.timesteps.clone()
    sched._step_index = None
    sched._begin_index = None



def timed_scheduler(config: dict, sampler_name: str, scheduler: str, steps: int, seed: int, device):
    """A new scheduler for this name pair with the timesteps of a `steps`-step run set."""
    sched = build_scheduler(config, sampler_name, scheduler, seed)
    sched.set_timesteps(steps, device=device)
    if SAMPLERS[sampler_name][0] == "EulerAncestralDiscreteScheduler" and scheduler not in _SPACING_ONLY:
        transplant_sigmas(sched, config, scheduler, steps, device)
    return sched
