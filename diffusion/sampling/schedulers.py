"""ComfyUI's sampler and scheduler names (plain data, so node packs build their COMBOs without
importing torch). Every sampler name runs in sigma space (k_samplers.py) with every scheduler
(sigma_schedules.py).
"""

from __future__ import annotations

from genloom.diffusion.errors import SamplingError

from .k_samplers import SAMPLER_NAMES as K_SAMPLER_NAMES
from .sigma_schedules import SCHEDULER_NAMES as SIGMA_SCHEDULER_NAMES

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

# What KSampler offers: ComfyUI's names that are written in sigma space (all of them).
SAMPLER_NAMES = [n for n in COMFY_SAMPLER_NAMES if n in K_SAMPLER_NAMES]
SCHEDULER_NAMES = list(SIGMA_SCHEDULER_NAMES)


def check_names(sampler_name: str, scheduler: str) -> None:
    if sampler_name not in SAMPLER_NAMES:
        raise SamplingError(f"sampler_name {sampler_name!r} is not supported; choose one of "
                            f"{', '.join(SAMPLER_NAMES)}")
    if scheduler not in SCHEDULER_NAMES:
        raise SamplingError(f"scheduler {scheduler!r} is not supported; choose one of "
                            f"{', '.join(SCHEDULER_NAMES)}")
