"""ModelSamplingDiscrete (eps, v_prediction, lcm, x0, img_to_img; zsnr) and
ModelSamplingContinuousEDM (v_prediction, edm, edm_playground_v2.5, eps, cosmos_rflow): their
signatures against ComfyUI's (comfy_extras/nodes_model_advanced.py), their tables and formulas
against arithmetic written here, and one sampling step of each mode on the tiny SD1 UNet against
the UNet called directly and the mode's formula applied in the test."""

import math
from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from genloom.diffusion.sampling import model_sampling  # noqa: E402
from genloom.nodes import custom_sampling as cs  # noqa: E402
from genloom.nodes import model_sampling as msn  # noqa: E402

PLAYGROUND_MEAN = torch.tensor([-1.6574, 1.886, -1.383, 2.5155]).reshape(1, 4, 1, 1)
PLAYGROUND_STD = torch.tensor([8.4927, 5.9022, 6.5498, 5.2299]).reshape(1, 4, 1, 1)


@pytest.fixture(scope="module")
def sd1(tiny_models):
    from genloom.diffusion.models.loading import load_diffusers_folder

    return load_diffusers_folder(tiny_models / "diffusers" / "tiny-sd1")


def sd1_table(zsnr=False):
    """SD1's 1000 noise levels from its betas (float64), optionally rescaled to zero terminal SNR."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    cumprod = torch.cumprod(1 - betas, 0)
    if zsnr:
        root = cumprod.sqrt()
        first, last = root[0].item(), root[-1].item()
        cumprod = ((root - last) * first / (first - last)) ** 2
        cumprod[-1] = 4.8973451890853435e-08
    return ((1 - cumprod) / cumprod) ** 0.5


def test_signatures_match_comfyui():
    info = msn.ModelSamplingDiscrete.schema().object_info()
    req = info["input"]["required"]
    assert info["input_order"]["required"] == ["model", "sampling", "zsnr"] and info["output"] == ["MODEL"]
    assert req["sampling"][0] == ["eps", "v_prediction", "lcm", "x0", "img_to_img"]
    assert req["zsnr"][0] == "BOOLEAN" and req["zsnr"][1]["default"] is False
    info = msn.ModelSamplingContinuousEDM.schema().object_info()
    req = info["input"]["required"]
    assert info["input_order"]["required"] == ["model", "sampling", "sigma_max", "sigma_min"]
    assert req["sampling"][0] == ["v_prediction", "edm", "edm_playground_v2.5", "eps", "cosmos_rflow"]
    for name, default in (("sigma_max", 120.0), ("sigma_min", 0.002)):
        opts = req[name][1]
        assert (opts["default"], opts["min"], opts["max"], opts["step"]) == (default, 0.0, 1000.0, 0.001)
    assert info["category"] == "advanced/model" and info["output"] == ["MODEL"]


def test_discrete_modes_tables_and_formulas(sd1):
    model = sd1.model
    table = sd1_table()
    (lcm,) = msn.ModelSamplingDiscrete().run(model, "lcm", False)
    ms = model_sampling.of_model(lcm)
    assert model.sampling is None and lcm.unet is model.unet  # a patched copy
    # LCM: 50 levels, the training levels 19, 39, ..., 999; timestep = index * 20 + 19
    assert torch.allclose(ms.sigmas, table[19::20].float(), rtol=1e-6)
    assert [float(ms.timestep(ms.sigmas[i])) for i in (0, 10, 49)] == [19.0, 219.0, 999.0]
    low, high = math.log(table[499]), math.log(table[519])  # percent 0.5: timestep 499.5, level 24.025
    assert math.isclose(ms.percent_to_sigma(0.5), math.exp(low + 0.025 * (high - low)), rel_tol=1e-5)
    x, out = torch.full((1, 4, 2, 2), 3.0), torch.full((1, 4, 2, 2), 0.5)
    sigma = float(ms.sigmas[0])
    st = 19 * 10.0  # the LCM boundary condition: sigma_data 0.5, timestep scaled by 10
    c_skip, c_out = 0.25 / (st ** 2 + 0.25), st / (st ** 2 + 0.25) ** 0.5
    assert torch.allclose(ms.calculate_denoised(sigma, out, x), c_out * (x - out * sigma) + c_skip * x)
    assert torch.allclose(ms.calculate_input(sigma, x), x / (sigma ** 2 + 1) ** 0.5)
    (x0,) = msn.ModelSamplingDiscrete().run(model, "x0", False)
    (i2i,) = msn.ModelSamplingDiscrete().run(model, "img_to_img", False)
    for patched, scaled in ((x0, True), (i2i, False)):
        m = model_sampling.of_model(patched)
        assert torch.equal(m.calculate_denoised(2.0, out, x), out)
        assert torch.allclose(m.calculate_input(2.0, x), x / 5 ** 0.5 if scaled else x)
        assert torch.allclose(m.noise_scaling(2.0, out, x), x + 2.0 * out)
    (zsnr,) = msn.ModelSamplingDiscrete().run(model, "v_prediction", True)
    zms = model_sampling.of_model(zsnr)
    assert zms.prediction == "v_prediction" and torch.allclose(zms.sigmas, sd1_table(zsnr=True).float(), rtol=1e-5)
    # zsnr off means off, even where the model's own config asks for it (as ComfyUI's node)
    asks = replace(model, scheduler_config={**model.scheduler_config, "rescale_betas_zero_snr": True})
    assert float(model_sampling.of_model(asks).sigmas[-1]) > 1000
    (plain,) = msn.ModelSamplingDiscrete().run(asks, "eps", False)
    assert torch.allclose(model_sampling.of_model(plain).sigmas, table.float(), rtol=1e-6)
    (lcm_z,) = msn.ModelSamplingDiscrete().run(model, "lcm", True)  # zsnr first, then the 50 levels
    assert torch.allclose(model_sampling.of_model(lcm_z).sigmas, sd1_table(zsnr=True)[19::20].float(), rtol=1e-5)


def test_continuous_edm_modes():
    from genloom.diffusion.sampling import latent_formats

    x, out = torch.full((1, 4, 2, 2), 3.0), torch.full((1, 4, 2, 2), 0.5)
    for mode, sd in (("v_prediction", 1.0), ("edm", 0.5), ("edm_playground_v2.5", 0.5), ("eps", 1.0)):
        ms = model_sampling.edm("edm" if mode.startswith("edm") else mode, 0.002, 120.0,
                                sigma_data=0.5 if mode.startswith("edm") else 1.0)
        assert ms.sigma_data == sd and math.isclose(float(ms.timestep(2.0)), 0.25 * math.log(2.0), rel_tol=1e-6)
    edm = model_sampling.edm("edm", 0.002, 120.0, sigma_data=0.5)
    s = 2.0
    want = x * 0.25 / (s * s + 0.25) + out * s * 0.5 / (s * s + 0.25) ** 0.5
    assert torch.allclose(edm.calculate_denoised(s, out, x), want)
    cosmos = model_sampling.edm("cosmos_rflow", 0.002, 120.0)
    assert cosmos.table == "cosmos" and math.isclose(float(cosmos.timestep(3.0)), 0.75)
    assert math.isclose(float(cosmos.sigma(torch.tensor(0.75))), 3.0, rel_tol=1e-6)
    assert math.isclose(float(cosmos.sigma(torch.tensor(0.9999))), 120.0, rel_tol=1e-5)  # capped at sigma_max
    assert torch.allclose(cosmos.calculate_input(3.0, x), x * 0.25)
    assert torch.allclose(cosmos.calculate_denoised(3.0, out, x), x * 0.25 - out * 0.75)
    assert torch.allclose(cosmos.noise_scaling(120.0, out, x, max_denoise=True), x + 120.0 * out)
    lo, hi = math.log(0.002), math.log(120.0)
    assert math.isclose(cosmos.percent_to_sigma(0.25), math.exp(lo + 0.75 * (hi - lo)), rel_tol=1e-5)
    fmt = latent_formats.PLAYGROUND_2_5
    assert torch.allclose(fmt.process_in(x), (x - PLAYGROUND_MEAN) * 0.5 / PLAYGROUND_STD)
    assert torch.allclose(fmt.process_out(fmt.process_in(x)), x, atol=1e-6)


def _one_step(patched, pos, sigma: float, seed: int = 5):
    """SamplerCustomAdvanced: one Euler step from `sigma` to 0 (= the denoised estimate)."""
    latent = {"samples": torch.zeros(1, 4, 6, 6)}
    (guider,) = cs.BasicGuider().run(patched, pos)
    out, _ = cs.SamplerCustomAdvanced().run(cs.RandomNoise().run(seed)[0], guider,
                                            cs.KSamplerSelect().run("euler")[0],
                                            torch.tensor([sigma, 0.0]), latent)
    return out["samples"], torch.randn((1, 4, 6, 6), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("node, mode", [("discrete", "lcm"), ("discrete", "x0"), ("discrete", "img_to_img"),
                                        ("edm", "edm"), ("edm", "edm_playground_v2.5"), ("edm", "eps"),
                                        ("edm", "v_prediction"), ("edm", "cosmos_rflow")])
def test_one_step_on_the_unet(sd1, tmp_folders, node, mode):
    model = sd1.model
    emb, _ = sd1.clip.encode("a red circle")
    if node == "discrete":
        (patched,) = msn.ModelSamplingDiscrete().run(model, mode, False)
        sigma = float(sd1_table()[219 if mode == "lcm" else 400].float())
        t, sd = 219.0 if mode == "lcm" else 400.0, 1.0
    else:
        (patched,) = msn.ModelSamplingContinuousEDM().run(model, mode, 120.0, 0.002)
        sigma = 2.0
        sd = 0.5 if mode.startswith("edm") else 1.0
        t = sigma / (sigma + 1) if mode == "cosmos_rflow" else 0.25 * math.log(sigma)
    got, noise = _one_step(patched, [[emb, {}]], sigma)
    playground = mode == "edm_playground_v2.5"
    start = (-PLAYGROUND_MEAN * 0.5 / PLAYGROUND_STD).expand(1, 4, 6, 6) if playground else torch.zeros(1, 4, 6, 6)
    x = start + noise * sigma
    if mode == "img_to_img":
        x_in = x
    elif mode == "cosmos_rflow":
        x_in = x * (1 - sigma / (sigma + 1))
    else:
        x_in = x / (sigma ** 2 + sd ** 2) ** 0.5
    with torch.no_grad():
        net = model.unet(x_in, torch.tensor([t]), encoder_hidden_states=emb).sample
    if mode == "lcm":
        st = t * 10
        denoised = (x - net * sigma) * st / (st ** 2 + 0.25) ** 0.5 + x * 0.25 / (st ** 2 + 0.25)
    elif mode in ("x0", "img_to_img"):
        denoised = net
    elif mode == "eps":
        denoised = x - net * sigma
    elif mode == "cosmos_rflow":
        s = sigma / (sigma + 1)
        denoised = x * (1 - s) - net * s
    else:
        sign = -1.0 if mode == "v_prediction" else 1.0
        denoised = x * sd ** 2 / (sigma ** 2 + sd ** 2) + sign * net * sigma * sd / (sigma ** 2 + sd ** 2) ** 0.5
    want = denoised * PLAYGROUND_STD / 0.5 + PLAYGROUND_MEAN if playground else denoised / 0.18215
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), (mode, float((got - want).abs().max()))
