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
from dataclasses import dataclass

from genloom.diffusion.errors import SamplingError
from genloom.diffusion.models.owner import model_owner
from genloom.engine import context

from . import k_samplers, latent_formats
from .denoiser import Denoiser, Guider
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
    """Ancestral noise: a generator on x's device seeded with the run's seed."""
    import torch

    gen = torch.Generator(device=x.device).manual_seed(int(seed) % (2 ** 64))
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


@dataclass(frozen=True)
class Sampler:
    """A SAMPLER: a k_samplers name and its options (eta, s_noise, ...)."""

    name: str
    options: tuple = ()  # ((key, value), ...)


def sample_sigmas(guider: Guider, sampler: Sampler, sigmas, latent: dict, noise, *, seed: int,
                  denoised_out: list | None = None):
    """Run `sampler` over `sigmas` from `latent` with `noise` (zeros: no noise); returns a LATENT."""
    import torch

    samples = latent["samples"]
    model = guider.model
    want = int(model.latent_channels)
    if samples.ndim != 4 or samples.shape[1] != want:
        raise SamplingError(f"latent_image has shape {tuple(samples.shape)} but this model takes "
                            f"[batch, {want}, height, width] latents")
    if sampler.name not in k_samplers.SAMPLERS:
        raise SamplingError(f"sampler {sampler.name!r} is not supported; choose one of "
                            f"{', '.join(k_samplers.SAMPLER_NAMES)}")
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).reshape(-1).cpu()
    if len(sigmas) < 2:
        return dict(latent)
    ctx = context.current()
    device = ctx.device
    ms = of_model(model)
    fmt = latent_formats.of_model(model)
    latent_in = fmt.process_in(samples.to(device=device, dtype=torch.float32))
    noise = noise.to(device=device, dtype=torch.float32)
    mask = prepare_mask(latent["noise_mask"], latent_in.shape, device) \
        if latent.get("noise_mask") is not None else None
    s0 = float(sigmas[0])
    x = ms.noise_scaling(s0, noise, latent_in, ms.is_max_denoise(s0))
    options = ctx.options or {}
    interval = float(options.get("preview_interval", 0.25))
    previews = options.get("previews", True) not in (False, "none")
    total = len(sigmas) - 1
    state = {"last": time.monotonic(), "denoised": None}

    def callback(i, _x, denoised):
        state["denoised"] = denoised
        preview = None
        if previews and time.monotonic() - state["last"] >= interval:
            preview = latent_preview(denoised)
            state["last"] = time.monotonic()
        ctx.progress(i + 1, total, preview=preview)

    def run():
        with torch.no_grad(), model.use(device, unet_dtype(device, options)) as unet:
            need_uncond = bool(getattr(k_samplers.SAMPLERS[sampler.name], "needs_uncond", False))
            denoise = Denoiser(guider, unet, ms, tuple(latent_in.shape), device, need_uncond)
            if mask is not None:
                inner = denoise

                def denoise(x, sigma):  # noqa: F811 - the masked wrapper
                    known = ms.noise_scaling(sigma, noise, latent_in)
                    out = inner(x * mask + known * (1.0 - mask), sigma)
                    return out * mask + latent_in * (1.0 - mask)
            positive = sigmas[sigmas > 0]
            if sampler.name in k_samplers.BROWNIAN:
                noiser = BrownianNoise(x, float(positive.min()), float(sigmas.max()), seed,
                                       cpu=not sampler.name.endswith("_gpu"))
            else:
                noiser = default_noise_sampler(x, seed)
            opts = dict(sampler.options)
            step_ctx = k_samplers.StepContext(ms, noiser, callback, eta=float(opts.pop("eta", 1.0)),
                                              s_noise=float(opts.pop("s_noise", 1.0)))
            return k_samplers.SAMPLERS[sampler.name](denoise, x, sigmas.tolist(), step_ctx, **opts)

    out = model_owner().memory.retry_on_oom(run, "sampling")
    out = fmt.process_out(ms.inverse_noise_scaling(float(sigmas[-1]), out))
    if denoised_out is not None:
        clean = state["denoised"]
        denoised_out.append(fmt.process_out(clean) if clean is not None else out)
    result = dict(latent)
    result["samples"] = out.detach().float().cpu()
    return result
