"""The sampling library (genloom.diffusion.sampling) and the KSampler nodes on the tiny models: names,
schedules, stepping, masks, areas, seeds, previews and interrupts."""

import pytest

torch = pytest.importorskip("torch")

from genloom.diffusion.errors import SamplingError  # noqa: E402
from genloom.diffusion.sampling import guidance, k_samplers, loop, preview, schedulers  # noqa: E402
from genloom.diffusion.sampling.noise import initial_noise  # noqa: E402
from genloom.engine import context  # noqa: E402
from genloom.nodes.ksampler import KSampler, KSamplerAdvanced  # noqa: E402


@pytest.fixture(scope="module")
def sd1(tiny_models):
    from genloom.diffusion.models.loading import load_diffusers_folder

    return load_diffusers_folder(tiny_models / "diffusers" / "tiny-sd1")


@pytest.fixture(scope="module")
def conds(sd1):
    def encode(text):
        cond, pooled = sd1.clip.encode(text)
        return [[cond, {"pooled_output": pooled}]]

    return {"pos": encode("a red circle"), "neg": encode(""), "other": encode("a blue square")}


@pytest.fixture
def ctx(tmp_folders):
    tmp_folders.options = {"preview_interval": 0.0}
    events = []
    tmp_folders.emit = lambda event, data: events.append((event, data))
    tmp_folders.events = events
    return tmp_folders


def empty(b=1, size=4):
    return {"samples": torch.zeros(b, 4, size, size)}


def run(sd1, conds, latent=None, **kw):
    args = dict(seed=7, steps=3, cfg=3.0, sampler_name="euler", scheduler="normal")
    args.update(kw)
    return loop.sample(sd1.model, conds["pos"], conds["neg"], latent or empty(), **args)["samples"]


# ---- name tables ------------------------------------------------------------------------------

def test_tables_offer_every_comfyui_name():
    assert schedulers.SAMPLER_NAMES == schedulers.COMFY_SAMPLER_NAMES == k_samplers.SAMPLER_NAMES
    assert set(k_samplers.SAMPLERS) == set(schedulers.SAMPLER_NAMES)
    assert schedulers.SCHEDULER_NAMES == ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform",
                                          "beta", "normal", "linear_quadratic", "kl_optimal"]


def test_unknown_names_are_a_clear_error():
    with pytest.raises(SamplingError, match="dpm_turbo.*not supported.*euler"):
        schedulers.check_names("dpm_turbo", "normal")
    with pytest.raises(SamplingError, match="'wobbly' is not supported.*karras"):
        schedulers.check_names("euler", "wobbly")


def test_latent_of_the_wrong_shape_is_a_clear_error(sd1, conds, ctx):
    with pytest.raises(SamplingError, match=r"latent_image has shape \(1, 3, 4, 4\).*\[batch, 4,"):
        run(sd1, conds, {"samples": torch.ones(1, 3, 4, 4)})
    # An EMPTY latent with too few channels is widened with zeros, as ComfyUI does.
    assert run(sd1, conds, {"samples": torch.zeros(1, 3, 4, 4)}, steps=1).shape == (1, 4, 4, 4)


# ---- sampling ---------------------------------------------------------------------------------

# Every schedule with euler here; every sampler on every model-sampling type is in
# test_sampling_kdiffusion_more.py.
PAIRS = [("euler", s) for s in schedulers.SCHEDULER_NAMES] + [("dpmpp_2m_sde", "karras"), ("uni_pc", "normal")]
STOCHASTIC = ("dpmpp_2m_sde",)


def test_every_sampler_and_schedule_denoises_deterministically(sd1, conds, ctx):
    failures = []
    for sampler, schedule in PAIRS:
        out = run(sd1, conds, sampler_name=sampler, scheduler=schedule, steps=2, cfg=1.0)
        ok = out.shape == (1, 4, 4, 4) and out.device.type == "cpu" and bool(torch.isfinite(out).all())
        if sampler in STOCHASTIC:  # same seed, same image, ancestral noise included
            ok = ok and torch.equal(out, run(sd1, conds, sampler_name=sampler, scheduler=schedule,
                                             steps=2, cfg=1.0))
        if not ok:
            failures.append((sampler, schedule))
    assert not failures


def test_seed_noise_is_drawn_on_cpu_from_one_generator():
    latent = empty(b=3)
    noise, _ = initial_noise(latent, 123)
    expected = torch.randn((3, 4, 4, 4), generator=torch.Generator().manual_seed(123))
    assert torch.equal(noise, expected)
    picked, _ = initial_noise({**latent, "batch_index": [2, 0]}, 123)
    assert torch.equal(picked, expected[[2, 0]])
    big, _ = initial_noise(latent, 2**64 - 1)  # the top of the seed range works
    assert big.shape == (3, 4, 4, 4)


@pytest.mark.parametrize("sampler,schedule", [("euler", "normal"), ("heun", "karras"), ("ddim", "normal")])
def test_two_stage_advanced_equals_one_run(sd1, conds, ctx, sampler, schedule):
    """Base + refiner style: first pass keeps the leftover noise, second adds none."""
    model, pos, neg = sd1.model, conds["pos"], conds["neg"]
    common = dict(noise_seed=11, steps=4, cfg=3.0, sampler_name=sampler, scheduler=schedule,
                  positive=pos, negative=neg)
    (full,) = KSamplerAdvanced().run(model, "enable", latent_image=empty(), start_at_step=0,
                                     end_at_step=10000, return_with_leftover_noise="disable", **common)
    (half,) = KSamplerAdvanced().run(model, "enable", latent_image=empty(), start_at_step=0,
                                     end_at_step=2, return_with_leftover_noise="enable", **common)
    (done,) = KSamplerAdvanced().run(model, "disable", latent_image=half, start_at_step=2,
                                     end_at_step=10000, return_with_leftover_noise="disable", **common)
    assert (done["samples"] - full["samples"]).abs().max() < 1e-4 * full["samples"].abs().max()
    assert (half["samples"] - full["samples"]).abs().max() > 0.1  # really was unfinished


def test_leftover_noise_hands_over_between_samplers(sd1, conds, ctx):
    """A leftover-noise latent is x0 + sigma * noise whatever the sampler: a heun base pass finished
    by euler equals heun's half followed by euler's, and a multistep (dpmpp_2m) base pass stored
    in the same units can be finished by euler."""
    args = dict(seed=3, steps=4, cfg=3.0, scheduler="normal")
    base = loop.sample(sd1.model, conds["pos"], conds["neg"], empty(), sampler_name="dpmpp_2m", end_step=2,
                       force_full_denoise=False, **args)
    euler_base = run(sd1, conds, sampler_name="euler", end_step=2, force_full_denoise=False, **args)
    assert (base["samples"] - euler_base).abs().max() < 0.05 * euler_base.abs().max()
    done = run(sd1, conds, {"samples": euler_base}, sampler_name="euler", start_step=2, add_noise=False, **args)
    full = run(sd1, conds, sampler_name="euler", **args)
    assert torch.allclose(done, full, atol=1e-4)


def test_stopping_early_without_leftover_noise_returns_the_clean_prediction(sd1, conds, ctx):
    """ComfyUI ends such a run with a step to sigma 0; for Euler that is x - sigma * eps."""
    from genloom.diffusion.sampling import model_sampling, sigma_schedules

    scale = 0.18215  # SD1's latent format: LATENT is raw, the model sees raw * 0.18215
    noisy = run(sd1, conds, steps=6, end_step=2, force_full_denoise=False) * scale
    clean = run(sd1, conds, steps=6, end_step=3, force_full_denoise=True) * scale
    ms = model_sampling.of_model(sd1.model)
    sigma = float(sigma_schedules.normal(ms, 6)[2])
    t = ms.timestep(torch.tensor(sigma))
    guide = guidance.prepare_guidance(sd1.model, conds["pos"], conds["neg"], 3.0, (1, 4, 4, 4), "cpu")
    with torch.no_grad(), sd1.model.use("cpu") as unet:
        eps = guide(unet, noisy / (sigma**2 + 1) ** 0.5, t, float(t))
    assert torch.allclose(clean, noisy - sigma * eps, atol=1e-4)


def test_denoise_runs_the_last_steps_from_the_input(sd1, conds, ctx):
    source = {"samples": torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))}
    (kept,) = KSampler().run(sd1.model, 7, 4, 3.0, "euler", "normal", conds["pos"], conds["neg"],
                             source, denoise=0.0)
    assert torch.equal(kept["samples"], source["samples"])
    ctx.events.clear()
    (light,) = KSampler().run(sd1.model, 7, 4, 3.0, "euler", "normal", conds["pos"], conds["neg"],
                              source, denoise=0.3)
    progress = [d for e, d in ctx.events if e == "progress"]
    assert [p["value"] for p in progress] == [1, 2, 3, 4] and progress[-1]["max"] == 4
    (heavy,) = KSampler().run(sd1.model, 7, 4, 3.0, "euler", "normal", conds["pos"], conds["neg"],
                              source, denoise=1.0)
    d_light = (light["samples"] - source["samples"]).abs().mean()
    d_heavy = (heavy["samples"] - source["samples"]).abs().mean()
    assert 0 < d_light < d_heavy


def test_noise_mask_keeps_the_unmasked_latent(sd1, conds, ctx):
    source = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(1, 16, 16)
    mask[:, :, 8:] = 1.0  # right half (in pixels) may change
    out = run(sd1, conds, {"samples": source, "noise_mask": mask}, sampler_name="dpmpp_2m",
              scheduler="karras", denoise=0.8)
    assert torch.allclose(out[..., :2], source[..., :2], atol=1e-6)  # raw -> model space -> raw
    assert (out[..., 2:] - source[..., 2:]).abs().mean() > 0.05


def test_area_and_combined_conditioning_are_averaged(sd1, conds, ctx):
    """Where an area conditioning applies, its prediction is averaged with the full one."""
    full, other = conds["pos"][0], conds["other"][0]
    area = [other[0], {**other[1], "area": (4, 2, 0, 2), "strength": 1.0}]  # right half (h, w, y, x)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    t = torch.tensor(500.0)
    guide = guidance.prepare_guidance(sd1.model, [full, area], conds["neg"], 1.0, (1, 4, 4, 4), "cpu")
    with torch.no_grad(), sd1.model.use("cpu") as unet:
        got = guide(unet, x, t, 500.0)
        base = unet(x, t, encoder_hidden_states=full[0]).sample
        crop = unet(x[..., 2:], t, encoder_hidden_states=other[0]).sample
    assert torch.allclose(got[..., :2], base[..., :2], atol=1e-5)
    assert torch.allclose(got[..., 2:], (base[..., 2:] + crop) / 2, atol=1e-5)
    # ConditioningCombine of two full prompts: the mean of both predictions.
    guide = guidance.prepare_guidance(sd1.model, [full, other], conds["neg"], 1.0, (1, 4, 4, 4), "cpu")
    with torch.no_grad(), sd1.model.use("cpu") as unet:
        got = guide(unet, x, t, 500.0)
        second = unet(x, t, encoder_hidden_states=other[0]).sample
    assert torch.allclose(got, (base + second) / 2, atol=1e-5)


def test_batch_shares_one_generator_and_cfg_uses_the_negative(sd1, conds, ctx):
    one = run(sd1, conds, empty(b=1), steps=2)
    two = run(sd1, conds, empty(b=2), steps=2)
    assert two.shape[0] == 2 and not torch.equal(two[0], two[1])
    assert not torch.allclose(one[0], run(sd1, conds, empty(b=1), steps=2, cfg=1.0)[0])


def test_previews_and_interrupt_within_one_step(sd1, conds, ctx):
    out = run(sd1, conds, steps=2)
    previews = [d["image"] for e, d in ctx.events if e == "preview"]
    assert len(previews) == 2 and previews[0].size == (4, 4) and previews[0].mode == "RGB"
    assert out.shape == (1, 4, 4, 4)

    calls = []
    ctx.emit = lambda event, data: (calls.append(data["value"]), ctx.interrupt_flag.set()) \
        if event == "progress" else None
    try:
        with pytest.raises(context.Interrupted):
            run(sd1, conds, steps=50)
    finally:
        ctx.interrupt_flag.clear()
    assert calls == [1]


def test_latent_preview_uses_the_rgb_factors():
    lat = torch.zeros(1, 4, 3, 5)
    lat[0, 0] = 1.0  # channel 0 maps to a warm grey
    img = preview.latent_preview(lat)
    r, g, b = img.getpixel((0, 0))
    assert img.size == (5, 3) and r > g > 127 and b > 127


def test_unsupported_names_fail_validation(tiny_models, tmp_path):
    from genloom import Engine

    engine = Engine(models_dirs=[tiny_models], output_dir=tmp_path)
    wf = {"1": {"class_type": "DiffusersLoader", "inputs": {"model_name": "tiny-sd1"}},
          "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["1", 1]}},
          "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
          "4": {"class_type": "KSampler", "inputs": {
              "model": ["1", 0], "seed": 1, "steps": 2, "cfg": 2.0, "sampler_name": "dpm_turbo",
              "scheduler": "align_your_steps", "positive": ["2", 0], "negative": ["2", 0],
              "latent_image": ["3", 0], "denoise": 1.0}},
          "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
          "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "x"}}}
    result = engine.validate(wf)
    errors = {e["extra_info"]["input_name"]: e for e in result.node_errors["4"]["errors"]}
    assert errors["sampler_name"]["type"] == "value_not_in_list"
    assert "euler" in errors["sampler_name"]["details"]
    assert errors["scheduler"]["type"] == "value_not_in_list"
