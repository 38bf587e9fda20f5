"""Qwen-Image-Edit-2511 and Qwen-Image-Layered on tiny random models saved as users have them (ComfyUI's
prefix, its empty `__index_timestep_zero__` marker on the 2511 file, the Layered VAE with RGBA pixels in
Wan's layout), against diffusers: QwenImageEditPlusPipeline with a `zero_cond_t` transformer and
QwenImageLayeredPipeline.

Settings where the two sides agree:
  2511     cfg 1 / true_cfg_scale 1 (the edit pipelines rescale each packed patch's CFG velocity to the
           positive's norm; ComfyUI's CFG does not), the same pixels and prompt embeddings as the
           Edit-Plus test (tests/diffusion/test_qwen_image_edit.py, whose helpers are used here).
  Layered  CFG on: KSampler's cfg equals the pipeline's true_cfg_scale with cfg_normalize=False (plain
           uncond + s * (cond - uncond) on the velocity, which is linear in ComfyUI's denoised). The
           picture is opaque and already 640 x 640 (the pipeline's smallest resolution), so the
           pipeline's resize is a no-op and its RGBA pixels are what ComfyUI's RGB-with-alpha-1 padding
           gives; the prompt embeddings are made with transformers' encoder (the pipeline's drop count of
           34 is Qwen's tokenizer's). Compared on the latents (each frame what the pipeline decodes as a
           layer; the pipeline drops the composite, frame 0, before decoding, which the workflow decodes
           too: LatentCutToBatch puts it first); decoding is compared on its own, small.
Both: a static shift of 3.1 on both sides, the simple schedule at a step count dividing 1000."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import qwen_tiny  # noqa: E402
import test_qwen_image as t2i_test  # noqa: E402  (the text-to-image reference embeddings)
import test_qwen_image_edit as edit_test  # noqa: E402  (the Edit-Plus reference embeddings and pipeline call)

from genloom.diffusion.models import qwen_edit, wan_vae  # noqa: E402
from genloom.diffusion.models.families import qwen_image  # noqa: E402

SEED, SHIFT = 42, 3.1
EDIT_2511, EDIT_2509 = "qwen_image_edit_2511_bf16.safetensors", "qwen_image_edit_2509_fp8_e4m3fn.safetensors"
LAYERED, LAYERED_VAE = "qwen_image_layered_bf16.safetensors", "qwen_image_layered_vae.safetensors"
CLIP, VAE = edit_test.CLIP, edit_test.VAE
LAYERED_SIZE, LAYERS = 640, 1


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from diffusers import AutoencoderKLQwenImage

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("models")
    encoder = qwen_tiny.qwen_models(root, CLIP)
    plus = qwen_tiny.qwen_image_transformer(1, zero_cond_t=True)
    qwen_image.save_original(plus, root / "diffusion_models" / EDIT_2511, "model.diffusion_model.")
    plain = qwen_tiny.qwen_image_transformer(1)  # the same weights without the marker: a 2509-style file
    qwen_image.save_original(plain, root / "diffusion_models" / EDIT_2509, "model.diffusion_model.")
    # one block, one head: Layered's smallest picture is 640 x 640, 1600 tokens a frame
    layered = qwen_tiny.qwen_image_transformer(4, depth=1, heads=1, use_additional_t_cond=True, use_layer3d_rope=True)
    qwen_image.save_original(layered, root / "diffusion_models" / LAYERED, "model.diffusion_model.")
    torch.manual_seed(3)
    vae = AutoencoderKLQwenImage(base_dim=4, z_dim=16).eval()  # it encodes a megapixel picture
    wan_vae.save_original(vae, root / "vae" / VAE)
    torch.manual_seed(5)
    rgba_vae = AutoencoderKLQwenImage(base_dim=4, z_dim=16, input_channels=4).eval()  # it encodes 640 x 640
    wan_vae.save_original(rgba_vae, root / "vae" / LAYERED_VAE)
    return {"models": root, "transformer": plus, "plain": plain, "layered": layered, "encoder": encoder,
            "vae": vae, "rgba_vae": rgba_vae, "picture": qwen_tiny.edit_picture()}


def _load(models, tmp_folders, unet, vae_name):
    from genloom.nodes.loaders import VAELoader
    from genloom.nodes.loaders_split import CLIPLoader, UNETLoader
    from genloom.nodes.model_sampling import ModelSamplingAuraFlow

    tmp_folders.folders.models_dirs.insert(0, models["models"])
    (model,) = UNETLoader().run(unet)
    (model,) = ModelSamplingAuraFlow().run(model, SHIFT)
    (clip,) = CLIPLoader().run(CLIP, "qwen_image")
    (vae,) = VAELoader().run(vae_name)
    return model, clip, vae


def test_2511_marker_is_detected_and_the_layered_file_loads(models):
    from genloom.diffusion.models.families import load_diffusion_model

    folder = models["models"] / "diffusion_models"
    plus, plain, layered = (load_diffusion_model(folder / name) for name in (EDIT_2511, EDIT_2509, LAYERED))
    assert (plus.zero_cond, plus.layered, plus.unet.config.zero_cond_t) == (True, False, True)
    assert (plain.zero_cond, plain.layered, plain.unet.config.zero_cond_t) == (False, False, False)
    assert (layered.zero_cond, layered.layered) == (False, True)
    assert layered.unet.config.use_additional_t_cond and layered.unet.config.use_layer3d_rope
    assert type(layered.unet.pos_embed).__name__ == "QwenEmbedLayer3DRope"
    for handle, reference in ((plus, models["transformer"]), (layered, models["layered"])):
        mine = handle.unet.state_dict()
        assert mine.keys() == reference.state_dict().keys()  # the marker is not a weight
        assert all(torch.equal(v, mine[k]) for k, v in reference.state_dict().items())


def test_2511_edit_plus_equals_the_zero_cond_pipeline(models, tmp_folders):
    """The ComfyUI 2511 template's chain: TextEncodeQwenImageEditPlus -> FluxKontextMultiReferenceLatentMethod
    (index_timestep_zero) -> KSampler -> VAEDecode, vs QwenImageEditPlusPipeline with zero_cond_t."""
    from diffusers import QwenImageEditPlusPipeline

    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.flux import FluxKontextMultiReferenceLatentMethod
    from genloom.nodes.ksampler import KSampler
    from genloom.nodes.latent import VAEDecode
    from genloom.nodes.qwen import TextEncodeQwenImageEditPlus
    from genloom.nodes.sd3 import EmptySD3LatentImage

    size, prompt = edit_test.SIZE, "put a hat on the cat"
    model, clip, vae = _load(models, tmp_folders, EDIT_2511, VAE)
    (pos,) = TextEncodeQwenImageEditPlus().run(clip, prompt, vae, edit_test._picture_tensor(models))
    (pos,) = FluxKontextMultiReferenceLatentMethod().run(pos, "index_timestep_zero")
    (neg,) = CLIPTextEncode().run("", clip)  # not used at cfg 1
    (latent,) = EmptySD3LatentImage().run(size, size, 1)
    (out,) = KSampler().run(model, SEED, 1, 1.0, "euler", "simple", pos, neg, latent)
    (image,) = VAEDecode().run(out, vae)

    template = qwen_edit.EDIT_TEMPLATE
    text = template.format("Picture 1: <|vision_start|><|image_pad|><|vision_end|>" + prompt)
    embeds = edit_test._reference_embeds(models, text, edit_test._comfy_vision_pixels(models["picture"], 384 * 384),
                                         template.split("{}")[0])
    assert torch.allclose(pos[0][0], embeds, atol=1e-5)
    ref = edit_test._pipeline_image(models, QwenImageEditPlusPipeline, embeds)
    assert (image - ref).abs().max() < 1e-4


def test_reference_timestep_follows_the_method(models):
    """The file sets the default (2511: timestep 0); FluxKontextMultiReferenceLatentMethod's "index" and
    "index_timestep_zero" choose per conditioning, on either file, as a diffusers transformer built with or
    without zero_cond_t computes it. The module's own setting is back after each call."""
    from genloom.diffusion.models.families import load_diffusion_model
    from genloom.nodes.flux import FluxKontextMultiReferenceLatentMethod

    folder = models["models"] / "diffusion_models"
    plus, plain = load_diffusion_model(folder / EDIT_2511), load_diffusion_model(folder / EDIT_2509)
    torch.manual_seed(0)
    x, ref, emb = torch.randn(1, 16, 4, 4), torch.randn(1, 16, 1, 6, 4), torch.randn(1, 5, 64)
    mean = torch.tensor(models["vae"].config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(models["vae"].config.latents_std).view(1, 16, 1, 1, 1)
    tokens = torch.cat([qwen_image.pack(x)[0], qwen_image.pack((ref - mean) / std)[0]], dim=1)

    def diffusers_out(transformer):
        with torch.no_grad():
            out = transformer(hidden_states=tokens, encoder_hidden_states=emb, timestep=torch.tensor([0.5]),
                              img_shapes=[[(1, 2, 2), (1, 3, 2)]], return_dict=False)[0][:, :4]
        return qwen_image.unpack(out, x)

    zero, at_t = diffusers_out(models["transformer"]), diffusers_out(models["plain"])
    assert (zero - at_t).abs().max() > 1e-3  # the two methods differ on these weights

    def mine(model, method=None):
        cond = [[emb, {"reference_latents": [ref]}]]
        if method:
            (cond,) = FluxKontextMultiReferenceLatentMethod().run(cond, method)
        with torch.no_grad():
            return model.predict(model.unet, x, torch.tensor(0.5), emb, model.cond_extras(cond[0][1], 32, 32))

    for model, method, expected in ((plus, None, zero), (plain, None, at_t), (plus, "index", at_t),
                                    (plain, "index_timestep_zero", zero), (plus, "index_timestep_zero", zero)):
        assert torch.allclose(mine(model, method), expected, atol=1e-5), (model.zero_cond, method)
        assert model.unet.zero_cond_t == model.zero_cond
        assert all(block.zero_cond_t == model.zero_cond for block in model.unet.transformer_blocks)
    with pytest.raises(Exception, match="index or index_timestep_zero"):
        mine(plus, "offset")


def test_layered_workflow_equals_qwen_image_layered_pipeline(models, tmp_folders):
    """ComfyUI's Layered workflow: VAEEncode (RGBA VAE) -> ReferenceLatent on both prompts,
    EmptyQwenImageLayeredLatentImage -> KSampler (cfg 2.5) -> LatentCutToBatch(t): the composite and
    LAYERS frames as a batch, each what the pipeline decodes as a layer (within 1e-4; the pipeline returns
    its latents, as VAEDecode of each frame is test_rgba_vae_pads_rgb_opaque_and_decodes_rgba's)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageLayeredPipeline

    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.flux import ReferenceLatent
    from genloom.nodes.ksampler import KSampler
    from genloom.nodes.latent import VAEEncode
    from genloom.nodes.qwen import EmptyQwenImageLayeredLatentImage, LatentCutToBatch

    size, steps, cfg, prompt = LAYERED_SIZE, 2, 2.5, "a red circle on a blue square"
    picture = models["picture"].resize((size, size))
    pixels = torch.from_numpy(np.array(picture)).float().div(255)[None]
    model, clip, vae = _load(models, tmp_folders, LAYERED, LAYERED_VAE)
    (ref_latent,) = VAEEncode().run(pixels, vae)
    (pos,) = CLIPTextEncode().run(prompt, clip)
    (neg,) = CLIPTextEncode().run("", clip)
    (pos,), (neg,) = ReferenceLatent().run(pos, ref_latent), ReferenceLatent().run(neg, ref_latent)
    (latent,) = EmptyQwenImageLayeredLatentImage().run(size, size, LAYERS, 1)
    (out,) = KSampler().run(model, SEED, steps, cfg, "euler", "simple", pos, neg, latent)
    (frames,) = LatentCutToBatch().run(out, "t", 1)
    cells = size // 8
    assert frames["samples"].shape == (LAYERS + 1, 16, 1, cells, cells)

    noise = torch.randn((1, 16, LAYERS + 1, cells, cells), generator=torch.Generator("cpu").manual_seed(SEED))
    packed = QwenImageLayeredPipeline._pack_latents(noise.permute(0, 2, 1, 3, 4), 1, 16, cells, cells, LAYERS + 1)
    pipe = QwenImageLayeredPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT), vae=models["rgba_vae"],
                                    text_encoder=models["encoder"], tokenizer=None, processor=None,
                                    transformer=models["layered"])
    embeds, negative = t2i_test._reference_embeds(models, prompt), t2i_test._reference_embeds(models, "")
    assert torch.allclose(pos[0][0], embeds, atol=1e-5)
    kept = []

    def keep(_pipe, _i, _t, tensors):
        kept.append(tensors["latents"])
        return tensors

    try:  # the latents are taken from the step callback: diffusers 0.42's output_type="latent" path ends in
        # an UnboundLocalError (it returns `images`, never set), and decoding is not what is compared here
        pipe(picture.convert("RGBA"), prompt, prompt_embeds=embeds, negative_prompt_embeds=negative,
             true_cfg_scale=cfg, cfg_normalize=False, layers=LAYERS, resolution=size, num_inference_steps=steps,
             latents=packed, output_type="latent", callback_on_step_end=keep)
    except UnboundLocalError:
        pass
    assert len(kept) == steps
    ref = QwenImageLayeredPipeline._unpack_latents(kept[-1], size, size, LAYERS, 8)  # [1, 16, LAYERS + 1, h, w]
    config = models["rgba_vae"].config
    mean, std = (torch.tensor(v).view(1, 16, 1, 1, 1) for v in (config.latents_mean, config.latents_std))
    ref = ref * std + mean  # the pipeline's latents are normalised, a LATENT's are the VAE's own
    assert (frames["samples"] - ref.permute(2, 1, 0, 3, 4)).abs().max() < 1e-4  # [frame, 16, 1, h, w]


def test_layered_needs_its_picture_once(models):
    from genloom.diffusion.errors import SamplingError
    from genloom.diffusion.models.families import load_diffusion_model

    folder = models["models"] / "diffusion_models"
    layered, plain = load_diffusion_model(folder / LAYERED), load_diffusion_model(folder / EDIT_2509)
    x, emb, ref = torch.zeros(1, 16, 3, 4, 4), torch.zeros(1, 5, 64), torch.zeros(1, 16, 1, 4, 4)
    with pytest.raises(SamplingError, match="ReferenceLatent"):
        layered.predict(layered.unet, x, torch.tensor(0.5), emb, layered.cond_extras({}, 32, 32))
    with pytest.raises(SamplingError, match="one reference latent, not 2"):
        layered.cond_extras({"reference_latents": [ref, ref]}, 32, 32)
    with pytest.raises(SamplingError, match="3 frames.*Qwen-Image-Layered"):
        plain.predict(plain.unet, x, torch.tensor(0.5), emb, {})


def test_frames_pack_as_separate_images():
    """Layered's frame-major packing, each frame as Qwen-Image packs a picture (the pipeline's _pack_latents
    on [B, F, C, h, w]); padding to even sizes per frame, round trip exact."""
    from diffusers import QwenImageLayeredPipeline

    x = torch.randn(2, 16, 3, 4, 6)
    tokens, grid = qwen_image.pack(x, frames=True)
    ref = QwenImageLayeredPipeline._pack_latents(x.permute(0, 2, 1, 3, 4), 2, 16, 4, 6, 3)
    assert grid == (2, 3) and torch.equal(tokens, ref)
    odd = torch.randn(1, 16, 2, 5, 7)
    tokens, grid = qwen_image.pack(odd, frames=True)
    assert grid == (3, 4) and tokens.shape == (1, 24, 64) and torch.equal(qwen_image.unpack(tokens, odd), odd)
    assert torch.equal(tokens[:, 12:], qwen_image.pack(odd[:, :, 1:])[0])


def test_latent_cut_to_batch():
    """Slices in order, each sample's in turn; remainders dropped; a slice longer than the dimension
    takes it all; a dimension the latent lacks leaves it unchanged; other keys kept."""
    from genloom.nodes.qwen import LatentCutToBatch

    x = torch.arange(2 * 3 * 5 * 4 * 6, dtype=torch.float32).reshape(2, 3, 5, 4, 6)
    (out,) = LatentCutToBatch().run({"samples": x, "batch_index": [0, 1]}, "t", 2)
    assert out["samples"].shape == (4, 3, 2, 4, 6) and out["batch_index"] == [0, 1]
    expected = [x[0, :, 0:2], x[0, :, 2:4], x[1, :, 0:2], x[1, :, 2:4]]
    assert all(torch.equal(out["samples"][i], e) for i, e in enumerate(expected))
    (out,) = LatentCutToBatch().run({"samples": x}, "x", 3)
    assert out["samples"].shape == (4, 3, 5, 4, 3) and torch.equal(out["samples"][1], x[0, ..., 3:])
    (out,) = LatentCutToBatch().run({"samples": x}, "y", 99)
    assert torch.equal(out["samples"], x)
    image = torch.zeros(1, 16, 8, 8)
    assert LatentCutToBatch().run({"samples": image}, "t", 1)[0]["samples"] is image
    samples, dim, slice_size = LatentCutToBatch.inputs
    assert (samples.name, dim.name, slice_size.name, slice_size.default) == ("samples", "dim", "slice_size", 1)
    assert list(dim.options) == ["t", "x", "y"]


def test_rgba_vae_pads_rgb_opaque_and_decodes_rgba(models):
    """The Layered VAE file loads with its 4 pixel channels; an RGB IMAGE is encoded as RGBA with alpha 1
    (ComfyUI's padding), an RGBA one as it is; decoding gives RGBA. Against diffusers' own VAE."""
    from genloom.diffusion.models.single_file import load_vae_file

    vae = load_vae_file(models["models"] / "vae" / LAYERED_VAE).vae
    torch.manual_seed(1)
    rgb = torch.rand(1, 32, 32, 3)
    rgba = torch.cat([rgb, torch.ones(1, 32, 32, 1)], dim=-1)
    with torch.no_grad():
        reference = models["rgba_vae"].encode(rgba.permute(0, 3, 1, 2)[:, :, None] * 2 - 1).latent_dist.mode()
        assert torch.allclose(vae.encode(rgb), reference, atol=1e-5)
        assert torch.allclose(vae.encode(rgba), reference, atol=1e-5)
        decoded = models["rgba_vae"].decode(reference).sample
    pixels = vae.decode(reference)
    assert pixels.shape == (1, 32, 32, 4)
    assert torch.allclose(pixels, ((decoded[:, :, 0] + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1), atol=1e-5)


def test_full_size_variant_configs_are_read_from_the_shapes():
    """Qwen-Image-Layered's and 2511's full configs (diffusers' defaults plus the variant's flags, on the
    meta device); ComfyUI's 2511 marker is an empty tensor, its only difference."""
    from diffusers import QwenImageTransformer2DModel

    with torch.device("meta"):
        layered = QwenImageTransformer2DModel(use_additional_t_cond=True, use_layer3d_rope=True)
    shapes = {k: tuple(v.shape) for k, v in layered.state_dict().items()}
    config = qwen_image.config_from_shapes(shapes)
    assert all(list(v) == list(layered.config[k]) if isinstance(v, tuple) else v == layered.config[k]
               for k, v in config.items()), config
    base = {k: v for k, v in shapes.items() if k != qwen_image.LAYERED_KEY}
    plus = qwen_image.config_from_shapes({**base, qwen_image.ZERO_MARKER: (0,)})
    assert (plus["zero_cond_t"], plus["use_layer3d_rope"], plus["use_additional_t_cond"]) == (True, False, False)


def test_layered_workflow_runs_and_saves_rgba_layers(models, tmp_path):
    """The Layered workflow as an API graph through the engine (validation included), small: LoadImage ->
    VAEEncode -> ReferenceLatent on both prompts, EmptyQwenImageLayeredLatentImage -> KSampler ->
    LatentCutToBatch -> VAEDecode -> SaveImage writes the composite and each layer as RGBA PNGs."""
    import genloom
    from PIL import Image

    size, layers = 32, 2
    inputs = tmp_path / "input"
    inputs.mkdir()
    models["picture"].resize((size, size)).save(inputs / "to_split.png")
    graph = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": LAYERED, "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": CLIP, "type": "qwen_image"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": LAYERED_VAE}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "to_split.png"}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["3", 0]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["2", 0]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["2", 0]}},
        "8": {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["6", 0], "latent": ["5", 0]}},
        "9": {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["7", 0], "latent": ["5", 0]}},
        "10": {"class_type": "EmptyQwenImageLayeredLatentImage",
               "inputs": {"width": size, "height": size, "layers": layers, "batch_size": 1}},
        "11": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 1, "steps": 1, "cfg": 2.5, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["8", 0], "negative": ["9", 0], "latent_image": ["10", 0], "denoise": 1.0}},
        "12": {"class_type": "LatentCutToBatch", "inputs": {"samples": ["11", 0], "dim": "t", "slice_size": 1}},
        "13": {"class_type": "VAEDecode", "inputs": {"samples": ["12", 0], "vae": ["3", 0]}},
        "14": {"class_type": "SaveImage", "inputs": {"images": ["13", 0], "filename_prefix": "layers"}},
    }
    engine = genloom.Engine(models_dirs=[models["models"]], input_dir=inputs, output_dir=tmp_path / "out",
                            temp_dir=tmp_path / "temp", device="cpu")
    result = engine.run(graph)
    pictures = [Image.open(Path(engine.folders.output_dir) / e["subfolder"] / e["filename"])
                for ui in result.outputs.values() for e in ui.get("images", [])]
    assert [(p.size, p.mode) for p in pictures] == [((size, size), "RGBA")] * (layers + 1)
