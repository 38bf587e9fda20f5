"""The SDXL refiner (CLIP-G only, aesthetic-score time ids) from a single-file checkpoint:
CLIPTextEncodeSDXLRefiner + KSampler (denoise 0.5) + VAEDecode give the pixels of diffusers'
StableDiffusionXLImg2ImgPipeline (requires_aesthetics_score=True) on a tiny refiner."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

PROMPT = "a red circle on a blue background"
SEED, CFG = 42, 4.0


def build_refiner(folder):
    import tiny
    from diffusers import StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(11)
    tok2 = tiny.tiny_tokenizer(folder / "_tok2", pad_token="!")
    text2 = CLIPTextModelWithProjection(tiny._text_config(len(tok2), "gelu", hidden=48, layers=4, projection=48))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        norm_num_groups=8, cross_attention_dim=48, attention_head_dim=[2, 4], use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=5 * 8 + 48,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=tiny._vae(), text_encoder=None, text_encoder_2=text2, tokenizer=None, tokenizer_2=tok2, unet=unet,
        scheduler=tiny._scheduler("EulerDiscreteScheduler", "epsilon"), requires_aesthetics_score=True)
    pipe.save_pretrained(str(folder))
    tiny._rm(folder / "_tok2")
    return folder


@pytest.fixture(scope="module")
def refiner_models(tmp_path_factory):
    from genloom.diffusion.models.single_file import save_single_file

    root = tmp_path_factory.mktemp("refiner")
    build_refiner(root / "diffusers" / "tiny-refiner")
    (root / "checkpoints").mkdir()
    save_single_file(root / "diffusers" / "tiny-refiner", root / "checkpoints" / "tiny-refiner.safetensors")
    return root


@pytest.fixture
def ctx(refiner_models, tmp_path):
    import tiny

    with tiny.cpu_context([refiner_models], tmp_path):
        yield


def test_refiner_checkpoint_equals_img2img_pipeline(refiner_models, ctx):
    import diffusers
    from safetensors import safe_open

    from genloom.diffusion.models.single_file import checkpoint_problem
    from genloom.nodes.conditioning import CLIPTextEncodeSDXLRefiner
    from genloom.nodes.ksampler import KSampler
    from genloom.nodes.latent import VAEDecode, VAEEncode
    from genloom.nodes.loaders import CheckpointLoaderSimple

    path = refiner_models / "checkpoints" / "tiny-refiner.safetensors"
    with safe_open(str(path), "pt") as f:
        embedders = {k.split(".")[2] for k in f.keys() if k.startswith("conditioner.embedders.")}
    assert embedders == {"0"} and checkpoint_problem(path) is None  # CLIP-G alone, accepted
    model, clip, vae = CheckpointLoaderSimple().run("tiny-refiner.safetensors")
    assert model.kind == "sdxl_refiner" and len(clip.text_encoders) == 1

    image = torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(5))
    (pos,) = CLIPTextEncodeSDXLRefiner().run(6.0, 16, 16, PROMPT, clip)
    (neg,) = CLIPTextEncodeSDXLRefiner().run(2.5, 16, 16, "", clip)
    (latent,) = VAEEncode().run(image, vae)
    (samples,) = KSampler().run(model, SEED, 2, CFG, "euler", "normal", pos, neg, latent, 0.5)
    (ours,) = VAEDecode().run(samples, vae)

    pipe = diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(
        str(refiner_models / "diffusers" / "tiny-refiner"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.vae.register_to_config(scaling_factor=0.13025)  # the SDXL family's latent scale, as genloom uses
    # 4 steps at strength 0.5 = the last 2 of the 4-step schedule: ComfyUI's 2 steps at denoise 0.5
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
    pipe.scheduler.set_timesteps(4)
    pixels = image.permute(0, 3, 1, 2)
    with torch.no_grad():
        init = pipe.vae.encode(pixels * 2 - 1).latent_dist.mean * 0.13025
    noise = torch.randn(init.shape, generator=torch.Generator().manual_seed(SEED))
    start = pipe.scheduler.add_noise(init, noise, pipe.scheduler.timesteps[2:3])
    ref = pipe(PROMPT, image=pixels, negative_prompt="", strength=0.5, num_inference_steps=4, guidance_scale=CFG,
               aesthetic_score=6.0, negative_aesthetic_score=2.5, latents=start, output_type="pt",
               original_size=(16, 16), target_size=(16, 16)).images.permute(0, 2, 3, 1)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() < 1e-4


def test_example_workflow_validates_and_runs(refiner_models, tmp_path):
    """workflows/sdxl_refiner.json validates against the downloaded file names and runs on tiny SDXL
    base and refiner checkpoints saved under them (64 px latents' worth, 4 steps: 3 base, 1 refiner)."""
    import json
    import shutil
    from pathlib import Path

    import tiny

    import genloom
    from genloom.diffusion.models.single_file import save_single_file

    repo = Path(__file__).resolve().parent.parent
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    tiny.build_sdxl(tmp_path / "base")
    save_single_file(tmp_path / "base", models / "checkpoints" / "sd_xl_base_1.0.safetensors")
    shutil.copy(refiner_models / "checkpoints" / "tiny-refiner.safetensors",
                models / "checkpoints" / "sd_xl_refiner_1.0.safetensors")
    engine = genloom.Engine(models_dirs=[models], output_dir=tmp_path / "out", temp_dir=tmp_path / "temp",
                            device="cpu")
    envelope = json.loads((repo / "workflows" / "sdxl_refiner.json").read_text())
    assert engine.validate(envelope).node_errors == {}
    for node in envelope["graph"].values():
        inputs = node["inputs"]
        if node["class_type"] == "EmptyLatentImage":
            inputs.update(width=64, height=64)
        if node["class_type"] == "KSamplerAdvanced":
            inputs["steps"] = 4
            inputs["end_at_step" if inputs["start_at_step"] == 0 else "start_at_step"] = 3
    result = engine.run(envelope)
    (entry,) = [e for ui in result.outputs.values() for e in ui.get("images", [])]
    assert (tmp_path / "out" / entry["subfolder"] / entry["filename"]).is_file()


def test_refiner_checkpoint_save_round_trip(refiner_models, ctx, tmp_path):
    """CheckpointSave writes the refiner back in its layout (CLIP-G as embedder 0) with ComfyUI's
    refiner modelspec, and it loads to the same weights and encodings."""
    import shutil

    from safetensors import safe_open

    from genloom.engine import context
    from genloom.nodes.conditioning import CLIPTextEncodeSDXLRefiner
    from genloom.nodes.loaders import CheckpointLoaderSimple
    from genloom.nodes.model_merging import CheckpointSave

    model, clip, vae = CheckpointLoaderSimple().run("tiny-refiner.safetensors")
    CheckpointSave().run(model, clip, vae, "again")
    saved = context.current().folders.output_dir / "again_00001_.safetensors"
    with safe_open(str(saved), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-refiner"
    assert "conditioner.embedders.0.model.text_projection" in keys
    assert not any(k.startswith("conditioner.embedders.1.") for k in keys)
    shutil.copy(saved, refiner_models / "checkpoints" / "again.safetensors")
    try:
        m2, c2, _v2 = CheckpointLoaderSimple().run("again.safetensors")
        for a, b in zip(m2.unet.state_dict().values(), model.unet.state_dict().values()):
            assert a.equal(b)
        (one,) = CLIPTextEncodeSDXLRefiner().run(6.0, 16, 16, PROMPT, clip)
        (two,) = CLIPTextEncodeSDXLRefiner().run(6.0, 16, 16, PROMPT, c2)
        assert one[0][0].equal(two[0][0]) and one[0][1]["pooled_output"].equal(two[0][1]["pooled_output"])
    finally:
        (refiner_models / "checkpoints" / "again.safetensors").unlink()
