"""The custom-sampling nodes: SamplerCustomAdvanced built from RandomNoise, KSamplerSelect,
BasicScheduler and CFGGuider equals KSampler; the SIGMAS nodes against arithmetic written here."""

import math

import pytest

torch = pytest.importorskip("torch")

from genloom.nodes import custom_sampling as cs  # noqa: E402
from genloom.nodes.ksampler import KSampler  # noqa: E402


def _load(tiny_models, name):
    from genloom.diffusion.models.loading import load_diffusers_folder

    return load_diffusers_folder(tiny_models / "diffusers" / name)


@pytest.fixture(scope="module")
def models(tiny_models):
    return {"sd1": _load(tiny_models, "tiny-sd1"), "sdxl": _load(tiny_models, "tiny-sdxl")}


def _conds(bundle):
    pos, pooled = bundle.clip.encode("a red circle")
    neg, npooled = bundle.clip.encode("")
    return [[pos, {"pooled_output": pooled}]], [[neg, {"pooled_output": npooled}]]


PAIRS = [("euler", "normal"), ("dpmpp_2m", "karras"), ("euler_ancestral", "simple"),
         ("dpmpp_2m_sde", "exponential"), ("heun", "beta"), ("lcm", "sgm_uniform")]


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_sampler_custom_advanced_equals_ksampler(models, tmp_folders, kind):
    bundle = models[kind]
    model = bundle.model
    pos, neg = _conds(bundle)
    latent = {"samples": torch.zeros(1, 4, 6, 6)}
    for sampler, schedule in PAIRS:
        (ref,) = KSampler().run(model, 21, 3, 4.0, sampler, schedule, pos, neg, latent, 1.0)
        (noise,) = cs.RandomNoise().run(21)
        (guider,) = cs.CFGGuider().run(model, pos, neg, 4.0)
        (smp,) = cs.KSamplerSelect().run(sampler)
        (sigmas,) = cs.BasicScheduler().run(model, schedule, 3, 1.0)
        out, denoised = cs.SamplerCustomAdvanced().run(noise, guider, smp, sigmas, latent)
        assert torch.equal(out["samples"], ref["samples"]), (kind, sampler, schedule)
        assert denoised["samples"].shape == out["samples"].shape
        # SamplerCustom (cfg and noise given inline) is the same run.
        custom, _ = cs.SamplerCustom().run(model, True, 21, 4.0, pos, neg, smp, sigmas, latent)
        assert torch.equal(custom["samples"], ref["samples"])


def test_an_image_model_samples_a_one_frame_video_latent(models, tmp_folders):
    """A video VAE's one-frame latent [B, C, 1, h, w] (Qwen-Image's VAE is Wan's) samples as the image
    latent it holds and comes back in the shape it came in, the denoised output too."""
    model = models["sd1"].model
    pos, neg = _conds(models["sd1"])
    source = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(3))
    (ref,) = KSampler().run(model, 7, 2, 3.0, "euler", "normal", pos, neg, {"samples": source}, 0.6)
    (five,) = KSampler().run(model, 7, 2, 3.0, "euler", "normal", pos, neg, {"samples": source[:, :, None]}, 0.6)
    assert five["samples"].shape == (1, 4, 1, 6, 6)
    assert torch.equal(five["samples"][:, :, 0], ref["samples"])
    (noise,) = cs.RandomNoise().run(7)
    (guider,) = cs.CFGGuider().run(model, pos, neg, 3.0)
    (sigmas,) = cs.BasicScheduler().run(model, "normal", 2, 0.6)
    out, denoised = cs.SamplerCustomAdvanced().run(noise, guider, cs.KSamplerSelect().run("euler")[0], sigmas,
                                                   {"samples": source[:, :, None]})
    assert torch.equal(out["samples"], five["samples"]) and denoised["samples"].shape == (1, 4, 1, 6, 6)
    with pytest.raises(Exception, match="takes"):
        KSampler().run(model, 7, 2, 3.0, "euler", "normal", pos, neg, {"samples": torch.zeros(1, 4, 2, 6, 6)}, 1.0)


def test_denoise_and_split_sigmas_match_ksampler_semantics(models, tmp_folders):
    model = models["sd1"].model
    pos, neg = _conds(models["sd1"])
    source = {"samples": torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(4))}
    (ref,) = KSampler().run(model, 5, 4, 3.0, "euler", "karras", pos, neg, source, 0.5)
    (sig,) = cs.BasicScheduler().run(model, "karras", 4, 0.5)
    (full,) = cs.BasicScheduler().run(model, "karras", 8, 1.0)
    assert torch.equal(sig, full[-5:])
    (smp,) = cs.KSamplerSelect().run("euler")
    out, _ = cs.SamplerCustom().run(model, True, 5, 3.0, pos, neg, smp, sig, source)
    assert torch.equal(out["samples"], ref["samples"])
    # Two SamplerCustomAdvanced halves over SplitSigmas equal one run (DisableNoise for the second).
    (sig,) = cs.BasicScheduler().run(model, "normal", 4, 1.0)
    high, low = cs.SplitSigmas().run(sig, 2)
    assert torch.equal(high, sig[:3]) and torch.equal(low, sig[2:])
    (guider,) = cs.CFGGuider().run(model, pos, neg, 3.0)
    empty = {"samples": torch.zeros(1, 4, 6, 6)}
    one, _ = cs.SamplerCustomAdvanced().run(cs.RandomNoise().run(9)[0], guider, smp, sig, empty)
    first, _ = cs.SamplerCustomAdvanced().run(cs.RandomNoise().run(9)[0], guider, smp, high, empty)
    second, _ = cs.SamplerCustomAdvanced().run(cs.DisableNoise().run()[0], guider, smp, low, first)
    assert (second["samples"] - one["samples"]).abs().max() < 1e-4


def test_basic_guider_is_cfg_one(models, tmp_folders):
    model = models["sd1"].model
    pos, neg = _conds(models["sd1"])
    latent = {"samples": torch.zeros(1, 4, 6, 6)}
    (ref,) = KSampler().run(model, 3, 2, 1.0, "euler", "normal", pos, neg, latent, 1.0)
    (guider,) = cs.BasicGuider().run(model, pos)
    (sig,) = cs.BasicScheduler().run(model, "normal", 2, 1.0)
    out, _ = cs.SamplerCustomAdvanced().run(cs.RandomNoise().run(3)[0], guider,
                                            cs.KSamplerSelect().run("euler")[0], sig, latent)
    assert torch.equal(out["samples"], ref["samples"])


def test_sigma_nodes_written_out():
    (k,) = cs.KarrasScheduler().run(3, 10.0, 0.1, 7.0)
    assert torch.allclose(k, torch.tensor([10.0, ((10 ** (1 / 7) + 0.1 ** (1 / 7)) / 2) ** 7, 0.1, 0.0]))
    (e,) = cs.ExponentialScheduler().run(3, 10.0, 0.1)
    assert torch.allclose(e, torch.tensor([10.0, 1.0, 0.1, 0.0]))
    (p,) = cs.PolyexponentialScheduler().run(3, 10.0, 0.1, 1.0)
    assert torch.allclose(p, e)
    (vp,) = cs.VPScheduler().run(2, 19.9, 0.1, 0.001)
    assert math.isclose(float(vp[0]), math.sqrt(math.exp(19.9 / 2 + 0.1) - 1), rel_tol=1e-5)
    (lp,) = cs.LaplaceScheduler().run(3, 10.0, 0.1, 0.0, 0.5)
    assert math.isclose(float(lp[1]), 1.0, rel_tol=1e-4) and lp[-1] == 0  # the middle sits at e^mu
    (m,) = cs.ManualSigmas().run("14.6, 3,1.5e-1 0")
    assert torch.allclose(m, torch.tensor([14.6, 3.0, 0.15, 0.0]))
    (f,) = cs.FlipSigmas().run(m)
    assert torch.allclose(f, torch.tensor([0.0001, 0.15, 3.0, 14.6]))
    (s,) = cs.SetFirstSigma().run(m, 20.0)
    assert float(s[0]) == 20.0 and float(m[0]) == pytest.approx(14.6)  # input untouched
    high, low = cs.SplitSigmasDenoise().run(torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0]), 0.5)
    assert high.tolist() == [4.0, 3.0, 2.0] and low.tolist() == [2.0, 1.0, 0.0]


def test_turbo_and_beta_schedules_read_the_model(models):
    from genloom.diffusion.sampling import model_sampling, sigma_schedules

    model = models["sd1"].model
    ms = model_sampling.of_model(model)
    (turbo,) = cs.SDTurboScheduler().run(model, 2, 1.0)
    assert torch.allclose(turbo, torch.tensor([float(ms.sigmas[999]), float(ms.sigmas[899]), 0.0]))
    (beta,) = cs.BetaSamplingScheduler().run(model, 5, 0.6, 0.6)
    assert torch.equal(beta, sigma_schedules.beta(ms, 5))


def test_add_noise_and_disabled_noise(models, tmp_folders):
    model = models["sd1"].model
    latent = {"samples": torch.ones(2, 4, 3, 3)}
    sigmas = torch.tensor([5.0, 1.0, 0.0])
    (noised,) = cs.AddNoise().run(model, cs.RandomNoise().run(4)[0], sigmas, latent)
    noise = torch.randn((2, 4, 3, 3), generator=torch.Generator().manual_seed(4))
    expected = (0.18215 + 5.0 * noise) / 0.18215  # noised in the model's space (SD1 scale 0.18215)
    assert torch.allclose(noised["samples"], expected)
    (same,) = cs.AddNoise().run(model, cs.DisableNoise().run()[0], sigmas, latent)
    assert torch.allclose(same["samples"], latent["samples"], atol=1e-6)
    assert cs.KSamplerSelect().run("uni_pc")[0].name == "uni_pc"  # every name runs in sigma space


def test_model_sampling_nodes_return_patched_copies(models):
    from genloom.diffusion.sampling import model_sampling
    from genloom.nodes import model_sampling as msn

    model = models["sd1"].model
    (sd3,) = msn.ModelSamplingSD3().run(model, 3.0)
    assert model.sampling is None and sd3 is not model and sd3.unet is model.unet
    ms = model_sampling.of_model(sd3)
    assert ms.prediction == "const" and math.isclose(float(ms.sigma(500.0)), 1.5 / 2.0, rel_tol=1e-6)
    (aura,) = msn.ModelSamplingAuraFlow().run(model, 1.73)
    assert float(model_sampling.of_model(aura).timestep(0.5)) == 0.5
    (flux,) = msn.ModelSamplingFlux().run(model, 1.15, 0.5, 512, 512)
    mu = 0.5 + (1024 - 256) * (1.15 - 0.5) / (4096 - 256)  # 512x512 -> 1024 tokens
    assert math.isclose(model_sampling.of_model(flux).shift, mu, rel_tol=1e-9)
    (v,) = msn.ModelSamplingDiscrete().run(model, "v_prediction", True)
    vms = model_sampling.of_model(v)
    assert vms.prediction == "v_prediction" and float(vms.sigmas[-1]) > 1000
    (edm,) = msn.ModelSamplingContinuousEDM().run(model, "edm", 120.0, 0.002)
    ems = model_sampling.of_model(edm)
    assert math.isclose(ems.sigma_max, 120.0, rel_tol=1e-5) and math.isclose(float(ems.timestep(1.0)), 0.0)
    (sc,) = msn.ModelSamplingStableCascade().run(model, 2.0)
    cms = model_sampling.of_model(sc)
    s0 = 8e-3
    ac = math.cos((0.5 + s0) / (1 + s0) * math.pi / 2) ** 2 / math.cos(s0 / (1 + s0) * math.pi / 2) ** 2
    ac = 1 / (1 + math.exp(-(math.log(ac / (1 - ac)) + 2 * math.log(1 / 2.0))))
    assert math.isclose(float(cms.sigma(torch.tensor(0.5))), ((1 - ac) / ac) ** 0.5, rel_tol=1e-5)
    (sc1,) = msn.ModelSamplingStableCascade().run(model, 1.0)  # unshifted: timestep inverts sigma
    one = model_sampling.of_model(sc1)
    assert math.isclose(float(one.timestep(one.sigma(torch.tensor(0.5)))), 0.5, rel_tol=1e-4)


def test_model_sampling_sd3_runs_through_ksampler(models, tmp_folders):
    from genloom.nodes import model_sampling as msn

    model = models["sd1"].model
    pos, neg = _conds(models["sd1"])
    (flow,) = msn.ModelSamplingSD3().run(model, 3.0)
    latent = {"samples": torch.zeros(1, 4, 6, 6)}
    for sampler in ("euler", "euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde", "lcm"):
        (out,) = KSampler().run(flow, 1, 3, 2.0, sampler, "simple", pos, neg, latent, 1.0)
        assert bool(torch.isfinite(out["samples"]).all()), sampler


def test_conditioning_nodes(models, tmp_folders):
    from genloom.diffusion.sampling import guidance, model_sampling
    from genloom.nodes import conditioning as cn

    bundle = models["sd1"]
    pos, neg = _conds(bundle)
    (late,) = cn.ConditioningSetTimestepRange().run(pos, 0.5, 1.0)
    assert late[0][1]["start_percent"] == 0.5 and "start_percent" not in pos[0][1]
    ms = model_sampling.of_model(bundle.model)
    guide = guidance.prepare_guidance(bundle.model, late, neg, 2.0, (1, 4, 6, 6), "cpu")
    guide.use_sigmas(ms)
    cut = float(ms.sigma(torch.tensor(0.5 * 999.0)))  # percent 0.5 -> sigma, as ComfyUI
    late_job = [i for i, j in enumerate(guide.jobs) if j.group == 0][0]
    assert not guide._live(late_job, 0.0, cut * 1.01) and guide._live(late_job, 0.0, cut * 0.99)
    (avg,) = cn.ConditioningAverage().run(pos, neg, 0.25)
    assert torch.allclose(avg[0][0], pos[0][0] * 0.25 + neg[0][0] * 0.75)
    assert torch.allclose(avg[0][1]["pooled_output"], pos[0][1]["pooled_output"] * 0.25
                          + neg[0][1]["pooled_output"] * 0.75)
    (cat,) = cn.ConditioningConcat().run(pos, neg)
    assert torch.equal(cat[0][0], torch.cat([pos[0][0], neg[0][0]], dim=1))
    (strong,) = cn.ConditioningSetAreaStrength().run(pos, 2.5)
    assert strong[0][1]["strength"] == 2.5
    (masked,) = cn.ConditioningSetMask().run(pos, torch.ones(8, 8), 0.5, "default")
    assert masked[0][1]["mask"].shape == (1, 8, 8) and masked[0][1]["mask_strength"] == 0.5
    # A percentage area resolves to latent cells: the right half of a 6x6 latent.
    (pct,) = cn.ConditioningSetAreaPercentage().run(pos, 0.5, 1.0, 0.5, 0.0, 1.0)
    assert guidance._area(pct[0][1]["area"], 6, 6) == (6, 3, 0, 3)
