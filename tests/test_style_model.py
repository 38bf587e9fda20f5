"""Flux Redux through genloom's nodes: CLIPVisionLoader reads a SigLIP vision tower saved as the
ComfyUI download is (transformers' vision_model.* keys), StyleModelLoader the Redux file
(redux_up / redux_down), and StyleModelApply appends exactly the image tokens diffusers'
FluxPriorReduxPipeline appends to the same text embeddings (within 1e-5); a tiny Flux dev sample
with that conditioning equals FluxPipeline given the prior's prompt_embeds. The attn_bias mask
and the batch/strength arithmetic are checked against ComfyUI's rules written out here."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

import tiny_flux  # noqa: E402

PROMPT = "a red cat on the grass"
SEED, W, H, STEPS = 7, 32, 32, 4
SIGLIP = "sigclip-tiny.safetensors"
REDUX = "flux1-redux-tiny.safetensors"


def _siglip():
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(21)
    return SiglipVisionModel(SiglipVisionConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                                num_attention_heads=1, image_size=16, patch_size=4)).eval()


def _redux():
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder

    torch.manual_seed(22)
    return ReduxImageEncoder(redux_dim=64, txt_in_features=tiny_flux.TEXT_DIM).eval()


@pytest.fixture(scope="module")
def redux_parts(tmp_path_factory):
    from safetensors.torch import save_file

    parts = tiny_flux.build_models(tmp_path_factory.mktemp("redux_models"))
    root = parts["root"]
    siglip, redux = _siglip(), _redux()
    for sub in ("clip_vision", "style_models"):
        (root / sub).mkdir()
    state = {k if k.startswith("vision_model.") else "vision_model." + k: v.contiguous()
             for k, v in siglip.state_dict().items() if not k.endswith("position_ids")}
    save_file(state, str(root / "clip_vision" / SIGLIP))  # with the attention-pooling head, as shipped
    save_file({k: v.contiguous() for k, v in redux.state_dict().items()}, str(root / "style_models" / REDUX))
    save_file({"style_embedding": torch.zeros(1, 8, 16)}, str(root / "style_models" / "t2i-style.safetensors"))
    return {**parts, "siglip": siglip, "redux": redux}


@pytest.fixture
def ctx(redux_parts, tmp_path):
    import tiny

    with tiny.cpu_context([redux_parts["root"]], tmp_path):
        yield redux_parts


def _picture(batch=1):
    g = torch.Generator().manual_seed(4)
    return (torch.rand(batch, 16, 16, 3, generator=g) * 255).round() / 255  # exactly a PIL picture's values


def _styled(parts, strength=1.0, strength_type="multiply", pictures=None):
    from genloom.nodes.clip_vision import CLIPVisionEncode, CLIPVisionLoader
    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.loaders_split import DualCLIPLoader
    from genloom.nodes.style_model import StyleModelApply, StyleModelLoader

    names = parts["names"]
    (clip,) = DualCLIPLoader().run(names["clip_l"], names["t5xxl"], "flux")
    (text,) = CLIPTextEncode().run(PROMPT, clip)
    (vision,) = CLIPVisionLoader().run(SIGLIP)
    (seen,) = CLIPVisionEncode().run(vision, _picture() if pictures is None else pictures, "none")
    (style,) = StyleModelLoader().run(REDUX)
    (styled,) = StyleModelApply().run(text, style, seen, strength, strength_type)
    return text, styled, seen


def _prior(parts, text):
    from PIL import Image
    from transformers import SiglipImageProcessor

    import diffusers

    tok, clip, t5tok, t5 = parts["parts"]
    prior = diffusers.FluxPriorReduxPipeline(
        image_encoder=parts["siglip"], feature_extractor=SiglipImageProcessor(size={"height": 16, "width": 16}),
        image_embedder=parts["redux"], text_encoder=clip, tokenizer=tok, text_encoder_2=t5, tokenizer_2=t5tok)
    picture = Image.fromarray((_picture()[0].numpy() * 255).round().astype("uint8"))
    return prior(image=picture, prompt_embeds=text[0][0], pooled_prompt_embeds=text[0][1]["pooled_output"])


def _sample(parts, cond):
    """A tiny Flux dev picture (KSampler, euler / simple, cfg 1, ComfyUI's default guidance 3.5)."""
    from genloom.nodes.ksampler import KSampler
    from genloom.nodes.latent import VAEDecode
    from genloom.nodes.loaders import VAELoader
    from genloom.nodes.loaders_split import UNETLoader
    from genloom.nodes.sd3 import EmptySD3LatentImage

    (model,) = UNETLoader().run(parts["names"]["dev"], "default")
    (vae,) = VAELoader().run(parts["names"]["vae"])
    (latent,) = EmptySD3LatentImage().run(W, H, 1)
    (samples,) = KSampler().run(model, SEED, STEPS, 1.0, "euler", "simple", cond, cond, latent, 1.0)
    return VAEDecode().run(samples, vae)[0]


def test_redux_tokens_equal_the_prior_pipeline_and_sample_like_flux_pipeline(ctx):
    text, styled, seen = _styled(ctx)
    assert seen.last_hidden_state.shape == (1, 16, 64)  # SigLIP: no class token
    prior = _prior(ctx, text)
    n_txt = text[0][0].shape[1]
    assert styled[0][0].shape == prior.prompt_embeds.shape == (1, n_txt + 16, tiny_flux.TEXT_DIM)
    assert torch.equal(styled[0][0][:, :n_txt], text[0][0])
    assert float((styled[0][0][:, n_txt:] - prior.prompt_embeds[:, n_txt:]).abs().max()) < 1e-5
    assert "attention_mask" not in styled[0][1]  # multiply at any strength: no mask

    ours = _sample(ctx, styled)
    pipe = tiny_flux.pipeline(ctx["dev"], ctx["parts"], ctx["vae"], base_shift=1.15, max_shift=1.15)
    noise = torch.randn((1, 16, H // 8, W // 8), generator=torch.Generator("cpu").manual_seed(SEED))
    theirs = pipe(prompt_embeds=prior.prompt_embeds, pooled_prompt_embeds=prior.pooled_prompt_embeds,
                  height=H, width=W, num_inference_steps=STEPS, guidance_scale=3.5, output_type="pt",
                  latents=pipe._pack_latents(noise, 1, 16, H // 8, W // 8)).images.permute(0, 2, 3, 1)
    assert ours.shape == theirs.shape and float(theirs.std()) > 0.01
    assert float((ours - theirs).abs().max()) < 1e-4


def test_strength_batch_and_attn_bias_follow_comfyui(ctx):
    text, plain, _seen = _styled(ctx)
    n_txt, tokens = text[0][0].shape[1], plain[0][0][:, text[0][0].shape[1]:]
    _t, half, _s = _styled(ctx, 0.5, "multiply")
    assert torch.allclose(half[0][0][:, n_txt:], 0.5 * tokens, atol=1e-6)

    _t, two, _s = _styled(ctx, pictures=torch.cat([_picture(), _picture()]))  # a batch: one sequence
    assert torch.allclose(two[0][0][:, n_txt:], torch.cat([tokens, tokens], dim=1), atol=1e-6)

    _t, biased, _s = _styled(ctx, 0.5, "attn_bias")
    assert torch.allclose(biased[0][0][:, n_txt:], tokens, atol=1e-6)  # tokens as they are
    mask = biased[0][1]["attention_mask"]
    size = n_txt + 16 + 1  # text, the picture's tokens, one image cell (attention_mask_img_shape 1x1)
    expected = torch.zeros((1, size, size))
    for row in list(range(n_txt)) + [size - 1]:
        expected[0, row, n_txt:n_txt + 16] = math.log(0.5)
    assert mask.shape == (1, size, size) and biased[0][1]["attention_mask_img_shape"] == (1, 1)
    assert torch.allclose(mask.float(), expected, atol=1e-3)

    # a second style model keeps the first mask, moved around its own columns
    from genloom.nodes.style_model import StyleModelApply, StyleModelLoader

    (style,) = StyleModelLoader().run(REDUX)
    (again,) = StyleModelApply().run(biased, style, _seen, 1.0, "multiply")
    grown = again[0][1]["attention_mask"].float()
    n2 = n_txt + 16
    assert grown.shape == (1, size + 16, size + 16)
    assert torch.allclose(grown[:, :n2, :n2], mask[:, :n2, :n2].float())
    assert torch.allclose(grown[:, n2:n2 + 16], torch.zeros(1, 16, size + 16))  # the new rows: no bias
    assert torch.allclose(grown[:, -1:, :n2], mask[:, -1:, :n2].float())
    assert torch.allclose(grown[:, :, n2:n2 + 16], torch.zeros(1, size + 16, 16))  # log(1) = 0


def test_style_model_files_that_are_not_redux_are_refused_by_name(ctx):
    from genloom.engine.errors import ModelLoadError
    from genloom.nodes.style_model import StyleModelLoader

    with pytest.raises(ModelLoadError) as err:
        StyleModelLoader().run("t2i-style.safetensors")
    assert err.value.input_name == "style_model_name" and "not a T2I style adapter" in str(err.value)


def test_redux_tokens_of_another_width_are_a_clear_error(ctx):
    from genloom.engine.errors import NodeInputError
    from genloom.nodes.style_model import StyleModelApply, StyleModelLoader

    _t, _p, seen = _styled(ctx)
    (style,) = StyleModelLoader().run(REDUX)
    sd_cond = [[torch.zeros(1, 77, 768), {}]]
    with pytest.raises(NodeInputError, match="32-wide tokens but the conditioning's are 768 wide"):
        StyleModelApply().run(sd_cond, style, seen, 1.0, "multiply")


def test_attn_bias_reaches_flux_attention(ctx):
    """With attn_bias the Flux model gets the mask: at strength 0 text and image ignore the
    picture's tokens (the text-only picture); at 0.5 the picture differs from both."""
    text, muted, _seen = _styled(ctx, 0.0, "attn_bias")
    plain = _sample(ctx, text)
    assert float((_sample(ctx, muted) - plain).abs().max()) < 1e-4
    _t, half, _s = _styled(ctx, 0.5, "attn_bias")
    _t, full, _s = _styled(ctx, 1.0, "attn_bias")
    assert "attention_mask" not in full[0][1]  # strength 1: nothing to bias
    biased, unbiased = _sample(ctx, half), _sample(ctx, full)
    assert float((biased - unbiased).abs().max()) > 1e-3 and float((biased - plain).abs().max()) > 1e-3
