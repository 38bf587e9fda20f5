"""Flux.1 through genloom's nodes, from the files users download (BFL-layout diffusion model,
CLIP-L and T5 files, the `ae` VAE), equals diffusers' FluxPipeline / FluxKontextPipeline on the same
tiny random weights: within 1e-4 in floats, within 1 in uint8.

Conventions (ComfyUI's): the noise is drawn on the CPU in the latent's shape [B, 16, H/8, W/8] and
the pipeline gets it packed; step counts divide ComfyUI's 10000-level flux table, so the simple
schedule lands on the pipeline's linspace(1, 1/n, n) exactly. Without ModelSamplingFlux ComfyUI's
dev samples with mu = 1.15 at any size: the pipeline's scheduler gets base_shift = max_shift = 1.15.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tiny_flux  # noqa: E402

PROMPT, NEGATIVE = "a red cat on the grass", "blurry"
SEED, W, H = 7, 64, 48


@pytest.fixture(scope="module")
def flux_parts(tmp_path_factory):
    return tiny_flux.build_models(tmp_path_factory.mktemp("flux_models"))


@pytest.fixture
def flux_ctx(flux_parts, tmp_path):
    from genloom.engine import context
    from genloom.engine.folders import Folders

    folders = Folders(models_dirs=[flux_parts["root"]], input_dir=tmp_path / "input",
                      output_dir=tmp_path / "output", temp_dir=tmp_path / "temp")
    token = context.use(context.RunContext(device_choice="cpu", folders=folders))
    try:
        yield flux_parts
    finally:
        context.reset(token)


def _loaded(parts, which="dev"):
    from genloom.nodes.loaders import VAELoader
    from genloom.nodes.loaders_split import DualCLIPLoader, UNETLoader

    names = parts["names"]
    (model,) = UNETLoader().run(names[which], "default")
    (clip,) = DualCLIPLoader().run(names["clip_l"], names["t5xxl"], "flux")
    (vae,) = VAELoader().run(names["vae"])
    return model, clip, vae


def _noise(width=W, height=H):
    gen = torch.Generator("cpu").manual_seed(SEED)
    return torch.randn((1, 16, height // 8, width // 8), generator=gen)


def _reference(pipe, steps, width=W, height=H, **kw):
    latents = pipe._pack_latents(_noise(width, height), 1, 16, height // 8, width // 8)
    out = pipe(prompt=PROMPT, height=height, width=width, num_inference_steps=steps, latents=latents,
               max_sequence_length=256, output_type="pt", **kw).images
    return out.permute(0, 2, 3, 1)


def _custom(model, cond, steps, vae, width=W, height=H):
    from genloom.nodes.custom_sampling import (BasicGuider, BasicScheduler, KSamplerSelect, RandomNoise,
                                               SamplerCustomAdvanced)
    from genloom.nodes.latent import VAEDecode
    from genloom.nodes.sd3 import EmptySD3LatentImage

    (guider,) = BasicGuider().run(model, cond)
    (sigmas,) = BasicScheduler().run(model, "simple", steps, 1.0)
    (latent,) = EmptySD3LatentImage().run(width, height, 1)
    out, _denoised = SamplerCustomAdvanced().run(RandomNoise().run(SEED)[0], guider,
                                                 KSamplerSelect().run("euler")[0], sigmas, latent)
    return VAEDecode().run(out, vae)[0]


def _ksampler(model, pos, neg, steps, cfg, vae, width=W, height=H):
    from genloom.nodes.ksampler import KSampler
    from genloom.nodes.latent import VAEDecode
    from genloom.nodes.sd3 import EmptySD3LatentImage

    (latent,) = EmptySD3LatentImage().run(width, height, 1)
    (samples,) = KSampler().run(model, SEED, steps, cfg, "euler", "simple", pos, neg, latent, 1.0)
    return VAEDecode().run(samples, vae)[0]


def _same(ours, theirs):
    assert ours.shape == theirs.shape
    assert float(theirs.std()) > 0.01  # a real picture, not a constant
    assert float((ours - theirs).abs().max()) < 1e-4
    a, b = (np.round(t.numpy() * 255).astype(np.int16) for t in (ours, theirs))
    assert int(np.abs(a - b).max()) <= 1


def test_dev_flux_guidance_basic_guider_and_model_sampling_flux(flux_ctx):
    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.flux import FluxGuidance
    from genloom.nodes.model_sampling import ModelSamplingFlux

    model, clip, vae = _loaded(flux_ctx)
    (model,) = ModelSamplingFlux().run(model, 1.15, 0.5, W, H)
    (cond,) = FluxGuidance().run(CLIPTextEncode().run(PROMPT, clip)[0], 4.0)
    ours = _custom(model, cond, 4, vae)
    pipe = tiny_flux.pipeline(flux_ctx["dev"], flux_ctx["parts"], flux_ctx["vae"])
    _same(ours, _reference(pipe, 4, guidance_scale=4.0))


def test_dev_without_model_sampling_flux_samples_at_mu_1_15(flux_ctx):
    from genloom.nodes.flux import CLIPTextEncodeFlux

    model, clip, vae = _loaded(flux_ctx)
    (cond,) = CLIPTextEncodeFlux().run(clip, PROMPT, PROMPT, 2.5)
    ours = _ksampler(model, cond, cond, 4, 1.0, vae)
    pipe = tiny_flux.pipeline(flux_ctx["dev"], flux_ctx["parts"], flux_ctx["vae"], base_shift=1.15,
                              max_shift=1.15)
    _same(ours, _reference(pipe, 4, guidance_scale=2.5))
    # and with the pipeline's resolution-dependent shift the pictures differ: mu mattered
    other = _reference(tiny_flux.pipeline(flux_ctx["dev"], flux_ctx["parts"], flux_ctx["vae"]), 4,
                       guidance_scale=2.5)
    assert float((ours - other).abs().max()) > 1e-3


def test_dev_true_cfg_with_a_negative_prompt(flux_ctx):
    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.model_sampling import ModelSamplingFlux

    model, clip, vae = _loaded(flux_ctx)
    (model,) = ModelSamplingFlux().run(model, 1.15, 0.5, W, H)
    (pos,) = CLIPTextEncode().run(PROMPT, clip)
    (neg,) = CLIPTextEncode().run(NEGATIVE, clip)
    ours = _ksampler(model, pos, neg, 4, 2.5, vae)  # both at ComfyUI's default guidance 3.5
    pipe = tiny_flux.pipeline(flux_ctx["dev"], flux_ctx["parts"], flux_ctx["vae"])
    _same(ours, _reference(pipe, 4, guidance_scale=3.5, true_cfg_scale=2.5, negative_prompt=NEGATIVE))


def test_schnell_two_steps(flux_ctx):
    from genloom.nodes.conditioning import CLIPTextEncode

    model, clip, vae = _loaded(flux_ctx, "schnell")
    assert not model.is_dev
    (pos,) = CLIPTextEncode().run(PROMPT, clip)
    ours = _ksampler(model, pos, pos, 2, 1.0, vae)
    pipe = tiny_flux.pipeline(flux_ctx["schnell"], flux_ctx["parts"], flux_ctx["vae"])
    _same(ours, _reference(pipe, 2, guidance_scale=0.0))


def test_kontext_reference_image(flux_ctx):
    from PIL import Image

    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.flux import FluxGuidance, ReferenceLatent
    from genloom.nodes.latent import VAEEncode
    from genloom.nodes.model_sampling import ModelSamplingFlux

    pixels = np.random.default_rng(3).integers(0, 256, (32, 48, 3), dtype=np.uint8)  # h 32, w 48
    model, clip, vae = _loaded(flux_ctx)
    (model,) = ModelSamplingFlux().run(model, 1.15, 0.5, W, H)
    (ref,) = VAEEncode().run(torch.from_numpy(pixels).float()[None] / 255.0, vae)
    (cond,) = ReferenceLatent().run(CLIPTextEncode().run(PROMPT, clip)[0], ref)
    (cond,) = FluxGuidance().run(cond, 2.5)
    ours = _custom(model, cond, 4, vae)
    pipe = tiny_flux.pipeline(flux_ctx["dev"], flux_ctx["parts"], flux_ctx["vae"], kontext=True)
    theirs = _reference(pipe, 4, guidance_scale=2.5, image=Image.fromarray(pixels), _auto_resize=False,
                        max_area=W * H)
    _same(ours, theirs)
    plain = _reference(tiny_flux.pipeline(flux_ctx["dev"], flux_ctx["parts"], flux_ctx["vae"]), 4,
                       guidance_scale=2.5)
    assert float((ours - plain).abs().max()) > 1e-3  # the reference changed the picture
