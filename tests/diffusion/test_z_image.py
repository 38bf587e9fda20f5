"""Z-Image (Turbo) on tiny random models saved as users have them (the transformer in its original
fused-qkv layout with ComfyUI's prefix, the Qwen3 text encoder without an output head (tied, as
Qwen3-4B's), the Flux `ae` VAE, Qwen's tokenizer next to the encoder): genloom's nodes equal diffusers'
ZImagePipeline at cfg 1 (the pipeline's guidance_scale 0: Turbo runs without CFG)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import qwen_tiny  # noqa: E402
import tiny_split  # noqa: E402

from genloom.diffusion.models.families import z_image  # noqa: E402

SIZE = 32


@pytest.fixture(scope="module")
def zi(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    for sub in ("diffusion_models", "text_encoders", "vae"):
        (models / sub).mkdir()
    transformer = qwen_tiny.z_image_transformer(1)
    z_image.save_original(transformer, models / "diffusion_models" / "z_image_turbo_tiny.safetensors",
                          "model.diffusion_model.")
    encoder = qwen_tiny.tiny_qwen3(2)
    qwen_tiny.save_llm(encoder, models / "text_encoders" / "qwen_3_tiny.safetensors", lm_head=False)
    qwen_tiny.write_tokenizer(models / "text_encoders" / "qwen25_tokenizer")
    vae = tiny_split.vae16(seed=3, shift=0.1159, scale=0.3611)
    tiny_split.save_vae(vae, models / "vae" / "ae.safetensors")
    return {"models": models, "transformer": transformer, "encoder": encoder, "vae": vae}


def _reference_embeds(zi, prompt):
    """The second-to-last layer's hidden states over `<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n`."""
    from transformers import Qwen2Tokenizer

    tok = Qwen2Tokenizer.from_pretrained(str(zi["models"] / "text_encoders" / "qwen25_tokenizer"))
    text = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text, add_special_tokens=False).input_ids
    with torch.no_grad():
        return zi["encoder"](input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-2]


def test_writer_round_trips_through_diffusers_converter(zi):
    original = z_image.to_original(zi["transformer"].state_dict())
    assert "layers.0.attention.qkv.weight" in original and "cap_embedder.1.weight" in original
    back = z_image.to_diffusers(original)
    assert set(back) == set(zi["transformer"].state_dict())
    assert all(torch.equal(back[k], v) for k, v in zi["transformer"].state_dict().items())


def test_text_to_image_equals_z_image_pipeline(zi, tmp_folders):
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.ksampler import KSampler
    from genloom.nodes.latent import VAEDecode
    from genloom.nodes.loaders import VAELoader
    from genloom.nodes.loaders_split import CLIPLoader, UNETLoader
    from genloom.nodes.model_sampling import ModelSamplingAuraFlow
    from genloom.nodes.sd3 import EmptySD3LatentImage

    tmp_folders.folders.models_dirs.insert(0, zi["models"])
    (model,) = UNETLoader().run("z_image_turbo_tiny.safetensors")
    assert model.kind == "z_image" and model.unet.config.n_refiner_layers == 1
    (model,) = ModelSamplingAuraFlow().run(model, 3.0)
    (clip,) = CLIPLoader().run("qwen_3_tiny.safetensors", "lumina2")
    cond, _pooled = clip.encode("a red circle")
    assert torch.allclose(cond, _reference_embeds(zi, "a red circle"), atol=1e-5)
    (vae,) = VAELoader().run("ae.safetensors")
    (pos,) = CLIPTextEncode().run("a red circle", clip)
    (neg,) = CLIPTextEncode().run("", clip)
    (latent,) = EmptySD3LatentImage().run(SIZE, SIZE, 1)
    steps, seed = 4, 7  # 1000 / steps whole: ComfyUI's simple schedule is the pipeline's sigmas
    (out,) = KSampler().run(model, seed, steps, 1.0, "euler", "simple", pos, neg, latent)
    (image,) = VAEDecode().run(out, vae)
    noise = torch.randn((1, 16, SIZE // 8, SIZE // 8), generator=torch.Generator("cpu").manual_seed(seed))
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=zi["vae"], text_encoder=None,
                          tokenizer=None, transformer=zi["transformer"])
    ref = pipe(prompt_embeds=[_reference_embeds(zi, "a red circle")[0]], guidance_scale=0.0, height=SIZE,
               width=SIZE, num_inference_steps=steps, latents=noise, output_type="pt").images
    assert (image - ref.permute(0, 2, 3, 1)).abs().max() < 1e-4
    (again,) = KSampler().run(model, seed, steps, 1.0, "res_multistep", "simple", pos, neg, latent)
    assert again["samples"].shape == out["samples"].shape and torch.isfinite(again["samples"]).all()


def test_full_size_configs_are_read_from_the_shapes():
    """Z-Image's 30-layer, 3840-wide transformer and Qwen3-4B (built on the meta device)."""
    from diffusers import ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from genloom.diffusion.models import llm_encoders

    with torch.device("meta"):
        full = ZImageTransformer2DModel()  # diffusers' defaults are Z-Image's
    shapes = {k: tuple(v.shape) for k, v in z_image.to_original(full.state_dict()).items()}
    assert z_image.detect(shapes)
    config = z_image.config_from_shapes(shapes)
    assert all((list(v) if isinstance(v, (list, tuple)) else v) ==
               (list(full.config[k]) if isinstance(full.config[k], (list, tuple)) else full.config[k])
               for k, v in config.items()), config
    four_b = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                  num_attention_heads=32, num_key_value_heads=8, head_dim=128)
    with torch.device("meta"):
        qwen3 = Qwen3ForCausalLM(Qwen3Config(**four_b, tie_word_embeddings=True))
    shapes = {k: tuple(v.shape) for k, v in qwen3.state_dict().items() if k != "lm_head.weight"}
    read = llm_encoders.config_from_shapes(shapes, llm_encoders.detect(shapes))
    assert {k: read[k] for k in four_b} == four_b and read["tie_word_embeddings"] is True


def test_bfloat16_network_gets_a_float32_timestep():
    """As ZImagePipeline calls it (float32 latents, timestep (1000 - t) / 1000): 1 - sigma reaches a
    bfloat16 transformer unrounded, so the prediction equals the pipeline's call exactly."""
    from genloom.diffusion.sampling import latent_formats, model_sampling

    transformer = qwen_tiny.z_image_transformer(1).to(torch.bfloat16)
    model = z_image.ZImageHandle(unet=transformer, latent_channels=16, vae_scale_factor=8, name="tiny",
                                 prediction_type="flow", sampling=model_sampling.flow(shift=3.0, multiplier=1.0),
                                 latent_format=latent_formats.FLUX)
    torch.manual_seed(0)
    x = torch.randn(1, 16, 4, 4).to(torch.bfloat16)
    emb = torch.randn(1, 5, 64).to(torch.bfloat16)
    sigma = 0.4990234375  # 1 - sigma = 0.5 + 2**-10: exact in float32 either way, not in bfloat16
    with torch.no_grad():
        ours = model.predict(transformer, x, torch.tensor([sigma]), emb, {})

        def pipeline_call(timestep):
            return -transformer([x[0].unsqueeze(1)], timestep, [emb[0]], return_dict=False)[0][0].squeeze(1)

        ref = pipeline_call(torch.tensor([(1000.0 - sigma * 1000.0) / 1000.0]))
        rounded = pipeline_call(torch.tensor([1.0 - sigma]).to(torch.bfloat16))
    assert ours.shape == (1, 16, 4, 4) and torch.equal(ours[0], ref)
    assert not torch.equal(ref, rounded)  # the check tells the two apart
