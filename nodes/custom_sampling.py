"""ComfyUI's custom-sampling nodes: samplers, schedules (SIGMAS), noise, guiders and the
SamplerCustom / SamplerCustomAdvanced runs that put them together.

Types: SIGMAS (1-D float32 tensor, descending, usually ending in 0), SAMPLER, NOISE, GUIDER. The
work is genloom.diffusion.sampling.custom, imported inside `run` (this module stays free of torch).
"""

from genloom.diffusion.sampling.schedulers import SAMPLER_NAMES, SCHEDULER_NAMES
from genloom.engine.node import Boolean, Combo, Float, Input, Int, Node, Out, Seed, String

_CAT = "sampling/custom_sampling"
_MODEL = Input("model", "MODEL")
_STEPS = Int("steps", 20, min=1, max=10000)
_SIGMA_MAX = Float("sigma_max", 14.614642, min=0.0, max=5000.0, step=0.01, round=False)
_SIGMA_MIN = Float("sigma_min", 0.0291675, min=0.0, max=5000.0, step=0.01, round=False)
_ETA = Float("eta", 1.0, min=0.0, max=100.0, step=0.01, round=False)
_S_NOISE = Float("s_noise", 1.0, min=0.0, max=100.0, step=0.01, round=False)
_NOISE_DEVICE = Combo("noise_device", ["gpu", "cpu"])
_SIGMAS_IN = Input("sigmas", "SIGMAS")


def _lib():
    from genloom.diffusion.sampling import custom

    return custom


def _schedules():
    from genloom.diffusion.sampling import sigma_schedules

    return sigma_schedules


def _sampler(name: str, **options):
    from genloom.diffusion.sampling.sigma_loop import Sampler

    return Sampler(name, tuple(sorted(options.items())))


# ---- samplers ---------------------------------------------------------------------------------

class KSamplerSelect(Node):
    """A sampler by its KSampler name."""

    category = _CAT + "/samplers"
    inputs = [Combo("sampler_name", SAMPLER_NAMES)]
    outputs = [Out("SAMPLER")]

    def run(self, sampler_name):
        return (_sampler(sampler_name),)


class SamplerEulerAncestral(Node):
    category = _CAT + "/samplers"
    inputs = [_ETA, _S_NOISE]
    outputs = [Out("SAMPLER")]

    def run(self, eta, s_noise):
        return (_sampler("euler_ancestral", eta=eta, s_noise=s_noise),)


class SamplerDPMPP_2M_SDE(Node):
    category = _CAT + "/samplers"
    inputs = [Combo("solver_type", ["midpoint", "heun"]), _ETA, _S_NOISE, _NOISE_DEVICE]
    outputs = [Out("SAMPLER")]

    def run(self, solver_type, eta, s_noise, noise_device):
        name = "dpmpp_2m_sde" + ("_heun" if solver_type == "heun" else "")
        return (_sampler(name + ("_gpu" if noise_device == "gpu" else ""), eta=eta, s_noise=s_noise),)


class SamplerDPMPP_3M_SDE(Node):
    category = _CAT + "/samplers"
    inputs = [_ETA, _S_NOISE, _NOISE_DEVICE]
    outputs = [Out("SAMPLER")]

    def run(self, eta, s_noise, noise_device):
        name = "dpmpp_3m_sde" + ("_gpu" if noise_device == "gpu" else "")
        return (_sampler(name, eta=eta, s_noise=s_noise),)


class SamplerDPMPP_SDE(Node):
    category = _CAT + "/samplers"
    inputs = [_ETA, _S_NOISE, Float("r", 0.5, min=0.0, max=100.0, step=0.01, round=False), _NOISE_DEVICE]
    outputs = [Out("SAMPLER")]

    def run(self, eta, s_noise, r, noise_device):
        name = "dpmpp_sde" + ("_gpu" if noise_device == "gpu" else "")
        return (_sampler(name, eta=eta, s_noise=s_noise, r=r),)


class SamplerDPMPP_2S_Ancestral(Node):
    category = _CAT + "/samplers"
    inputs = [_ETA, _S_NOISE]
    outputs = [Out("SAMPLER")]

    def run(self, eta, s_noise):
        return (_sampler("dpmpp_2s_ancestral", eta=eta, s_noise=s_noise),)


class SamplerEulerAncestralCFGPP(Node):
    category = _CAT + "/samplers"
    display_name = "SamplerEulerAncestralCFG++"
    inputs = [Float("eta", 1.0, min=0.0, max=1.0, step=0.01, round=False),
              Float("s_noise", 1.0, min=0.0, max=10.0, step=0.01, round=False)]
    outputs = [Out("SAMPLER")]

    def run(self, eta, s_noise):
        return (_sampler("euler_ancestral_cfg_pp", eta=eta, s_noise=s_noise),)


class SamplerLMS(Node):
    category = _CAT + "/samplers"
    inputs = [Int("order", 4, min=1, max=100)]
    outputs = [Out("SAMPLER")]

    def run(self, order):
        return (_sampler("lms", order=order),)


def _option(name, default, lo=0.0, hi=100.0):
    return Float(name, default, min=lo, max=hi, step=0.01, round=False)


class SamplerDPMAdaptative(Node):
    category = _CAT + "/samplers"
    inputs = [Int("order", 3, min=2, max=3), _option("rtol", 0.05), _option("atol", 0.0078),
              _option("h_init", 0.05), _option("pcoeff", 0.0), _option("icoeff", 1.0),
              _option("dcoeff", 0.0), _option("accept_safety", 0.81), _option("eta", 0.0),
              _option("s_noise", 1.0)]
    outputs = [Out("SAMPLER")]

    def run(self, order, rtol, atol, h_init, pcoeff, icoeff, dcoeff, accept_safety, eta, s_noise):
        return (_sampler("dpm_adaptive", order=order, rtol=rtol, atol=atol, h_init=h_init, pcoeff=pcoeff,
                         icoeff=icoeff, dcoeff=dcoeff, accept_safety=accept_safety, eta=eta,
                         s_noise=s_noise),)


class SamplerER_SDE(Node):
    category = _CAT + "/samplers"
    inputs = [Combo("solver_type", ["ER-SDE", "Reverse-time SDE", "ODE"]), Int("max_stage", 3, min=1, max=3),
              Float("eta", 1.0, min=0.0, max=100.0, step=0.01, round=False,
                    tooltip="Stochastic strength of reverse-time SDE.\nWhen eta=0, it reduces to "
                            "deterministic ODE. This setting doesn't apply to ER-SDE solver type."),
              _S_NOISE]
    outputs = [Out("SAMPLER")]

    def run(self, solver_type, max_stage, eta, s_noise):
        if solver_type == "ODE" or (solver_type == "Reverse-time SDE" and eta == 0):
            eta, s_noise = 0.0, 0.0
        return (_sampler("er_sde", solver_type=solver_type, max_stage=max_stage, eta=eta, s_noise=s_noise),)


class SamplerSASolver(Node):
    category = _CAT + "/samplers"
    inputs = [_MODEL, Float("eta", 1.0, min=0.0, max=10.0, step=0.01, round=False),
              Float("sde_start_percent", 0.2, min=0.0, max=1.0, step=0.001),
              Float("sde_end_percent", 0.8, min=0.0, max=1.0, step=0.001), _S_NOISE,
              Int("predictor_order", 3, min=1, max=6), Int("corrector_order", 4, min=0, max=6),
              Boolean("use_pece"), Boolean("simple_order_2")]
    outputs = [Out("SAMPLER")]

    def run(self, model, eta, sde_start_percent, sde_end_percent, s_noise, predictor_order,
            corrector_order, use_pece, simple_order_2):
        # The tau interval is resolved against the MODEL the sampler runs on (its model sampling).
        return (_sampler("sa_solver", eta=eta, sde_start_percent=sde_start_percent,
                         sde_end_percent=sde_end_percent, s_noise=s_noise, predictor_order=predictor_order,
                         corrector_order=corrector_order, use_pece=bool(use_pece),
                         simple_order_2=bool(simple_order_2)),)


class SamplerSEEDS2(Node):
    category = _CAT + "/samplers"
    description = ("seeds_2 by default; exp_heun_2_x0 is solver_type phi_2, r 1.0, eta 0.0; "
                   "exp_heun_2_x0_sde is phi_2, r 1.0, eta 1.0, s_noise 1.0.")
    inputs = [Combo("solver_type", ["phi_1", "phi_2"]),
              Float("eta", 1.0, min=0.0, max=100.0, step=0.01, round=False, tooltip="Stochastic strength"),
              Float("s_noise", 1.0, min=0.0, max=100.0, step=0.01, round=False, tooltip="SDE noise multiplier"),
              Float("r", 0.5, min=0.01, max=1.0, step=0.01, round=False,
                    tooltip="Relative step size for the intermediate stage (c2 node)")]
    outputs = [Out("SAMPLER")]

    def run(self, solver_type, eta, s_noise, r):
        return (_sampler("seeds_2", solver_type=solver_type, eta=eta, s_noise=s_noise, r=r),)


# ---- schedules --------------------------------------------------------------------------------

class BasicScheduler(Node):
    """The sigmas of a KSampler scheduler for the model."""

    category = _CAT + "/schedulers"
    inputs = [_MODEL, Combo("scheduler", SCHEDULER_NAMES), _STEPS,
              Float("denoise", 1.0, min=0.0, max=1.0, step=0.01)]
    outputs = [Out("SIGMAS")]

    def run(self, model, scheduler, steps, denoise):
        return (_lib().basic_scheduler(model, scheduler, steps, denoise),)


class KarrasScheduler(Node):
    category = _CAT + "/schedulers"
    inputs = [_STEPS, _SIGMA_MAX, _SIGMA_MIN, Float("rho", 7.0, min=0.0, max=100.0, step=0.01, round=False)]
    outputs = [Out("SIGMAS")]

    def run(self, steps, sigma_max, sigma_min, rho):
        return (_schedules().karras(steps, sigma_min, sigma_max, rho),)


class ExponentialScheduler(Node):
    category = _CAT + "/schedulers"
    inputs = [_STEPS, _SIGMA_MAX, _SIGMA_MIN]
    outputs = [Out("SIGMAS")]

    def run(self, steps, sigma_max, sigma_min):
        return (_schedules().exponential(steps, sigma_min, sigma_max),)


class PolyexponentialScheduler(Node):
    category = _CAT + "/schedulers"
    inputs = [_STEPS, _SIGMA_MAX, _SIGMA_MIN, Float("rho", 1.0, min=0.0, max=100.0, step=0.01, round=False)]
    outputs = [Out("SIGMAS")]

    def run(self, steps, sigma_max, sigma_min, rho):
        return (_schedules().polyexponential(steps, sigma_min, sigma_max, rho),)


class LaplaceScheduler(Node):
    category = _CAT + "/schedulers"
    inputs = [_STEPS, _SIGMA_MAX, _SIGMA_MIN,
              Float("mu", 0.0, min=-10.0, max=10.0, step=0.1, round=False),
              Float("beta", 0.5, min=0.0, max=10.0, step=0.1, round=False)]
    outputs = [Out("SIGMAS")]

    def run(self, steps, sigma_max, sigma_min, mu, beta):
        return (_schedules().laplace(steps, sigma_min, sigma_max, mu, beta),)


class VPScheduler(Node):
    category = _CAT + "/schedulers"
    inputs = [_STEPS, Float("beta_d", 19.9, min=0.0, max=5000.0, step=0.01, round=False),
              Float("beta_min", 0.1, min=0.0, max=5000.0, step=0.01, round=False),
              Float("eps_s", 0.001, min=0.0, max=1.0, step=0.0001, round=False)]
    outputs = [Out("SIGMAS")]

    def run(self, steps, beta_d, beta_min, eps_s):
        return (_schedules().vp(steps, beta_d, beta_min, eps_s),)


class BetaSamplingScheduler(Node):
    category = _CAT + "/schedulers"
    inputs = [_MODEL, _STEPS, Float("alpha", 0.6, min=0.0, max=50.0, step=0.01, round=False),
              Float("beta", 0.6, min=0.0, max=50.0, step=0.01, round=False)]
    outputs = [Out("SIGMAS")]

    def run(self, model, steps, alpha, beta):
        from genloom.diffusion.sampling.model_sampling import of_model

        return (_schedules().beta(of_model(model), steps, alpha, beta),)


class SDTurboScheduler(Node):
    category = _CAT + "/schedulers"
    inputs = [_MODEL, Int("steps", 1, min=1, max=10), Float("denoise", 1.0, min=0.0, max=1.0, step=0.01)]
    outputs = [Out("SIGMAS")]

    def run(self, model, steps, denoise):
        return (_lib().sd_turbo(model, steps, denoise),)


# ---- sigma arithmetic -------------------------------------------------------------------------

class ManualSigmas(Node):
    category = _CAT + "/sigmas"
    inputs = [String("sigmas", "1, 0.5", tooltip="Sigmas as numbers separated by commas or spaces.")]
    outputs = [Out("SIGMAS")]

    def run(self, sigmas):
        return (_lib().manual(sigmas),)


class SplitSigmas(Node):
    category = _CAT + "/sigmas"
    inputs = [_SIGMAS_IN, Int("step", 0, min=0, max=10000)]
    outputs = [Out("SIGMAS", "high_sigmas"), Out("SIGMAS", "low_sigmas")]

    def run(self, sigmas, step):
        return sigmas[:step + 1], sigmas[step:]


class SplitSigmasDenoise(Node):
    category = _CAT + "/sigmas"
    inputs = [_SIGMAS_IN, Float("denoise", 1.0, min=0.0, max=1.0, step=0.01)]
    outputs = [Out("SIGMAS", "high_sigmas"), Out("SIGMAS", "low_sigmas")]

    def run(self, sigmas, denoise):
        return _lib().split_denoise(sigmas, denoise)


class FlipSigmas(Node):
    category = _CAT + "/sigmas"
    inputs = [_SIGMAS_IN]
    outputs = [Out("SIGMAS")]

    def run(self, sigmas):
        return (_lib().flip(sigmas),)


class SetFirstSigma(Node):
    category = _CAT + "/sigmas"
    inputs = [_SIGMAS_IN, Float("sigma", 136.0, min=0.0, max=20000.0, step=0.001, round=False)]
    outputs = [Out("SIGMAS")]

    def run(self, sigmas, sigma):
        out = sigmas.clone()
        out[0] = sigma
        return (out,)


# ---- noise and guiders ------------------------------------------------------------------------

class RandomNoise(Node):
    category = _CAT + "/noise"
    inputs = [Seed("noise_seed", tooltip="Seed of the starting noise.")]
    outputs = [Out("NOISE")]

    def run(self, noise_seed):
        return (_lib().Noise(int(noise_seed)),)


class DisableNoise(Node):
    category = _CAT + "/noise"
    inputs = []
    outputs = [Out("NOISE")]

    def run(self):
        return (_lib().Noise(0, enabled=False),)


class AddNoise(Node):
    category = _CAT + "/noise"
    inputs = [_MODEL, Input("noise", "NOISE"), _SIGMAS_IN, Input("latent_image", "LATENT")]
    outputs = [Out("LATENT")]

    def run(self, model, noise, sigmas, latent_image):
        return (_lib().add_noise(model, noise, sigmas, latent_image),)


class CFGGuider(Node):
    category = _CAT + "/guiders"
    inputs = [_MODEL, Input("positive", "CONDITIONING"), Input("negative", "CONDITIONING"),
              Float("cfg", 8.0, min=0.0, max=100.0, step=0.1, round=0.01)]
    outputs = [Out("GUIDER")]

    def run(self, model, positive, negative, cfg):
        return (_lib().Guider(model, positive, negative, float(cfg)),)


class BasicGuider(Node):
    category = _CAT + "/guiders"
    inputs = [_MODEL, Input("conditioning", "CONDITIONING")]
    outputs = [Out("GUIDER")]

    def run(self, model, conditioning):
        return (_lib().Guider(model, conditioning, None, 1.0),)


# ---- the runs ---------------------------------------------------------------------------------

class SamplerCustom(Node):
    category = _CAT
    inputs = [_MODEL, Boolean("add_noise", True), Seed("noise_seed"),
              Float("cfg", 8.0, min=0.0, max=100.0, step=0.1, round=0.01),
              Input("positive", "CONDITIONING"), Input("negative", "CONDITIONING"),
              Input("sampler", "SAMPLER"), _SIGMAS_IN, Input("latent_image", "LATENT")]
    outputs = [Out("LATENT", "output"), Out("LATENT", "denoised_output")]

    def run(self, model, add_noise, noise_seed, cfg, positive, negative, sampler, sigmas, latent_image):
        lib = _lib()
        noise = lib.Noise(int(noise_seed), enabled=bool(add_noise))
        return lib.sample_custom(lib.Guider(model, positive, negative, float(cfg)), noise, sampler,
                                 sigmas, latent_image)


class SamplerCustomAdvanced(Node):
    category = _CAT
    inputs = [Input("noise", "NOISE"), Input("guider", "GUIDER"), Input("sampler", "SAMPLER"),
              _SIGMAS_IN, Input("latent_image", "LATENT")]
    outputs = [Out("LATENT", "output"), Out("LATENT", "denoised_output")]

    def run(self, noise, guider, sampler, sigmas, latent_image):
        return _lib().sample_custom(guider, noise, sampler, sigmas, latent_image)


NODES = [SamplerCustom, SamplerCustomAdvanced, KSamplerSelect, SamplerEulerAncestral,
         SamplerEulerAncestralCFGPP, SamplerDPMPP_2M_SDE, SamplerDPMPP_3M_SDE, SamplerDPMPP_SDE,
         SamplerDPMPP_2S_Ancestral, SamplerLMS, SamplerDPMAdaptative, SamplerER_SDE, SamplerSASolver,
         SamplerSEEDS2,
         BasicScheduler, KarrasScheduler, ExponentialScheduler, PolyexponentialScheduler, LaplaceScheduler,
         VPScheduler, BetaSamplingScheduler, SDTurboScheduler, ManualSigmas, SplitSigmas, SplitSigmasDenoise,
         FlipSigmas, SetFirstSigma, RandomNoise, DisableNoise, AddNoise, CFGGuider, BasicGuider]
