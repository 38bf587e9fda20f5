"""TextGenerate with a picture on a tiny random Qwen2.5-VL text encoder saved as users have it (one
.safetensors with `visual.*`, loaded by CLIPLoader type qwen_image): greedy output equals transformers'
Qwen2_5_VLForConditionalGeneration.generate on the same weights, with the prompt and pixels made by
transformers' Qwen2-VL processor; another picture writes other text; a CLIP without a vision tower
refuses `image` by name.

The pixels: ComfyUI resamples the picture bilinearly to the nearest whole 28-pixel cells for the vision
tower; the processor resamples bicubically by its own rule. So the processor gets (resizing off) the
pixels ComfyUI's rule gives, computed here. The reference also gets the processor's `mm_token_type_ids`:
without them transformers 5 gives the image tokens plain 1-D positions, where Qwen2.5-VL (and ComfyUI)
use its 3-D rotary ones."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import qwen_tiny  # noqa: E402

from genloom.engine import context  # noqa: E402
from genloom.engine.errors import NodeInputError  # noqa: E402
from genloom.engine.folders import Folders  # noqa: E402
from genloom.nodes.text_generation import TextGenerate  # noqa: E402

CLIP = "qwen_2.5_vl_7b_fp8_scaled.safetensors"
PROMPT = "the cat sits on the mat"
TOKENS = 12


@pytest.fixture(scope="module")
def vl(tmp_path_factory):
    root = tmp_path_factory.mktemp("vl")
    models = root / "models"
    encoder = qwen_tiny.tiny_qwen25_vl(7)
    with torch.no_grad():  # sharper attention: a random tiny model barely feels its positions otherwise
        for name, weight in encoder.named_parameters():
            if "language_model" in name and name.endswith(("q_proj.weight", "k_proj.weight")):
                weight.mul_(4.0)
    qwen_tiny.save_llm(encoder, models / "text_encoders" / CLIP)
    qwen_tiny.write_tokenizer(models / "text_encoders" / "qwen25_tokenizer")
    folders = Folders(models_dirs=[models], input_dir=root / "input", output_dir=root / "output",
                      temp_dir=root / "temp")
    token = context.use(context.RunContext(device_choice="cpu", folders=folders))
    from genloom.nodes.loaders_split import CLIPLoader

    (clip,) = CLIPLoader().run(CLIP, "qwen_image")
    yield {"encoder": encoder, "clip": clip, "models": models}
    context.reset(token)


def _picture(seed, h=60, w=90):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((1, h, w, 3), generator=gen)


def _reference(vl, image, max_new_tokens=TOKENS, rope_3d=True):
    """transformers' generate on the processor's inputs, from ComfyUI's vision pixels (bilinear to the
    nearest 28-pixel cells: 60 x 90 -> 56 x 84), one vision block per picture of the batch."""
    import torch.nn.functional as F
    from transformers import Qwen2Tokenizer, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    tok = Qwen2Tokenizer.from_pretrained(str(vl["models"] / "text_encoders" / "qwen25_tokenizer"))
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(do_resize=False, do_rescale=False),
                                 tokenizer=tok, video_processor=Qwen2VLVideoProcessor())
    x = image.permute(0, 3, 1, 2)
    h, w = (round(s / 28) * 28 for s in x.shape[2:])
    pixels = list(F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False))
    text = ("<|im_start|>user\n" + "<|vision_start|><|image_pad|><|vision_end|>" * len(pixels) + PROMPT
            + "<|im_end|>\n<|im_start|>assistant\n")  # the tiny tokenizer's ChatML template, written out
    inputs = processor(text=[text], images=pixels, return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 6]] * len(pixels)  # 56 x 84 pixels, 14-pixel patches
    vl["encoder"].model.rope_deltas = None  # transformers keeps the last run's rope offset on the model
    with torch.no_grad():
        out = vl["encoder"].generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                     pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"],
                                     mm_token_type_ids=inputs["mm_token_type_ids"] if rope_3d else None,
                                     do_sample=False,
                                     max_new_tokens=max_new_tokens,
                                     eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                                     pad_token_id=tok.pad_token_id)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    return tok.decode(new, skip_special_tokens=True)


def test_greedy_with_an_image_equals_transformers_generate(vl):
    picture = _picture(0)
    (text,) = TextGenerate().run(vl["clip"], PROMPT, TOKENS, "off", image=picture)
    assert text == _reference(vl, picture) and text
    assert text != _reference(vl, picture, rope_3d=False)  # 1-D positions write otherwise: the test sees them
    (other,) = TextGenerate().run(vl["clip"], PROMPT, TOKENS, "off", image=1.0 - _picture(1))
    (plain,) = TextGenerate().run(vl["clip"], PROMPT, TOKENS, "off")
    assert other != text and plain != text


def test_every_picture_of_the_batch_is_read(vl):
    pictures = torch.cat([_picture(2), _picture(3)])
    (text,) = TextGenerate().run(vl["clip"], PROMPT, TOKENS, "off", image=pictures)
    assert text == _reference(vl, pictures)


def test_pictures_are_placed_where_comfyui_places_them():
    from genloom.diffusion.text_generation import place_pictures

    block = "<|vision_start|><|image_pad|><|vision_end|>"
    assert place_pictures("a cat", 2, templated=True) == block + block + "a cat"
    assert place_pictures("a cat", 1, templated=False) == block + "a cat"
    chat = "<|im_start|>user\na cat<|im_end|>\n"
    assert place_pictures(chat, 1, templated=False) == "<|im_start|>user\n" + block + "a cat<|im_end|>\n"
    assert place_pictures("x" + block + "y", 2, templated=False) == "x" + block + block + "y"
    assert place_pictures("x" + block + "y", 1, templated=False) == "x" + block + "y"
    with pytest.raises(ValueError):
        place_pictures(block + block, 1, templated=False)


def test_an_image_needs_a_vision_tower_and_misplaced_pads_are_refused(vl):
    from genloom.diffusion.models.handles import ClipHandle

    model = qwen_tiny.tiny_qwen3(3)
    clip = ClipHandle(tokenizers=vl["clip"].tokenizers, text_encoders=(model,), kind="qwen3")
    with pytest.raises(NodeInputError) as err:
        TextGenerate().run(clip, PROMPT, 4, "off", image=_picture(0))
    assert err.value.input_name == "image" and "vision tower" in str(err.value)
    with pytest.raises(NodeInputError) as err:
        TextGenerate().run(vl["clip"], "<|image_pad|><|image_pad|>", 4, "off", image=_picture(0),
                           use_default_template=False)
    assert err.value.input_name == "prompt"
    # video on a tokenizer without <|video_pad|>, audio anywhere (tests/nodes/test_text_generate_video.py)
    for name in ("video", "audio"):
        with pytest.raises(NodeInputError) as err:
            TextGenerate().run(vl["clip"], PROMPT, 4, "off", **{name: _picture(0)})
        assert err.value.input_name == name
