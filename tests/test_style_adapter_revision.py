"""The SD1 T2I style adapter and SDXL revision through genloom's nodes.

Style adapter: StyleModelLoader reads TencentARC's layout (style_embedding, ln_pre,
transformer_layes.*, ln_post, proj) from a pickled .pth of tensors; StyleModelApply appends the
tokens that the network, written out here with plain matmuls from the raw tensors, makes from
transformers' CLIP vision last_hidden_state. A tiny SD1 sample with that conditioning equals
StableDiffusionPipeline given the same prompt_embeds.

Revision: CLIPVisionEncode + unCLIPConditioning on a plain SDXL checkpoint replace the positive's
pooled text by ComfyUI's noised image embedding (the image part of the unCLIP ADM vector: the
embedding noised at round(999 * noise_augmentation) by the cosine schedule with a generator seeded
seed - 10, times strength; several are summed and noised again at level 0). A tiny SDXL sample
equals StableDiffusionXLPipeline fed that pooled_prompt_embeds.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

PROMPT = "a red circle on a blue background"
SEED, STEPS = 42, 4
VISION = "vit-tiny.safetensors"  # hidden 64 (the adapter's width), projection 48 (tiny SDXL's pooled width)
ADAPTER = "t2iadapter_style_tiny.pth"
WIDTH, TOKENS, LAYERS, HEADS, CONTEXT = 64, 8, 2, 8, 32  # CONTEXT: tiny SD1's cross-attention width
POOLED = 48


def _vision():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(31)
    return CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=WIDTH, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1, image_size=16,
        patch_size=4, projection_dim=POOLED, hidden_act="gelu", layer_norm_eps=1e-5)).eval()


def _adapter_state() -> dict:
    g = torch.Generator().manual_seed(32)

    def r(*shape, scale=0.2, base=0.0):
        return base + scale * torch.randn(*shape, generator=g)

    state = {"style_embedding": r(1, TOKENS, WIDTH, scale=1.0), "proj": r(WIDTH, CONTEXT, scale=0.3)}
    for name in ("ln_pre", "ln_post"):
        state[f"{name}.weight"], state[f"{name}.bias"] = r(WIDTH, base=1.0), r(WIDTH)
    for i in range(LAYERS):
        p = f"transformer_layes.{i}."
        for name in ("ln_1", "ln_2"):
            state[p + f"{name}.weight"], state[p + f"{name}.bias"] = r(WIDTH, base=1.0), r(WIDTH)
        state[p + "attn.in_proj_weight"], state[p + "attn.in_proj_bias"] = r(3 * WIDTH, WIDTH), r(3 * WIDTH)
        state[p + "attn.out_proj.weight"], state[p + "attn.out_proj.bias"] = r(WIDTH, WIDTH), r(WIDTH)
        state[p + "mlp.c_fc.weight"], state[p + "mlp.c_fc.bias"] = r(4 * WIDTH, WIDTH), r(4 * WIDTH)
        state[p + "mlp.c_proj.weight"], state[p + "mlp.c_proj.bias"] = r(WIDTH, 4 * WIDTH, scale=0.1), r(WIDTH)
    return state


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("style_revision")
    for sub in ("clip_vision", "style_models"):
        (root / sub).mkdir()
    vision = _vision()
    save_file({k: v.contiguous() for k, v in vision.state_dict().items() if not k.endswith("position_ids")},
              str(root / "clip_vision" / VISION))
    state = _adapter_state()
    torch.save(state, str(root / "style_models" / ADAPTER))  # a pickle of tensors, as released
    broken = {k: v for k, v in state.items() if k != "proj"}
    torch.save(broken, str(root / "style_models" / "broken_style.pth"))
    return {"root": root, "vision": vision, "state": state}


@pytest.fixture
def ctx(parts, tiny_models, tmp_path):
    import tiny

    with tiny.cpu_context([parts["root"], tiny_models], tmp_path):
        yield parts


def _picture(batch=1, seed=4):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 16, 16, 3, generator=g) * 255).round() / 255  # exactly a PIL picture's values


def _vision_outputs(vision, pictures):
    """transformers' CLIP vision outputs on CLIP-normalised pixels (16 px pictures: no resize)."""
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).reshape(1, 3, 1, 1)
    with torch.no_grad():
        return vision(pixel_values=(pictures.movedim(-1, 1) - mean) / std)


def _layer_norm(x, state, name):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * state[name + ".weight"] + state[name + ".bias"]


def _adapter_reference(state, hidden):
    """The T2I style adapter on [B, T, W] vision tokens, from the raw tensors."""
    b = hidden.shape[0]
    x = torch.cat([hidden, state["style_embedding"].expand(b, -1, -1)], dim=1)
    x = _layer_norm(x, state, "ln_pre")
    d = WIDTH // HEADS
    for i in range(LAYERS):
        p = f"transformer_layes.{i}."
        h = _layer_norm(x, state, p + "ln_1")
        qkv = h @ state[p + "attn.in_proj_weight"].T + state[p + "attn.in_proj_bias"]
        q, k, v = (t.reshape(b, -1, HEADS, d).transpose(1, 2) for t in qkv.split(WIDTH, dim=-1))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
        att = (weights @ v).transpose(1, 2).reshape(b, -1, WIDTH)
        x = x + att @ state[p + "attn.out_proj.weight"].T + state[p + "attn.out_proj.bias"]
        h = _layer_norm(x, state, p + "ln_2") @ state[p + "mlp.c_fc.weight"].T + state[p + "mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h)
        x = x + h @ state[p + "mlp.c_proj.weight"].T + state[p + "mlp.c_proj.bias"]
    return _layer_norm(x[:, -TOKENS:], state, "ln_post") @ state["proj"]


def _styled(pictures, strength=1.0):
    from genloom.nodes.clip_vision import CLIPVisionEncode, CLIPVisionLoader
    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.loaders import CheckpointLoaderSimple
    from genloom.nodes.style_model import StyleModelApply, StyleModelLoader

    model, clip, vae = CheckpointLoaderSimple().run("tiny-sd1.safetensors")
    (text,) = CLIPTextEncode().run(PROMPT, clip)
    (seen,) = CLIPVisionEncode().run(CLIPVisionLoader().run(VISION)[0], pictures, "center")
    (style,) = StyleModelLoader().run(ADAPTER)
    (styled,) = StyleModelApply().run(text, style, seen, strength, "multiply")
    return (model, vae), text, styled


def test_style_adapter_tokens_follow_the_network_and_comfyui_concatenation(ctx):
    pictures = torch.cat([_picture(), _picture(seed=5)])
    _m, text, styled = _styled(pictures[:1])
    expected = _adapter_reference(ctx["state"], _vision_outputs(ctx["vision"], pictures).last_hidden_state)
    n_txt = text[0][0].shape[1]
    assert styled[0][0].shape == (1, n_txt + TOKENS, CONTEXT)
    assert torch.equal(styled[0][0][:, :n_txt], text[0][0])
    assert float((styled[0][0][:, n_txt:] - expected[:1]).abs().max()) < 1e-5
    assert float(expected.std()) > 0.1

    _m, _t, half = _styled(pictures[:1], 0.5)  # multiply: the tokens scaled
    assert torch.allclose(half[0][0][:, n_txt:], 0.5 * expected[:1], atol=1e-5)
    _m, _t, both = _styled(pictures)  # a batch of pictures: their tokens one after the other
    assert both[0][0].shape == (1, n_txt + 2 * TOKENS, CONTEXT)
    assert torch.allclose(both[0][0][:, n_txt:], expected.reshape(1, 2 * TOKENS, CONTEXT), atol=1e-5)


def test_style_adapter_sample_equals_sd_pipeline(ctx, tiny_models):
    import diffusers

    from genloom.nodes.ksampler import KSampler
    from genloom.nodes.latent import EmptyLatentImage, VAEDecode

    (model, vae), text, styled = _styled(_picture())

    def sample(cond):
        (latent,) = EmptyLatentImage().run(64, 64, 1)
        (samples,) = KSampler().run(model, SEED, STEPS, 1.0, "euler", "normal", cond, cond, latent, 1.0)
        return VAEDecode().run(samples, vae)[0]

    ours = sample(styled)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        str(tiny_models / "diffusers" / "tiny-sd1"), local_files_only=True, safety_checker=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
    prompt_embeds, _neg = pipe.encode_prompt(PROMPT, "cpu", 1, False)
    tokens = _adapter_reference(ctx["state"], _vision_outputs(ctx["vision"], _picture()).last_hidden_state)
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(SEED))
    sigma_max = float(pipe.scheduler.sigmas.max())  # ComfyUI's start: noise * sqrt(1 + sigma_max^2)
    noise = noise * (1 + sigma_max ** 2) ** 0.5 / float(pipe.scheduler.init_noise_sigma)
    theirs = pipe(prompt_embeds=torch.cat([prompt_embeds, tokens], dim=1), height=16, width=16,
                  num_inference_steps=STEPS, guidance_scale=1.0, latents=noise, output_type="pt").images
    theirs = theirs.permute(0, 2, 3, 1)
    assert ours.shape == theirs.shape == (1, 16, 16, 3) and float(theirs.std()) > 0.01
    assert float((ours - theirs).abs().max()) < 1e-4
    assert float((sample(text) - ours).abs().max()) > 1e-3  # the picture's tokens mattered


def test_style_adapter_errors_name_the_input(ctx):
    from genloom.engine.errors import ModelLoadError, NodeInputError
    from genloom.nodes.style_model import StyleModelApply, StyleModelLoader

    with pytest.raises(ModelLoadError) as err:
        StyleModelLoader().run("broken_style.pth")
    assert err.value.input_name == "style_model_name" and "not a T2I style adapter" in str(err.value)
    (style,) = StyleModelLoader().run(ADAPTER)
    wrong = {"last_hidden_state": torch.zeros(1, 17, 32)}
    with pytest.raises(NodeInputError) as err:
        StyleModelApply().run([[torch.zeros(1, 77, CONTEXT), {}]], style, wrong, 1.0, "multiply")
    assert err.value.input_name == "clip_vision_output" and "64-wide CLIP vision tokens" in str(err.value)


# -- SDXL revision ------------------------------------------------------------------------------

def _noised(embeds, level, gen):
    """The cosine-schedule noising ComfyUI's augmentor applies, by diffusers' DDPMScheduler."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    return sched.add_noise(embeds, torch.randn(embeds.shape, generator=gen), torch.tensor([level]))


def _revision_conds(entries):
    from genloom.nodes.clip_vision import CLIPVisionEncode, CLIPVisionLoader
    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.loaders import CheckpointLoaderSimple
    from genloom.nodes.unclip import unCLIPConditioning

    model, clip, vae = CheckpointLoaderSimple().run("tiny-sdxl.safetensors")
    (seen,) = CLIPVisionEncode().run(CLIPVisionLoader().run(VISION)[0], _picture(), "center")
    (pos,) = CLIPTextEncode().run(PROMPT, clip)
    for strength, augmentation in entries:
        (pos,) = unCLIPConditioning().run(pos, seen, strength, augmentation)
    (neg,) = CLIPTextEncode().run("", clip)
    return (model, vae), pos, neg


def test_sdxl_revision_sample_equals_sdxl_pipeline_with_the_image_pooled(ctx, tiny_models):
    import diffusers

    from genloom.nodes.ksampler import KSampler
    from genloom.nodes.latent import EmptyLatentImage, VAEDecode

    (model, vae), pos, neg = _revision_conds([(0.8, 0.1)])
    (latent,) = EmptyLatentImage().run(64, 64, 1)
    (samples,) = KSampler().run(model, SEED, STEPS, 4.0, "euler", "normal", pos, neg, latent, 1.0)
    (ours,) = VAEDecode().run(samples, vae)

    embeds = _vision_outputs(ctx["vision"], _picture()).image_embeds
    pooled = _noised(embeds, round(999 * 0.1), torch.Generator().manual_seed(SEED - 10)) * 0.8
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(str(tiny_models / "diffusers" / "tiny-sdxl"),
                                                               local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.vae.register_to_config(scaling_factor=0.13025)  # the SDXL family's latent scale, as genloom uses
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
    embeds_, neg_embeds, text_pooled, neg_pooled = pipe.encode_prompt(PROMPT, negative_prompt="")
    assert not torch.allclose(pooled, text_pooled)
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(SEED))
    noise = noise * (1 + float(pipe.scheduler.sigmas.max()) ** 2) ** 0.5 / float(pipe.scheduler.init_noise_sigma)
    theirs = pipe(prompt_embeds=embeds_, negative_prompt_embeds=neg_embeds, pooled_prompt_embeds=pooled,
                  negative_pooled_prompt_embeds=neg_pooled, height=16, width=16, num_inference_steps=STEPS,
                  guidance_scale=4.0, latents=noise, output_type="pt").images.permute(0, 2, 3, 1)
    assert ours.shape == theirs.shape == (1, 16, 16, 3) and float(theirs.std()) > 0.01
    assert float((ours - theirs).abs().max()) < 1e-4


def test_sdxl_revision_pooled_arithmetic(ctx):
    """Two unCLIPConditionings: the strength-weighted sum of the noised embeddings, noised again at
    level 0 with the generator's next noise; the negative keeps its text pooled."""
    from genloom.diffusion.errors import SamplingError

    (model, _vae), pos, neg = _revision_conds([(0.7, 0.1), (0.5, 0.3)])
    embeds = _vision_outputs(ctx["vision"], _picture()).image_embeds
    first = _noised(embeds, 100, torch.Generator().manual_seed(SEED - 10)) * 0.7
    gen = torch.Generator().manual_seed(SEED - 10)
    second = _noised(embeds, 300, gen) * 0.5
    expected = _noised(first + second, 0, gen)
    assert not torch.allclose(expected, first + second, atol=1e-4)  # level 0 still adds some noise

    got = model.cond_extras({**pos[0][1], "seed": SEED}, 16, 16)["text_embeds"]
    assert got.shape == (1, POOLED) and torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(model.cond_extras({**neg[0][1], "seed": SEED}, 16, 16)["text_embeds"],
                       neg[0][1]["pooled_output"])
    wrong = {"unclip_conditioning": [{"clip_vision_output": {"image_embeds": torch.zeros(1, 40)},
                                      "strength": 1.0, "noise_augmentation": 0.0}]}
    with pytest.raises(SamplingError, match="48-wide CLIP image embeddings"):
        model.cond_extras(wrong, 16, 16)
