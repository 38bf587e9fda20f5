"""ComfyUI's `comfy.sample` for node packs: prepare_noise, sample, sample_custom and
fix_empty_latent_channels. Latents are raw VAE latents, as ComfyUI's; the MODEL's latent format is
applied inside sampling."""

from __future__ import annotations

from .samplers import CFGGuider, KSampler, fix_empty_latent_channels, run_guider

__all__ = ["prepare_noise", "fix_empty_latent_channels", "sample", "sample_custom"]


def prepare_noise(latent_image, seed, noise_inds=None):
    """The seeded starting noise for a latent tensor (CPU, float32), as ComfyUI draws it: one
    generator seeded with `seed`; with `noise_inds`, the noise of those positions of a larger batch."""
    from genloom.diffusion.sampling.noise import initial_noise

    latent = {"samples": latent_image}
    if noise_inds is not None:
        latent["batch_index"] = [int(i) for i in noise_inds]
    return initial_noise(latent, int(seed))[0]


def sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
           denoise=1.0, disable_noise=False, start_step=None, last_step=None, force_full_denoise=False,
           noise_mask=None, sigmas=None, callback=None, disable_pbar=False, seed=None):
    """KSampler's sampling of `latent_image` from `noise`; the sampled latent tensor."""
    import torch

    if disable_noise:
        noise = torch.zeros_like(noise)
    sampler = KSampler(model, steps=steps, sampler=sampler_name, scheduler=scheduler, denoise=denoise)
    return sampler.sample(noise, positive, negative, cfg=cfg, latent_image=latent_image,
                          start_step=start_step, last_step=last_step,
                          force_full_denoise=force_full_denoise, denoise_mask=noise_mask, sigmas=sigmas,
                          seed=seed)


def sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent_image, noise_mask=None,
                  callback=None, disable_pbar=False, seed=None):
    """SamplerCustom's sampling with a SAMPLER over explicit sigmas; the sampled latent tensor."""
    guider = CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return run_guider(guider, noise, latent_image, sampler, sigmas, noise_mask, seed)
