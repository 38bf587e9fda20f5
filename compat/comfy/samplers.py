"""ComfyUI's `comfy.samplers` for node packs: the sampler and scheduler names, KSampler,
KSAMPLER (a pack's own k-diffusion-style sampler function), sampler_object, calculate_sigmas,
CFGGuider (set_conds / set_cfg / sample / predict_noise, subclassable) and calc_cond_batch, all on
genloom's sigma-space sampler (genloom.diffusion.sampling)."""

from __future__ import annotations

import contextvars

from genloom.diffusion.models.patcher_extension import WrappersMP, wrapped
from genloom.diffusion.sampling import k_samplers
from genloom.diffusion.sampling.denoiser import Guider, cfg_combine
from genloom.diffusion.sampling.schedulers import SAMPLER_NAMES as _SAMPLERS
from genloom.diffusion.sampling.schedulers import SCHEDULER_NAMES as _SCHEDULERS
from genloom.diffusion.sampling.sigma_loop import Sampler

SAMPLER_NAMES = list(_SAMPLERS)
SCHEDULER_NAMES = list(_SCHEDULERS)
KSAMPLER_NAMES = [n for n in SAMPLER_NAMES if n not in ("ddim", "uni_pc", "uni_pc_bh2")]


def _sampling(model_sampling):
    """genloom's ModelSampling behind a MODEL's model_sampling view (or the object itself)."""
    return getattr(model_sampling, "_ms", model_sampling)


def calculate_sigmas(model_sampling, scheduler_name: str, steps: int):
    from genloom.diffusion.sampling.sigma_schedules import calculate_sigmas as sigmas_of

    return sigmas_of(_sampling(model_sampling), scheduler_name, int(steps))


def sampler_object(name: str) -> Sampler:
    """A SAMPLER for one of the names in SAMPLER_NAMES (what KSamplerSelect outputs)."""
    if name not in k_samplers.SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}")
    return Sampler(name)


def KSAMPLER(sampler_function, extra_options: dict | None = None, inpaint_options: dict | None = None):
    """A SAMPLER running `sampler_function(model, x, sigmas, extra_args=, callback=, disable=,
    **extra_options)` the k-diffusion way: `model(x, sigma_batch, **extra_args) -> denoised`,
    `callback({"x", "i", "sigma", "sigma_hat", "denoised"})`. The SAMPLER carries the function
    itself: genloom's sampler table is never changed by a pack."""
    fn = sampler_function
    name = f"plugin:{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', 'sampler')}"
# genloom's loop takes eta and s_noise for itself: they travel renamed to reach the function
    options = {_RENAMED.get(k, k): v for k, v in (extra_options or {}).items()}
    return Sampler(name, tuple(sorted(options.items())), function=_adapter(lambda: fn))


_RENAMED = {"eta": "plugin_eta", "s_noise": "plugin_s_noise"}


def _adapter(ref):
    def run(denoise, x, sigmas, ctx, **options):
        import torch

        function = ref()
        sig = torch.tensor(sigmas, dtype=torch.float32, device=x.device)

        def model(x_in, sigma, **_extra_args):
            return denoise(x_in, float(torch.as_tensor(sigma).reshape(-1)[0]))

        def callback(info):
            ctx.callback(int(info["i"]), info.get("x"), info.get("denoised"))

        back = {v: k for k, v in _RENAMED.items()}
        options = {back.get(k, k): v for k, v in options.items()}
        return function(model, x, sig, extra_args={"model_options": {}, "seed": None}, callback=callback,
                        disable=True, **options)

    return run


class KSampler:
    """ComfyUI's KSampler object: the schedule for (model, steps, sampler, scheduler, denoise) and
    `sample(noise, positive, negative, cfg, ...)` returning the sampled latent tensor."""

    SAMPLERS = SAMPLER_NAMES
    SCHEDULERS = SCHEDULER_NAMES
    DISCARD_PENULTIMATE_SIGMA_SAMPLERS = set(k_samplers.DISCARD_PENULTIMATE)

    def __init__(self, model, steps, device=None, sampler=None, scheduler=None, denoise=None,
                 model_options=None):
        self.model, self.device = model, device
        self.sampler = sampler if sampler in k_samplers.SAMPLERS else SAMPLER_NAMES[0]
        self.scheduler = scheduler if scheduler in SCHEDULER_NAMES else SCHEDULER_NAMES[0]
        self.model_options = model_options or {}
        self.set_steps(steps, denoise)

    def calculate_sigmas(self, steps):
        from genloom.diffusion.sampling.loop import ksampler_sigmas
        from genloom.diffusion.sampling.model_sampling import of_model

        return ksampler_sigmas(of_model(self.model), self.sampler, self.scheduler, int(steps))

    def set_steps(self, steps, denoise=None):
        from genloom.diffusion.sampling.loop import ksampler_sigmas
        from genloom.diffusion.sampling.model_sampling import of_model

        self.steps = int(steps)
        self.sigmas = ksampler_sigmas(of_model(self.model), self.sampler, self.scheduler, self.steps,
                                      1.0 if denoise is None else float(denoise))

    def sample(self, noise, positive, negative, cfg, latent_image=None, start_step=None, last_step=None,
               force_full_denoise=False, denoise_mask=None, sigmas=None, callback=None,
               disable_pbar=False, seed=None):
        sigmas = cut_sigmas(self.sigmas if sigmas is None else sigmas, start_step, last_step,
                            force_full_denoise)
        if sigmas is None:
            return latent_image
        guider = CFGGuider(self.model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return run_guider(guider, noise, latent_image, sampler_object(self.sampler), sigmas,
                          denoise_mask, seed)


class CFGGuider(Guider):
    """ComfyUI's CFGGuider over genloom's Guider, so it is also a GUIDER genloom's
    SamplerCustomAdvanced takes. A subclass overriding `predict_noise(x, timestep, model_options,
    seed)` is called for every denoising step instead of genloom's combination; inside it,
    `calc_cond_batch(self.inner_model, [cond, ...], x, timestep, model_options)` evaluates
    conditioning sets."""

    def __init__(self, model_patcher):
        super().__init__(model_patcher, [], None, 1.0)
        self.model_patcher = model_patcher
        self.model_options = getattr(model_patcher, "model_options", {})
        self.conds: dict = {}
        self.original_conds: dict = {}
        self._denoiser = None

    @property
    def inner_model(self):
        return self.model_patcher

    def set_conds(self, positive, negative) -> None:
        self.inner_set_conds({"positive": positive, "negative": negative})

    def set_cfg(self, cfg) -> None:
        self.cfg = float(cfg)

    def inner_set_conds(self, conds: dict) -> None:
        self.original_conds = dict(conds)
        self.conds = dict(conds)
        self.positive = conds.get("positive") or []
        self.negative = conds.get("negative")

    @property
    def overrides_prediction(self) -> bool:
        return type(self).predict_noise is not CFGGuider.predict_noise

    def denoise_with(self, denoiser, x, sigma: float):
        """The denoiser's hook for a subclass's predict_noise."""
        import torch

        self._denoiser = denoiser
        sigmas = torch.full((x.shape[0],), float(sigma), device=x.device, dtype=x.dtype)
        token = _ACTIVE.set(denoiser)
        try:
            return self.predict_noise(x, sigmas, self.model_options)
        finally:
            _ACTIVE.reset(token)

    def predict_noise(self, x, timestep, model_options=None, seed=None):
        """The CFG-combined denoised latent for x at sigma `timestep` (ComfyUI's name)."""
        options = model_options if model_options is not None else self.model_options
        sets = [self.conds.get("positive"), self.conds.get("negative")]
        skip = self.cfg == 1.0 and not options.get("disable_cfg1_optimization")
        cond, uncond = calc_cond_batch(self.inner_model, [sets[0], None if skip else sets[1]], x, timestep,
                                       options, denoiser=self._denoiser)
        return cfg_combine(self.model_patcher, cond, uncond, self.cfg, x, timestep, options,
                           sets[0], sets[1])

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
               disable_pbar=False, seed=None):
        return run_guider(self, noise, latent_image, sampler, sigmas, denoise_mask, seed)


_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("genloom_compat_denoiser", default=None)


def calc_cond_batch(model, conds: list, x_in, timestep, model_options=None, denoiser=None) -> list:
    """The denoised latent for each conditioning list in `conds` (None: not evaluated) at sigma
    `timestep`, during a sampling run (inside a guider's predict_noise), through the model's
    CALC_COND_BATCH wrappers as in ComfyUI."""
    den = denoiser or _ACTIVE.get()
    if den is None:
        raise RuntimeError("calc_cond_batch works inside sampling (a CFGGuider's predict_noise)")
    options = model_options if model_options is not None else getattr(model, "model_options", {})
    calc = wrapped(WrappersMP.CALC_COND_BATCH, den.calc_cond_batch, None, options)
    return calc(model, conds, x_in, timestep, options)


def sampling_function(model, x, timestep, uncond, cond, cond_scale, model_options=None, seed=None):
    """ComfyUI's CFG step: calc_cond_batch then the cfg function (inside a guider's predict_noise)."""
    options = model_options or {}
    c, u = calc_cond_batch(model, [cond, uncond], x, timestep, options)
    return cfg_combine(model, c, u, cond_scale, x, timestep, options, cond, uncond)


def cut_sigmas(sigmas, start_step=None, last_step=None, force_full_denoise=False):
    """KSampler's cut of a schedule to [start_step, last_step]; None when nothing is left to run."""
    sigmas = sigmas.clone()
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[:last_step + 1]
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step >= len(sigmas) - 1:
            return None
        sigmas = sigmas[start_step:]
    return sigmas


def run_guider(guider, noise, latent_image, sampler, sigmas, denoise_mask=None, seed=None):
    """Sample with a GUIDER from `noise` (already drawn) over `sigmas`; the latent tensor."""
    from genloom.diffusion.sampling.sigma_loop import sample_sigmas

    latent = {"samples": fix_empty_latent_channels(guider.model, latent_image)}
    if denoise_mask is not None:
        latent["noise_mask"] = denoise_mask
    out = sample_sigmas(guider, sampler, sigmas, latent, noise, seed=int(seed or 0))
    return out["samples"]


def fix_empty_latent_channels(model, latent_image):
    """An all-zero latent whose channel count is not the model's becomes zeros with the model's."""
    import torch

    want = int(model.latent_channels)
    if latent_image.shape[1] != want and not bool(torch.count_nonzero(latent_image)):
        return torch.zeros(latent_image.shape[0], want, *latent_image.shape[2:], dtype=latent_image.dtype)
    return latent_image
