"""Qwen-Image-Edit and Edit-Plus on tiny random models saved as users have them (the transformer with
ComfyUI's prefix, the Qwen2.5-VL text encoder with its vision tower, the Wan-layout VAE, a tiny tokenizer
next to the encoder): TextEncodeQwenImageEdit / TextEncodeQwenImageEditPlus -> KSampler -> VAEDecode
equal diffusers' QwenImageEditPipeline / QwenImageEditPlusPipeline on the same weights and noise.

Settings where the two agree: cfg 1 / true_cfg_scale 1 (with CFG the pipelines rescale each packed
patch's velocity to the positive's norm; ComfyUI's CFG and CFGNorm do not), a static shift of 3.1 on
both sides (ModelSamplingAuraFlow), the simple schedule at a step count dividing 1000 (the pipeline's sigmas).

Where the image preprocessing differs, both sides get the same pixels: the input picture is 1024 x 1024,
which both the nodes and the pipelines hand the VAE unchanged. For the vision tower ComfyUI resamples
bilinearly to whole 28-pixel cells (and Edit-Plus first to ~384 x 384 by area); the pipelines' processor
resamples bicubically by its own rule. So the reference prompt embeddings are made by the processor
(resizing off, as it would be a no-op at these sizes) from the pixels ComfyUI's rule gives, computed here,
and run through transformers' Qwen2.5-VL with the processor's `mm_token_type_ids`. (The pipelines call the
encoder without them, which transformers 5 answers with plain 1-D positions for the image tokens; ComfyUI
and Qwen2.5-VL use its 3-D rotary positions.) The pipelines then get those embeddings and the picture."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import qwen_tiny  # noqa: E402

from genloom.diffusion.models import qwen_edit, wan_vae  # noqa: E402
from genloom.diffusion.models.families import qwen_image  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SIZE, STEPS, SEED, SHIFT = 32, 1, 42, 3.1  # one step: the edit inputs are what is tested here
UNET, CLIP, VAE = "qwen_image_edit_2509_fp8_e4m3fn.safetensors", "qwen_2.5_vl_7b_fp8_scaled.safetensors", \
    "qwen_image_vae.safetensors"


@pytest.fixture(scope="module")
def edit(tmp_path_factory):
    from diffusers import AutoencoderKLQwenImage
    from PIL import Image

    torch.set_num_threads(2)
    models = tmp_path_factory.mktemp("models")
    encoder = qwen_tiny.qwen_models(models, CLIP)
    transformer = qwen_tiny.qwen_image_transformer(1)
    qwen_image.save_original(transformer, models / "diffusion_models" / UNET, "model.diffusion_model.")
    torch.manual_seed(3)
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=16).eval()  # it encodes megapixel pictures here
    wan_vae.save_original(vae, models / "vae" / VAE)
    inputs = tmp_path_factory.mktemp("input")
    qwen_tiny.edit_picture().save(inputs / "edit_source.png")
    return {"models": models, "inputs": inputs, "transformer": transformer, "encoder": encoder, "vae": vae,
            "picture": Image.open(inputs / "edit_source.png").convert("RGB")}


def _tokenizer(edit):
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer.from_pretrained(str(edit["models"] / "text_encoders" / "qwen25_tokenizer"))


def _processor(edit):
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    images = Qwen2VLImageProcessor(do_resize=False, do_rescale=False, patch_size=14, temporal_patch_size=2,
                                   merge_size=2)
    return Qwen2VLProcessor(image_processor=images, tokenizer=_tokenizer(edit), video_processor=Qwen2VLVideoProcessor())


def _comfy_vision_pixels(picture, total=None):
    """ComfyUI's pixels for the vision tower, by its rule written out: (Edit-Plus: area to ~`total`
    pixels, sides rounded), then bilinear to the nearest whole 28-pixel cells. -> [3, H, W] 0..1"""
    import math

    import torch.nn.functional as F

    x = torch.from_numpy(np.array(picture)).float().div(255).permute(2, 0, 1)[None]
    if total is not None:
        scale = math.sqrt(total / (x.shape[2] * x.shape[3]))
        x = F.interpolate(x, size=(round(x.shape[2] * scale), round(x.shape[3] * scale)), mode="area")
    h, w = (round(s / 28) * 28 for s in x.shape[2:])
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)[0]


def _reference_embeds(edit, text, pixels, drop_before):
    """The prompt embeddings the edit pipelines make, from the processor and transformers' model."""
    processor = _processor(edit)
    inputs = processor(text=[text], images=pixels, padding=True, return_tensors="pt")
    drop = len(_tokenizer(edit)(drop_before, add_special_tokens=False).input_ids)
    with torch.no_grad():
        out = edit["encoder"](input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                              pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"],
                              mm_token_type_ids=inputs["mm_token_type_ids"], output_hidden_states=True)
    return out.hidden_states[-1][:, drop:]


def _sample(edit, tmp_folders, positive):
    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.ksampler import KSampler
    from genloom.nodes.latent import VAEDecode
    from genloom.nodes.loaders import VAELoader
    from genloom.nodes.loaders_split import CLIPLoader, UNETLoader
    from genloom.nodes.model_sampling import ModelSamplingAuraFlow
    from genloom.nodes.sd3 import EmptySD3LatentImage

    tmp_folders.folders.models_dirs.insert(0, edit["models"])
    (model,) = UNETLoader().run(UNET)
    (model,) = ModelSamplingAuraFlow().run(model, SHIFT)
    (clip,) = CLIPLoader().run(CLIP, "qwen_image")
    (vae,) = VAELoader().run(VAE)
    pos = positive(clip, vae)
    (neg,) = CLIPTextEncode().run("", clip)  # not used at cfg 1
    (latent,) = EmptySD3LatentImage().run(SIZE, SIZE, 1)
    (out,) = KSampler().run(model, SEED, STEPS, 1.0, "euler", "simple", pos, neg, latent)
    (image,) = VAEDecode().run(out, vae)
    return pos, image


def _picture_tensor(edit):
    return torch.from_numpy(np.array(edit["picture"])).float().div(255)[None]


def _pipeline_image(edit, cls, embeds):
    from diffusers import FlowMatchEulerDiscreteScheduler

    noise = torch.randn((1, 16, SIZE // 8, SIZE // 8), generator=torch.Generator("cpu").manual_seed(SEED))
    packed, _grid = qwen_image.pack(noise)
    pipe = cls(scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT), vae=edit["vae"], text_encoder=None,
               tokenizer=None, processor=None, transformer=edit["transformer"])
    mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    out = pipe(image=edit["picture"], prompt_embeds=embeds, prompt_embeds_mask=mask, height=SIZE, width=SIZE,
               num_inference_steps=STEPS, true_cfg_scale=1.0, latents=packed, output_type="pt").images
    return out.permute(0, 2, 3, 1)


def test_edit_equals_qwen_image_edit_pipeline(edit, tmp_folders):
    from diffusers import QwenImageEditPipeline

    from genloom.nodes.qwen import TextEncodeQwenImageEdit

    prompt = "make the circle red"
    pos, image = _sample(edit, tmp_folders, lambda clip, vae: TextEncodeQwenImageEdit().run(
        clip, prompt, vae, _picture_tensor(edit))[0])
    template = qwen_edit.EDIT_IMAGE_TEMPLATE
    embeds = _reference_embeds(edit, template.format(prompt), _comfy_vision_pixels(edit["picture"]),
                               template.split("<|vision_start|>")[0])
    cond, extra = pos[0]
    assert cond.shape == embeds.shape  # 37 x 37 merged patch tokens of the 1036 x 1036 vision picture inside
    assert torch.allclose(cond, embeds, atol=1e-5)
    assert [r.shape for r in extra["reference_latents"]] == [(1, 16, 1, 128, 128)]
    ref = _pipeline_image(edit, QwenImageEditPipeline, embeds)
    assert image.shape == (1, SIZE, SIZE, 3)
    assert (image - ref).abs().max() < 1e-4


def test_edit_plus_equals_qwen_image_edit_plus_pipeline(edit, tmp_folders):
    from diffusers import QwenImageEditPlusPipeline

    from genloom.nodes.qwen import TextEncodeQwenImageEditPlus

    prompt = "put a hat on the cat"
    pos, image = _sample(edit, tmp_folders, lambda clip, vae: TextEncodeQwenImageEditPlus().run(
        clip, prompt, vae, _picture_tensor(edit))[0])
    template = qwen_edit.EDIT_TEMPLATE
    text = template.format("Picture 1: <|vision_start|><|image_pad|><|vision_end|>" + prompt)
    embeds = _reference_embeds(edit, text, _comfy_vision_pixels(edit["picture"], 384 * 384), template.split("{}")[0])
    cond, extra = pos[0]
    assert cond.shape == embeds.shape and torch.allclose(cond, embeds, atol=1e-5)
    assert [r.shape for r in extra["reference_latents"]] == [(1, 16, 1, 128, 128)]
    ref = _pipeline_image(edit, QwenImageEditPlusPipeline, embeds)
    assert (image - ref).abs().max() < 1e-4


def test_vision_patches_equal_the_processor(edit):
    """Patch order and normalisation as transformers' Qwen2-VL image processor gives them, on a picture
    already in whole cells; the cell rounding and pixel bounds by arithmetic."""
    from transformers import Qwen2VLImageProcessor

    pixels = torch.rand(3, 56, 84)
    patches, grid = qwen_edit.vision_patches(pixels.permute(1, 2, 0)[None], edit["encoder"].config.vision_config)
    ref = Qwen2VLImageProcessor(do_resize=False, do_rescale=False)(images=pixels, return_tensors="pt")
    assert grid.tolist() == ref["image_grid_thw"].tolist() == [[1, 4, 6]]
    assert torch.allclose(patches, ref["pixel_values"], atol=1e-6)
    assert qwen_edit.vision_size(1024, 1024, 28) == (1036, 1036)  # round(36.57) = 37 cells
    assert qwen_edit.vision_size(384, 384, 28) == (392, 392)
    assert qwen_edit.vision_size(20, 30, 28) == (56, 84)  # below 3136 pixels: scaled up, whole cells
    h, w = qwen_edit.vision_size(8000, 8000, 28)  # above 12845056 pixels: scaled down, whole cells
    assert h == w == 3584 and h * w <= 12845056


def test_pictures_are_scaled_as_comfyui_scales_them():
    """About a megapixel (sides rounded; multiples of 8 for Edit-Plus' VAE picture), by area averaging."""
    picture = torch.rand(1, 600, 1000, 4)
    scale = (1024 * 1024 / 600000) ** 0.5
    assert qwen_edit.scale_to_pixels(picture, 1024 * 1024).shape == (1, round(600 * scale), round(1000 * scale), 4)
    assert qwen_edit.scale_to_pixels(picture, 1024 * 1024, 8).shape == (1, 792, 1320, 4)
    big = torch.rand(1, 2048, 2048, 3)  # exactly half each way: 2 x 2 averages
    half = big.reshape(1, 1024, 2, 1024, 2, 3).mean(dim=(2, 4))
    assert torch.allclose(qwen_edit.scale_to_pixels(big, 1024 * 1024), half, atol=1e-6)


def test_without_pictures_the_encoders_use_their_templates(edit, tmp_folders):
    """TextEncodeQwenImageEdit without a picture is CLIPTextEncode's text-to-image encoding; Edit-Plus
    without one still uses the edit system prompt. No reference latents either way."""
    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.loaders_split import CLIPLoader
    from genloom.nodes.qwen import TextEncodeQwenImageEdit, TextEncodeQwenImageEditPlus

    tmp_folders.folders.models_dirs.insert(0, edit["models"])
    (clip,) = CLIPLoader().run(CLIP, "qwen_image")
    (plain,) = CLIPTextEncode().run("a red circle", clip)
    (edit_cond,) = TextEncodeQwenImageEdit().run(clip, "a red circle")
    assert torch.allclose(edit_cond[0][0], plain[0][0], atol=1e-6) and "reference_latents" not in edit_cond[0][1]
    (plus,) = TextEncodeQwenImageEditPlus().run(clip, "a red circle")
    tok = _tokenizer(edit)
    template = qwen_edit.EDIT_TEMPLATE
    ids = tok(template.format("a red circle"), add_special_tokens=False).input_ids
    drop = len(tok(template.split("{}")[0], add_special_tokens=False).input_ids)
    with torch.no_grad():
        ref = edit["encoder"](input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][:, drop:]
    assert torch.allclose(plus[0][0], ref, atol=1e-5) and "reference_latents" not in plus[0][1]


def test_other_text_encoders_are_refused(edit):
    from genloom.engine.errors import NodeInputError
    from genloom.nodes.qwen import TextEncodeQwenImageEdit, TextEncodeQwenImageEditPlus

    with pytest.raises(NodeInputError, match="clip.*qwen_image"):
        TextEncodeQwenImageEdit().run(type("Clip", (), {"kind": "sd1"})(), "x")
    with pytest.raises(NodeInputError, match="clip"):
        TextEncodeQwenImageEditPlus().run(None, "x")


def test_empty_layered_latent_is_one_frame_per_layer():
    from genloom.nodes.qwen import EmptyQwenImageLayeredLatentImage as Empty

    (latent,) = Empty().run(640, 384, 3, 2)
    assert latent["samples"].shape == (2, 16, 4, 48, 80) and not latent["samples"].any()
    assert [(i.name, i.default) for i in Empty.inputs] == [("width", 640), ("height", 640), ("layers", 3),
                                                          ("batch_size", 1)]
    assert Empty.validate(640, 640, 3, 1) is True
    assert "width" in Empty.validate(8, 640, 3, 1)


def test_shipped_tokenizer_is_qwens(tmp_path):
    """The shipped vocabulary gives the counts diffusers hard-codes for Qwen's tokenizer (the 34 tokens
    QwenImagePipeline drops, the 64 the edit pipelines drop) and ComfyUI's ids (user 872, newline 198,
    the vision tokens 151652..151655); it is what a lone encoder file gets, unless the file's token
    table is too small for it."""
    from genloom.diffusion.errors import CheckpointError
    from genloom.diffusion.models import llm_encoders
    from genloom.diffusion.models.llm_encoding import QWEN_IMAGE_TEMPLATE

    lone = tmp_path / "te" / "qwen_2.5_vl_7b.safetensors"
    tok = llm_encoders.find_tokenizer(lone, 152064)
    count = lambda text: len(tok(text, add_special_tokens=False).input_ids)  # noqa: E731
    assert count(QWEN_IMAGE_TEMPLATE.split("{}")[0]) == 34
    assert count(qwen_edit.EDIT_TEMPLATE.split("{}")[0]) == 64
    assert tok("user\n", add_special_tokens=False).input_ids == [872, 198]
    names = ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|im_start|>", "<|endoftext|>"]
    assert tok.convert_tokens_to_ids(names) == [151652, 151653, 151654, 151655, 151644, 151643]
    with pytest.raises(CheckpointError, match="qwen25_tokenizer"):
        llm_encoders.find_tokenizer(lone, 416)


def _small(envelope: dict) -> dict:
    """The example at 32 x 32 pixels and one step; the negative without the VAE (each edit node encodes
    a megapixel reference latent, the slow part on these machines)."""
    for node in envelope["graph"].values():
        inputs = node["inputs"]
        for key, value in (("width", SIZE), ("height", SIZE), ("steps", 1)):
            if isinstance(inputs.get(key), int):
                inputs[key] = value
        if node["class_type"] == "TextEncodeQwenImageEditPlus" and not inputs["prompt"]:
            del inputs["vae"]
    return envelope


def test_example_workflow_validates_and_runs(edit, tmp_path):
    import genloom
    from PIL import Image

    engine = genloom.Engine(models_dirs=[edit["models"]], input_dir=edit["inputs"], output_dir=tmp_path / "out",
                            temp_dir=tmp_path / "temp", device="cpu")
    envelope = json.loads((REPO / "workflows" / "qwen_image_edit.json").read_text())
    engine.validate(envelope)  # as shipped: the downloaded file names resolve in their folders
    result = engine.run(_small(envelope))
    pictures = [Image.open(Path(engine.folders.output_dir) / e["subfolder"] / e["filename"])
                for ui in result.outputs.values() for e in ui.get("images", [])]
    assert [p.size for p in pictures] == [(SIZE, SIZE)]
    assert np.asarray(pictures[0]).std() > 0
