"""KSampler and KSamplerAdvanced: ComfyUI's sampling nodes, sampling in sigma space as ComfyUI does
(docs/sampling.md).

The COMBOs list only the samplers and schedules genloom implements, so a workflow naming another
one fails validation (value_not_in_list) with the supported names. The work happens in
genloom.diffusion.sampling.loop, imported inside `run` so this module stays free of torch.
"""

from genloom.diffusion.sampling.schedulers import SAMPLER_NAMES, SCHEDULER_NAMES
from genloom.engine.node import Combo, Float, Input, Int, Node, Out, Seed

_MODEL = Input("model", "MODEL", tooltip="The diffusion model that denoises the latent.")
_STEPS = Int("steps", 20, min=1, max=10000, tooltip="Number of denoising steps of the schedule.")
_CFG = Float("cfg", 8.0, min=0.0, max=100.0, step=0.1, round=0.01,
             tooltip="Classifier-free guidance scale: how strongly the prompt steers the result.")
_SAMPLER = Combo("sampler_name", SAMPLER_NAMES, tooltip="The sampling algorithm.")
_SCHEDULER = Combo("scheduler", SCHEDULER_NAMES,
                   tooltip="How the noise levels are spread over the steps.")
_POSITIVE = Input("positive", "CONDITIONING", tooltip="What the image should contain.")
_NEGATIVE = Input("negative", "CONDITIONING", tooltip="What the image should not contain.")
_LATENT = Input("latent_image", "LATENT", tooltip="The latent to denoise.")


def _sample(model, positive, negative, latent_image, **kwargs):
    from genloom.diffusion.sampling.loop import sample

    return sample(model, positive, negative, latent_image, **kwargs)


class KSampler(Node):
    """Denoises a latent with the model, guided by positive and negative conditioning.

    denoise below 1 keeps part of the input latent (image to image)."""

    category = "sampling"
    display_name = "KSampler"
    inputs = [
        _MODEL,
        Seed("seed", tooltip="Seed of the starting noise; the same seed gives the same image on "
                             "every device."),
        _STEPS, _CFG, _SAMPLER, _SCHEDULER, _POSITIVE, _NEGATIVE, _LATENT,
        Float("denoise", 1.0, min=0.0, max=1.0, step=0.01,
              tooltip="How much of the latent to replace with new content (1 = all of it)."),
    ]
    outputs = [Out("LATENT", tooltip="The denoised latent.")]

    def run(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
            denoise=1.0):
        return (_sample(model, positive, negative, latent_image, seed=seed, steps=steps, cfg=cfg,
                        sampler_name=sampler_name, scheduler=scheduler, denoise=denoise),)


class KSamplerAdvanced(Node):
    """Runs part of a schedule: from start_at_step to end_at_step, optionally without adding noise
    and optionally keeping the leftover noise, so one model can finish what another began."""

    category = "sampling"
    display_name = "KSampler (Advanced)"
    inputs = [
        _MODEL,
        Combo("add_noise", ["enable", "disable"],
              tooltip="Add noise to the latent first (disable when continuing a noisy latent)."),
        Seed("noise_seed", tooltip="Seed of the starting noise."),
        _STEPS, _CFG, _SAMPLER, _SCHEDULER, _POSITIVE, _NEGATIVE, _LATENT,
        Int("start_at_step", 0, min=0, max=10000, tooltip="First step of the schedule to run."),
        Int("end_at_step", 10000, min=0, max=10000, tooltip="Step to stop before."),
        Combo("return_with_leftover_noise", ["disable", "enable"],
              tooltip="enable: return the still-noisy latent for another sampler to finish."),
    ]
    outputs = [Out("LATENT", tooltip="The (partly) denoised latent.")]

    def run(self, model, add_noise, noise_seed, steps, cfg, sampler_name, scheduler, positive,
            negative, latent_image, start_at_step, end_at_step, return_with_leftover_noise):
        return (_sample(model, positive, negative, latent_image, seed=noise_seed, steps=steps, cfg=cfg,
                        sampler_name=sampler_name, scheduler=scheduler, start_step=start_at_step,
                        end_step=end_at_step, add_noise=add_noise == "enable",
                        force_full_denoise=return_with_leftover_noise != "enable"),)


NODES = [KSampler, KSamplerAdvanced]
