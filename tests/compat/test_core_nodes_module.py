"""The modules packs import for models and sampling: `nodes` (core nodes with ComfyUI's method names
and argument orders), comfy.samplers, comfy.sample, comfy.sampler_helpers, comfy.sd,
comfy.model_patcher, node_helpers, latent_preview; and the CLIP / VAE methods packs call."""


import pytest

torch = pytest.importorskip("torch")

from references import sd1  # noqa: E402,F401 - a fixture


def test_core_node_classes_have_comfyuis_shape(comfy_names):
    import nodes

    assert nodes.MAX_RESOLUTION == 16384
    assert nodes.NODE_CLASS_MAPPINGS["KSampler"] is nodes.KSampler
    assert (nodes.KSampler.FUNCTION, nodes.CLIPTextEncode.FUNCTION, nodes.VAEDecode.FUNCTION,
            nodes.LoraLoader.FUNCTION, nodes.CheckpointLoaderSimple.FUNCTION,
            nodes.EmptyLatentImage.FUNCTION, nodes.SaveImage.FUNCTION) == \
        ("sample", "encode", "decode", "load_lora", "load_checkpoint", "generate", "save_images")
    assert nodes.VAEDecode.RETURN_TYPES == ("IMAGE",)
    assert nodes.CheckpointLoaderSimple.RETURN_TYPES == ("MODEL", "CLIP", "VAE")
    types = nodes.KSampler.INPUT_TYPES()
    assert list(types["required"]) == ["model", "seed", "steps", "cfg", "sampler_name", "scheduler",
                                       "positive", "negative", "latent_image", "denoise"]
    assert types["required"]["steps"][0] == "INT" and types["required"]["steps"][1]["default"] == 20
    assert nodes.KSampler.INPUT_TYPES() is not types  # fresh: a subclass may change its copy
    assert nodes.SaveImage.INPUT_TYPES()["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS["KSamplerAdvanced"] == "KSampler (Advanced)"


def test_core_nodes_called_with_comfyuis_argument_order(comfy_names, sd1, tmp_folders):
    import nodes

    cond = nodes.CLIPTextEncode().encode(sd1.clip, "a red circle")[0]
    want, pooled = sd1.clip.encode("a red circle")
    assert torch.equal(cond[0][0], want) and torch.equal(cond[0][1]["pooled_output"], pooled)
    latent = nodes.EmptyLatentImage().generate(64, 32)[0]  # batch_size defaults to 1, as in ComfyUI
    assert latent["samples"].shape == (1, 4, 4, 8) and not latent["samples"].any()
    sampled = nodes.common_ksampler(sd1.model, 3, 2, 2.0, "euler", "normal", cond, cond, latent)[0]
    via_node = nodes.KSampler().sample(sd1.model, 3, 2, 2.0, "euler", "normal", cond, cond, latent)[0]
    assert torch.equal(sampled["samples"], via_node["samples"])
    image = nodes.VAEDecode().decode(sd1.vae, sampled)[0]
    assert torch.equal(image, sd1.vae.decode(sampled["samples"]))  # [B, H, W, C] as ComfyUI's
    assert image.shape == (1, 8, 16, 3)
    masked = nodes.ConditioningSetMask().append(cond, torch.ones(4, 8), "default", 0.5)[0]
    assert masked[0][1]["mask_strength"] == 0.5 and masked[0][1]["set_area_to_bounds"] is False
    with pytest.raises(NotImplementedError, match="denoise"):
        nodes.KSamplerAdvanced().sample(sd1.model, "enable", 1, 2, 2.0, "euler", "normal", cond, cond, latent,
                                        0, 2, "disable", denoise=0.5)


def test_samplers_and_sample_modules(comfy_names, sd1, tmp_folders):
    import comfy.sample
    import comfy.samplers

    assert comfy.samplers.KSampler.SAMPLERS[0] == "euler" and "karras" in comfy.samplers.KSampler.SCHEDULERS
    ms = sd1.model.get_model_object("model_sampling")
    karras = comfy.samplers.calculate_sigmas(ms, "karras", 4)
    lo, hi = ms.sigma_min, ms.sigma_max  # Karras et al. (2022), rho 7, then a final 0
    ramp = torch.linspace(0, 1, 4, dtype=torch.float64)
    want = (hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7
    assert torch.allclose(karras[:-1].double(), want, rtol=1e-5) and float(karras[-1]) == 0.0

    latent = torch.zeros(2, 4, 4, 4)
    noise = comfy.sample.prepare_noise(latent, 5)
    assert torch.equal(noise, torch.randn((2, 4, 4, 4), generator=torch.Generator().manual_seed(5)))
    assert torch.equal(comfy.sample.prepare_noise(latent[:1], 5, [1]), noise[1:])
    assert comfy.sample.fix_empty_latent_channels(sd1.model, torch.zeros(1, 16, 4, 4)).shape == (1, 4, 4, 4)

    cond, pooled = sd1.clip.encode("a red circle")
    positive = [[cond, {"pooled_output": pooled}]]
    out = comfy.sample.sample(sd1.model, noise[:1], 2, 3.0, "euler", "normal", positive, positive,
                              latent[:1], seed=5)
    from genloom.diffusion.sampling.loop import sample

    ref = sample(sd1.model, positive, positive, {"samples": latent[:1]}, seed=5, steps=2, cfg=3.0,
                 sampler_name="euler", scheduler="normal")["samples"]
    assert torch.equal(out, ref)

    guider = comfy.samplers.CFGGuider(sd1.model)
    guider.set_conds(positive, positive)
    guider.set_cfg(3.0)
    sigmas = comfy.samplers.KSampler(sd1.model, 2, "cpu", "euler", "normal").sigmas
    got = guider.sample(noise[:1], latent[:1], comfy.samplers.sampler_object("euler"), sigmas, seed=5)
    assert torch.equal(got, ref)


def test_a_plugin_sampler_travels_with_its_sampler_and_leaves_the_tables_alone(comfy_names):
    import comfy.samplers
    from genloom.diffusion.sampling import k_samplers

    before = dict(k_samplers.SAMPLERS)

    def my_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None):
        return x

    sampler = comfy.samplers.KSAMPLER(my_sampler, {"eta": 0.5})
    assert sampler.function is not None and dict(sampler.options) == {"plugin_eta": 0.5}
    assert sampler.name not in k_samplers.SAMPLERS and k_samplers.SAMPLERS == before
    assert comfy.samplers.KSAMPLER(my_sampler).name == sampler.name  # the same function, the same name


def test_helpers(comfy_names, tmp_folders):
    import comfy.sampler_helpers
    import latent_preview
    import node_helpers

    cond = [[torch.zeros(1, 2, 3), {"a": 1, "hooks": [1]}]]
    out = node_helpers.conditioning_set_values(cond, {"b": 2, "hooks": [2]}, append=True)
    assert out[0][1] == {"a": 1, "b": 2, "hooks": [1, 2]} and cond[0][1] == {"a": 1, "hooks": [1]}
    mask = comfy.sampler_helpers.prepare_mask(torch.ones(1, 8, 8), (2, 4, 4, 4), "cpu")
    assert mask.shape == (2, 4, 4, 4)
    assert comfy.sampler_helpers.convert_cond(cond)[0]["cross_attn"] is cond[0][0]
    image = latent_preview.get_previewer().decode_latent_to_preview(torch.zeros(1, 4, 8, 8))
    assert image.size == (8, 8)


def test_clip_methods(comfy_names, sd1, tmp_folders):
    clip = sd1.clip
    tokens = clip.tokenize("a red circle")
    assert list(tokens) == ["l"] and len(tokens["l"][0]) == 77
    assert tokens["l"][0][0] == (clip.tokenizers[0].bos_token_id, 1.0)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    want, want_pooled = clip.encode("a red circle")
    assert torch.equal(cond, want) and torch.equal(pooled, want_pooled)
    assert torch.equal(clip.encode_from_tokens(tokens), want)
    assert set(clip.encode_from_tokens(tokens, return_dict=True)) == {"cond", "pooled_output"}
    scheduled = clip.encode_from_tokens_scheduled(tokens, add_dict={"x": 1})
    assert torch.equal(scheduled[0][0], want) and scheduled[0][1]["x"] == 1
    tokens["l"][0][1] = (tokens["l"][0][1][0], 1.5)  # edited tokens: tests/compat/test_clip_tokens.py
    assert not torch.equal(clip.encode_from_tokens(tokens), want)

    skip = clip.clone()
    skip.clip_layer(-2)
    assert clip.stop_at_layer == -1 and skip.stop_at_layer == -2
    assert torch.equal(skip.encode("a cat")[0], clip.with_stop_at_layer(-2).encode("a cat")[0])
    with pytest.raises(TypeError, match="clone"):
        clip.clip_layer(-2)

    key = "clip_l.transformer.text_model.final_layer_norm.bias"
    assert key in clip.get_key_patches()
    patched = clip.clone()
    params = dict(clip.text_encoders[0].named_parameters())  # with or without "text_model." (transformers)
    bias = params.get("text_model.final_layer_norm.bias", params.get("final_layer_norm.bias"))
    assert patched.add_patches({key: (torch.full_like(bias, 0.25),)}) == [key]
    original = bias.data.clone()
    try:
        bias.data = original + 0.25
        want_patched = clip.encode("a cat")[0]
    finally:
        bias.data = original
    assert torch.allclose(patched.encode("a cat")[0], want_patched, atol=1e-6)


def test_vae_methods_and_sd_module(comfy_names, sd1, tmp_folders):
    import comfy.model_patcher
    import comfy.sd

    vae = sd1.vae
    assert isinstance(vae, comfy.sd.VAE) and isinstance(sd1.clip.clone(), comfy.sd.CLIP)
    assert vae.spacial_compression_decode() == vae.spacial_compression_encode() == 2
    assert vae.downscale_ratio == vae.upscale_ratio == 2 and vae.latent_channels == 4
    assert vae.first_stage_model is vae.vae
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(vae.decode_tiled(latents, tile_x=64, overlap=8), vae.decode(latents))
    pixels = torch.rand(1, 16, 16, 4)
    assert torch.equal(vae.encode_tiled(pixels), vae.encode(pixels[..., :3]))
    assert vae.vae_encode_crop_pixels(torch.rand(1, 17, 15, 3)).shape == (1, 16, 14, 3)

    from genloom.diffusion.errors import CheckpointError

    with pytest.raises(CheckpointError, match="configuration"):  # VAELoader's rule: a tiny VAE's
        comfy.sd.VAE(sd=vae.vae.state_dict())  # state alone does not say its layout

    from genloom.nodes.loaders import CheckpointLoaderSimple

    path = tmp_folders.folders.model_path("checkpoints", "tiny-sd1.safetensors")
    model, clip, vae_out, vision = comfy.sd.load_checkpoint_guess_config(str(path))
    node = CheckpointLoaderSimple().run("tiny-sd1.safetensors")
    assert (model, clip, vae_out, vision) == (*node, None)  # the loader's cached objects
    assert comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False)[2] is None

    m = sd1.model.clone()
    assert isinstance(m, comfy.model_patcher.ModelPatcher) and isinstance(m.clone(), comfy.model_patcher.ModelPatcher)
    assert isinstance(sd1.model, comfy.model_patcher.ModelPatcher)  # every MODEL is one, as in ComfyUI
    holder = comfy.model_patcher.ModelPatcher(torch.nn.Linear(2, 2), load_device="cpu", offload_device="cpu")
    assert holder.model_size() == 6 * 4 and holder.clone().model is holder.model


def test_load_lora_for_models_from_a_state_dict(comfy_names, sd1, tmp_folders):
    """A kohya LoRA state dict applied through comfy.sd equals the weight change computed here."""
    import comfy.sd

    unet = sd1.model.unet
    name = "down_blocks.0.attentions.0.proj_in"
    weight = dict(unet.named_parameters())[name + ".weight"]
    out_f, in_f = weight.shape[0], weight.shape[1]
    gen = torch.Generator().manual_seed(1)
    up, down = torch.randn(out_f, 2, 1, 1, generator=gen), torch.randn(2, in_f, 1, 1, generator=gen)
    lora = {"lora_unet_" + name.replace(".", "_") + ".lora_up.weight": up,
            "lora_unet_" + name.replace(".", "_") + ".lora_down.weight": down,
            "lora_unet_" + name.replace(".", "_") + ".alpha": torch.tensor(1.0)}
    model, clip = comfy.sd.load_lora_for_models(sd1.model, sd1.clip, lora, 0.5, 1.0)
    assert clip is sd1.clip  # the LoRA has no text-encoder weights
    with model.use("cpu") as patched_unet:
        got = dict(patched_unet.named_parameters())[name + ".weight"].detach().clone()
    delta = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape) * (1.0 / 2) * 0.5
    assert torch.allclose(got, weight.detach() + delta, atol=1e-6)
    assert not torch.allclose(dict(unet.named_parameters())[name + ".weight"], got)
