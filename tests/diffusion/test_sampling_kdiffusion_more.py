"""The samplers beyond test_sampling_kdiffusion.py: dpm_fast / dpm_adaptive against k-diffusion; the
samplers k-diffusion lacks against the exact solution of a Gaussian data distribution (its denoiser
is known in closed form, so the probability-flow ODE is solved exactly) at their expected order;
CFG++ and ancestral forms against their plain / deterministic forms and arithmetic written here;
and every sampler name through KSampler on EPS, V_PREDICTION and CONST model sampling.
"""

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchsde")

from genloom.diffusion.sampling import k_samplers, loop, model_sampling, sigma_schedules  # noqa: E402
from test_sampling_kdiffusion import K, SHAPE, SeqNoise, TinyDenoiser  # noqa: E402

StepContext = k_samplers.StepContext


# ---- dpm_fast, dpm_adaptive against k-diffusion ----------------------------------------------

@pytest.mark.filterwarnings("ignore:To copy construct")
@pytest.mark.parametrize("prediction", ["eps", "v_prediction"])
@pytest.mark.parametrize("name", ["dpm_fast", "dpm_adaptive"])
def test_dpm_solver_equals_k_diffusion(name, prediction):
    """Both run from the first sigma to the last non-zero one, as ComfyUI calls them."""
    ms = model_sampling.discrete(prediction)
    model = TinyDenoiser(ms)
    sigmas = sigma_schedules.karras(7, ms.sigma_min, ms.sigma_max)
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)) * float(sigmas[0])
    with torch.no_grad():
        if name == "dpm_fast":
            ref = K.sample_dpm_fast(model, x0.clone(), sigmas[-2], sigmas[0], len(sigmas) - 1, disable=True)
        else:
            ref = K.sample_dpm_adaptive(model, x0.clone(), sigmas[-2], sigmas[0], disable=True)
        ours = k_samplers.SAMPLERS[name](model, x0.clone(), sigmas.tolist(), StepContext(ms, SeqNoise(SHAPE), eta=0.0))
    assert (ours - ref).abs().max() < 1e-4 * max(1.0, float(ref.abs().max()))


# ---- an exactly solvable problem -------------------------------------------------------------

MU, SD = 0.3, 0.5  # data ~ N(MU, SD^2) per element


def gaussian_denoiser(const: bool):
    """E[x0 | x] for x = alpha x0 + sigma n (alpha 1, or 1 - sigma for rectified flow)."""
    def denoise(x, s):
        a = 1 - s if const else 1.0
        return MU + a * SD ** 2 / (a * a * SD ** 2 + s * s) * (x - a * MU)
    return denoise


def exact(x, s0, s1, const):
    """The probability-flow ODE keeps (x - alpha mu) / sqrt(alpha^2 sd^2 + sigma^2) constant."""
    a0, a1 = (1 - s0, 1 - s1) if const else (1.0, 1.0)
    return a1 * MU + (x - a0 * MU) * math.sqrt(a1 ** 2 * SD ** 2 + s1 ** 2) / math.sqrt(a0 ** 2 * SD ** 2 + s0 ** 2)


def geometric(n, const):
    hi, lo = (0.95, 0.05) if const else (10.0, 0.1)
    return [hi * (lo / hi) ** (k / n) for k in range(n + 1)]


def run_ode(name, n, const, **options):
    ms = model_sampling.flow(1.0) if const else model_sampling.discrete("eps")
    x = torch.linspace(-2, 2, 8, dtype=torch.float64).reshape(1, 2, 2, 2)
    s = geometric(n, const)
    ctx = StepContext(ms, lambda a, b: torch.zeros_like(x), eta=0.0, s_noise=0.0)
    out = k_samplers.SAMPLERS[name](gaussian_denoiser(const), x * s[0], s, ctx, **options)
    return float((out - exact(x * s[0], s[0], s[-1], const)).abs().max())


# Deterministic at eta 0 -> the order its error at least falls with (observed on this problem
# between 16 and 64 steps: docs/sampling.md). heunpp2 and gradient_estimation are first order by
# construction; uni_pc's last step is first order without a corrector, as in ComfyUI.
ORDERS = {"euler": 0.9, "euler_cfg_pp": 0.9, "euler_ancestral": 0.9, "euler_ancestral_cfg_pp": 0.9,
          "ddim": 0.9, "heunpp2": 0.9, "gradient_estimation": 0.75, "gradient_estimation_cfg_pp": 0.75,
          "heun": 1.8, "exp_heun_2_x0": 1.8, "exp_heun_2_x0_sde": 1.8, "dpm_2": 1.8, "dpm_2_ancestral": 1.8,
          "lms": 2.1, "dpm_fast": 1.8, "dpmpp_2s_ancestral": 1.8, "dpmpp_2s_ancestral_cfg_pp": 1.8,
          "dpmpp_sde": 1.8, "dpmpp_2m": 1.6, "dpmpp_2m_cfg_pp": 1.6, "dpmpp_2m_sde": 1.6,
          "dpmpp_2m_sde_heun": 1.6, "dpmpp_3m_sde": 1.9, "ipndm": 1.8, "ipndm_v": 1.8, "deis": 2.1,
          "res_multistep": 1.8, "res_multistep_cfg_pp": 1.8, "res_multistep_ancestral": 1.8,
          "res_multistep_ancestral_cfg_pp": 1.8, "er_sde": 1.7, "seeds_2": 1.8, "seeds_3": 2.6,
          "sa_solver": 2.4, "sa_solver_pece": 2.4, "uni_pc": 1.4, "uni_pc_bh2": 1.5}


@pytest.mark.parametrize("const", [False, True], ids=["ve", "flow"])
@pytest.mark.parametrize("name", sorted(ORDERS))
def test_deterministic_sampler_converges_to_the_exact_solution(name, const):
    options = {"solver_type": "ODE"} if name == "er_sde" else {}
    coarse, fine = run_ode(name, 16, const, **options), run_ode(name, 64, const, **options)
    order = math.log2(coarse / fine) / 2
    assert order >= ORDERS[name], (name, coarse, fine, order)
    assert fine < (2e-2 if ORDERS[name] < 1 else 3e-3)


def test_every_deterministic_name_is_checked():
    stochastic_only = {"ddpm", "lcm", "dpm_adaptive"}  # dpm_adaptive: k-diffusion equality above
    assert set(ORDERS) | stochastic_only == {n for n in k_samplers.SAMPLERS if not n.endswith("_gpu")}


# ---- CFG++ and ancestral forms ----------------------------------------------------------------

class Guided:
    """A denoiser with separate conditional and unconditional predictions, combined by CFG."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.cond, self.uncond = gaussian_denoiser(False), lambda x, s: 0.8 * gaussian_denoiser(False)(x, s) - 0.1
        self.uncond_denoised = None

    def __call__(self, x, s):
        c, u = self.cond(x, s), self.uncond(x, s)
        self.uncond_denoised = c if self.cfg == 1 else u
        return c if self.cfg == 1 else u + self.cfg * (c - u)


CFG_PP_PAIRS = {"euler_cfg_pp": "euler", "euler_ancestral_cfg_pp": "euler_ancestral",
                "dpmpp_2s_ancestral_cfg_pp": "dpmpp_2s_ancestral", "dpmpp_2m_cfg_pp": "dpmpp_2m",
                "res_multistep_cfg_pp": "res_multistep",
                "res_multistep_ancestral_cfg_pp": "res_multistep_ancestral",
                "gradient_estimation_cfg_pp": "gradient_estimation"}


def _x(seed=3):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("prediction", ["eps", "const"])
@pytest.mark.parametrize("name", sorted(CFG_PP_PAIRS))
def test_cfg_pp_at_cfg_1_equals_the_plain_sampler(name, prediction):
    """With the unconditional prediction equal to the guided one, CFG++ is the plain step. (On CONST
    euler_ancestral re-noises the rectified-flow way and its CFG++ form in sigma / alpha units, as
    in ComfyUI: there they agree at eta 0 only.)"""
    ms = model_sampling.flow(3.0) if prediction == "const" else model_sampling.discrete("eps")
    sigmas = [0.9, 0.6, 0.3, 0.1, 0.0] if prediction == "const" else [8.0, 3.0, 1.0, 0.3, 0.0]
    eta = 0.0 if prediction == "const" and name == "euler_ancestral_cfg_pp" else 0.7
    x = _x() * sigmas[0]
    ours = k_samplers.SAMPLERS[name](Guided(1.0), x, sigmas, StepContext(ms, SeqNoise(SHAPE), eta=eta))
    plain = k_samplers.SAMPLERS[CFG_PP_PAIRS[name]](Guided(1.0), x, sigmas, StepContext(ms, SeqNoise(SHAPE), eta=eta))
    assert torch.allclose(ours, plain.to(ours.dtype), atol=1e-9)


def test_cfg_pp_steps_written_out():
    """CFG++ Euler: land on the guided prediction, re-noise with the unconditional noise estimate
    (Chung et al., eq. 7); CFG++ gradient estimation adds (gamma - 1) times the slope change."""
    ms = model_sampling.discrete("eps")
    sigmas, model = [8.0, 3.0, 1.0, 0.0], Guided(2.5)
    x = _x() * sigmas[0]
    got = k_samplers.SAMPLERS["euler_cfg_pp"](model, x, sigmas, StepContext(ms, SeqNoise(SHAPE)))
    ge = k_samplers.SAMPLERS["gradient_estimation_cfg_pp"](model, x, sigmas, StepContext(ms, SeqNoise(SHAPE)))
    xs, xg, old_d = x.clone(), x.clone(), None
    for s, s_next in zip(sigmas, sigmas[1:]):
        c, u = model.cond(xs, s), model.uncond(xs, s)
        guided = u + 2.5 * (c - u)
        xs = guided + (xs - u) / s * s_next
        c, u = model.cond(xg, s), model.uncond(xg, s)
        guided, d = u + 2.5 * (c - u), (xg - u) / s
        xg = guided if s_next == 0 else guided + d * s_next + (0 if old_d is None else (d - old_d) * (s_next - s))
        old_d = d
    assert torch.allclose(got, xs, atol=1e-9) and torch.allclose(ge, xg, atol=1e-9)


ETA0_PAIRS = [("euler_ancestral", "euler"), ("dpm_2_ancestral", "dpm_2"),
              ("res_multistep_ancestral", "res_multistep"), ("exp_heun_2_x0_sde", "exp_heun_2_x0"),
              ("euler_ancestral_cfg_pp", "euler_cfg_pp"),
              ("res_multistep_ancestral_cfg_pp", "res_multistep_cfg_pp")]


@pytest.mark.parametrize("prediction", ["eps", "const"])
@pytest.mark.parametrize("noisy,plain", ETA0_PAIRS)
def test_ancestral_at_eta_0_equals_the_deterministic_form(noisy, plain, prediction):
    ms = model_sampling.flow(3.0) if prediction == "const" else model_sampling.discrete("v_prediction")
    sigmas = [0.9, 0.6, 0.3, 0.1, 0.0] if prediction == "const" else [8.0, 3.0, 1.0, 0.3, 0.0]
    model = TinyDenoiser(ms).double()
    x = _x() * sigmas[0]
    with torch.no_grad():
        a = k_samplers.SAMPLERS[noisy](model, x, sigmas, StepContext(ms, SeqNoise(SHAPE), eta=0.0))
        b = k_samplers.SAMPLERS[plain](model, x, sigmas, StepContext(ms, SeqNoise(SHAPE), eta=0.0))
    assert torch.allclose(a, b, atol=1e-9)


def test_dpmpp_2m_sde_at_eta_0_is_dpmpp_2m_and_seeds_2_at_r_1_is_exp_heun():
    ms = model_sampling.discrete("eps")
    model = TinyDenoiser(ms).double()
    sigmas = [8.0, 3.0, 1.0, 0.3, 0.0]
    x = _x() * sigmas[0]
    ctx = StepContext(ms, SeqNoise(SHAPE), eta=0.0)
    with torch.no_grad():
        assert torch.allclose(k_samplers.dpmpp_2m_sde(model, x, sigmas, ctx), k_samplers.dpmpp_2m(model, x, sigmas, ctx))
        assert torch.allclose(k_samplers.seeds_2(model, x, sigmas, ctx, r=1.0, solver_type="phi_2"),
                              k_samplers.exp_heun_2_x0(model, x, sigmas, ctx))


def test_rectified_flow_ancestral_noise_keeps_the_flow_interpolation():
    """dpm_2_ancestral and dpmpp_2s_ancestral on CONST with a perfect denoiser (always x0) land on
    (1 - s') x0 + s' noise' at every sigma: the re-noise keeps x on the flow's marginal."""
    ms = model_sampling.flow(shift=3.0)
    x0 = _x(7).float()
    for name in ("dpm_2_ancestral", "dpmpp_2s_ancestral"):
        drawn = []
        source = SeqNoise(SHAPE, seed=4)

        def noiser(a, b):
            drawn.append(source(a, b))
            return drawn[-1]

        start = 0.9 * torch.randn(SHAPE) + 0.1 * x0
        out = k_samplers.SAMPLERS[name](lambda x, s: x0, start, [0.9, 0.5], StepContext(ms, noiser, eta=1.0))
        down = 0.5 * 0.5 / 0.9
        alpha_ratio = 0.5 / (1 - down)
        renoise = (0.25 - down ** 2 * 0.25 / (1 - down) ** 2) ** 0.5
        expected = alpha_ratio * ((down / 0.9) * start + (1 - down / 0.9) * x0) + renoise * drawn[0]
        assert torch.allclose(out, expected, atol=1e-5), name
        # the signal part: (1 - 0.5) x0 exactly, the rest unit-variance-scaled noise
        assert torch.allclose(alpha_ratio * (1 - down) * x0, 0.5 * x0)


# ---- every name through KSampler on every model-sampling type --------------------------------

@pytest.fixture(scope="module")
def sd1(tiny_models):
    from genloom.diffusion.models.loading import load_diffusers_folder

    bundle = load_diffusers_folder(tiny_models / "diffusers" / "tiny-sd1")
    pos, pooled = bundle.clip.encode("a red circle")
    neg, npooled = bundle.clip.encode("")
    return bundle.model, ([[pos, {"pooled_output": pooled}]], [[neg, {"pooled_output": npooled}]])


SAMPLINGS = {"eps": lambda: None, "v_prediction": lambda: model_sampling.discrete("v_prediction"),
             "const": lambda: model_sampling.flow(shift=3.0)}


NOISY = ("ancestral", "sde", "ddpm", "lcm", "seeds", "sa_solver")  # names that draw noise per step


@pytest.mark.parametrize("kind", sorted(SAMPLINGS))
def test_every_sampler_runs_on_every_model_sampling(sd1, tmp_folders, kind):
    """Two steps of every name: a finite, non-trivial latent, the same again for the same seed."""
    ms = SAMPLINGS[kind]()
    base, (pos, neg) = sd1
    model = base if ms is None else base.with_sampling(ms)

    def run(name):
        return loop.sample(model, pos, neg, {"samples": torch.zeros(1, 4, 4, 4)}, seed=5, steps=2, cfg=1.0,
                           sampler_name=name, scheduler="simple")["samples"]

    failures = []
    for name in k_samplers.SAMPLER_NAMES:
        if name.endswith("_gpu"):
            continue
        out = run(name)
        ok = bool(torch.isfinite(out).all()) and float(out.abs().max()) > 0
        if ok and any(part in name for part in NOISY):
            ok = torch.equal(out, run(name))
        if not ok:
            failures.append(name)
    assert not failures


# ---- uni_pc against diffusers' UniPC --------------------------------------------------------

@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_uni_pc_equals_diffusers_unipc(variant):
    """Where the two coincide: the same sigmas (diffusers' own, ending at its smallest sigma, so no
    0.001 stand-in for sigma 0), data prediction, order 3 lowered at the end, B(h) = variant."""
    import diffusers

    sched = diffusers.UniPCMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                              solver_order=3, solver_type=variant, predict_x0=True,
                                              final_sigmas_type="sigma_min", lower_order_final=True)
    sched.set_timesteps(7)
    sigmas, timesteps = sched.sigmas.double().tolist(), sched.timesteps.tolist()
    conv = torch.nn.Conv2d(4, 4, 3, padding=1).double()
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.3)

    def eps(x_vp, t):
        return torch.tanh(conv(x_vp)) + 0.001 * float(t)

    def denoiser(x, s):  # the same network seen through the denoiser wrapper, at diffusers' timestep
        t = timesteps[min(range(len(timesteps)), key=lambda k: abs(sigmas[k] - s))]
        return x - s * eps(x / math.sqrt(1 + s * s), t)

    x_vp = _x(11)
    with torch.no_grad():
        ref = x_vp.clone()
        for t in sched.timesteps:
            ref = sched.step(eps(ref, t), t, ref).prev_sample
        ours = k_samplers.SAMPLERS["uni_pc" if variant == "bh1" else "uni_pc_bh2"](
            denoiser, x_vp * math.sqrt(1 + sigmas[0] ** 2), sigmas, StepContext(model_sampling.discrete("eps"), None))
    ours_vp = ours / math.sqrt(1 + sigmas[-1] ** 2)
    assert (ours_vp - ref).abs().max() < 1e-5 * max(1.0, float(ref.abs().max()))


def test_sampler_nodes_give_runnable_samplers(sd1, tmp_folders):
    """The option-taking SAMPLER nodes run through SamplerCustomAdvanced; ER-SDE's ODE form turns
    the noise off, SamplerSASolver passes its interval and orders."""
    from genloom.nodes import custom_sampling as cs

    model, (pos, neg) = sd1
    guider = cs.CFGGuider().run(model, pos, neg, 2.0)[0]
    sigmas = cs.BasicScheduler().run(model, "karras", 3, 1.0)[0]
    latent = {"samples": torch.zeros(1, 4, 4, 4)}
    samplers = [cs.SamplerEulerAncestralCFGPP().run(0.5, 1.0)[0],
                cs.SamplerDPMAdaptative().run(2, 0.1, 0.01, 0.1, 0.0, 1.0, 0.0, 0.81, 0.0, 1.0)[0],
                cs.SamplerER_SDE().run("ODE", 2, 1.0, 1.0)[0],
                cs.SamplerER_SDE().run("Reverse-time SDE", 3, 0.5, 1.0)[0],
                cs.SamplerSASolver().run(model, 0.5, 0.1, 0.9, 1.0, 2, 2, True, True)[0],
                cs.SamplerSEEDS2().run("phi_2", 1.0, 1.0, 0.5)[0]]
    assert dict(samplers[2].options)["s_noise"] == 0.0 and dict(samplers[2].options)["eta"] == 0.0
    assert samplers[4].name == "sa_solver" and dict(samplers[4].options) == {
        "eta": 0.5, "sde_start_percent": 0.1, "sde_end_percent": 0.9, "s_noise": 1.0, "predictor_order": 2,
        "corrector_order": 2, "use_pece": True, "simple_order_2": True}
    for sampler in samplers:
        out = cs.SamplerCustomAdvanced().run(cs.RandomNoise().run(1)[0], guider, sampler, sigmas, latent)[0]
        assert bool(torch.isfinite(out["samples"]).all()) and float(out["samples"].abs().max()) > 0, sampler.name


def test_seeds_2_stochastic_step_written_out():
    """SEEDS-2 (phi_1, r = 1/2, eta 1) on EPS: the first stage decays x by e^(-r h eta) and adds
    sqrt(1 - e^(-2 r h eta)) noise; the second carries that noise over the rest of the step."""
    ms = model_sampling.discrete("eps")
    model = gaussian_denoiser(False)
    x = _x(5)
    draws = [torch.randn(SHAPE, generator=torch.Generator().manual_seed(k), dtype=torch.float64) for k in range(4)]
    queue = list(draws)
    got = k_samplers.seeds_2(model, x * 8, [8.0, 2.0, 0.5], StepContext(ms, lambda a, b: queue.pop(0), eta=1.0))
    xs, k = x * 8, 0
    for s, t in ((8.0, 2.0), (2.0, 0.5)):
        h = math.log(s / t)  # lambda = -log(sigma)
        s1 = math.exp(-(-math.log(s) + 0.5 * h))
        d = model(xs, s)
        x2 = s1 / s * math.exp(-0.5 * h) * xs - math.expm1(-0.5 * 2 * h) * d
        n = math.sqrt(-math.expm1(-h)) * draws[k]
        d2 = model(x2 + n * s1, s1)
        mixed = d + (d2 - d)  # lerp with weight 1 / (2 r) = 1
        xs = t / s * math.exp(-h) * xs - math.expm1(-2 * h) * mixed
        n = n * math.exp(-0.5 * h) + math.sqrt(-math.expm1(-h)) * draws[k + 1]
        xs, k = xs + n * t, k + 2
    assert torch.allclose(got, xs, atol=1e-9)


def test_ddim_is_euler_except_for_its_inpaint_noise(sd1, tmp_folders):
    """ComfyUI's ddim is Euler, but under a noise mask it noises the kept region with noise of seed + 1."""
    model, (pos, neg) = sd1
    source = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(1, 4, 4)
    mask[:, :, 2:] = 1.0

    def run(name, latent):
        return loop.sample(model, pos, neg, latent, seed=9, steps=2, cfg=1.0, sampler_name=name,
                           scheduler="normal")["samples"]

    plain = {"samples": source}
    assert torch.equal(run("ddim", plain), run("euler", plain))
    masked = {"samples": source, "noise_mask": mask}
    a, b = run("ddim", masked), run("euler", masked)
    assert torch.allclose(a[..., :2], source[..., :2], atol=1e-5) and torch.allclose(b[..., :2], source[..., :2], atol=1e-5)
    assert not torch.allclose(a[..., 2:], b[..., 2:], atol=1e-4)
