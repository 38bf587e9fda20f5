"""genloom's sigma-space samplers against k-diffusion's (the reference implementation), and the model
sampling / schedule arithmetic against values written out here.

k-diffusion's package __init__ imports its training stack; only `sampling.py` (and the `utils.py` it
imports) is loaded, under a bare parent package, so nothing is stubbed.
"""

import importlib.util
import math
import sys
import types

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchsde")

from genloom.diffusion.sampling import k_samplers, model_sampling, sigma_schedules  # noqa: E402
from genloom.diffusion.sampling.sigma_loop import BrownianNoise  # noqa: E402


def _load_k_diffusion_sampling():
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        pytest.skip("k-diffusion is not installed (pip install --no-deps k-diffusion)")
    folder = spec.submodule_search_locations[0]
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    parent = sys.modules.get("k_diffusion")
    if parent is None:
        parent = types.ModuleType("k_diffusion")
        parent.__path__ = [folder]
        sys.modules["k_diffusion"] = parent
    for name in ("utils", "sampling"):
        sub = importlib.util.spec_from_file_location(f"k_diffusion.{name}", f"{folder}/{name}.py")
        module = importlib.util.module_from_spec(sub)
        sys.modules[f"k_diffusion.{name}"] = module
        sub.loader.exec_module(module)
        setattr(parent, name, module)
    return sys.modules["k_diffusion.sampling"]


K = _load_k_diffusion_sampling()


class TinyDenoiser(torch.nn.Module):
    """A small nonlinear 'model' in k-diffusion's convention: D(x, sigma) -> denoised."""

    def __init__(self, ms):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        with torch.no_grad():
            for p in self.conv.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        self.ms = ms

    def forward(self, x, sigma):
        s = float(sigma.reshape(-1)[0]) if torch.is_tensor(sigma) else float(sigma)
        out = torch.tanh(self.conv(self.ms.calculate_input(s, x))) + 0.01 * float(self.ms.timestep(s))
        return self.ms.calculate_denoised(s, out, x)


class SeqNoise:
    """The same noise sequence for both samplers, whatever sigmas they ask about."""

    def __init__(self, shape, seed=5):
        self.gen = torch.Generator().manual_seed(seed)
        self.shape = shape

    def __call__(self, sigma, sigma_next):
        return torch.randn(self.shape, generator=self.gen)


SHAPE = (2, 4, 6, 6)
# genloom name -> (k-diffusion function, extra kwargs, takes a noise sampler)
PAIRS = {
    "euler": ("sample_euler", {}, False),
    "euler_ancestral": ("sample_euler_ancestral", {}, True),
    "heun": ("sample_heun", {}, False),
    "dpm_2": ("sample_dpm_2", {}, False),
    "dpm_2_ancestral": ("sample_dpm_2_ancestral", {}, True),
    "lms": ("sample_lms", {}, False),
    "dpmpp_2s_ancestral": ("sample_dpmpp_2s_ancestral", {}, True),
    "dpmpp_sde": ("sample_dpmpp_sde", {}, True),
    "dpmpp_2m": ("sample_dpmpp_2m", {}, False),
    "dpmpp_2m_sde": ("sample_dpmpp_2m_sde", {}, True),
    "dpmpp_2m_sde_heun": ("sample_dpmpp_2m_sde", {"solver_type": "heun"}, True),
    "dpmpp_3m_sde": ("sample_dpmpp_3m_sde", {}, True),
}


@pytest.mark.parametrize("prediction", ["eps", "v_prediction"])
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_sampler_equals_k_diffusion(name, prediction):
    ms = model_sampling.discrete(prediction)
    model = TinyDenoiser(ms)
    sigmas = sigma_schedules.karras(5, ms.sigma_min, ms.sigma_max)
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)) * float(sigmas[0])
    fn, extra, noisy = PAIRS[name]
    # ComfyUI's lms steps into sigma 0 with the prediction itself (k-diffusion 0.1.1 integrates the
    # polynomial there): k-diffusion runs up to the last non-zero sigma, the final step is checked apart.
    ref_sigmas = sigmas[:-1] if name == "lms" else sigmas
    with torch.no_grad():
        kwargs = dict(extra, disable=True)
        if noisy:
            kwargs["noise_sampler"] = SeqNoise(SHAPE)
        ref = getattr(K, fn)(model, x0.clone(), ref_sigmas, **kwargs)
        if name == "lms":
            ref = model(ref, ref_sigmas[-1])
        ctx = k_samplers.StepContext(ms, SeqNoise(SHAPE))
        ours = k_samplers.SAMPLERS[name](model, x0.clone(), sigmas.tolist(), ctx)
    assert (ours - ref).abs().max() < 2e-5 * max(1.0, float(ref.abs().max()))


@pytest.mark.filterwarnings("ignore:Should have")
def test_brownian_noise_equals_k_diffusion_tree():
    x = torch.zeros(SHAPE)
    ours = BrownianNoise(x, 0.03, 14.6, seed=9)
    ref = K.BrownianTreeNoiseSampler(x, torch.tensor(0.03), torch.tensor(14.6), seed=9)
    for a, b in ((14.6, 5.0), (5.0, 1.1), (1.1, 0.03)):
        assert torch.allclose(ours(a, b), ref(torch.tensor(a), torch.tensor(b)), atol=1e-6)


def test_rectified_flow_euler_ancestral_keeps_the_flow_interpolation():
    """With a perfect denoiser (always x0) the RF ancestral step lands exactly on
    (1 - s') * x0 + s' * noise', the rectified-flow marginal at the next sigma."""
    ms = model_sampling.flow(shift=3.0)
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    sigmas = [0.9, 0.5, 0.0]
    noise = SeqNoise(SHAPE, seed=3)
    start = ms.noise_scaling(0.9, torch.randn(SHAPE), x0)
    drawn = []

    def noiser(s, sn):
        n = noise(s, sn)
        drawn.append(n)
        return n

    ctx = k_samplers.StepContext(ms, noiser, eta=1.0)
    first = k_samplers.euler_ancestral(lambda x, s: x0, start, sigmas[:2], ctx)
    # One step from 0.9 to 0.5: eta 1 puts sigma_down at 0.5 * (1 + (0.5/0.9 - 1)) = 0.2778...
    down = 0.5 * (0.5 / 0.9)
    ratio = down / 0.9
    expected = ratio * start + (1 - ratio) * x0
    expected = (0.5 / (1 - down)) * expected + drawn[0] * (0.25 - down ** 2 * 0.25 / (1 - down) ** 2) ** 0.5
    assert torch.allclose(first, expected, atol=1e-6)
    assert torch.equal(k_samplers.euler_ancestral(lambda x, s: x0, first, [0.5, 0.0], ctx), x0)


def test_ipndm_ddpm_lcm_written_out():
    ms = model_sampling.discrete("eps")
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4)) * 10
    target = torch.full(SHAPE, 0.25)
    model = lambda x, s: target + 0.1 * x / (1 + s)  # noqa: E731
    sig = [10.0, 4.0, 1.5, 0.5, 0.0]
    ctx = k_samplers.StepContext(ms, SeqNoise(SHAPE))
    got = k_samplers.ipndm(model, x.clone(), sig, ctx)
    xs, hist = x.clone(), []
    weights = {1: [1], 2: [3, -1], 3: [23, -16, 5], 4: [55, -59, 37, -9]}
    for i in range(3):
        d = (xs - model(xs, sig[i])) / sig[i]
        order = min(4, i + 1)
        terms = [d] + hist[::-1][:order - 1]
        xs = xs + (sig[i + 1] - sig[i]) * sum(w * t for w, t in zip(weights[order], terms)) / sum(weights[order])
        hist.append(d)
    xs = model(xs, sig[3])  # ComfyUI's step into sigma 0 is the prediction itself
    assert torch.allclose(got, xs, atol=1e-5)
    # lcm: every step predicts x0 and re-noises it to the next sigma.
    noise = SeqNoise(SHAPE, seed=8)
    got = k_samplers.lcm(model, x.clone(), sig, k_samplers.StepContext(ms, SeqNoise(SHAPE, seed=8)))
    xs = x.clone()
    for i in range(4):
        xs = model(xs, sig[i])
        if sig[i + 1] > 0:
            xs = xs + noise(0, 0) * sig[i + 1]
    assert torch.allclose(got, xs, atol=1e-5)
    # ddpm with the last sigma 0 ends at the DDPM mean, which is x0 for a final alpha_prev of 1.
    got = k_samplers.ddpm(model, x.clone(), [10.0, 0.0], ctx)
    assert torch.allclose(got, model(x, 10.0), atol=1e-4)


# ---- model sampling and schedules ------------------------------------------------------------

def test_discrete_table_matches_diffusers_alphas():
    import diffusers

    sched = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                             beta_end=0.012)
    ac = sched.alphas_cumprod
    ms = model_sampling.discrete("eps")
    assert torch.allclose(ms.sigmas, ((1 - ac) / ac) ** 0.5, rtol=3e-5)  # diffusers: float32 cumprod
    assert float(ms.timestep(ms.sigmas[417])) == 417.0
    assert math.isclose(float(ms.sigma(417.5)), math.exp((math.log(ms.sigmas[417]) + math.log(ms.sigmas[418])) / 2),
                        rel_tol=1e-6)
    zsnr = model_sampling.discrete("v_prediction", zsnr=True)
    assert float(zsnr.sigmas[-1]) > 4000 and math.isclose(float(zsnr.sigmas[0]), float(ms.sigmas[0]), rel_tol=1e-4)


def test_flow_and_flux_tables():
    sd3 = model_sampling.flow(shift=3.0)
    t = 0.3
    assert math.isclose(float(sd3.sigma(300.0)), 3 * t / (1 + 2 * t), rel_tol=1e-6)
    assert float(sd3.timestep(0.5)) == 500.0 and sd3.sigma_max == 1.0
    assert math.isclose(sd3.percent_to_sigma(0.25), 3 * 0.75 / (1 + 2 * 0.75), rel_tol=1e-6)
    mu = model_sampling.flux_mu(1024, 1024)
    assert math.isclose(mu, 1.15, rel_tol=1e-9)  # 4096 tokens -> max_shift
    flux = model_sampling.flux(mu)
    assert math.isclose(float(flux.sigma(0.5)), math.exp(mu) / (math.exp(mu) + 1), rel_tol=1e-6)
    x, n, lat = torch.ones(1), torch.full((1,), 2.0), torch.full((1,), 4.0)
    assert float(sd3.noise_scaling(0.25, n, lat)) == 0.25 * 2 + 0.75 * 4
    assert math.isclose(float(sd3.inverse_noise_scaling(0.25, x)), 1 / 0.75, rel_tol=1e-6)


def test_schedules_written_out():
    ms = model_sampling.discrete("eps")
    lo, hi = ms.sigma_min, ms.sigma_max
    assert torch.allclose(sigma_schedules.karras(3, lo, hi),
                          torch.tensor([hi, ((hi ** (1 / 7) + lo ** (1 / 7)) / 2) ** 7, lo, 0.0]), rtol=1e-5)
    assert torch.allclose(sigma_schedules.exponential(3, lo, hi),
                          torch.tensor([hi, math.sqrt(hi * lo), lo, 0.0]), rtol=1e-5)
    simple = sigma_schedules.simple(ms, 4)
    assert torch.equal(simple, torch.tensor([float(ms.sigmas[i]) for i in (999, 749, 499, 249)] + [0.0]))
    ddim = sigma_schedules.ddim_uniform(ms, 4)
    assert torch.equal(ddim, torch.tensor([float(ms.sigmas[i]) for i in (751, 501, 251, 1)] + [0.0]))
    normal = sigma_schedules.normal(ms, 4)
    assert torch.allclose(normal[:4], ms.sigmas[[999, 666, 333, 0]]) and normal[-1] == 0
    sgm = sigma_schedules.normal(ms, 2, sgm=True)
    assert torch.allclose(sgm[:2], torch.stack([ms.sigmas[999], ms.sigma(499.5)]))
    kl = sigma_schedules.kl_optimal(3, lo, hi)
    assert torch.allclose(kl[1], torch.tensor(math.tan((math.atan(lo) + math.atan(hi)) / 2)))
    lq = sigma_schedules.linear_quadratic(ms, 4)
    assert lq.shape == (5,) and math.isclose(float(lq[0]), hi, rel_tol=1e-6) and lq[-1] == 0
    assert math.isclose(float(lq[1]), (1 - 0.025 / 2) * hi, rel_tol=1e-5)
    beta = sigma_schedules.beta(ms, 4)
    assert beta[0] == ms.sigmas[999] and beta[-1] == 0 and bool((beta[:-1].diff() < 0).all())
    for name in sigma_schedules.SCHEDULER_NAMES:
        s = sigma_schedules.calculate_sigmas(model_sampling.flow(shift=3.0), name, 5)
        assert s[-1] == 0 and bool((s.diff() <= 0).all()), name
