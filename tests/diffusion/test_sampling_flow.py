"""Sampling on every model-sampling type through KSampler: a rectified-flow model against diffusers'
FlowMatchEulerDiscreteScheduler, and the two-stage KSamplerAdvanced hand-over for EPS, V and CONST.

The flow model is the tiny SD1 UNet re-declared as rectified flow (its output read as velocity,
sigma * 1000 as its timestep), which is all a sampler can see of a model."""

import pytest

torch = pytest.importorskip("torch")

from genloom.diffusion.sampling import model_sampling  # noqa: E402
from genloom.nodes.ksampler import KSampler, KSamplerAdvanced  # noqa: E402


def _load(tiny_models, name):
    from genloom.diffusion.models.loading import load_diffusers_folder

    return load_diffusers_folder(tiny_models / "diffusers" / name)


@pytest.fixture(scope="module")
def sd1(tiny_models):
    return _load(tiny_models, "tiny-sd1")


@pytest.fixture(scope="module")
def sd2(tiny_models):
    return _load(tiny_models, "tiny-sd2")


def _conds(bundle):
    pos, pooled = bundle.clip.encode("a red circle")
    neg, npooled = bundle.clip.encode("")
    return [[pos, {"pooled_output": pooled}]], [[neg, {"pooled_output": npooled}]]


def _empty():
    return {"samples": torch.zeros(1, 4, 6, 6)}


def test_flow_euler_equals_diffusers_flow_match(sd1, tmp_folders):
    import diffusers

    flow_model = sd1.model.with_sampling(model_sampling.flow(shift=3.0))
    assert sd1.model.sampling is None  # the input is never changed
    pos, neg = _conds(sd1)
    steps, cfg, seed = 5, 2.5, 13
    (ours,) = KSampler().run(flow_model, seed, steps, cfg, "euler", "normal", pos, neg, _empty())

    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(steps)
    x = torch.randn((1, 4, 6, 6), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad(), sd1.model.use("cpu") as unet:
        for t in sched.timesteps:
            both = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([neg[0][0], pos[0][0]])).sample
            uncond, cond = both.chunk(2)
            x = sched.step(uncond + cfg * (cond - uncond), t, x).prev_sample
    ours = ours["samples"] * 0.18215  # LATENT is raw: the model's latent format (SD1's) scales it
    assert (ours - x).abs().max() < 1e-4


def test_flow_sigmas_follow_the_shift(sd1):
    from genloom.diffusion.sampling.loop import ksampler_sigmas

    ms = model_sampling.flow(shift=3.0)
    sig = ksampler_sigmas(ms, "euler", "simple", 4)
    expected = [3 * t / (1 + 2 * t) for t in (1.0, 0.75, 0.5, 0.25)] + [0.0]
    assert torch.allclose(sig, torch.tensor(expected), atol=1e-6)


def _two_stage(model, pos, neg, sampler, schedule):
    common = dict(noise_seed=11, steps=4, cfg=3.0, sampler_name=sampler, scheduler=schedule,
                  positive=pos, negative=neg)
    (full,) = KSamplerAdvanced().run(model, "enable", latent_image=_empty(), start_at_step=0,
                                     end_at_step=10000, return_with_leftover_noise="disable", **common)
    (half,) = KSamplerAdvanced().run(model, "enable", latent_image=_empty(), start_at_step=0,
                                     end_at_step=2, return_with_leftover_noise="enable", **common)
    (done,) = KSamplerAdvanced().run(model, "disable", latent_image=half, start_at_step=2,
                                     end_at_step=10000, return_with_leftover_noise="disable", **common)
    return full["samples"], half["samples"], done["samples"]


@pytest.mark.parametrize("kind", ["eps", "v", "const"])
# Single-step samplers: a multistep one (dpmpp_2m) restarts its history at the hand-over, in ComfyUI too.
@pytest.mark.parametrize("sampler,schedule", [("euler", "normal"), ("heun", "karras")])
def test_two_stage_hand_over_equals_one_run(sd1, sd2, tmp_folders, kind, sampler, schedule):
    bundle = sd2 if kind == "v" else sd1
    model = bundle.model
    if kind == "const":
        model = model.with_sampling(model_sampling.flow(shift=2.0))
    assert model_sampling.of_model(model).prediction == {"eps": "eps", "v": "v_prediction",
                                                         "const": "const"}[kind]
    pos, neg = _conds(bundle)
    full, half, done = _two_stage(model, pos, neg, sampler, schedule)
    assert (done - full).abs().max() < 1e-4 * max(1.0, float(full.abs().max()))
    assert (half - full).abs().max() > 0.05  # really was unfinished


def test_vae_latents_are_raw_and_round_trip(sd1, tmp_folders):
    """VAEEncode gives the VAE's own latent (no 0.18215), VAEDecode decodes it: the picture is the
    diffusers VAE's decode of its posterior mean, as before the latent format moved to the MODEL."""
    from genloom.nodes.latent import VAEDecode, VAEEncode

    pixels = torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(6))
    (lat,) = VAEEncode().run(pixels, sd1.vae)
    (back,) = VAEDecode().run(lat, sd1.vae)
    with torch.no_grad():
        mean = sd1.vae.vae.encode(pixels.movedim(-1, 1) * 2 - 1).latent_dist.mean
        ref = ((sd1.vae.vae.decode(mean).sample + 1) / 2).clamp(0, 1).movedim(1, -1)
    assert torch.allclose(lat["samples"], mean, atol=1e-6)
    assert torch.allclose(back, ref, atol=1e-6)


def test_latent_formats_written_out():
    from genloom.diffusion.sampling import latent_formats as lf

    x = torch.full((1, 16, 2, 2), 0.5)
    assert torch.allclose(lf.SD3.process_in(x), (x - 0.0609) * 1.5305)
    assert torch.allclose(lf.FLUX.process_out(lf.FLUX.process_in(x)), x)
    per_channel = lf.LatentFormat(1.0, mean=(0.1, -0.2), std=(2.0, 0.5), channels=2)
    y = torch.ones(1, 2, 1, 1)
    assert per_channel.process_in(y).flatten().tolist() == pytest.approx([0.45, 2.4])
    assert torch.allclose(per_channel.process_out(per_channel.process_in(y)), y)
    assert lf.of_model(type("M", (), {"kind": "sdxl"})()) is lf.SDXL
