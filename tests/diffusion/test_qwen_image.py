"""Qwen-Image text-to-image on tiny random models saved as users have them (the transformer with
ComfyUI's prefix, the Qwen2.5-VL text encoder with its vision tower, the Wan-layout VAE, Qwen's
tokenizer in a folder next to the encoder): genloom's loaders and nodes equal diffusers'
QwenImagePipeline on the same weights and noise. They agree at cfg 1 / true_cfg_scale 1: with CFG the
pipeline rescales each 2x2 patch's velocity to the positive's norm, which ComfyUI's CFG (and CFGNorm,
clamped, in denoised space) does not."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import qwen_tiny  # noqa: E402

from genloom.diffusion.models import wan_vae  # noqa: E402
from genloom.diffusion.models.families import qwen_image  # noqa: E402

SIZE = 32  # pixels -> 4 x 4 latent cells -> 2 x 2 tokens


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    from diffusers import AutoencoderKLQwenImage

    models = tmp_path_factory.mktemp("models")
    transformer = qwen_tiny.qwen_image_transformer(1)
    (models / "diffusion_models").mkdir()
    qwen_image.save_original(transformer, models / "diffusion_models" / "qwen_image_tiny.safetensors",
                             "model.diffusion_model.")
    encoder = qwen_tiny.tiny_qwen25_vl(2)
    qwen_tiny.save_llm(encoder, models / "text_encoders" / "qwen_2.5_vl_tiny.safetensors")
    qwen_tiny.write_tokenizer(models / "text_encoders" / "qwen25_tokenizer")
    torch.manual_seed(3)
    vae = AutoencoderKLQwenImage(base_dim=16, z_dim=16).eval()
    (models / "vae").mkdir()
    wan_vae.save_original(vae, models / "vae" / "qwen_image_vae_tiny.safetensors")
    return {"models": models, "transformer": transformer, "encoder": encoder, "vae": vae}


def _reference_embeds(qwen, prompt):
    """QwenImagePipeline's encoding: the template's last hidden states, its system part and
    `<|im_start|>user\\n` dropped (34 tokens with Qwen's tokenizer; counted here with the tiny one)."""
    from transformers import Qwen2Tokenizer

    tok = Qwen2Tokenizer.from_pretrained(str(qwen["models"] / "text_encoders" / "qwen25_tokenizer"))
    template = (
        "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
        "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
        "<|im_start|>assistant\n")
    drop = len(tok(template.split("{}")[0], add_special_tokens=False).input_ids)
    ids = tok(template.format(prompt), add_special_tokens=False).input_ids
    with torch.no_grad():
        out = qwen["encoder"](input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1]
    return out[:, drop:]


def test_loaders_detect_and_fill_every_tensor(qwen, tmp_folders):
    from genloom.diffusion.models.families import load_diffusion_model
    from genloom.diffusion.models.single_file import load_vae_file
    from genloom.diffusion.models.text_encoders import file_problem

    model = load_diffusion_model(qwen["models"] / "diffusion_models" / "qwen_image_tiny.safetensors")
    assert model.kind == "qwen_image" and model.latent_channels == 16
    assert model.unet.config.num_layers == 2 and model.unet.config.joint_attention_dim == 64
    assert file_problem(qwen["models"] / "text_encoders" / "qwen_2.5_vl_tiny.safetensors") is None
    vae = load_vae_file(qwen["models"] / "vae" / "qwen_image_vae_tiny.safetensors").vae
    assert vae.latent_channels == 16
    # the Qwen-Image VAE's statistics are the Wan 2.1 latent format's
    fmt = model.latent_format
    assert tuple(qwen["vae"].config.latents_mean) == pytest.approx(fmt.mean)
    assert tuple(qwen["vae"].config.latents_std) == pytest.approx(fmt.std)


def test_missing_tokenizer_is_named(qwen, tmp_path):
    import shutil

    from genloom.diffusion.errors import CheckpointError
    from genloom.diffusion.models.text_encoders import load_clip_files

    lone = tmp_path / "te" / "qwen_2.5_vl_tiny.safetensors"
    lone.parent.mkdir()
    shutil.copy(qwen["models"] / "text_encoders" / "qwen_2.5_vl_tiny.safetensors", lone)
    with pytest.raises(CheckpointError, match="qwen25_tokenizer"):
        load_clip_files([lone], "qwen_image")
    with pytest.raises(CheckpointError, match="Qwen3"):
        load_clip_files([qwen["models"] / "text_encoders" / "qwen_2.5_vl_tiny.safetensors"], "lumina2")


def test_prompt_encoding_equals_the_pipeline(qwen, tmp_folders):
    from genloom.diffusion.models.text_encoders import load_clip_files

    clip = load_clip_files([qwen["models"] / "text_encoders" / "qwen_2.5_vl_tiny.safetensors"], "qwen_image")
    for prompt in ("a red circle on a blue square", ""):
        cond, pooled = clip.encode(prompt)
        ref = _reference_embeds(qwen, prompt)
        assert pooled is None and cond.shape == ref.shape
        assert torch.allclose(cond, ref, atol=1e-5)


def test_text_to_image_equals_qwen_image_pipeline(qwen, tmp_folders):
    """UNETLoader -> ModelSamplingAuraFlow(3.1) -> KSampler(euler, simple, cfg 1) -> VAEDecode, as
    ComfyUI's Qwen-Image workflow, vs the pipeline with a static shift of 3.1 and true_cfg_scale 1."""
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.ksampler import KSampler
    from genloom.nodes.latent import VAEDecode
    from genloom.nodes.loaders import VAELoader
    from genloom.nodes.loaders_split import CLIPLoader, UNETLoader
    from genloom.nodes.model_sampling import ModelSamplingAuraFlow
    from genloom.nodes.sd3 import EmptySD3LatentImage

    tmp_folders.folders.models_dirs.insert(0, qwen["models"])
    (model,) = UNETLoader().run("qwen_image_tiny.safetensors")
    (model,) = ModelSamplingAuraFlow().run(model, 3.1)
    (clip,) = CLIPLoader().run("qwen_2.5_vl_tiny.safetensors", "qwen_image")
    (vae,) = VAELoader().run("qwen_image_vae_tiny.safetensors")
    (pos,) = CLIPTextEncode().run("a red circle on a blue square", clip)
    (neg,) = CLIPTextEncode().run("", clip)
    (latent,) = EmptySD3LatentImage().run(SIZE, SIZE, 1)
    steps, seed = 4, 42  # 1000 / steps whole: ComfyUI's simple schedule then hits the pipeline's sigmas exactly
    (out,) = KSampler().run(model, seed, steps, 1.0, "euler", "simple", pos, neg, latent)
    (image,) = VAEDecode().run(out, vae)
    assert image.shape == (1, SIZE, SIZE, 3)

    noise = torch.randn((1, 16, SIZE // 8, SIZE // 8), generator=torch.Generator("cpu").manual_seed(seed))
    packed, _grid = qwen_image.pack(noise)
    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.1), vae=qwen["vae"],
                             text_encoder=None, tokenizer=None, transformer=qwen["transformer"])
    embeds = _reference_embeds(qwen, "a red circle on a blue square")
    ref = pipe(prompt_embeds=embeds, prompt_embeds_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
               height=SIZE, width=SIZE, num_inference_steps=steps, true_cfg_scale=1.0, latents=packed,
               output_type="pt").images
    assert (image - ref.permute(0, 2, 3, 1)).abs().max() < 1e-4


def test_packing_round_trips_odd_sizes():
    x = torch.randn(2, 16, 5, 7)
    tokens, grid = qwen_image.pack(x)
    assert grid == (3, 4) and tokens.shape == (2, 12, 64)
    assert torch.equal(qwen_image.unpack(tokens, x), x)
    # 2x2 patches channel-major, as diffusers' _pack_latents lays them out
    assert torch.equal(tokens[0, 0], x[0, :, :2, :2].reshape(16, 4).reshape(-1))


def _same(a, b) -> bool:
    return list(a) == list(b) if isinstance(a, (list, tuple)) else a == b


def test_full_size_configs_are_read_from_the_shapes():
    """Qwen-Image's 60-layer transformer and the Qwen2.5-VL 7B encoder (built on the meta device)."""
    from diffusers import QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from genloom.diffusion.models import llm_encoders

    with torch.device("meta"):
        full = QwenImageTransformer2DModel()  # diffusers' defaults are Qwen-Image's
    config = qwen_image.config_from_shapes({k: tuple(v.shape) for k, v in full.state_dict().items()})
    assert all(_same(v, full.config[k]) for k, v in config.items()), config
    text = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                num_attention_heads=28, num_key_value_heads=4)
    with torch.device("meta"):
        seven_b = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config={"out_hidden_size": 3584}))
    shapes = {k: tuple(v.shape) for k, v in seven_b.state_dict().items()}
    assert llm_encoders.detect(shapes) == "qwen25_vl"
    read = llm_encoders.config_from_shapes(llm_encoders._text_keys(shapes), "qwen25_vl")
    assert {k: read["text_config"][k] for k in text} == text and read["text_config"]["head_dim"] == 128
    assert read["text_config"]["rope_parameters"]["mrope_section"] == [16, 24, 24]  # Qwen2.5-VL's
    vision = seven_b.config.vision_config
    assert all(getattr(vision, k) == v for k, v in read["vision_config"].items()), read["vision_config"]


def test_reference_latents_go_in_as_the_edit_pipeline_puts_them(qwen, tmp_folders):
    """ReferenceLatent's images (Qwen-Image-Edit): normalised like the edit pipeline's image latents,
    packed, appended to the image tokens with the next rotary frame index, the output cut back to the
    generated image's tokens (QwenImageEditPipeline's transformer call)."""
    from diffusers import QwenImagePipeline

    from genloom.diffusion.models.families import load_diffusion_model

    model = load_diffusion_model(qwen["models"] / "diffusion_models" / "qwen_image_tiny.safetensors")
    torch.manual_seed(0)
    x, ref, emb = torch.randn(1, 16, 4, 4), torch.randn(1, 16, 1, 6, 4), torch.randn(1, 5, 64)
    extras = model.cond_extras({"reference_latents": [ref]}, SIZE, SIZE)
    with torch.no_grad():
        mine = model.predict(model.unet, x, torch.tensor(0.5), emb, extras)
        mean = torch.tensor(qwen["vae"].config.latents_mean).view(1, 16, 1, 1, 1)
        std = torch.tensor(qwen["vae"].config.latents_std).view(1, 16, 1, 1, 1)
        pack = QwenImagePipeline._pack_latents
        tokens = torch.cat([pack(x, 1, 16, 4, 4), pack(((ref - mean) / std)[:, :, 0], 1, 16, 6, 4)], dim=1)
        out = qwen["transformer"](hidden_states=tokens, encoder_hidden_states=emb, timestep=torch.tensor([0.5]),
                                  img_shapes=[[(1, 2, 2), (1, 3, 2)]], return_dict=False)[0][:, :4]
    ref_out = out.reshape(1, 2, 2, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, 16, 4, 4)
    assert torch.allclose(mine, ref_out, atol=1e-5)
    with pytest.raises(Exception, match="by index"):
        model.cond_extras({"reference_latents": [ref], "reference_latents_method": "offset"}, SIZE, SIZE)


def test_other_layouts_and_wrong_types(qwen, tmp_path):
    """A diffusers-keyed file without the prefix loads the same; a language model given to another
    CLIP type is refused with the type that takes it."""
    from safetensors.torch import load_file, save_file

    from genloom.diffusion.errors import CheckpointError
    from genloom.diffusion.models.families import load_diffusion_model
    from genloom.diffusion.models.text_encoders import load_clip_files

    state = load_file(str(qwen["models"] / "diffusion_models" / "qwen_image_tiny.safetensors"))
    bare = {k[len("model.diffusion_model."):]: v for k, v in state.items()}
    save_file(bare, str(tmp_path / "diffusers_keys.safetensors"))
    model = load_diffusion_model(tmp_path / "diffusers_keys.safetensors")
    assert all(torch.equal(v, model.unet.state_dict()[k]) for k, v in bare.items())
    with pytest.raises(CheckpointError, match="type qwen_image, not sd3"):
        load_clip_files([qwen["models"] / "text_encoders" / "qwen_2.5_vl_tiny.safetensors"], "sd3")
