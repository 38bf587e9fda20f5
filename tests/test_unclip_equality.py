"""SD2.1 unCLIP from a single-file checkpoint (original layout, with the image encoder under
embedder.model.visual.* in open-clip's layout and the noise augmentor's buffers): genloom's
unCLIPCheckpointLoader + CLIPVisionEncode + unCLIPConditioning + KSampler + VAEDecode give the
pixels of diffusers' StableUnCLIPImg2ImgPipeline on the same tiny model, with and without noise
augmentation (ComfyUI draws the augmentation noise from a generator seeded with seed - 10: the
pipeline gets that generator). Several unCLIPConditionings combine as ComfyUI's arithmetic says."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

PROMPT = "a red circle on a blue background"
SEED, CFG, STEPS, EMBED = 42, 4.0, 4, 32


def _open_clip_visual(vision) -> dict:
    """transformers CLIPVisionModelWithProjection -> open-clip's visual tower keys."""
    from genloom.diffusion.models.keymaps import text_to_ldm

    s = {k.removeprefix("vision_model."): v for k, v in vision.state_dict().items()
         if not k.endswith("position_ids")}
    out = text_to_ldm({k: v for k, v in s.items() if k.startswith("encoder.layers.")}, "openclip", "")
    out.update({"conv1.weight": s["embeddings.patch_embedding.weight"], "class_embedding": s["embeddings.class_embedding"],
                "positional_embedding": s["embeddings.position_embedding.weight"],
                "proj": s["visual_projection.weight"].t().contiguous()})
    for ours, theirs in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for p in ("weight", "bias"):
            out[f"{theirs}.{p}"] = s[f"{ours}.{p}"]
    return out


def _noise_augmentor(sched) -> dict:
    """The noise augmentor's buffers as the original checkpoints carry them."""
    ac = sched.alphas_cumprod.double()
    prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    bufs = {"betas": sched.betas.double(), "alphas_cumprod": ac, "alphas_cumprod_prev": prev,
            "sqrt_alphas_cumprod": ac.sqrt(), "sqrt_one_minus_alphas_cumprod": (1 - ac).sqrt(),
            "log_one_minus_alphas_cumprod": (1 - ac).log(), "sqrt_recip_alphas_cumprod": (1 / ac).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1 / ac - 1).sqrt()}
    return {f"noise_augmentor.{k}": v.float().contiguous() for k, v in bufs.items()}


def build_unclip(folder):
    import tiny
    from diffusers import DDPMScheduler, StableUnCLIPImg2ImgPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from transformers import CLIPImageProcessor, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(13)
    tok = tiny.tiny_tokenizer(folder / "_tok", pad_token="!")
    text = CLIPTextModel(tiny._text_config(len(tok), "gelu"))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        norm_num_groups=8, cross_attention_dim=32, attention_head_dim=[2, 4], use_linear_projection=True,
        class_embed_type="projection", projection_class_embeddings_input_dim=2 * EMBED,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    with torch.no_grad():  # make the image embedding count
        for p in unet.class_embedding.parameters():
            p.mul_(4.0)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=2, image_size=16,
        patch_size=4, projection_dim=EMBED, hidden_act="gelu", layer_norm_eps=1e-5)).eval()
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
        image_encoder=vision, image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=EMBED),
        image_noising_scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2"),
        tokenizer=tok, text_encoder=text, unet=unet, vae=tiny._vae(),
        scheduler=tiny._scheduler("DDIMScheduler", "v_prediction"))
    pipe.save_pretrained(str(folder))
    tiny._rm(folder / "_tok")
    return pipe


@pytest.fixture(scope="module")
def unclip_models(tmp_path_factory):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from genloom.diffusion.models.single_file import save_single_file

    root = tmp_path_factory.mktemp("unclip")
    pipe = build_unclip(root / "diffusers" / "tiny-unclip")
    path = root / "checkpoints" / "tiny-sd21-unclip.safetensors"
    save_single_file(root / "diffusers" / "tiny-unclip", path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    state = load_file(str(path))
    state.update({"embedder.model.visual." + k: v for k, v in _open_clip_visual(pipe.image_encoder).items()})
    state.update(_noise_augmentor(pipe.image_noising_scheduler))
    save_file(state, str(path), metadata=meta)
    return root


@pytest.fixture
def ctx(unclip_models, tmp_path):
    import tiny

    with tiny.cpu_context([unclip_models], tmp_path):
        yield


def _picture():
    g = torch.Generator().manual_seed(3)
    return (torch.rand(1, 16, 16, 3, generator=g) * 255).round() / 255  # exactly a PIL picture's values


def _genloom(augmentations, strengths=(1.0,)):
    from genloom.nodes.clip_vision import CLIPVisionEncode
    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.ksampler import KSampler
    from genloom.nodes.latent import EmptyLatentImage, VAEDecode
    from genloom.nodes.unclip import unCLIPCheckpointLoader, unCLIPConditioning

    model, clip, vae, vision = unCLIPCheckpointLoader().run("tiny-sd21-unclip.safetensors")
    (seen,) = CLIPVisionEncode().run(vision, _picture(), "center")
    (pos,) = CLIPTextEncode().run(PROMPT, clip)
    for aug, strength in zip(augmentations, strengths):
        (pos,) = unCLIPConditioning().run(pos, seen, strength, aug)
    (neg,) = CLIPTextEncode().run("", clip)
    (latent,) = EmptyLatentImage().run(64, 64, 1)
    (samples,) = KSampler().run(model, SEED, STEPS, CFG, "euler", "normal", pos, neg, latent, 1.0)
    return VAEDecode().run(samples, vae)[0], model, seen


def _pipeline(root):
    import diffusers

    pipe = diffusers.StableUnCLIPImg2ImgPipeline.from_pretrained(str(root / "diffusers" / "tiny-unclip"),
                                                                 local_files_only=True)
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _reference(pipe, noise_level: int):
    """The pipeline from ComfyUI's starting latent, noise * sqrt(1 + sigma_max^2) (this pipeline
    uses given latents as they are, without its scheduler's init_noise_sigma)."""
    from PIL import Image

    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(SEED))
    noise = noise * (1 + float(pipe.scheduler.sigmas.max()) ** 2) ** 0.5
    picture = Image.fromarray((_picture()[0].numpy() * 255).round().astype("uint8"))
    out = pipe(image=picture, prompt=PROMPT, negative_prompt="", height=16, width=16, num_inference_steps=STEPS,
               guidance_scale=CFG, noise_level=noise_level, latents=noise, output_type="pt",
               generator=torch.Generator().manual_seed(SEED - 10)).images
    return out.permute(0, 2, 3, 1)


@pytest.fixture(scope="module")
def pipeline(unclip_models):
    return _pipeline(unclip_models)


@pytest.mark.parametrize("augmentation", [0.0, 0.25])
def test_unclip_checkpoint_equals_stable_unclip_pipeline(unclip_models, pipeline, ctx, augmentation):
    from genloom.diffusion.models.unclip_model import UnclipHandle

    ours, model, _seen = _genloom([augmentation])
    assert isinstance(model, UnclipHandle) and model.kind == "sd2"
    ref = _reference(pipeline, round(999 * augmentation))
    assert ours.shape == ref.shape == (1, 16, 16, 3)
    assert float(ref.std()) > 0.01
    assert float((ours - ref).abs().max()) < 1e-4
    if augmentation == 0.0:  # the picture mattered: without it the model gets zeros, samples otherwise
        plain, _m, _s = _genloom([])
        assert float((plain - ours).abs().max()) > 1e-3


def test_stacked_unclip_conditionings_sum_then_renoise(unclip_models, ctx):
    """Two unCLIPConditionings: ComfyUI's ADM input is the strength-weighted sum of each one's
    [noised embedding, level embedding], whose image part is noised again at level 50 (0.05)."""
    from diffusers import DDPMScheduler
    from diffusers.models.embeddings import get_timestep_embedding

    from genloom.diffusion.models.unclip_model import adm_input
    from genloom.nodes.clip_vision import CLIPVisionEncode
    from genloom.nodes.unclip import unCLIPCheckpointLoader, unCLIPConditioning

    _model, _clip, _vae, vision = unCLIPCheckpointLoader().run("tiny-sd21-unclip.safetensors")
    (seen,) = CLIPVisionEncode().run(vision, _picture(), "none")
    cond = [[torch.zeros(1, 77, 32), {"pooled_output": torch.zeros(1, 32)}]]
    (cond,) = unCLIPConditioning().run(cond, seen, 0.7, 0.1)
    (cond,) = unCLIPConditioning().run(cond, seen, 0.5, 0.3)
    assert unCLIPConditioning().run(cond, seen, 0.0, 0.5)[0] is cond  # strength 0: unchanged
    entries = cond[0][1]["unclip_conditioning"]
    assert [(e["strength"], e["noise_augmentation"]) for e in entries] == [(0.7, 0.1), (0.5, 0.3)]

    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    embeds = seen.image_embeds

    def noised(x, level, gen):
        noise = torch.randn(x.shape, generator=gen)
        z = sched.add_noise(x, noise, torch.tensor([level]))
        return torch.cat([z, get_timestep_embedding(torch.tensor([level]), EMBED, flip_sin_to_cos=True,
                                                    downscale_freq_shift=0)], dim=1)

    gen1 = torch.Generator().manual_seed(SEED - 10)
    first = noised(embeds, 100, gen1) * 0.7  # round(999 * 0.1)
    gen2 = torch.Generator().manual_seed(SEED - 10)
    second = noised(embeds, 300, gen2) * 0.5  # round(999 * 0.3); the generator then continues
    expected = noised((first + second)[:, :EMBED], 50, gen2)
    ours = adm_input(entries, 2 * EMBED, SEED)
    assert torch.allclose(ours, expected, atol=1e-5)
    assert torch.equal(adm_input(None, 2 * EMBED, SEED), torch.zeros(1, 2 * EMBED))  # no picture: zeros


def test_a_plain_checkpoint_is_refused_by_the_unclip_loader(tiny_models, tmp_folders):
    from genloom.engine.errors import ModelLoadError
    from genloom.nodes.unclip import unCLIPCheckpointLoader

    with pytest.raises(ModelLoadError) as err:
        unCLIPCheckpointLoader().run("tiny-sd2.safetensors")
    assert err.value.input_name == "ckpt_name" and "not an unCLIP checkpoint" in str(err.value)


def test_wrong_clip_vision_width_is_a_clear_error(unclip_models, ctx):
    from genloom.diffusion.errors import SamplingError
    from genloom.diffusion.models.unclip_model import adm_input

    wrong = {"image_embeds": torch.zeros(1, EMBED + 8)}
    with pytest.raises(SamplingError, match="32-wide CLIP image embeddings"):
        adm_input([{"clip_vision_output": wrong, "strength": 1.0, "noise_augmentation": 0.0}], 2 * EMBED, 0)


def test_an_original_sd21_unclip_h_layout_gets_a_projection_class_embedding():
    """Without genloom's metadata (a downloaded sd21-unclip-h): the shipped SD2 config fitted to the
    weights takes the 2048-wide ADM input (1024 image embedding + 1024 level embedding)."""
    from diffusers import UNet2DConditionModel

    from genloom.diffusion.models import keymaps
    from genloom.diffusion.models.single_file import _fit_to_weights, shipped_configs

    state = {"model.diffusion_model.label_emb.0.0.weight": torch.empty(1280, 2048, device="meta"),
             "model.diffusion_model.label_emb.0.2.weight": torch.empty(1280, 1280, device="meta")}
    configs = shipped_configs("sd2")
    _fit_to_weights(configs, state)
    unet = keymaps.unmap_keys(state, keymaps.unet_map(configs["unet"]), "model.diffusion_model.", "unet")
    assert set(unet) == {"class_embedding.linear_1.weight", "class_embedding.linear_2.weight"}
    with torch.device("meta"):
        model = UNet2DConditionModel.from_config(configs["unet"])
    assert model.class_embedding.linear_1.in_features == 2048
    assert model.class_embedding.linear_2.weight.shape == unet["class_embedding.linear_2.weight"].shape
