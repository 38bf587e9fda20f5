"""The denoiser the samplers call: `denoiser(x, sigma) -> denoised`, as ComfyUI's sampling function.

Each call runs the network once per batch of live conditioning (guidance.py), turns every
conditioning set's output into a denoised estimate with the model sampling, then combines them the
way the GUIDER says. For CFG that is ComfyUI's order, all in denoised space:

    outs  = [cond_denoised, uncond_denoised]         (uncond skipped when cfg == 1)
    outs  = pre_cfg_fn(args) for each model_options["sampler_pre_cfg_function"]
    x0    = x - model_options["sampler_cfg_function"](args)   or   uncond + cfg * (cond - uncond)
    x0    = post_cfg_fn(args) for each model_options["sampler_post_cfg_function"]

with ComfyUI's argument dicts, so CFGNorm, CFGZeroStar, CFG++ samplers and plugins' cfg patches
see the numbers they would see in ComfyUI. The last call's unconditional and conditional denoised
estimates stay readable (`uncond_denoised`, `cond_denoised`) for the CFG++ samplers.

A model function may run the network again while the denoiser is called (PerturbedAttentionGuidance,
SelfAttentionGuidance): `calc_cond_batch(model, [conditioning, ...], x, sigma, model_options)`, as
ComfyUI's comfy.samplers.calc_cond_batch, evaluates conditioning lists on the running denoiser's
network with the options given (their attention replacements included).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, replace
from typing import Any

from genloom.diffusion.models.attention import attention_patched
from genloom.diffusion.models.patcher_extension import WrappersMP, wrapped
from genloom.engine import context

from .guidance import prepare_conds

_RUNNING: contextvars.ContextVar = contextvars.ContextVar("genloom_denoiser", default=None)


@dataclass
class Guider:
    """CFGGuider / BasicGuider: the model, its conditioning sets and how their predictions combine.

    Subclasses (DualCFGGuider, ...) override `cond_sets` and `combine`."""

    model: Any
    positive: list
    negative: list | None = None
    cfg: float = 1.0

    def cond_sets(self, need_uncond: bool = False) -> list:
        """The conditioning sets to evaluate, positive first (None: skipped this run)."""
        options = getattr(self.model, "model_options", {}) or {}
        skip = self.cfg == 1.0 and not need_uncond and not options.get("disable_cfg1_optimization")
        return [self.positive, None if skip else (self.negative or None)]

    def combine(self, denoised: list, x, sigma, options: dict):
        """One denoised estimate from each set's (cond first); None where a set was not evaluated."""
        cond, uncond = denoised[0], denoised[1]
        return cfg_combine(self.model, cond, uncond, self.cfg, x, sigma, options,
                           self.positive, self.negative)


def cfg_combine(model, cond, uncond, cfg: float, x, sigma, options: dict, cond_in=None, uncond_in=None):
    """ComfyUI's cfg function with its sampler_cfg_function and post-CFG hooks."""
    import torch

    if uncond is None:  # not evaluated, or no negative conditioning: zeros, as ComfyUI
        uncond = torch.zeros_like(cond)
    fn = options.get("sampler_cfg_function")
    if fn is not None:
        args = {"cond": x - cond, "uncond": x - uncond, "cond_scale": cfg, "timestep": sigma,
                "input": x, "sigma": sigma, "cond_denoised": cond, "uncond_denoised": uncond,
                "model": model, "model_options": options}
        result = x - fn(args)
    elif cfg == 1.0:
        result = cond
    else:
        result = uncond + (cond - uncond) * cfg
    for post in options.get("sampler_post_cfg_function", []) or []:
        args = {"denoised": result, "cond": cond_in, "uncond": uncond_in, "cond_scale": cfg,
                "model": model, "uncond_denoised": uncond, "cond_denoised": cond, "sigma": sigma,
                "model_options": options, "input": x}
        result = post(args)
    return result


class Denoiser:
    """`denoiser(x, sigma) -> denoised` over one network in use; built once per sampling run."""

    def __init__(self, guider: Guider, unet, ms, latent_shape, device, need_uncond: bool = False,
                 inputs: dict | None = None):
        """`inputs`: the run's latent_image and denoise_mask, given to the model's cond_extras."""
        self.guider, self.unet, self.ms = guider, unet, ms
        self.options = dict(getattr(guider.model, "model_options", {}) or {})
        self.conds, self.inputs = guider.cond_sets(need_uncond), inputs
        self.guide = prepare_conds(guider.model, self.conds, latent_shape, device, inputs)
        self.guide.use_sigmas(ms)
        self.device = device
        self._other_conds: dict = {}  # conds a CALC_COND_BATCH wrapper or a plugin guider passes
        self._exact: tuple = (None, 0.0)
        self.cond_denoised = self.uncond_denoised = None

    def __call__(self, x, sigma: float):
        token = _RUNNING.set(self)  # for model functions calling the network again (calc_cond_batch)
        try:
            return self._denoise(x, sigma)
        finally:
            _RUNNING.reset(token)

    def _denoise(self, x, sigma: float):
        import torch

        context.current().check_interrupt()  # every model call, so a long multi-call step stops
        if getattr(self.guider, "overrides_prediction", False):  # a plugin guider's predict_noise
            return self.guider.denoise_with(self, x, sigma)
        sigma = float(sigma)
        sigmas = torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype)
        self._exact = (sigmas, sigma)  # the sigma as given, for when `sigmas` comes back unchanged
        calc = wrapped(WrappersMP.CALC_COND_BATCH, self.calc_cond_batch, None, self.options)
        denoised = list(calc(self.guider.model, self.conds, x, sigmas, self.options))
        if denoised[0] is None:  # no positive conditioning live at this sigma
            denoised[0] = torch.zeros_like(x)
        for fn in self.options.get("sampler_pre_cfg_function", []) or []:
            args = {"conds": self.guider.cond_sets(), "conds_out": denoised, "cond_scale": self.guider.cfg,
                    "timestep": sigmas, "input": x, "sigma": sigmas, "model": self.guider.model,
                    "model_options": self.options}
            denoised = list(fn(args))
        self.cond_denoised = denoised[0]
        self.uncond_denoised = denoised[1] if len(denoised) > 1 and denoised[1] is not None \
            else denoised[0]
        return self.guider.combine(denoised, x, sigmas, self.options)

    def calc_cond_batch(self, model, conds: list, x_in, timestep, model_options=None) -> list:
        """ComfyUI's calc_cond_batch: the denoised latent for each conditioning list of `conds` (None:
        not evaluated) at sigma `timestep`. Conds other than the run's own (a wrapper's, a plugin
        guider's) are prepared once each."""
        import torch

        ms = self.ms
        sigma = self._exact[1] if timestep is self._exact[0] else float(torch.as_tensor(timestep).reshape(-1)[0])
        guide = self.guide
        # options other than the run's (PerturbedAttentionGuidance's replacement): a model with them
        foreign = model_options is not None and model_options is not self.options \
            and model_options != self.options
        if conds is not self.conds or foreign:
            key = (tuple(id(c) for c in conds), tuple(x_in.shape), foreign)
            guide = self._other_conds.get(key)
            if guide is None:
                guide = self._other_conds[key] = prepare_conds(model, conds, tuple(x_in.shape), self.device,
                                                               self.inputs)
                guide.use_sigmas(ms)
        t = ms.timestep(torch.tensor(sigma))
        if foreign:
            base = getattr(self.guider.model, "handle", self.guider.model)
            guide.model = replace(base, model_options=model_options)
        with attention_patched(self.unet, model_options if foreign else {}):  # only a call's own places
            outs = guide.predictions(self.unet, ms.calculate_input(sigma, x_in), t.to(self.device),
                                     float(t), sigma=sigma)
        return [None if o is None else ms.calculate_denoised(sigma, o.to(x_in.dtype), x_in) for o in outs]


def calc_cond_batch(model, conds: list, x, sigma, model_options: dict | None = None) -> list:
    """ComfyUI's comfy.samplers.calc_cond_batch for model functions (post-CFG functions, ...): the
    denoised latent for each conditioning list in `conds` (None: not evaluated) at `sigma`, on the
    network of the denoiser now running, with `model_options` (the run's when None), through the
    model's CALC_COND_BATCH wrappers."""
    from genloom.diffusion.errors import SamplingError

    running = _RUNNING.get()
    if running is None:
        raise SamplingError("calc_cond_batch is for model functions called while sampling")
    options = running.options if model_options is None else model_options
    calc = wrapped(WrappersMP.CALC_COND_BATCH, running.calc_cond_batch, None, options)
    return calc(model, conds, x, sigma, options)
