"""KSampler's entry point: ComfyUI's KSampler / KSamplerAdvanced sigmas (schedule, denoise, start and
end steps), then sigma-space sampling over them (sigma_loop.py)."""

from __future__ import annotations

from . import k_samplers
from .model_sampling import of_model
from .noise import initial_noise
from .schedulers import check_names
from .sigma_loop import Guider, Sampler, sample_sigmas
from .sigma_schedules import calculate_sigmas


def sample(model, positive, negative, latent: dict, *, seed: int, steps: int, cfg: float,
           sampler_name: str, scheduler: str, denoise: float = 1.0, start_step: int = 0,
           end_step: int | None = None, add_noise: bool = True, force_full_denoise: bool = True) -> dict:
    """Run steps [start_step, end_step) of a `steps`-step schedule; returns a new LATENT on the CPU.

    `denoise` < 1 follows ComfyUI's KSampler: a schedule of int(steps / denoise) steps of which only
    the last `steps` run, starting from the input latent noised to that level."""
    import torch

    check_names(sampler_name, scheduler)
    samples = latent["samples"]
    want = int(getattr(model, "latent_channels", samples.shape[1]))  # Flux: 16, its network 64
    if samples.ndim == 4 and samples.shape[1] != want and not bool(samples.any()):
        # An empty latent with the wrong channel count is widened with zeros (ComfyUI does too).
        latent = {**latent, "samples": torch.zeros(samples.shape[0], want, *samples.shape[2:])}
    if denoise <= 0.0 or steps <= 0:
        return _copy_latent(latent, latent["samples"])
    sigmas = ksampler_sigmas(of_model(model), sampler_name, scheduler, steps, denoise).clone()
    if end_step is not None and end_step < len(sigmas) - 1:
        sigmas = sigmas[:end_step + 1]
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step:
        if start_step >= len(sigmas) - 1:
            return _copy_latent(latent, latent["samples"])
        sigmas = sigmas[start_step:]
    noise = initial_noise(latent, seed)[0] if add_noise else torch.zeros(latent["samples"].shape)
    guider = Guider(model, positive, negative, float(cfg))
    return sample_sigmas(guider, Sampler(sampler_name), sigmas, latent, noise, seed=seed)


def ksampler_sigmas(ms, sampler_name: str, scheduler: str, steps: int, denoise: float = 1.0):
    """KSampler's sigmas: one step more with the last but one dropped for dpm_2 & co; with
    denoise < 1 the last `steps` of an int(steps / denoise)-step schedule."""
    import torch

    def schedule(n):
        discard = sampler_name in k_samplers.DISCARD_PENULTIMATE
        sig = calculate_sigmas(ms, scheduler, n + 1 if discard else n)
        return torch.cat([sig[:-2], sig[-1:]]) if discard else sig

    if denoise > 0.9999:
        return schedule(steps)
    return schedule(int(steps / denoise))[-(steps + 1):]


def _copy_latent(latent: dict, samples) -> dict:
    result = dict(latent)
    result["samples"] = samples.detach().to("cpu")
    return result
