"""KSampler's entry point: ComfyUI's sigma-space sampling (sigma_loop.py), and a diffusers-scheduler
loop for the few sampler names not yet written in sigma space (deis, sa_solver, uni_pc, uni_pc_bh2).

The diffusers loop is our own rather than a pipeline call because the nodes need what pipelines
don't offer: starting and stopping at any step (KSamplerAdvanced), noise masks, area conditioning,
previews and interrupts.
"""

from __future__ import annotations

import time

from genloom.diffusion.errors import SamplingError
from genloom.diffusion.models.owner import model_owner
from genloom.engine import context

from . import k_samplers, latent_formats
from .guidance import prepare_guidance
from .model_sampling import of_model
from .noise import initial_noise, predict_x0, prepare_mask
from .plan import make_plan
from .preview import latent_preview
from .schedulers import check_names
from .denoiser import Guider
from .sigma_loop import Sampler, sample_sigmas, unet_dtype
from .sigma_schedules import calculate_sigmas


def sample(model, positive, negative, latent: dict, *, seed: int, steps: int, cfg: float,
           sampler_name: str, scheduler: str, denoise: float = 1.0, start_step: int = 0,
           end_step: int | None = None, add_noise: bool = True, force_full_denoise: bool = True) -> dict:
    """Run steps [start_step, end_step) of a `steps`-step schedule; returns a new LATENT on the CPU.

    `denoise` < 1 follows ComfyUI's KSampler: a schedule of int(steps / denoise) steps of which only
    the last `steps` run, starting from the input latent noised to that level."""
    import torch

    check_names(sampler_name, scheduler)
    if sampler_name in k_samplers.SAMPLERS:
        return _sample_in_sigmas(model, positive, negative, latent, seed=seed, steps=steps, cfg=cfg,
                                 sampler_name=sampler_name, scheduler=scheduler, denoise=denoise,
                                 start_step=start_step, end_step=end_step, add_noise=add_noise,
                                 force_full_denoise=force_full_denoise)
    samples = latent["samples"]
    want = int(getattr(model.unet.config, "in_channels", samples.shape[1]))
    if samples.ndim != 4 or samples.shape[1] != want:
        raise SamplingError(f"latent_image has shape {tuple(samples.shape)} but this model takes "
                            f"[batch, {want}, height, width] latents"
                            + (" (inpainting UNets with 9 input channels are not supported)"
                               if want == 9 else ""))
    if denoise <= 0.0 or steps <= 0:
        return _copy_latent(latent, samples)
    if denoise < 1.0:
        total = max(int(steps / denoise), steps)
        start_step, end_step, steps = total - steps, total, total
    end_step = steps if end_step is None else end_step
    if start_step >= min(end_step, steps):
        return _copy_latent(latent, samples)

    ctx = context.current()
    device = ctx.device
    fmt = latent_formats.of_model(model)
    samples = fmt.process_in(samples.float())
    noise, gen = initial_noise(latent, seed)
    if not add_noise:
        noise = torch.zeros_like(noise)

    def run():
        with torch.no_grad():
            return _loop(model, positive, negative, samples, noise, gen, latent.get("noise_mask"),
                         seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name,
                         scheduler=scheduler, start_step=start_step, end_step=end_step,
                         add_noise=add_noise, force_full_denoise=force_full_denoise, ctx=ctx,
                         device=device)

    out = model_owner().memory.retry_on_oom(run, "sampling")
    return _copy_latent(latent, fmt.process_out(out))


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


def _sample_in_sigmas(model, positive, negative, latent, *, seed, steps, cfg, sampler_name, scheduler,
                      denoise, start_step, end_step, add_noise, force_full_denoise) -> dict:
    """ComfyUI's KSampler / KSamplerAdvanced: cut the sigmas, then sample over them."""
    import torch

    samples = latent["samples"]
    want = int(model.latent_channels)
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


def _copy_latent(latent: dict, samples) -> dict:
    result = dict(latent)
    result["samples"] = samples.detach().to("cpu")
    return result


def _loop(model, positive, negative, samples, noise, gen, noise_mask, *, seed, steps, cfg,
          sampler_name, scheduler, start_step, end_step, add_noise, force_full_denoise, ctx, device):
    import torch

    latent_in = samples.to(device=device, dtype=torch.float32)
    noise = noise.to(device)
    plan = make_plan(model.scheduler_config, sampler_name, scheduler, steps, start_step, end_step,
                     force_full_denoise, seed, device)
    sched = plan.scheduler
    prediction_type = sched.config.get("prediction_type", model.prediction_type) or "epsilon"
    guidance = prepare_guidance(model, positive, negative, cfg, tuple(latent_in.shape), device)
    mask = prepare_mask(noise_mask, latent_in.shape, device) if noise_mask is not None else None

    s_start = plan.level(plan.start)
    if plan.start == 0 and add_noise:
        base = latent_in if plan.space == "ve" else latent_in * plan.vp_scale(s_start)
        x = base + noise * sched.init_noise_sigma  # for an empty latent exactly the pipeline's start
    else:
        x = (latent_in + noise * s_start) * plan.vp_scale(s_start)

    step_kwargs = {"generator": gen} if "generator" in plan.step_params else {}
    if "eta" in plan.step_params:
        step_kwargs["eta"] = 0.0
    options = ctx.options or {}
    interval = float(options.get("preview_interval", 0.25))
    previews = options.get("previews", True) not in (False, "none")
    last_preview = time.monotonic()
    total = plan.end - plan.start
    timesteps = sched.timesteps
    result = None
    dtype = unet_dtype(device, options)

    with model.use(device, dtype) as unet:
        for i in range(plan.start, plan.end):
            t = timesteps[i]
            t_value = float(plan.timesteps_cpu[i])
            x_in = sched.scale_model_input(x, t)
            model_out = guidance(unet, x_in, t, t_value)
            if plan.full_denoise_at == i:
                result = predict_x0(model_out, x, plan.level(i), plan.space, prediction_type)
                ctx.progress(total, total)
                break
            want_preview = previews and time.monotonic() - last_preview >= interval
            if want_preview:
                x0 = predict_x0(model_out, x, plan.level(i), plan.space, prediction_type)
            x = sched.step(model_out, t, x, return_dict=False, **step_kwargs)[0]
            if mask is not None and getattr(sched, "state_in_first_order", True):
                level = plan.level(i + 1)
                known = (latent_in + noise * level) * plan.vp_scale(level)
                x = x * mask + known * (1.0 - mask)
            preview = None
            if want_preview:
                preview = latent_preview(x0)
                last_preview = time.monotonic()
            ctx.progress(i - plan.start + 1, total, preview=preview)
    if result is None:
        # A full run ends as the pipeline's does; a partial one hands over in VE units.
        partial = plan.end < len(plan.timesteps_cpu)
        result = x / plan.vp_scale(plan.level(plan.end)) if partial else x
    if mask is not None:
        result = result * mask + latent_in * (1.0 - mask)
    return result

