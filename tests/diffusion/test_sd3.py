"""SD3/SD3.5 from the files users download equals diffusers' StableDiffusion3Pipeline on the same
weights: the original-layout writer round-trips through diffusers' own converter, the config is read
from the shapes, prompt encoding equals the pipeline's encode_prompt (T5 padded to 77 tokens), and
UNETLoader -> TripleCLIPLoader -> CLIPTextEncodeSD3 -> KSampler -> VAEDecode (and the same through
CheckpointLoaderSimple on an all-in-one file) gives the pipeline's pixels."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tiny_split  # noqa: E402
from tiny_split import sd3_models  # noqa: E402,F401 - the session fixture

from genloom.diffusion.errors import CheckpointError  # noqa: E402
from genloom.diffusion.models.families import sd3  # noqa: E402

PROMPT = "a red circle on a blue background"
NEGATIVE = "blurry"
SEED, STEPS, CFG, SIZE = 42, 4, 4.0, 64


@pytest.fixture
def sd3_ctx(sd3_models, tmp_path):
    from genloom.engine import context
    from genloom.engine.folders import Folders

    root = sd3_models[0]
    ctx = context.RunContext(device_choice="cpu", folders=Folders(
        models_dirs=[tmp_path / "models", root], input_dir=tmp_path / "in", output_dir=tmp_path / "out",
        temp_dir=tmp_path / "temp"))
    token = context.use(ctx)
    try:
        yield ctx
    finally:
        context.reset(token)


@pytest.mark.parametrize("sd35", [True, False], ids=["sd35-medium-style", "sd3-medium-style"])
def test_writer_round_trips_through_diffusers_converter(sd35):
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    model = tiny_split.sd3_transformer(sd35=sd35)
    state = model.state_dict()
    original = sd3.to_original(state)
    assert "joint_blocks.1.context_block.attn.proj.weight" not in original  # the last block is pre-only
    theirs = convert_sd3_transformer_checkpoint_to_diffusers(
        {f"model.diffusion_model.{k}": v.clone() for k, v in original.items()})
    assert set(theirs) == set(state)
    assert all(torch.equal(theirs[k], state[k]) for k in state)
    ours = sd3.to_diffusers(original)
    assert set(ours) == set(state) and all(torch.equal(ours[k], state[k]) for k in state)


@pytest.mark.parametrize("sd35", [True, False], ids=["sd35-medium-style", "sd3-medium-style"])
def test_config_is_read_from_the_shapes(sd35):
    model = tiny_split.sd3_transformer(sd35=sd35)
    shapes = {k: tuple(v.shape) for k, v in sd3.to_original(model.state_dict()).items()}
    config = sd3.config_from_shapes(shapes)
    for key, value in config.items():
        if key != "sample_size":
            want = model.config[key]
            assert (tuple(want) if isinstance(want, (list, tuple)) else want) == value, key


def _save(tensors, path):
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _forward(module, model_like, seed=0):
    """One transformer call on fixed inputs, in the network's dtype."""
    gen = torch.Generator().manual_seed(seed)
    cfg = model_like.config
    x = torch.randn(1, cfg.in_channels, 8, 8, generator=gen)
    ctx = torch.randn(1, 5, cfg.joint_attention_dim, generator=gen)
    pooled = torch.randn(1, cfg.pooled_projection_dim, generator=gen)
    with torch.no_grad():
        return module(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled,
                      timestep=torch.tensor([500.0]), return_dict=False)[0]


def test_file_layouts_load_to_the_same_network(sd3_models, tmp_path):
    """Prefixed original keys, bare original keys and diffusers keys give the same module; the config
    comes from the weights alone (the files carry no metadata)."""
    from genloom.diffusion.models.families import load_diffusion_model

    _root, parts, files = sd3_models
    ref = _forward(parts["transformer"], parts["transformer"])
    original = sd3.to_original(parts["transformer"].state_dict())
    layouts = {"bare": files["unet"],
               "prefixed": _save({f"model.diffusion_model.{k}": v for k, v in original.items()}, tmp_path / "p.safetensors"),
               "diffusers": _save(parts["transformer"].state_dict(), tmp_path / "d.safetensors")}
    for name, path in layouts.items():
        handle = load_diffusion_model(path)
        assert handle.kind == "sd3" and handle.latent_channels == 16 and handle.sampling.shift == 3.0, name
        assert torch.equal(_forward(handle.unet, parts["transformer"]), ref), name


def test_missing_and_unexpected_keys_are_errors_naming_them(sd3_models, tmp_path):
    from genloom.diffusion.models.families import load_diffusion_model

    original = sd3.to_original(sd3_models[1]["transformer"].state_dict())
    short = dict(original)
    del short["joint_blocks.0.x_block.mlp.fc2.bias"]
    with pytest.raises(CheckpointError, match=r"1 missing: joint_blocks\.0\.x_block\.mlp\.fc2\.bias"):
        load_diffusion_model(_save(short, tmp_path / "short.safetensors"))
    extra = {**original, "joint_blocks.0.x_block.mystery.weight": torch.zeros(2)}
    with pytest.raises(CheckpointError, match=r"1 unexpected: joint_blocks\.0\.x_block\.mystery\.weight"):
        load_diffusion_model(_save(extra, tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match="Flux.2"):
        load_diffusion_model(_save({"double_stream_modulation_img.lin.weight": torch.zeros(2, 2)},
                                   tmp_path / "flux2.safetensors"))


def test_fp8_files_are_dequantised_and_fp8_weight_dtype_casts_per_layer(sd3_models, tmp_path):
    from genloom.diffusion.models.families import load_diffusion_model
    from genloom.diffusion.models.weights import dequantize

    transformer = sd3_models[1]["transformer"]
    original = sd3.to_original(transformer.state_dict())
    # ComfyUI's scaled layout: fp8 weight, per-tensor scale, the marker; dequantised = fp8 * scale.
    w = original["joint_blocks.0.x_block.mlp.fc1.weight"]
    scale = w.abs().max() / 448.0
    scaled = {**original, "scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn),
              "joint_blocks.0.x_block.mlp.fc1.weight": (w / scale).to(torch.float8_e4m3fn),
              "joint_blocks.0.x_block.mlp.fc1.scale_weight": scale.reshape(1)}
    out = dequantize(scaled, torch.float32)
    expected = (w / scale).to(torch.float8_e4m3fn).float() * scale
    assert torch.equal(out["joint_blocks.0.x_block.mlp.fc1.weight"], expected)
    assert "scaled_fp8" not in out and not any(k.endswith("scale_weight") for k in out)
    assert (expected - w).abs().max() < 0.1 * w.abs().max()  # fp8 is close, not equal
    handle = load_diffusion_model(_save(scaled, tmp_path / "scaled.safetensors"))
    got = handle.unet.transformer_blocks[0].ff.net[0].proj.weight
    assert got.dtype == torch.float32 and torch.equal(got, expected)

    # comfy_quant: `<layer>.weight_scale` and a `<layer>.comfy_quant` tag (UTF-8 JSON as uint8)
    def tag(fmt):
        return torch.tensor(list(('{"format": "%s"}' % fmt).encode()), dtype=torch.uint8)

    key = "joint_blocks.1.x_block.mlp.fc2.weight"
    w2 = original[key]
    s2 = w2.abs().max() / 448.0
    quant = {**original, key: (w2 / s2).to(torch.float8_e4m3fn), key[:-6] + "weight_scale": s2,
             key[:-6] + "comfy_quant": tag("float8_e4m3fn")}
    handle = load_diffusion_model(_save(quant, tmp_path / "quant.safetensors"))
    got = handle.unet.transformer_blocks[1].ff.net[2].weight
    assert torch.equal(got, (w2 / s2).to(torch.float8_e4m3fn).float() * s2)
    with pytest.raises(CheckpointError, match="quantised as 'nvfp4'"):
        load_diffusion_model(_save({**quant, key[:-6] + "comfy_quant": tag("nvfp4")}, tmp_path / "nv.safetensors"))

    # weight_dtype fp8: Linear weights stay fp8; each call computes with their float32 upcast.
    fp8 = load_diffusion_model(sd3_models[2]["unet"], "fp8_e4m3fn")
    linears = [m for m in fp8.unet.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.dtype == torch.float8_e4m3fn for m in linears)
    reference = tiny_split.sd3_transformer()
    with torch.no_grad():
        for m in reference.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(m.weight.to(torch.float8_e4m3fn).float())
    assert torch.allclose(_forward(fp8.unet, transformer), _forward(reference, transformer), atol=1e-5)


# -- text encoding -----------------------------------------------------------------------------------

def _triple():
    from genloom.nodes.loaders_split import TripleCLIPLoader

    return TripleCLIPLoader().run("tiny-sd3-t5xxl.safetensors", "tiny-sd3-clip_g.safetensors",
                                  "tiny-sd3-clip_l.safetensors")[0]


def _encode(clip, l, g, t, padding="none"):
    from genloom.nodes.sd3 import CLIPTextEncodeSD3

    (cond,) = CLIPTextEncodeSD3().run(clip, l, g, t, padding)
    return cond[0][0], cond[0][1]["pooled_output"]


def test_three_prompts_encode_as_the_pipeline(sd3_models, sd3_ctx):
    pipe = tiny_split.sd3_pipeline(sd3_models[1])
    clip = _triple()
    assert clip.kind == "sd3" and clip.roles == ("clip_l", "clip_g", "t5xxl")
    texts = ("a red circle", "a blue square on the grass", "a photo of a dog")
    cond, pooled = _encode(clip, *texts)
    with torch.no_grad():
        ref, _neg, ref_pooled, _ = pipe.encode_prompt(*texts, device="cpu", do_classifier_free_guidance=False,
                                                      max_sequence_length=77)
    assert cond.shape == (1, 77 + 77, tiny_split.T5_WIDTH) and pooled.shape == (1, 64 + 128)
    assert (cond - ref).abs().max() < 1e-5 and (pooled - ref_pooled).abs().max() < 1e-5


def test_missing_encoders_and_empty_padding_follow_comfyui(sd3_models, sd3_ctx):
    from genloom.nodes.loaders_split import CLIPLoader, DualCLIPLoader

    full_cond, full_pooled = _encode(_triple(), "a cat", "a cat", "a cat")
    (t5_only,) = CLIPLoader().run("tiny-sd3-t5xxl.safetensors", "sd3")
    cond, pooled = _encode(t5_only, "a cat", "a cat", "a cat")
    assert torch.allclose(cond, full_cond[:, 77:], atol=1e-6)  # T5 alone; pooled zeros of L + G widths
    assert pooled.shape == (1, 768 + 1280) and not pooled.any()
    (lg,) = DualCLIPLoader().run("tiny-sd3-clip_l.safetensors", "tiny-sd3-clip_g.safetensors", "sd3")
    cond, pooled = _encode(lg, "a cat", "a cat", "a cat")
    assert cond.shape == (1, 77, 4096)  # no T5: [CLIP-L | CLIP-G] padded to T5 XXL's width
    assert torch.allclose(cond[..., :192], full_cond[:, :77], atol=1e-6) and not cond[..., 192:].any()
    assert torch.allclose(pooled, full_pooled, atol=1e-6)
    (gt,) = DualCLIPLoader().run("tiny-sd3-clip_g.safetensors", "tiny-sd3-t5xxl.safetensors", "sd3")
    cond, pooled = _encode(gt, "a cat", "a cat", "a cat")
    assert not cond[:, :77, :768].any()  # CLIP-L missing: zeros in its place (768 wide, as ComfyUI)
    assert not pooled[:, :768].any() and torch.allclose(pooled[:, 768:], full_pooled[:, 64:], atol=1e-6)

    # empty_padding "none": empty CLIP prompts give no CLIP tokens at all; "empty_prompt" encodes ""
    clip = _triple()
    none_cond, none_pooled = _encode(clip, "", "", "a cat")
    assert torch.allclose(none_cond, full_cond[:, 77:], atol=1e-6) and not none_pooled.any()
    padded, _ = _encode(clip, "", "", "a cat", "empty_prompt")
    empty_clip, _ = _encode(clip, "", "", "", "empty_prompt")
    assert padded.shape[1] == 154 and torch.allclose(padded[:, :77], empty_clip[:, :77], atol=1e-6)
    only_g, _ = _encode(clip, "", "a cat", "a cat")  # one CLIP prompt: the other encodes ""
    assert torch.allclose(only_g[:, :77, :64], empty_clip[:, :77, :64], atol=1e-6)


def test_prompt_weights_apply_to_every_encoder(sd3_models, sd3_ctx):
    clip = _triple()
    plain, _ = _encode(clip, "red", "red", "red")
    empty, _ = _encode(clip, "", "", "", "empty_prompt")
    weighted, _ = _encode(clip, "(red:1.5)", "(red:1.5)", "(red:1.5)")
    red_t5 = clip.tokenizers[2]("red", add_special_tokens=False).input_ids
    positions = [1] + [77 + i for i in range(len(red_t5))]  # after CLIP's start token; T5 has none
    mask = torch.zeros(plain.shape[1], dtype=torch.bool)
    mask[positions] = True
    expect = (plain[:, mask] - empty[:, mask]) * 1.5 + empty[:, mask]
    assert torch.allclose(weighted[:, mask], expect, atol=1e-5)
    assert torch.equal(weighted[:, ~mask], plain[:, ~mask])


# -- the whole workflow ------------------------------------------------------------------------------

def _reference(parts, output_type="pt"):
    pipe = tiny_split.sd3_pipeline(parts)
    noise = torch.randn((1, 16, SIZE // 8, SIZE // 8), generator=torch.Generator("cpu").manual_seed(SEED))
    with torch.no_grad():
        out = pipe(PROMPT, PROMPT, PROMPT, negative_prompt=NEGATIVE, negative_prompt_2=NEGATIVE,
                   negative_prompt_3=NEGATIVE, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                   guidance_scale=CFG, latents=noise, max_sequence_length=77, output_type=output_type)
    return out.images


def _sample(model, clip, vae):
    from genloom.nodes.ksampler import KSampler
    from genloom.nodes.latent import VAEDecode
    from genloom.nodes.sd3 import EmptySD3LatentImage

    pos, neg = ([[c, {"pooled_output": p}]] for c, p in (_encode(clip, PROMPT, PROMPT, PROMPT),
                                                          _encode(clip, NEGATIVE, NEGATIVE, NEGATIVE)))
    (latent,) = EmptySD3LatentImage().run(SIZE, SIZE, 1)
    (samples,) = KSampler().run(model, SEED, STEPS, CFG, "euler", "normal", pos, neg, latent, 1.0)
    (images,) = VAEDecode().run(samples, vae)
    return samples["samples"], images


def _check(samples, images, parts):
    ref_latent = _reference(parts, "latent")
    assert (samples - (ref_latent / 1.5305 + 0.0609)).abs().max() < 1e-4  # LATENT is raw VAE space
    ref = _reference(parts).permute(0, 2, 3, 1)
    assert (images - ref).abs().max() < 1e-4 and float(ref.std()) > 0.02
    ours8 = (images.numpy() * 255).round().astype(np.int16)
    theirs8 = (ref.numpy() * 255).round().astype(np.int16)
    assert np.abs(ours8 - theirs8).max() <= 1


def test_split_files_workflow_equals_the_pipeline(sd3_models, sd3_ctx):
    from genloom.nodes.loaders import VAELoader
    from genloom.nodes.loaders_split import UNETLoader

    (model,) = UNETLoader().run("tiny-sd3.safetensors", "default")
    (vae,) = VAELoader().run("tiny-sd3-vae.safetensors")
    assert vae.latent_channels == 16 and vae.scale_factor == 8
    _check(*_sample(model, _triple(), vae), sd3_models[1])


def test_all_in_one_checkpoint_equals_the_pipeline(sd3_models, sd3_ctx):
    from genloom.nodes.loaders import CheckpointLoaderSimple

    model, clip, vae = CheckpointLoaderSimple().run("tiny-sd3-aio.safetensors")
    assert model.kind == "sd3" and clip.roles == ("clip_l", "clip_g", "t5xxl")
    _check(*_sample(model, clip, vae), sd3_models[1])


def test_skip_layer_guidance_equals_the_pipelines(sd3_models, sd3_ctx):
    """SkipLayerGuidanceSD3 on steps 1 and 2 of 4: ComfyUI's range is in sigmas (start 0.2 -> 0.923,
    end 0.75 -> 0.5 with shift 3; the `normal` steps' sigmas are 1, 0.857, 0.6, 0.003), the pipeline's
    in step indices (i > 4 * 0.01 and i < 4 * 0.6)."""
    from genloom.nodes.ksampler import KSampler
    from genloom.nodes.loaders_split import UNETLoader
    from genloom.nodes.sd3 import EmptySD3LatentImage, SkipLayerGuidanceSD3

    (model,) = UNETLoader().run("tiny-sd3.safetensors", "default")
    (slg,) = SkipLayerGuidanceSD3().run(model, "0", 2.0, 0.2, 0.75)
    assert slg is not model and not model.model_options  # the input is never changed
    clip = _triple()
    pos, neg = ([[c, {"pooled_output": p}]] for c, p in (_encode(clip, PROMPT, PROMPT, PROMPT),
                                                          _encode(clip, NEGATIVE, NEGATIVE, NEGATIVE)))
    (latent,) = EmptySD3LatentImage().run(SIZE, SIZE, 1)
    (ours,) = KSampler().run(slg, SEED, STEPS, CFG, "euler", "normal", pos, neg, latent, 1.0)
    (plain,) = KSampler().run(model, SEED, STEPS, CFG, "euler", "normal", pos, neg, latent, 1.0)

    pipe = tiny_split.sd3_pipeline(sd3_models[1])
    noise = torch.randn((1, 16, SIZE // 8, SIZE // 8), generator=torch.Generator("cpu").manual_seed(SEED))
    with torch.no_grad():
        ref = pipe(PROMPT, PROMPT, PROMPT, negative_prompt=NEGATIVE, negative_prompt_2=NEGATIVE,
                   negative_prompt_3=NEGATIVE, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                   guidance_scale=CFG, latents=noise, max_sequence_length=77, output_type="latent",
                   skip_guidance_layers=[0], skip_layer_guidance_scale=2.0, skip_layer_guidance_start=0.01,
                   skip_layer_guidance_stop=0.6).images
    ref = ref / 1.5305 + 0.0609
    assert (ours["samples"] - ref).abs().max() < 1e-4
    assert (plain["samples"] - ref).abs().max() > 1e-2  # the guidance changed something


# Published sizes (diffusers configs of stabilityai/stable-diffusion-3-medium, -3.5-medium, -3.5-large).
FULL_SIZE = {
    "sd3-medium": dict(num_layers=24, attention_head_dim=64, num_attention_heads=24, pos_embed_max_size=192,
                       dual_attention_layers=(), qk_norm=None),
    "sd3.5-medium": dict(num_layers=24, attention_head_dim=64, num_attention_heads=24, pos_embed_max_size=384,
                         dual_attention_layers=tuple(range(13)), qk_norm="rms_norm"),
    "sd3.5-large": dict(num_layers=38, attention_head_dim=64, num_attention_heads=38, pos_embed_max_size=192,
                        dual_attention_layers=(), qk_norm="rms_norm"),
}


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_full_size_configs_are_read_from_their_shapes(name):
    """No width is hard-coded: the published architectures (built on the meta device, no memory)
    come back from the shapes of their original-layout tensors."""
    from diffusers import SD3Transformer2DModel

    cfg = dict(sample_size=128, patch_size=2, in_channels=16, joint_attention_dim=4096, pooled_projection_dim=2048,
               out_channels=16, **FULL_SIZE[name])
    cfg["caption_projection_dim"] = cfg["attention_head_dim"] * cfg["num_attention_heads"]
    with torch.device("meta"):
        model = SD3Transformer2DModel(**cfg)
    shapes = {k: tuple(v.shape) for k, v in sd3.to_original(model.state_dict()).items()}
    assert sd3.config_from_shapes(shapes) == cfg


def test_full_size_text_encoder_configs_are_read_from_their_shapes():
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from genloom.diffusion.models.text_encoders import clip_config, clip_roles, t5_config

    published = {
        "clip_l": (CLIPTextModel, CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                 num_attention_heads=12, hidden_act="quick_gelu")),
        "clip_g": (CLIPTextModelWithProjection, CLIPTextConfig(hidden_size=1280, intermediate_size=5120,
                                                               num_hidden_layers=32, num_attention_heads=20,
                                                               hidden_act="gelu", projection_dim=1280)),
        "t5xxl": (T5EncoderModel, T5Config(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                                           feed_forward_proj="gated-gelu", vocab_size=32128)),
    }
    shape_sets = {}
    for role, (cls, config) in published.items():
        with torch.device("meta"):
            shape_sets[role] = {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}
    assert clip_roles(list(shape_sets.values()), list(shape_sets)) == list(published)
    for role in ("clip_l", "clip_g"):
        got, want = clip_config(shape_sets[role], role), published[role][1]
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act",
                    "vocab_size", "max_position_embeddings"):
            assert got[key] == getattr(want, key), (role, key)
    got, want = t5_config(shape_sets["t5xxl"]), published["t5xxl"][1]
    for key in ("d_model", "d_kv", "d_ff", "num_layers", "num_heads", "vocab_size", "relative_attention_num_buckets",
                "feed_forward_proj"):
        assert got[key] == getattr(want, key), key


@pytest.mark.parametrize("layout", ["kohya", "original", "diffusers"])
def test_sd3_lora_layouts_change_the_right_rows(tmp_path, tmp_folders, layout):
    """LoraLoaderModelOnly's three SD3 layouts: a fused qkv LoRA changes q, k and v by its row thirds,
    an MLP LoRA its layer; the result equals weights merged by hand here, the base stays untouched."""
    import copy

    from genloom.diffusion.models.lora import load_lora

    model = tiny_split.sd3_transformer(seed=7)
    handle = sd3.build(sd3.to_original(model.state_dict()), dtype=torch.float32, name="sd3-tiny")
    width = model.config.attention_head_dim * model.config.num_attention_heads
    gen = torch.Generator().manual_seed(3)
    down_qkv, up_qkv = torch.randn(2, width, generator=gen) * 0.1, torch.randn(3 * width, 2, generator=gen) * 0.1
    ff = model.transformer_blocks[0].ff.net[2].weight
    down_ff, up_ff = torch.randn(2, ff.shape[1], generator=gen) * 0.1, torch.randn(ff.shape[0], 2, generator=gen) * 0.1
    names = {"kohya": ("lora_unet_joint_blocks_0_context_block_attn_qkv", "lora_unet_joint_blocks_0_x_block_mlp_fc2"),
             "original": ("diffusion_model.joint_blocks.0.context_block.attn.qkv",
                          "diffusion_model.joint_blocks.0.x_block.mlp.fc2")}
    if layout == "diffusers":  # module names as they are: each of q, k, v its own LoRA
        tensors = {}
        for i, n in enumerate(("add_q_proj", "add_k_proj", "add_v_proj")):
            tensors[f"transformer.transformer_blocks.0.attn.{n}.lora_A.weight"] = down_qkv.clone()
            tensors[f"transformer.transformer_blocks.0.attn.{n}.lora_B.weight"] = up_qkv[i * width:(i + 1) * width]
        tensors["transformer.transformer_blocks.0.ff.net.2.lora_A.weight"] = down_ff
        tensors["transformer.transformer_blocks.0.ff.net.2.lora_B.weight"] = up_ff
    else:
        a, b = ("lora_down", "lora_up") if layout == "kohya" else ("lora_A", "lora_B")
        qkv, fc2 = names[layout]
        tensors = {f"{qkv}.{a}.weight": down_qkv, f"{qkv}.{b}.weight": up_qkv,
                   f"{fc2}.{a}.weight": down_ff, f"{fc2}.{b}.weight": up_ff}
    _save(tensors, tmp_path / "lora.safetensors")
    lora = load_lora(tmp_path / "lora.safetensors")
    assert lora.unused == []
    ref = copy.deepcopy(model)
    with torch.no_grad():
        delta = 0.5 * (up_qkv @ down_qkv)
        attn = ref.transformer_blocks[0].attn
        for i, layer in enumerate((attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)):
            layer.weight += delta[i * width:(i + 1) * width]
        ref.transformer_blocks[0].ff.net[2].weight += 0.5 * (up_ff @ down_ff)
    patched = handle.with_lora(lora, 0.5)
    with patched.use("cpu") as unet:
        ours = _forward(unet, model)
    assert torch.allclose(ours, _forward(ref, model), atol=1e-5)
    assert float((ours - _forward(model, model)).abs().max()) > 1e-4
    assert torch.equal(handle.unet.state_dict()["transformer_blocks.0.ff.net.2.weight"],
                       model.state_dict()["transformer_blocks.0.ff.net.2.weight"])
