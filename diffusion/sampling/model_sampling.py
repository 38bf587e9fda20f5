"""Model sampling: what a model predicts and at which noise levels it was trained (ComfyUI's facts).

A `ModelSampling` turns a model output into the denoised latent (EPS, V_PREDICTION, CONST i.e.
rectified flow, EDM, X0), maps sigma <-> the timestep the network is given, and carries the sigma
table the schedules read. Samplers only ever see `denoised = D(x, sigma)`; everything
model-specific is here.

Predictions (what the network outputs): eps, v_prediction, edm, const (rectified flow), x0,
img_to_img (x0 from an unscaled input), lcm (eps turned into LCM's consistency boundary
condition) and cosmos_rflow (Cosmos' rectified flow over EDM-style sigmas).

Tables:
  discrete  1000 DDPM noise levels from betas, sigma = sqrt((1 - alphas_cumprod) / alphas_cumprod);
            timestep(sigma) is the index of the nearest level (log distance), sigma(t) interpolates
            log sigma. `zsnr` rescales to a zero terminal SNR (the last level becomes huge).
            `skip` > 1: a distilled table (LCM: every 20th level, 50 in all), timestep =
            index * skip + skip - 1.
  flow      sigma(t) = shift * s / (1 + (shift - 1) * s), s = t / multiplier, t = 1..1000
            (SD3: multiplier 1000, AuraFlow: 1); timestep = sigma * multiplier.
  flux      sigma(t) = e^mu / (e^mu + (1/t - 1)), t = k / 10000; timestep = sigma.
  edm       1000 log-spaced levels; timestep = log(sigma) / 4.
  cosmos    the edm levels; timestep = sigma / (sigma + 1), sigma(t) = t / (1 - t) up to sigma_max.
  cascade   Stable Cascade's cosine schedule (10000 levels), shifted in log-SNR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

def time_snr_shift(shift: float, t):
    """The SD3 timestep shift of a noise level in [0, 1]."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def flux_time_shift(mu: float, t):
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


@dataclass(frozen=True, eq=False)
class ModelSampling:
    prediction: str = "eps"
    table: str = "discrete"  # discrete | flow | flux | edm | cascade
    sigmas: Any = None  # ascending float32 table
    sigma_data: float = 1.0
    shift: float = 1.0
    multiplier: float = 1000.0
    skip: int = 1  # discrete: table levels are every `skip`-th training timestep (distilled LCM)

    # ---- the table --------------------------------------------------------------------------
    @cached_property
    def log_sigmas(self):
        return self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def timestep(self, sigma):
        """The network's timestep for `sigma` (a float tensor of any shape)."""
        import torch

        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        if self.table == "discrete":
            dists = sigma.log().reshape(-1)[None, :] - self.log_sigmas[:, None]
            index = dists.abs().argmin(dim=0).reshape(sigma.shape).float()
            return index * self.skip + (self.skip - 1) if self.skip > 1 else index
        if self.table == "flow":
            return sigma * self.multiplier
        if self.table == "edm":
            return 0.25 * sigma.log()
        if self.table == "cosmos":
            return sigma / (sigma + 1)
        if self.table == "cascade":
            var = (1 / (sigma * sigma + 1)).clamp(0, 1.0)
            s0 = _CASCADE_S
            return ((var * _cascade_init()) ** 0.5).acos() / (math.pi * 0.5) * (1 + s0) - s0
        return sigma

    def sigma(self, timestep):
        import torch

        t = torch.as_tensor(timestep, dtype=torch.float32)
        if self.table == "discrete":
            log_sigmas = self.log_sigmas
            if self.skip > 1:
                t = (t - (self.skip - 1)) / self.skip
            t = t.clamp(0, len(self.sigmas) - 1)
            low, high, w = t.floor().long(), t.ceil().long(), t.frac()
            return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()
        if self.table == "flow":
            return time_snr_shift(self.shift, t / self.multiplier)
        if self.table == "edm":
            return (t / 0.25).exp()
        if self.table == "cosmos":
            top = self.sigma_max
            return torch.where(t >= top / (top + 1), torch.tensor(top), t / (1 - t))
        if self.table == "cascade":
            return _cascade_sigma(t, self.shift)
        return math.exp(self.shift) / (math.exp(self.shift) + (1 / t - 1))

    def percent_to_sigma(self, percent: float) -> float:
        """The sigma at which a conditioning's start/end percent of the run lies."""
        flowish = self.table in ("flow", "flux")
        if percent <= 0.0:
            return 1.0 if flowish else 999999999.9
        if percent >= 1.0:
            return 0.0
        rest = 1.0 - percent
        if self.table == "flow":
            return float(time_snr_shift(self.shift, rest))
        if self.table == "flux":
            return float(flux_time_shift(self.shift, rest))
        if self.table in ("edm", "cosmos"):
            lo = math.log(self.sigma_min)
            return math.exp((math.log(self.sigma_max) - lo) * rest + lo)
        if self.table == "cascade":
            return float(self.sigma(rest))
        return float(self.sigma(rest * 999.0))

    # ---- the prediction -----------------------------------------------------------------------
    def calculate_input(self, sigma: float, x):
        if self.prediction in ("const", "img_to_img"):
            return x
        if self.prediction == "cosmos_rflow":
            return x * (1.0 - sigma / (sigma + 1))
        return x / (sigma * sigma + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma: float, out, x):
        sd2 = self.sigma_data ** 2
        if self.prediction in ("eps", "const"):
            return x - out * sigma
        if self.prediction in ("x0", "img_to_img"):
            return out
        if self.prediction == "lcm":
            return _lcm_boundary(float(self.timestep(sigma)), x - out * sigma, x)
        if self.prediction == "cosmos_rflow":
            s = sigma / (sigma + 1)
            return x * (1.0 - s) - out * s
        skip = x * sd2 / (sigma * sigma + sd2)
        scaled = out * sigma * self.sigma_data / (sigma * sigma + sd2) ** 0.5
        return skip + scaled if self.prediction == "edm" else skip - scaled

    def noise_scaling(self, sigma: float, noise, latent, max_denoise: bool = False):
        """The noisy latent at `sigma` (ComfyUI keeps partly denoised latents in this form)."""
        if self.prediction == "const":
            return noise * sigma + latent * (1.0 - sigma)
        if max_denoise and self.prediction != "cosmos_rflow":
            return noise * math.sqrt(1.0 + sigma * sigma) + latent
        return noise * sigma + latent

    def inverse_noise_scaling(self, sigma: float, latent):
        if self.prediction == "const":
            return latent / (1.0 - sigma)
        return latent

    def is_max_denoise(self, sigma0: float) -> bool:
        return math.isclose(self.sigma_max, sigma0, rel_tol=1e-5) or sigma0 > self.sigma_max

    def half_log_snr(self, sigma):
        """lambda(sigma) = log(alpha / sigma); alpha is 1 except for rectified flow (1 - sigma)."""
        import torch

        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        if self.prediction == "const":
            return ((1 - sigma) / sigma).log()
        return -sigma.log()

    def with_(self, **changes) -> "ModelSampling":
        return replace(self, **changes)


def _lcm_boundary(timestep: float, x0, x):
    """LCM's consistency parametrisation: c_out * x0 + c_skip * x, sigma_data 0.5 and the
    timestep scaled by 10."""
    sd2, st = 0.25, timestep * 10.0
    c_skip = sd2 / (st * st + sd2)
    c_out = st / (st * st + sd2) ** 0.5
    return x0 * c_out + x * c_skip


# ---- constructors ----------------------------------------------------------------------------

def discrete(prediction: str = "eps", *, beta_schedule: str = "linear", linear_start: float = 0.00085,
             linear_end: float = 0.012, timesteps: int = 1000, zsnr: bool = False) -> ModelSampling:
    """A DDPM table. ComfyUI's "linear" is linear in sqrt(beta) (diffusers' "scaled_linear");
    "sqrt_linear" is linear in beta (diffusers' "linear")."""
    import torch

    if beta_schedule == "linear":
        betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    elif beta_schedule == "sqrt_linear":
        betas = torch.linspace(linear_start, linear_end, timesteps, dtype=torch.float64)
    elif beta_schedule == "sqrt":
        betas = torch.linspace(linear_start, linear_end, timesteps, dtype=torch.float64) ** 0.5
    else:
        raise ValueError(f"unknown beta schedule {beta_schedule!r}")
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
    if zsnr:
        sigmas = zero_terminal_snr(sigmas)
    return ModelSampling(prediction, "discrete", sigmas.float())


def distilled(ms: ModelSampling, original_timesteps: int = 50) -> ModelSampling:
    """The LCM table: `original_timesteps` levels of a discrete table, every skip-th from the top."""
    n = len(ms.sigmas)
    skip = n // original_timesteps
    picks = [n - 1 - k * skip for k in range(original_timesteps)][::-1]
    return ms.with_(sigmas=ms.sigmas[picks].float(), skip=skip)


def zero_terminal_snr(sigmas):
    """Rescale a table so its last level has (almost) zero signal (Lin et al. 2023)."""
    ab_sqrt = (1.0 / (sigmas.double() ** 2 + 1)).sqrt()
    first, last = ab_sqrt[0].clone(), ab_sqrt[-1].clone()
    ab_sqrt = (ab_sqrt - last) * first / (first - last)
    ab = ab_sqrt ** 2
    ab[-1] = 4.8973451890853435e-08
    return ((1 - ab) / ab) ** 0.5


def flow(shift: float = 1.0, multiplier: float = 1000.0, timesteps: int = 1000) -> ModelSampling:
    import torch

    t = torch.arange(1, timesteps + 1, dtype=torch.float32) / timesteps
    return ModelSampling("const", "flow", time_snr_shift(shift, t).float(), shift=shift,
                         multiplier=multiplier)


def flux(mu: float = 1.15, timesteps: int = 10000) -> ModelSampling:
    import torch

    t = torch.arange(1, timesteps + 1, dtype=torch.float64) / timesteps
    sig = math.exp(mu) / (math.exp(mu) + (1 / t - 1))
    return ModelSampling("const", "flux", sig.float(), shift=mu, multiplier=1.0)


def edm(prediction: str = "edm", sigma_min: float = 0.002, sigma_max: float = 120.0,
        sigma_data: float = 1.0) -> ModelSampling:
    import torch

    sig = torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000).exp()
    table = "cosmos" if prediction == "cosmos_rflow" else "edm"
    return ModelSampling(prediction, table, sig.float(), sigma_data=sigma_data)


_CASCADE_S = 8e-3


def _cascade_init() -> float:
    return math.cos(_CASCADE_S / (1 + _CASCADE_S) * math.pi * 0.5) ** 2


def _cascade_sigma(t, shift: float):
    """Stable Cascade's cosine schedule, its log-SNR moved by 2 log(1 / shift)."""
    import torch

    ac = torch.cos((t + _CASCADE_S) / (1 + _CASCADE_S) * math.pi * 0.5) ** 2 / _cascade_init()
    if shift != 1.0:
        ac = ((ac / (1 - ac)).log() + 2 * math.log(1.0 / shift)).sigmoid()
    ac = ac.clamp(0.0001, 0.9999)
    return ((1 - ac) / ac) ** 0.5


def cascade(shift: float = 1.0, timesteps: int = 10000) -> ModelSampling:
    import torch

    t = torch.arange(1, timesteps + 1, dtype=torch.float32) / timesteps
    return ModelSampling("eps", "cascade", _cascade_sigma(t, shift).float(), shift=shift)


def flux_mu(width: int, height: int, max_shift: float = 1.15, base_shift: float = 0.5) -> float:
    """ModelSamplingFlux's mu: linear in the token count, base_shift at 256, max_shift at 4096."""
    m = (max_shift - base_shift) / (4096 - 256)
    b = base_shift - m * 256
    return (width * height / (8 * 8 * 2 * 2)) * m + b


_DIFFUSERS_BETAS = {"scaled_linear": "linear", "linear": "sqrt_linear"}


def of_model(model) -> ModelSampling:
    """The MODEL's model sampling: its own if a node set one, else read from its scheduler config."""
    own = getattr(model, "sampling", None)
    if own is not None:
        return own
    return of_config(model)


def of_config(model, prediction: str | None = None, zsnr: bool | None = None) -> ModelSampling:
    """The discrete table of the model's own scheduler config (ComfyUI's model_config sampling
    settings); `prediction` / `zsnr` override what the config says."""
    cfg = dict(getattr(model, "scheduler_config", None) or {})
    if prediction is None:
        prediction = {"epsilon": "eps", "v_prediction": "v_prediction", "sample": "x0"}.get(
            cfg.get("prediction_type") or getattr(model, "prediction_type", "epsilon"), "eps")
    if zsnr is None:
        zsnr = bool(cfg.get("rescale_betas_zero_snr", False))
    return discrete(prediction,
                    beta_schedule=_DIFFUSERS_BETAS.get(cfg.get("beta_schedule", "scaled_linear"), "linear"),
                    linear_start=float(cfg.get("beta_start", 0.00085)),
                    linear_end=float(cfg.get("beta_end", 0.012)),
                    timesteps=int(cfg.get("num_train_timesteps", 1000)), zsnr=zsnr)
