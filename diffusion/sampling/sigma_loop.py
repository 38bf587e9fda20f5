"""Sampling in sigma space over a denoiser wrapper, as ComfyUI samples.

    denoised = D(x, sigma) = ms.calculate_denoised(sigma, model(ms.calculate_input(sigma, x),
                                                                ms.timestep(sigma)), x)

with classifier-free guidance on denoised: uncond + cfg * (cond - uncond); cfg == 1 skips the
negative pass. A `Guider` (denoiser.py) holds the model and conditioning; `sample_sigmas` adds the noise for the
first sigma (ms.noise_scaling), runs a sampler from k_samplers, applies the noise mask at every
call and undoes the noise scaling at the last sigma, so a partly denoised latent hands over
exactly to a later run. LATENT holds raw VAE latents: the MODEL's latent format maps them into the
model's space on the way in and back on the way out.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from genloom.diffusion.errors import SamplingError
from genloom.diffusion.models.owner import model_owner
from genloom.diffusion.models.patcher_extension import (CallbacksMP, WrappersMP, copy_nested_dicts,
                                                       run_callbacks, wrapped)
from genloom.engine import context

from . import k_samplers, latent_formats
from .denoiser import Denoiser, Guider
from .latent_formats import VIDEO_KINDS
from .model_sampling import of_model
from .noise import prepare_mask
from .preview import latent_preview


def unet_dtype(device: str, options: dict):
    """float16 on accelerators unless the engine options say otherwise; the model's own on CPU."""
    import torch

    choice = (options or {}).get("unet_dtype")
    names = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}
    if choice in names:
        return names[choice]
    return None if str(device).startswith("cpu") else torch.float16


def default_noise_sampler(x, seed: int):
    """Ancestral noise: a generator on x's device seeded with the run's seed (seed + 1 on the CPU,
    as ComfyUI, where the seed alone would repeat the starting noise)."""
    import torch

    seed = int(seed) + (1 if x.device.type == "cpu" else 0)
    gen = torch.Generator(device=x.device).manual_seed(seed % (2 ** 64))
    return lambda sigma, sigma_next: torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=gen)


class BrownianNoise:
    """Brownian-tree noise over [sigma_min, sigma_max] (torchsde), unit variance per interval."""

    def __init__(self, x, sigma_min: float, sigma_max: float, seed: int, cpu: bool = True):
        import torch
        import torchsde

        self.device = x.device
        where = "cpu" if cpu else x.device
        w0 = torch.zeros(x.shape, dtype=x.dtype, device=where)
        t0, t1 = sorted((float(sigma_min), float(sigma_max)))
        self.sign = 1 if float(sigma_min) <= float(sigma_max) else -1
        self.tree = torchsde.BrownianTree(torch.tensor(t0, device=where), w0,
                                          torch.tensor(t1, device=where), entropy=int(seed))

    def __call__(self, sigma, sigma_next):
        import warnings

        import torch

        a, b = float(sigma), float(sigma_next)
        lo, hi, sign = (a, b, 1) if a < b else (b, a, -1)
        with warnings.catch_warnings():  # torchsde warns of float rounding at the interval ends
            warnings.filterwarnings("ignore", message="Should have")
            w = self.tree(torch.tensor(lo), torch.tensor(hi)) * (self.sign * sign)
        return (w / math.sqrt(abs(b - a))).to(self.device)


class _Masked:
    """The denoiser under a noise mask (ComfyUI's KSamplerX0Inpaint): outside the mask x is the input
    latent noised to sigma and the prediction is the input latent. The unconditional prediction the
    CFG++ samplers read stays the unmasked one, as in ComfyUI. A model_options
    "denoise_mask_function" (DifferentialDiffusion) may change the mask at every call."""

    def __init__(self, inner, ms, mask, noise, latent_in, mask_fn=None, extra=None, clean=False):
        self.inner, self.ms, self.mask, self.noise, self.latent_in = inner, ms, mask, noise, latent_in
        self.mask_fn, self.extra = mask_fn, extra or {}
        self.clean = clean  # the model takes the given part clean (ComfyUI's WAN22 scale_latent_inpaint)

    @property
    def uncond_denoised(self):
        return getattr(self.inner, "uncond_denoised", None)

    def __call__(self, x, sigma):
        mask = self.mask if self.mask_fn is None else self.mask_fn(sigma, self.mask, self.extra)
        known = self.latent_in if self.clean else self.ms.noise_scaling(sigma, self.noise, self.latent_in)
        out = self.inner(x * mask + known * (1.0 - mask), sigma)
        return out * mask + self.latent_in * (1.0 - mask)


@dataclass(frozen=True)
class Sampler:
    """A SAMPLER: a k_samplers name and its options (eta, s_noise, ...)."""

    name: str
    options: tuple = ()  # ((key, value), ...)
    # A plugin's own sampler function (comfy.samplers.KSAMPLER), carried by the SAMPLER itself so
    # genloom's name table never changes; None: the function of `name` in k_samplers.SAMPLERS.
    function: Any = field(default=None, compare=False)

    def algorithm(self):
        return self.function if self.function is not None else k_samplers.SAMPLERS.get(self.name)


def sample_sigmas(guider: Guider, sampler: Sampler, sigmas, latent: dict, noise, *, seed: int,
                  denoised_out: list | None = None):
    """Run `sampler` over `sigmas` from `latent` with `noise` (zeros: no noise); returns a LATENT."""
    import torch

    samples = latent["samples"]
    model = guider.model
    want = int(model.latent_channels)
    video = getattr(model, "kind", "") in VIDEO_KINDS  # 5-D latents [batch, channels, frames, h, w]
    one_frame = not video and samples.ndim == 5 and samples.shape[2] == 1
    if one_frame:  # an image model given a video VAE's one-frame latent (Qwen-Image's VAE is Wan's)
        samples = samples[:, :, 0]
        noise = noise.reshape(samples.shape) if noise.numel() == samples.numel() else noise
    if samples.ndim != (5 if video else 4) or samples.shape[1] != want:
        axes = "frames, height, width" if video else "height, width"
        raise SamplingError(f"latent_image has shape {tuple(samples.shape)} but this model takes "
                            f"[batch, {want}, {axes}] latents")
    if sampler.algorithm() is None:
        raise SamplingError(f"sampler {sampler.name!r} is not supported; choose one of "
                            f"{', '.join(k_samplers.SAMPLER_NAMES)}")
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).reshape(-1).cpu()
    if len(sigmas) < 2:
        return dict(latent)
    ctx = context.current()
    options = ctx.options or {}
    interval = float(options.get("preview_interval", 0.25))
    previews = options.get("previews", True) not in (False, "none")
    state = {"last": time.monotonic(), "denoised": None}

    def callback(i, denoised, _x, total):  # ComfyUI's shape, so OUTER/SAMPLER_SAMPLE wrappers can wrap it
        state["denoised"] = denoised
        preview = None
        if previews and time.monotonic() - state["last"] >= interval:
            preview = latent_preview(denoised)
            state["last"] = time.monotonic()
        ctx.progress(i + 1, total, preview=preview)

    def outer(noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
              seed=None, **_kw):
        return _outer_sample(guider, sampler, sigmas, latent_image, denoise_mask, noise, seed, callback)

    model_options = getattr(model, "model_options", None) or {}
    run_callbacks(CallbacksMP.ON_PRE_RUN, model_options, model)
    try:
        out = wrapped(WrappersMP.OUTER_SAMPLE, outer, guider, model_options)(
            noise, samples, sampler, sigmas, latent.get("noise_mask"), callback, True, seed)
    finally:
        run_callbacks(CallbacksMP.ON_CLEANUP, model_options, model)
    if denoised_out is not None:
        clean = state["denoised"]
        clean = latent_formats.of_model(model).process_out(clean) if clean is not None else out
        denoised_out.append(clean.unsqueeze(2) if one_frame else clean)
    result = dict(latent)
    out = out.detach().float().cpu()
    result["samples"] = out.unsqueeze(2) if one_frame else out  # the shape it came in
    return result


def _outer_sample(guider: Guider, sampler: Sampler, sigmas, samples, noise_mask, noise, seed, callback):
    """ComfyUI's outer_sample: the raw latent sampled from `samples` (raw VAE latents) with `noise`."""
    import torch

    model = guider.model
    seed = int(seed or 0)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).reshape(-1).cpu()
    ctx = context.current()
    device = ctx.device
    ms = of_model(model)
    fmt = latent_formats.of_model(model)
    latent_in = fmt.process_in(samples.to(device=device, dtype=torch.float32))
    noise = noise.to(device=device, dtype=torch.float32)
    mask = prepare_mask(noise_mask, latent_in.shape, device) if noise_mask is not None else None
    options = ctx.options or {}

    def sampler_sample(guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask,
                       disable_pbar=True):
        sigmas = torch.as_tensor(sigmas, dtype=torch.float32).reshape(-1).cpu()
        s0 = float(sigmas[0])
        x = ms.noise_scaling(s0, noise, latent_image, ms.is_max_denoise(s0))
        need_uncond = sampler.name in k_samplers.CFG_PP
        denoise = Denoiser(guider, unet, ms, tuple(latent_image.shape), device, need_uncond,
                           inputs={"latent_image": latent_image, "denoise_mask": denoise_mask, "seed": seed})
        if denoise_mask is not None:
            known = noise
            if sampler.name in k_samplers.INPAINT_RANDOM_NOISE:  # ComfyUI: a second generator
                gen = torch.Generator().manual_seed((seed + 1) % (2 ** 64))
                known = torch.randn(noise.shape, generator=gen).to(device=device, dtype=noise.dtype)
            denoise = _Masked(denoise, ms, denoise_mask, known, latent_image,
                              (model.model_options or {}).get("denoise_mask_function"),
                              {"model": model, "model_sampling": ms, "sigmas": sigmas},
                              clean=bool(getattr(model, "inpaint_clean", False)))
        positive = sigmas[sigmas > 0]
        if sampler.name in k_samplers.BROWNIAN:
            noiser = BrownianNoise(x, float(positive.min()), float(sigmas.max()), seed,
                                   cpu=not sampler.name.endswith("_gpu"))
        else:
            noiser = default_noise_sampler(x, seed)
        opts = dict(sampler.options)
        eta = float(opts.pop("eta", k_samplers.ETA_DEFAULT.get(sampler.name, 1.0)))
        total = len(sigmas) - 1

        def step_callback(i, x_i, denoised):  # a wrapper may have passed no callback on
            if callback is not None:
                callback(i, denoised, x_i, total)

        step_ctx = k_samplers.StepContext(ms, noiser, step_callback, eta=eta,
                                          s_noise=float(opts.pop("s_noise", 1.0)))
        return sampler.algorithm()(denoise, x, sigmas.tolist(), step_ctx, **opts)

    model_options = copy_nested_dicts(getattr(model, "model_options", None) or {})
    model_options.setdefault("transformer_options", {})["sample_sigmas"] = sigmas
    extra_args = {"model_options": model_options, "seed": seed}

    def run():
        nonlocal unet
        with torch.no_grad(), model.use(device, unet_dtype(device, options)) as unet:
            return wrapped(WrappersMP.SAMPLER_SAMPLE, sampler_sample, sampler, model_options)(
                guider, sigmas, extra_args, callback, noise, latent_in, mask, True)

    unet = None
    out = model_owner().memory.retry_on_oom(run, "sampling")
    return fmt.process_out(ms.inverse_noise_scaling(float(sigmas[-1]), out))
