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
