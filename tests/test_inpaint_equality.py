"""Inpainting with a 9-channel UNet: genloom's CheckpointLoaderSimple + InpaintModelConditioning +
KSampler give the pixels of diffusers' StableDiffusionInpaintPipeline on a tiny inpainting model, and
VAEEncodeForInpaint / SetLatentNoiseMask feed the UNet's extra channels as ComfyUI does."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

PROMPT = "a red circle on a blue background"
SEED, STEPS, CFG = 42, 4, 4.0


def build_sd_inpaint(folder):
    """tiny-sd1's shapes with a 9-channel UNet input (latent, mask, masked-image latent)."""
    import tiny
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(7)
    tok = tiny.tiny_tokenizer(folder / "_tok")
    text = CLIPTextModel(tiny._text_config(len(tok), "quick_gelu"))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=9, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        norm_num_groups=8, cross_attention_dim=32, attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    pipe = StableDiffusionInpaintPipeline(
        vae=tiny._vae(), text_encoder=text, tokenizer=tok, unet=unet,
        scheduler=tiny._scheduler("EulerDiscreteScheduler", "epsilon"), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder))
    tiny._rm(folder / "_tok")
    return folder


@pytest.fixture(scope="module")
def inpaint_models(tmp_path_factory):
    from genloom.diffusion.models.single_file import save_single_file

    root = tmp_path_factory.mktemp("inpaint")
    build_sd_inpaint(root / "diffusers" / "tiny-sd1-inpaint")
    (root / "checkpoints").mkdir()
    save_single_file(root / "diffusers" / "tiny-sd1-inpaint", root / "checkpoints" / "tiny-sd1-inpaint.safetensors")
    return root


@pytest.fixture
def ctx(inpaint_models, tmp_path):
    import tiny

    with tiny.cpu_context([inpaint_models], tmp_path):
        yield


def _picture_and_mask():
    g = torch.Generator().manual_seed(3)
    image = torch.rand(1, 16, 16, 3, generator=g)  # the tiny VAE is 2x: 16 px -> 8x8 latents
    mask = torch.zeros(1, 16, 16)
    mask[:, 4:12, 6:14] = 1.0  # on whole latent cells, where nearest and bilinear+round agree
    return image, mask


def _ours(model, clip, vae, image, mask):
    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.inpaint import InpaintModelConditioning
    from genloom.nodes.ksampler import KSampler
    from genloom.nodes.latent import EmptyLatentImage, VAEDecode

    (pos,) = CLIPTextEncode().run(PROMPT, clip)
    (neg,) = CLIPTextEncode().run("", clip)
    pos, neg, _latent = InpaintModelConditioning().run(pos, neg, vae, image, mask, noise_mask=False)
    (empty,) = EmptyLatentImage().run(64, 64, 1)  # the pipeline at strength 1 starts from noise alone
    (samples,) = KSampler().run(model, SEED, STEPS, CFG, "euler", "normal", pos, neg, empty, 1.0)
    return VAEDecode().run(samples, vae)[0]


def test_inpaint_checkpoint_equals_diffusers_inpaint_pipeline(inpaint_models, ctx):
    import diffusers

    from genloom.nodes.loaders import CheckpointLoaderSimple

    model, clip, vae = CheckpointLoaderSimple().run("tiny-sd1-inpaint.safetensors")
    assert model.unet.config.in_channels == 9 and model.latent_channels == 4
    image, mask = _picture_and_mask()
    ours = _ours(model, clip, vae, image, mask)

    pipe = diffusers.StableDiffusionInpaintPipeline.from_pretrained(
        str(inpaint_models / "diffusers" / "tiny-sd1-inpaint"), local_files_only=True, safety_checker=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
    pixels = image.permute(0, 3, 1, 2)
    keep = (mask < 0.5).float()[:, None]
    with torch.no_grad():  # the masked picture's latent, its posterior mean (genloom encodes means)
        masked_latents = pipe.vae.encode((pixels * 2 - 1) * keep).latent_dist.mean * pipe.vae.config.scaling_factor
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(SEED))
    sigma_max = float(pipe.scheduler.sigmas.max())
    noise = noise * (1 + sigma_max ** 2) ** 0.5 / float(pipe.scheduler.init_noise_sigma)
    ref = pipe(PROMPT, image=pixels, mask_image=mask[:, None], masked_image_latents=masked_latents,
               negative_prompt="", height=16, width=16, num_inference_steps=STEPS, guidance_scale=CFG,
               strength=1.0, latents=noise, output_type="pt").images.permute(0, 2, 3, 1)
    assert ours.shape == ref.shape == (1, 16, 16, 3)
    assert (ours - ref).abs().max() < 1e-4


def test_vae_encode_for_inpaint_feeds_mask_and_latent(inpaint_models, ctx):
    """With VAEEncodeForInpaint the UNet's extra channels are the noise mask (rounded at latent size)
    and the sampled latent itself; without any mask, ones and ComfyUI's grey-picture latent."""
    from genloom.diffusion.inpaint import BLANK_LATENT
    from genloom.diffusion.sampling.latent_formats import of_model
    from genloom.nodes.latent import VAEEncodeForInpaint
    from genloom.nodes.loaders import CheckpointLoaderSimple

    model, clip, vae = CheckpointLoaderSimple().run("tiny-sd1-inpaint.safetensors")
    image, mask = _picture_and_mask()
    (latent,) = VAEEncodeForInpaint().run(image, vae, mask, 0)
    latent_in = of_model(model).process_in(latent["samples"])
    got = model.cond_extras({"latent_image": latent_in, "denoise_mask": latent["noise_mask"]}, 16, 16)["c_concat"]
    small = torch.nn.functional.interpolate(latent["noise_mask"], size=(8, 8), mode="nearest")
    assert got.shape == (1, 5, 8, 8)
    assert got[:, :1].equal(small) and got[:, 1:].equal(latent_in)
    blank = model.cond_extras({}, 16, 16)["c_concat"]
    assert blank[:, 0].eq(1).all()
    assert torch.allclose(blank[0, 1:, 0, 0], torch.tensor(BLANK_LATENT))
    # and it samples: the masked part changes, the rest stays the input latent
    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.ksampler import KSampler

    (pos,) = CLIPTextEncode().run(PROMPT, clip)
    (out,) = KSampler().run(model, SEED, STEPS, CFG, "euler", "normal", pos, pos, latent, 1.0)
    keep = small == 0
    torch.testing.assert_close(out["samples"] * keep, latent["samples"] * keep)
    assert ((out["samples"] - latent["samples"]) * ~keep).abs().max() > 1e-3


def test_example_workflow_validates_and_runs(inpaint_models, tmp_path):
    """workflows/inpaint.json validates against the downloaded file name and runs on the tiny
    inpainting model saved under it (at 16 px, 2 steps)."""
    import json
    import shutil
    from pathlib import Path

    import genloom

    repo = Path(__file__).resolve().parent.parent
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    shutil.copy(inpaint_models / "checkpoints" / "tiny-sd1-inpaint.safetensors",
                models / "checkpoints" / "sd-v1-5-inpainting.safetensors")
    engine = genloom.Engine(models_dirs=[models], input_dir=repo / "workflows" / "input",
                            output_dir=tmp_path / "out", temp_dir=tmp_path / "temp", device="cpu")
    envelope = json.loads((repo / "workflows" / "inpaint.json").read_text())
    assert engine.validate(envelope).node_errors == {}
    graph = envelope["graph"]
    for node in graph.values():
        inputs = node["inputs"]
        for key in ("width", "height"):
            if key in inputs:
                inputs[key] = max(1, inputs[key] // 32)  # 512 -> 16 px, 256 -> 8, masks alike
        for key in ("x", "y"):
            if key in inputs:
                inputs[key] //= 32
        if "steps" in inputs:
            inputs["steps"] = 2
    result = engine.run(envelope)
    (entry,) = [e for ui in result.outputs.values() for e in ui.get("images", [])]
    assert (tmp_path / "out" / entry["subfolder"] / entry["filename"]).is_file()
