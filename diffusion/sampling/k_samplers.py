"""Every ComfyUI sampler name, in sigma space, written from the published algorithms (k-diffusion's
formulation, and ComfyUI's rectified-flow forms where its formulas branch on CONST models).

Every sampler is `fn(model, x, sigmas, ctx, **options)`: `model(x, sigma) -> denoised`, `sigmas` a
descending float list ending (usually) in 0, and `ctx` a `StepContext` giving the model sampling,
the noise sampler, eta / s_noise and the per-step callback (k_base.py). The modules:

    k_euler.py       euler, euler_ancestral, heun, heunpp2, dpm_2, dpm_2_ancestral, ddpm, lcm
    k_multistep.py   lms, ipndm, ipndm_v, deis, dpmpp_2m, res_multistep*, gradient_estimation*
    k_dpmpp.py       dpmpp_2s_ancestral, dpmpp_sde, dpmpp_2m_sde*, dpmpp_3m_sde, seeds_2/3,
                     exp_heun_2_x0(_sde), er_sde
    k_cfg_pp.py      euler(_ancestral)_cfg_pp, dpmpp_2s_ancestral_cfg_pp, dpmpp_2m_cfg_pp
    k_dpm_solver.py  dpm_fast, dpm_adaptive
    k_unipc.py       uni_pc, uni_pc_bh2
    k_sa_solver.py   sa_solver, sa_solver_pece
"""

from __future__ import annotations

from typing import Callable

from .k_base import StepContext  # noqa: F401 - the context the samplers take
from .k_cfg_pp import dpmpp_2m_cfg_pp, dpmpp_2s_ancestral_cfg_pp, euler_ancestral_cfg_pp, euler_cfg_pp
from .k_dpm_solver import dpm_adaptive, dpm_fast
from .k_dpmpp import (dpmpp_2m_sde, dpmpp_2m_sde_heun, dpmpp_2s_ancestral, dpmpp_3m_sde, dpmpp_sde,
                      er_sde, exp_heun_2_x0, exp_heun_2_x0_sde, seeds_2, seeds_3)
from .k_euler import dpm_2, dpm_2_ancestral, ddpm, euler, euler_ancestral, heun, heunpp2, lcm
from .k_multistep import (deis, dpmpp_2m, gradient_estimation, gradient_estimation_cfg_pp, ipndm,
                          ipndm_v, lms, res_multistep, res_multistep_ancestral,
                          res_multistep_ancestral_cfg_pp, res_multistep_cfg_pp)
from .k_sa_solver import sa_solver, sa_solver_pece
from .k_unipc import uni_pc, uni_pc_bh2

SAMPLERS: dict[str, Callable] = {
    "euler": euler,
    "euler_cfg_pp": euler_cfg_pp,
    "euler_ancestral": euler_ancestral,
    "euler_ancestral_cfg_pp": euler_ancestral_cfg_pp,
    "heun": heun,
    "heunpp2": heunpp2,
    "exp_heun_2_x0": exp_heun_2_x0,
    "exp_heun_2_x0_sde": exp_heun_2_x0_sde,
    "dpm_2": dpm_2,
    "dpm_2_ancestral": dpm_2_ancestral,
    "lms": lms,
    "dpm_fast": dpm_fast,
    "dpm_adaptive": dpm_adaptive,
    "dpmpp_2s_ancestral": dpmpp_2s_ancestral,
    "dpmpp_2s_ancestral_cfg_pp": dpmpp_2s_ancestral_cfg_pp,
    "dpmpp_sde": dpmpp_sde,
    "dpmpp_sde_gpu": dpmpp_sde,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_2m_cfg_pp": dpmpp_2m_cfg_pp,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "dpmpp_2m_sde_gpu": dpmpp_2m_sde,
    "dpmpp_2m_sde_heun": dpmpp_2m_sde_heun,
    "dpmpp_2m_sde_heun_gpu": dpmpp_2m_sde_heun,
    "dpmpp_3m_sde": dpmpp_3m_sde,
    "dpmpp_3m_sde_gpu": dpmpp_3m_sde,
    "ddpm": ddpm,
    "lcm": lcm,
    "ipndm": ipndm,
    "ipndm_v": ipndm_v,
    "deis": deis,
    "res_multistep": res_multistep,
    "res_multistep_cfg_pp": res_multistep_cfg_pp,
    "res_multistep_ancestral": res_multistep_ancestral,
    "res_multistep_ancestral_cfg_pp": res_multistep_ancestral_cfg_pp,
    "gradient_estimation": gradient_estimation,
    "gradient_estimation_cfg_pp": gradient_estimation_cfg_pp,
    "er_sde": er_sde,
    "seeds_2": seeds_2,
    "seeds_3": seeds_3,
    "sa_solver": sa_solver,
    "sa_solver_pece": sa_solver_pece,
    "ddim": euler,  # ComfyUI's ddim is Euler on the chosen schedule
    "uni_pc": uni_pc,
    "uni_pc_bh2": uni_pc_bh2,
}
# ComfyUI's KSampler list, in its order: every name is offered.
SAMPLER_NAMES = list(SAMPLERS)
# Samplers whose noise is a Brownian tree (consistent across step counts) in ComfyUI.
BROWNIAN = {"dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun",
            "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu"}
# CFG++ samplers: they read the unconditional prediction, so it is computed even at cfg 1.
CFG_PP = {"euler_cfg_pp", "euler_ancestral_cfg_pp", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_2m_cfg_pp",
          "res_multistep_cfg_pp", "res_multistep_ancestral_cfg_pp", "gradient_estimation_cfg_pp"}
# eta when the SAMPLER gives none (1 for the rest).
ETA_DEFAULT = {"dpm_fast": 0.0, "dpm_adaptive": 0.0}
# Under a noise mask, the kept region is noised with fresh noise (seed + 1) instead of the run's.
INPAINT_RANDOM_NOISE = {"ddim"}
# KSampler drops the penultimate sigma for these (one step more, the last but one removed).
DISCARD_PENULTIMATE = {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}
