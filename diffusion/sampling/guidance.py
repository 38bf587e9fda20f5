"""Conditioning prepared for the denoising network.

CONDITIONING entries become jobs (embeddings batched for the latent, the model's own extra inputs
such as SDXL's pooled output and time ids, areas, masks, strength and timestep ranges); jobs that can
share one model call are batched, and their predictions are averaged per conditioning set (weighted
by strength, areas and masks). The model handle says what its network takes: `cond_extras` turns a
CONDITIONING entry's dict into tensors, `predict` makes the call; guidance itself knows no family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from genloom.diffusion.errors import SamplingError
from genloom.diffusion.gligen_boxes import share_with_negative
from genloom.diffusion.models.patcher import network_call

from .noise import prepare_mask


@dataclass
class _Job:
    group: int  # index into the conditioning sets: 0 positive, 1 negative, then any further ones
    emb: Any  # [B, T, D] on device
    extras: dict  # the model's per-conditioning inputs (pooled output, time ids, ...), batched
    area: tuple | None  # (h, w, y, x) in latent cells
    weight: Any  # float strength, or a [B,1,h,w] tensor (mask * strength)
    t_range: tuple = (0.0, 1.0)  # (start_percent, end_percent)


def _batch_key(job: _Job) -> tuple:
    """Jobs whose inputs have the same shapes (and share any non-tensor extra) share one call."""
    extras = tuple(sorted((k, tuple(v.shape[1:]) if hasattr(v, "shape") else id(v))
                          for k, v in job.extras.items()))
    return (tuple(job.emb.shape[1:]), extras)


@dataclass
class Guidance:
    """Conditioning sets prepared once for a run, then asked for one prediction per set every step."""

    model: Any
    jobs: list
    groups: int  # how many conditioning sets
    num_train_timesteps: int
    cfg: float = 1.0  # only for `__call__`, the combined prediction
    batches: list = field(default_factory=list)  # (job indices) that share one model call
    sigma_ranges: list | None = None  # per job (sigma_start, sigma_end), set by `use_sigmas`
    ms: Any = None  # the model sampling, set by `use_sigmas`
    _unet_dtype: Any = None
    _concat: dict = field(default_factory=dict)

    def __post_init__(self):
        plain: dict[tuple, list[int]] = {}
        for i, job in enumerate(self.jobs):
            if job.area is None:
                plain.setdefault(_batch_key(job), []).append(i)
            else:
                self.batches.append([i])
        self.batches = list(plain.values()) + self.batches

    def _dtype(self, unet):
        """The network's dtype, looked up once: diffusers' `.dtype` walks the modules on every call."""
        if self._unet_dtype is None:
            self._unet_dtype = next(unet.parameters()).dtype
        return self._unet_dtype

    def _inputs(self, live: tuple, dtype):
        """Concatenated conditioning for one model call, built once per set of jobs."""
        cached = self._concat.get(live)
        if cached is None:
            emb = _cat([self.jobs[i].emb for i in live]).to(dtype)
            extras = {}
            for key, value in self.jobs[live[0]].extras.items():
                if hasattr(value, "shape"):
                    value = _cat([self.jobs[i].extras[key] for i in live])
                    value = value.to(dtype) if value.is_floating_point() else value
                extras[key] = value
            cached = self._concat[live] = (emb, extras)
        return cached

    def use_sigmas(self, ms) -> None:
        """Judge timestep ranges by sigma with the model sampling's percent_to_sigma, as ComfyUI."""
        self.sigma_ranges = [(ms.percent_to_sigma(j.t_range[0]), ms.percent_to_sigma(j.t_range[1]))
                             for j in self.jobs]
        self.ms = ms

    def _live(self, i: int, t: float, sigma: float | None) -> bool:
        if sigma is not None and self.sigma_ranges is not None:
            hi, lo = self.sigma_ranges[i]
            return lo <= sigma <= hi
        return self.active(self.jobs[i], t)

    def active(self, job: _Job, t: float) -> bool:
        start, end = job.t_range
        if start <= 0.0 and end >= 1.0:
            return True
        progress = 1.0 - t / max(self.num_train_timesteps - 1, 1)
        return start <= progress <= end

    def predictions(self, unet, x_in, t, t_value: float, sigma: float | None = None) -> list:
        """The model's output for each conditioning set (None where no conditioning of it is live)."""
        import torch

        preds: dict[int, Any] = {}
        dtype = self._dtype(unet)
        for batch in self.batches:
            live = tuple(i for i in batch if self._live(i, t_value, sigma))
            if not live:
                continue
            area = self.jobs[live[0]].area
            x = x_in if area is None else x_in[..., area[2]:area[2] + area[0], area[3]:area[3] + area[1]]
            n = len(live)
            xb = torch.cat([x] * n) if n > 1 else x
            emb, extras = self._inputs(live, dtype)
            bind = getattr(extras.get("control"), "at_sigma", None)
            if sigma is not None and bind is not None:  # ControlNet windows are judged on the step's sigma
                extras = {**extras, "control": bind(sigma)}
            options = getattr(self.model, "model_options", None) or {}
            if options.get("transformer_options") or options.get("model_function_wrapper"):
                # a plugin's patches: ComfyUI's per-call options and model_function_wrapper
                out = network_call(self.model, unet, xb.to(dtype), t, emb, extras,
                                   [self.jobs[i].group for i in live], sigma, self.ms)
            else:
                out = self.model.predict(unet, xb.to(dtype), t, emb, extras)
            if out.dtype != torch.float32:
                out = out.float()
            outs = out.chunk(n) if n > 1 else (out,)
            for i, o in zip(live, outs):
                preds[i] = o
        return [self._combine(g, preds, x_in) for g in range(self.groups)]

    def __call__(self, unet, x_in, t, t_value: float, sigma: float | None = None):
        """The guided model output (uncond + cfg * (cond - uncond)) for the scaled input `x_in`."""
        import torch

        cond, uncond = (self.predictions(unet, x_in, t, t_value, sigma) + [None])[:2]
        if self.cfg == 1.0 or uncond is None:
            return cond if cond is not None else torch.zeros_like(x_in)
        if cond is None:
            return uncond
        return uncond + self.cfg * (cond - uncond)

    def _combine(self, group: int, preds: dict, x_in):
        """Average the predictions of one set, weighted by strength, areas and masks."""
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
                region = (Ellipsis, slice(y, y + h), slice(x, x + w))
                wgt = weight if isinstance(weight, float) else weight[region]
                total[region] += preds[i] * wgt
                count[region] += wgt
        covered = count > 0
        result = total / count.clamp_min(1e-8)
        if group == 0 and not bool(covered.all()) and self.groups > 1:
            # Regions no positive conditioning reaches follow the negative prediction.
            other = self._combine(1, preds, x_in)
            if other is not None:
                result = torch.where(covered, result, other)
        return result


def _cat(tensors):
    import torch

    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def prepare_guidance(model, positive, negative, cfg: float, latent_shape, device) -> Guidance:
    """CFG's two sets (the negative dropped when cfg == 1, as ComfyUI skips it)."""
    sets = [positive, None if cfg == 1.0 else negative]
    guide = prepare_conds(model, sets, latent_shape, device)
    guide.cfg = float(cfg)
    return guide


def prepare_conds(model, cond_sets: list, latent_shape, device, inputs: dict | None = None) -> Guidance:
    """Turn CONDITIONING lists (positive first; None: not evaluated) into device tensors shaped for
    the batch, once per run. `inputs` (the run's latent_image, denoise_mask) are added to every
    entry's dict for cond_extras, as ComfyUI gives them to extra_conds."""
    import torch

    b, h, w = latent_shape[0], latent_shape[-2], latent_shape[-1]  # images and videos alike
    scale = int(getattr(model, "vae_scale_factor", 8) or 8)
    cond_sets = list(cond_sets[:1]) + [share_with_negative(cond_sets[0], s) for s in cond_sets[1:]]  # GLIGEN boxes
    jobs: list[_Job] = []
    for group, conds in enumerate(cond_sets):
        for entry in conds or []:
            emb, extra = entry[0], (entry[1] if len(entry) > 1 else {}) or {}
            emb = _batch(emb.to(torch.float32), b).to(device)
            extras = {k: (_batch(v.to(torch.float32) if v.is_floating_point() else v, b).to(device)
                          if hasattr(v, "shape") else v)
                      for k, v in model.cond_extras({**extra, **(inputs or {})}, h * scale,
                                                    w * scale).items()}
            area = _area(extra.get("area"), h, w)
            strength = float(extra.get("strength", 1.0))
            weight: Any = strength
            if extra.get("mask") is not None:
                m = prepare_mask(extra["mask"], latent_shape, device)
                weight = m * float(extra.get("mask_strength", 1.0)) * strength
            t_range = (float(extra.get("start_percent", 0.0)), float(extra.get("end_percent", 1.0)))
            jobs.append(_Job(group, emb, extras, area, weight, t_range))
    if not any(job.group == 0 for job in jobs):
        raise SamplingError("positive conditioning is empty")
    return Guidance(model, jobs, len(cond_sets),
                    int(model.scheduler_config.get("num_train_timesteps", 1000)))


def _batch(t, b: int):
    if t.shape[0] == b:
        return t
    reps = -(-b // t.shape[0])
    return t.repeat(reps, *([1] * (t.ndim - 1)))[:b]


def _area(area, h: int, w: int):
    """ConditioningSetArea's (height, width, y, x) in latent cells, clipped to the latent."""
    if area and len(area) == 5 and area[0] == "percentage":  # ConditioningSetAreaPercentage
        area = (max(1, round(area[1] * h)), max(1, round(area[2] * w)), round(area[3] * h), round(area[4] * w))
    if not area or len(area) < 4 or isinstance(area[0], str):
        return None
    ah, aw, y, x = (int(v) for v in area[:4])
    y, x = max(0, min(y, h - 1)), max(0, min(x, w - 1))
    ah, aw = max(1, min(ah, h - y)), max(1, min(aw, w - x))
    if (ah, aw, y, x) == (h, w, 0, 0):
        return None
    return (ah, aw, y, x)

