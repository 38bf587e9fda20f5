"""Sampling on diffusers schedulers with ComfyUI's sampler and scheduler names.

Every run builds a fresh scheduler from the model's ORIGINAL scheduler config (never from another
swapped one), so a name always means the same numbers. The denoising loop is our own rather than a
pipeline call because the nodes need what pipelines don't offer: starting and stopping at any step
(KSamplerAdvanced), noise masks, area conditioning, previews and interrupts. For the plain case its
arithmetic is the pipeline's, operation for operation, so the images are the same (see
tests/test_pipeline_equality.py).

LATENT convention: a latent that still carries noise (return_with_leftover_noise) is stored as
ComfyUI stores it, `x0 + sigma * noise` ("VE" space, unscaled), whatever the scheduler. Schedulers
that work in variance-preserving space (DDIM, DPM-Solver, UniPC, ...) convert on entry and exit, so
a base pass with one sampler can be finished by a refiner pass with another.

The name tables are plain data so the node modules can build their COMBOs without importing torch.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

_SDE = {"algorithm_type": "sde-dpmsolver++"}
# ComfyUI sampler name -> (diffusers class, config overrides, space). "ve": the scheduler's sample is
# x0 + sigma*eps (k-diffusion style, input scaled by scale_model_input); "vp": alpha*x0 + sigma*eps.
SAMPLERS: dict[str, tuple[str, dict, str]] = {
    "euler": ("EulerDiscreteScheduler", {}, "ve"),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}, "ve"),
    "heun": ("HeunDiscreteScheduler", {}, "ve"),
    "dpm_2": ("KDPM2DiscreteScheduler", {}, "ve"),
    "dpm_2_ancestral": ("KDPM2AncestralDiscreteScheduler", {}, "ve"),
    "lms": ("LMSDiscreteScheduler", {}, "ve"),
    "dpmpp_sde": ("DPMSolverSDEScheduler", {}, "ve"),
    "dpmpp_sde_gpu": ("DPMSolverSDEScheduler", {}, "ve"),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, "vp"),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {**_SDE, "solver_order": 2}, "vp"),
    "dpmpp_2m_sde_gpu": ("DPMSolverMultistepScheduler", {**_SDE, "solver_order": 2}, "vp"),
    "dpmpp_3m_sde": ("DPMSolverMultistepScheduler", {**_SDE, "solver_order": 3}, "vp"),
    "dpmpp_3m_sde_gpu": ("DPMSolverMultistepScheduler", {**_SDE, "solver_order": 3}, "vp"),
    "ddpm": ("DDPMScheduler", {}, "vp"),
    "lcm": ("LCMScheduler", {}, "vp"),
    "deis": ("DEISMultistepScheduler", {"solver_order": 2}, "vp"),
    "sa_solver": ("SASolverScheduler", {}, "vp"),
    "ddim": ("DDIMScheduler", {}, "vp"),
    # bh1's last step to sigma 0 divides by zero in diffusers: it stops at the smallest sigma.
    "uni_pc": ("UniPCMultistepScheduler",
               {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}, "vp"),
    "uni_pc_bh2": ("UniPCMultistepScheduler", {"solver_type": "bh2"}, "vp"),
}

# ComfyUI scheduler (sigma schedule) name -> diffusers config overrides.
SCHEDULES: dict[str, dict] = {
    "simple": {"timestep_spacing": "trailing"},
    "sgm_uniform": {"timestep_spacing": "trailing"},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "ddim_uniform": {"timestep_spacing": "leading"},
    "beta": {"use_beta_sigmas": True},
    "normal": {"timestep_spacing": "linspace"},
}

SAMPLER_NAMES = list(SAMPLERS)
SCHEDULER_NAMES = list(SCHEDULES)

_SPACING_ONLY = ("normal", "simple", "sgm_uniform", "ddim_uniform")
# Which schedules each diffusers class can produce (checked against diffusers in the tests).
# euler_ancestral has no sigma options in diffusers: it gets the sigmas of an Euler scheduler built
# with them (the ancestral step only reads `sigmas`), see `_transplant_sigmas`.
_UNSUPPORTED: dict[str, tuple[str, ...]] = {
    "DDIMScheduler": ("karras", "exponential", "beta"),
    "DDPMScheduler": ("karras", "exponential", "beta"),
    "LCMScheduler": ("karras", "exponential", "beta", "ddim_uniform"),
}


class SamplingError(ValueError):
    """A sampler/scheduler combination or input that cannot be sampled, with a message for users."""


def supported_schedules(sampler_name: str) -> list[str]:
    cls_name = SAMPLERS[sampler_name][0]
    return [s for s in SCHEDULER_NAMES if s not in _UNSUPPORTED.get(cls_name, ())]


def check_names(sampler_name: str, scheduler: str) -> None:
    if sampler_name not in SAMPLERS:
        raise SamplingError(f"sampler_name {sampler_name!r} is not supported; choose one of "
                            f"{', '.join(SAMPLER_NAMES)}")
    if scheduler not in SCHEDULES:
        raise SamplingError(f"scheduler {scheduler!r} is not supported; choose one of "
                            f"{', '.join(SCHEDULER_NAMES)}")
    if scheduler not in supported_schedules(sampler_name):
        raise SamplingError(f"sampler {sampler_name!r} cannot use the {scheduler!r} scheduler; with "
                            f"{sampler_name!r} use one of {', '.join(supported_schedules(sampler_name))}")


def build_scheduler(config: dict, sampler_name: str, scheduler: str, seed: int = 0):
    """A new diffusers scheduler for this (sampler, scheduler) pair, from the model's own config."""
    import diffusers

    check_names(sampler_name, scheduler)
    cls_name, overrides, _space = SAMPLERS[sampler_name]
    cls = getattr(diffusers, cls_name)
    kwargs = _own_config(cls, config)
    kwargs.update(overrides)
    if cls_name not in ("EulerAncestralDiscreteScheduler", "LCMScheduler"):
        kwargs.update(SCHEDULES[scheduler])
    elif cls_name == "EulerAncestralDiscreteScheduler" and scheduler in _SPACING_ONLY:
        kwargs.update(SCHEDULES[scheduler])
    if cls_name == "DPMSolverSDEScheduler":
        kwargs["noise_sampler_seed"] = int(seed) % (2**63)
    return cls.from_config(kwargs)


def _own_config(cls, config: dict) -> dict:
    """The original config's keys that `cls` knows (no warnings about foreign ones), without sigma
    flags: a model config may ask for karras sigmas, but the chosen schedule decides."""
    import inspect

    known = set(inspect.signature(cls.__init__).parameters)
    sigma_flags = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
    own = {k: v for k, v in config.items() if k in known and k not in sigma_flags}
    if "clip_sample" in known:
        # DDIM/DDPM default to clipping x0 to [-1, 1], which is for pixel models: latents are not
        # clipped unless the model's own config asks for it (an Euler config never says).
        own.setdefault("clip_sample", False)
    return own


def _transplant_sigmas(sched, config: dict, scheduler: str, steps: int, device) -> None:
    """Give an EulerAncestral scheduler the sigmas of a karras/exponential/beta Euler schedule."""
    import diffusers

    kwargs = _own_config(diffusers.EulerDiscreteScheduler, config)
    kwargs.update(SCHEDULES[scheduler])
    donor = diffusers.EulerDiscreteScheduler.from_config(kwargs)
    donor.set_timesteps(steps, device=device)
    sched.sigmas = donor.sigmas.clone()
    sched.timesteps = donor.timesteps.clone()
    sched._step_index = None
    sched._begin_index = None


# --------------------------------------------------------------------------------------------
# Plans: which scheduler entries a run covers, and the noise level of each boundary.


@dataclass
class Plan:
    scheduler: Any
    space: str  # "ve" | "vp"
    start: int  # first scheduler entry to run
    end: int  # entry to stop before
    full_denoise_at: int | None  # entry at which to return the clean prediction instead of stepping
    timesteps_cpu: Any = None
    wants_generator: bool = False

    def level(self, entry: int) -> float:
        """Noise level (VE sigma) of the sample state at the start of `entry`."""
        sched = self.scheduler
        sigmas = getattr(sched, "sigmas", None)
        if sigmas is not None and len(sigmas) > entry:
            return float(sigmas[entry])
        if entry >= len(self.timesteps_cpu):
            return 0.0
        ac = float(sched.alphas_cumprod[int(self.timesteps_cpu[entry])])
        return math.sqrt((1.0 - ac) / ac)

    def vp_scale(self, sigma: float) -> float:
        """Factor from VE space (x0 + sigma*eps) into this scheduler's sample space."""
        return 1.0 if self.space == "ve" else 1.0 / math.sqrt(1.0 + sigma * sigma)


def make_plan(config: dict, sampler_name: str, scheduler: str, steps: int, start_step: int,
              end_step: int, force_full_denoise: bool, seed: int, device) -> Plan:
    """Set up a scheduler for `steps` steps and find the entries of steps [start_step, end_step)."""
    import inspect

    sched = build_scheduler(config, sampler_name, scheduler, seed)
    sched.set_timesteps(steps, device=device)
    cls_name = SAMPLERS[sampler_name][0]
    if cls_name == "EulerAncestralDiscreteScheduler" and scheduler not in _SPACING_ONLY:
        _transplant_sigmas(sched, config, scheduler, steps, device)
    order = int(getattr(sched, "order", 1))
    n_entries = len(sched.timesteps)
    start = min(start_step * order, n_entries)
    end = min(end_step * order, n_entries) if end_step < steps else n_entries
    full_at = None
    if force_full_denoise and end < n_entries and end > start:
        full_at = (end_step - 1) * order
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(start)
    return Plan(sched, SAMPLERS[sampler_name][2], start, end, full_at,
                timesteps_cpu=sched.timesteps.detach().cpu(),
                wants_generator="generator" in inspect.signature(sched.step).parameters)


# --------------------------------------------------------------------------------------------
# Noise and latent conversions.


def initial_noise(latent: dict, seed: int):
    """Noise drawn on the CPU from one generator in the latent's shape, so a seed gives the same
    image on every device; with batch_index, the noise of those positions in a larger batch."""
    import torch

    samples = latent["samples"]
    gen = torch.Generator("cpu").manual_seed(int(seed))
    indices = latent.get("batch_index")
    if not indices:
        return torch.randn(samples.shape, generator=gen, dtype=torch.float32), gen
    full = torch.randn((max(indices) + 1, *samples.shape[1:]), generator=gen, dtype=torch.float32)
    return full[list(indices)], gen


def prepare_mask(mask, latent_shape, device):
    """A noise mask [B?,(1,)H,W] in any size -> [B,1,h,w] at latent size (1 = regenerate)."""
    import torch
    import torch.nn.functional as F

    m = mask.to(device=device, dtype=torch.float32)
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[:, None]
    m = m[:, :1]
    b, _c, h, w = latent_shape
    if tuple(m.shape[-2:]) != (h, w):
        m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
    if m.shape[0] != b:
        reps = -(-b // m.shape[0])
        m = m.repeat(reps, 1, 1, 1)[:b]
    return m


def predict_x0(model_out, sample, sigma: float, space: str, prediction_type: str):
    """The clean latent implied by one model output at noise level `sigma` (VE), in VE units."""
    alpha = 1.0 / math.sqrt(1.0 + sigma * sigma)
    x_vp = sample * alpha if space == "ve" else sample
    if prediction_type == "epsilon":
        return (x_vp - (sigma * alpha) * model_out) / alpha
    if prediction_type == "v_prediction":
        return alpha * x_vp - (sigma * alpha) * model_out
    return model_out


# --------------------------------------------------------------------------------------------
# Conditioning and classifier-free guidance.


@dataclass
class _Job:
    group: int  # 0 negative, 1 positive
    emb: Any  # [B, T, D] on device
    pooled: Any  # [B, P] or None
    time_ids: Any  # [B, 6] or None
    area: tuple | None  # (h, w, y, x) in latent cells
    weight: Any  # float strength, or a [B,1,h,w] tensor (mask * strength)
    t_range: tuple = (0.0, 1.0)  # (start_percent, end_percent)


@dataclass
class Guidance:
    """Positive and negative conditioning prepared once for a run, then asked every step."""

    jobs: list
    cfg: float
    needs_time_ids: bool
    num_train_timesteps: int
    batches: list = field(default_factory=list)  # (job indices) that share one UNet call
    _unet_dtype: Any = None
    _concat: dict = field(default_factory=dict)

    def __post_init__(self):
        plain: dict[tuple, list[int]] = {}
        for i, job in enumerate(self.jobs):
            if job.area is None:
                key = (tuple(job.emb.shape[1:]), job.pooled is None)
                plain.setdefault(key, []).append(i)
            else:
                self.batches.append([i])
        self.batches = list(plain.values()) + self.batches

    def _dtype(self, unet):
        """The UNet's dtype, looked up once: diffusers' `.dtype` walks the modules on every call."""
        if self._unet_dtype is None:
            self._unet_dtype = next(unet.parameters()).dtype
        return self._unet_dtype

    def _inputs(self, live: tuple, dtype):
        """Concatenated conditioning for one UNet call, built once per set of jobs."""
        cached = self._concat.get(live)
        if cached is None:
            emb = _cat([self.jobs[i].emb for i in live]).to(dtype)
            added = None
            if self.needs_time_ids:
                added = {"text_embeds": _cat([self.jobs[i].pooled for i in live]).to(dtype),
                         "time_ids": _cat([self.jobs[i].time_ids for i in live]).to(dtype)}
            cached = self._concat[live] = (emb, added)
        return cached

    def active(self, job: _Job, t: float) -> bool:
        start, end = job.t_range
        if start <= 0.0 and end >= 1.0:
            return True
        progress = 1.0 - t / max(self.num_train_timesteps - 1, 1)
        return start <= progress <= end

    def __call__(self, unet, x_in, t, t_value: float):
        """The guided model output for the scaled input `x_in` at timestep `t`."""
        import torch

        preds: dict[int, Any] = {}
        dtype = self._dtype(unet)
        for batch in self.batches:
            live = tuple(i for i in batch if self.active(self.jobs[i], t_value))
            if not live:
                continue
            area = self.jobs[live[0]].area
            x = x_in if area is None else x_in[:, :, area[2]:area[2] + area[0], area[3]:area[3] + area[1]]
            n = len(live)
            xb = torch.cat([x] * n) if n > 1 else x
            emb, added = self._inputs(live, dtype)
            out = unet(xb.to(dtype), t, encoder_hidden_states=emb, return_dict=False,
                       **({"added_cond_kwargs": added} if added is not None else {}))[0]
            if out.dtype != torch.float32:
                out = out.float()
            outs = out.chunk(n) if n > 1 else (out,)
            for i, o in zip(live, outs):
                preds[i] = o
        cond = self._combine(1, preds, x_in)
        if self.cfg == 1.0:
            return cond if cond is not None else torch.zeros_like(x_in)
        uncond = self._combine(0, preds, x_in)
        if uncond is None:
            uncond = torch.zeros_like(x_in)
        if cond is None:
            return uncond
        return uncond + self.cfg * (cond - uncond)

    def _combine(self, group: int, preds: dict, x_in):
        """Average the predictions of one side, weighted by strength, areas and masks."""
        import torch

        idx = [i for i, job in enumerate(self.jobs) if job.group == group and i in preds]
        if not idx:
            return None
        if len(idx) == 1:
            job = self.jobs[idx[0]]
            if job.area is None and isinstance(job.weight, float):
                return preds[idx[0]]  # one plain conditioning: the prediction as it is
        total = torch.zeros_like(x_in)
        count = torch.zeros_like(x_in[:, :1])
        for i in idx:
            job = self.jobs[i]
            weight = job.weight
            if job.area is None:
                total += preds[i] * weight
                count += weight if not isinstance(weight, float) else torch.full_like(count, weight)
            else:
                h, w, y, x = job.area
                region = (slice(None), slice(None), slice(y, y + h), slice(x, x + w))
                wgt = weight if isinstance(weight, float) else weight[region]
                total[region] += preds[i] * wgt
                count[region] += wgt
        covered = count > 0
        result = total / count.clamp_min(1e-8)
        if group == 1 and not bool(covered.all()):
            # Regions no positive conditioning reaches follow the negative prediction.
            other = self._combine(0, preds, x_in)
            if other is not None:
                result = torch.where(covered, result, other)
        return result


def _cat(tensors):
    import torch

    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def prepare_guidance(model, positive, negative, cfg: float, latent_shape, device) -> Guidance:
    """Turn CONDITIONING lists into device tensors shaped for the batch, once per run."""
    import torch

    b, _c, h, w = latent_shape
    scale = int(getattr(model, "vae_scale_factor", 8) or 8)
    jobs: list[_Job] = []
    for group, conds in ((0, negative), (1, positive)):
        if group == 0 and cfg == 1.0:
            continue
        for entry in conds or []:
            emb, extra = entry[0], (entry[1] if len(entry) > 1 else {}) or {}
            emb = _batch(emb.to(torch.float32), b).to(device)
            pooled = time_ids = None
            if model.needs_time_ids:
                if extra.get("pooled_output") is None:
                    raise SamplingError("this SDXL-type model needs pooled text embeddings "
                                        "(pooled_output) in its conditioning")
                pooled = _batch(extra["pooled_output"].to(torch.float32), b).to(device)
                ids = model.time_ids(extra, h * scale, w * scale)
                time_ids = ids.reshape(1, -1).repeat(b, 1).to(device)
            area = _area(extra.get("area"), h, w)
            strength = float(extra.get("strength", 1.0))
            weight: Any = strength
            if extra.get("mask") is not None:
                m = prepare_mask(extra["mask"], latent_shape, device)
                weight = m * float(extra.get("mask_strength", 1.0)) * strength
            t_range = (float(extra.get("start_percent", 0.0)), float(extra.get("end_percent", 1.0)))
            jobs.append(_Job(group, emb, pooled, time_ids, area, weight, t_range))
    if not any(job.group == 1 for job in jobs):
        raise SamplingError("positive conditioning is empty")
    return Guidance(jobs, float(cfg), bool(model.needs_time_ids),
                    int(model.scheduler_config.get("num_train_timesteps", 1000)))


def _batch(t, b: int):
    if t.shape[0] == b:
        return t
    reps = -(-b // t.shape[0])
    return t.repeat(reps, *([1] * (t.ndim - 1)))[:b]


def _area(area, h: int, w: int):
    """ConditioningSetArea's (height, width, y, x) in latent cells, clipped to the latent."""
    if not area or len(area) < 4 or isinstance(area[0], str):
        return None
    ah, aw, y, x = (int(v) for v in area[:4])
    y, x = max(0, min(y, h - 1)), max(0, min(x, w - 1))
    ah, aw = max(1, min(ah, h - y)), max(1, min(aw, w - x))
    if (ah, aw, y, x) == (h, w, 0, 0):
        return None
    return (ah, aw, y, x)


# --------------------------------------------------------------------------------------------
# Previews.

# Linear map from SD 1.x/2.x/XL 4-channel latents to RGB in -1..1 (the well-known approximation
# published by Keturn, "Decoding latents to RGB without upscaling"; rows: latent channels).
LATENT_RGB = [[0.298, 0.207, 0.208],
              [0.187, 0.286, 0.173],
              [-0.158, 0.189, 0.264],
              [-0.184, -0.271, -0.473]]


def latent_preview(latents, max_size: int = 256):
    """A small PIL image of the first latent of a batch, without running the VAE."""
    import torch
    from PIL import Image

    x = latents[0].detach().float()
    if x.shape[0] == 4:
        factors = torch.tensor(LATENT_RGB, dtype=torch.float32, device=x.device)
        rgb = torch.einsum("chw,cr->hwr", x, factors)
    else:
        rgb = x[:3].movedim(0, -1) if x.shape[0] >= 3 else x[:1].movedim(0, -1).repeat(1, 1, 3)
        rgb = rgb / rgb.abs().amax().clamp_min(1e-6)
    img = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).cpu().numpy()
    image = Image.fromarray(img)
    if max(image.size) > max_size:
        image.thumbnail((max_size, max_size))
    return image


# --------------------------------------------------------------------------------------------
# The loop.


def unet_dtype(device: str, options: dict):
    """float16 on accelerators unless the engine options say otherwise; the model's own on CPU."""
    import torch

    choice = (options or {}).get("unet_dtype")
    names = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}
    if choice in names:
        return names[choice]
    return None if str(device).startswith("cpu") else torch.float16


def sample(model, positive, negative, latent: dict, *, seed: int, steps: int, cfg: float,
           sampler_name: str, scheduler: str, denoise: float = 1.0, start_step: int = 0,
           end_step: int | None = None, add_noise: bool = True, force_full_denoise: bool = True) -> dict:
    """Run steps [start_step, end_step) of a `steps`-step schedule; returns a new LATENT on the CPU.

    `denoise` < 1 follows ComfyUI's KSampler: a schedule of int(steps / denoise) steps of which only
    the last `steps` run, starting from the input latent noised to that level."""
    import torch

    from genloom.engine import context

    from . import memory

    check_names(sampler_name, scheduler)
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
    noise, gen = initial_noise(latent, seed)
    if not add_noise:
        noise = torch.zeros_like(noise)

    def run():
        with torch.no_grad(), warnings.catch_warnings():
            # torchsde (dpmpp_sde) warns about float rounding of its interval ends on every step.
            warnings.filterwarnings("ignore", message="Should have ta>=t0")
            return _loop(model, positive, negative, samples, noise, gen, latent.get("noise_mask"),
                         seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name,
                         scheduler=scheduler, start_step=start_step, end_step=end_step,
                         add_noise=add_noise, force_full_denoise=force_full_denoise, ctx=ctx,
                         device=device)

    out = memory.retry_on_oom(run, "sampling")
    return _copy_latent(latent, out)


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

    step_kwargs = {"generator": gen} if plan.wants_generator else {}
    if "eta" in _step_params(sched):
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


def _step_params(sched) -> frozenset:
    import inspect

    return frozenset(inspect.signature(sched.step).parameters)
