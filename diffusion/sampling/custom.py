"""The library behind ComfyUI's custom-sampling nodes: NOISE objects, SIGMAS arithmetic and
SamplerCustom(Advanced) runs. SIGMAS is a 1-D float32 CPU tensor, SAMPLER a `sigma_loop.Sampler`,
GUIDER a `denoiser.Guider`, NOISE a `Noise`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import latent_formats
from .model_sampling import of_model
from .denoiser import Guider
from .sigma_loop import Sampler, sample_sigmas
from .sigma_schedules import calculate_sigmas


@dataclass(frozen=True)
class Noise:
    """RandomNoise (enabled) / DisableNoise: makes the starting noise for a latent."""

    seed: int = 0
    enabled: bool = True

    def generate(self, latent: dict):
        import torch

        from .noise import initial_noise

        if not self.enabled:
            return torch.zeros(latent["samples"].shape, dtype=torch.float32)
        return initial_noise(latent, self.seed)[0]


def basic_scheduler(model, scheduler: str, steps: int, denoise: float):
    import torch

    if denoise < 1.0:
        if denoise <= 0.0:
            return torch.zeros(0)
        total = int(steps / denoise)
    else:
        total = steps
    return calculate_sigmas(of_model(model), scheduler, total)[-(steps + 1):]


def sd_turbo(model, steps: int, denoise: float):
    import torch

    start = 10 - int(10 * denoise)
    timesteps = torch.flip(torch.arange(1, 11) * 100 - 1, (0,))[start:start + steps]
    sig = of_model(model).sigma(timesteps.float())
    return torch.cat([sig, torch.zeros(1)]).float()


def split_denoise(sigmas, denoise: float):
    steps = max(sigmas.shape[-1] - 1, 0)
    keep = round(steps * denoise)
    return sigmas[:-keep] if keep else sigmas, sigmas[-(keep + 1):]


def flip(sigmas):
    out = sigmas.flip(0).clone()
    if len(out) and out[0] == 0:
        out[0] = 0.0001
    return out


def manual(text: str):
    import torch

    return torch.tensor([float(v) for v in re.findall(r"[-+]?(?:\d*\.\d+|\d+\.?)(?:[eE][-+]?\d+)?", text)],
                        dtype=torch.float32)


def add_noise(model, noise: Noise, sigmas, latent: dict) -> dict:
    """AddNoise: the latent noised to the schedule's span (sigmas[0] - sigmas[-1])."""
    if len(sigmas) == 0:
        return latent
    scale = abs(float(sigmas[0]) - float(sigmas[-1])) if len(sigmas) > 1 else float(sigmas[0])
    fmt = latent_formats.of_model(model)
    samples = fmt.process_in(latent["samples"].float())
    out = dict(latent)
    out["samples"] = fmt.process_out(of_model(model).noise_scaling(scale, noise.generate(latent), samples))
    return out


def sample_custom(guider: Guider, noise: Noise, sampler: Sampler, sigmas, latent: dict):
    """(output, denoised_output) LATENTs, as SamplerCustomAdvanced returns them."""
    denoised: list = []
    out = sample_sigmas(guider, sampler, sigmas, latent, noise.generate(latent), seed=noise.seed,
                        denoised_out=denoised)
    clean = dict(out)
    clean["samples"] = denoised[0].detach().float().cpu() if denoised else out["samples"]
    return out, clean
