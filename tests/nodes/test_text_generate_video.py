"""TextGenerate's `video` input on a tiny random Qwen2.5-VL text encoder saved as users have it (one
.safetensors with `visual.*`, CLIPLoader type qwen_image), its tokenizer with Qwen's `<|video_pad|>`.

ComfyUI's TextGenerate takes `video` frames as 24 fps and reads them at 1 fps (frames 0, 24, 48, ...).
The reference is transformers' Qwen2_5_VLForConditionalGeneration.generate on the inputs transformers'
Qwen2-VL processor makes from those sampled frames: the processor gets (resizing off) the pixels ComfyUI's
vision rule gives (bilinear to the nearest whole 28-pixel cells), pads an odd frame count by repeating the
last frame, writes the `<|video_pad|>` tokens, and the frames' time step is Qwen2.5-VL's
`second_per_grid_ts` = temporal patch (2) / sampled fps (1) = 2 seconds, passed to generate. So both
sides see the same pixels; the patching, token placement and 3-D positions are each side's own (the
vision tower and the language model are transformers' on both). The odd-frame rule and the positions
are also checked against arithmetic written here."""

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
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def _tokenizer_with_video_pad(folder: Path) -> int:
    """The tiny tokenizer plus Qwen's `<|video_pad|>` special token; returns its id."""
    from tokenizers import Tokenizer

    qwen_tiny.write_tokenizer(folder)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.add_special_tokens(["<|video_pad|>"])
    tok.save(str(folder / "tokenizer.json"))
    return tok.token_to_id("<|video_pad|>")


@pytest.fixture(scope="module")
def vl(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlvideo")
    models = root / "models"
    video_id = _tokenizer_with_video_pad(models / "text_encoders" / "qwen25_tokenizer")
    encoder = qwen_tiny.tiny_qwen25_vl(7)
    encoder.config.video_token_id = video_id
    # one time step a second: the 2-frame temporal patches (2 s at 1 fps) step the time axis by 2, which keeps
    # the clips below short enough that transformers 5.24's text-after-video rule equals Qwen's (see below)
    encoder.config.vision_config.tokens_per_second = 1
    assert encoder.model.config.vision_config.tokens_per_second == 1
    with torch.no_grad():  # sharper attention: a random tiny model barely feels its positions otherwise
        for name, weight in encoder.named_parameters():
            if "language_model" in name and name.endswith(("q_proj.weight", "k_proj.weight")):
                weight.mul_(4.0)
    qwen_tiny.save_llm(encoder, models / "text_encoders" / CLIP)
    folders = Folders(models_dirs=[models], input_dir=root / "input", output_dir=root / "output",
                      temp_dir=root / "temp")
    token = context.use(context.RunContext(device_choice="cpu", folders=folders))
    from genloom.nodes.loaders_split import CLIPLoader

    (clip,) = CLIPLoader().run(CLIP, "qwen_image")
    assert clip.text_encoders[0].config.video_token_id == video_id  # the config travels in the file
    yield {"encoder": encoder, "clip": clip, "models": models, "video_id": video_id}
    context.reset(token)


def _clip_frames(seed, count, h=60, w=90):
    """A clip whose frames differ: a random picture drifting brighter frame by frame."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand((1, h, w, 3), generator=gen) * 0.5
    return base + torch.linspace(0, 0.5, count).view(count, 1, 1, 1)


def _cells(x):
    """Bilinear to the nearest whole 28-pixel cells (60 x 90 -> 56 x 84), frames [F, 3, h, w]."""
    import torch.nn.functional as F

    h, w = (round(s / 28) * 28 for s in x.shape[2:])
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


def _reference(vl, video, image=None, max_new_tokens=TOKENS, seconds=2.0):
    """transformers' generate on the processor's inputs, from the frames ComfyUI reads (every 24th)."""
    from transformers import Qwen2Tokenizer, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    tok = Qwen2Tokenizer.from_pretrained(str(vl["models"] / "text_encoders" / "qwen25_tokenizer"))
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(do_resize=False, do_rescale=False),
                                 tokenizer=tok,
                                 video_processor=Qwen2VLVideoProcessor(do_resize=False, do_rescale=False))
    frames = _cells(video[[i for i in range(video.shape[0]) if i % 24 == 0]].permute(0, 3, 1, 2))
    blocks = "<|vision_start|><|video_pad|><|vision_end|>"
    images = None
    if image is not None:
        images = list(_cells(image.permute(0, 3, 1, 2)))
        blocks = "<|vision_start|><|image_pad|><|vision_end|>" * len(images) + blocks
    text = "<|im_start|>user\n" + blocks + PROMPT + "<|im_end|>\n<|im_start|>assistant\n"
    inputs = processor(text=[text], images=images, videos=[frames], return_tensors="pt")
    assert inputs["video_grid_thw"].tolist() == [[(frames.shape[0] + 1) // 2, 4, 6]]  # odd: last frame twice
    vl["encoder"].model.rope_deltas = None  # transformers keeps the last run's rope offset on the model
    extra = {} if image is None else {"pixel_values": inputs["pixel_values"],
                                      "image_grid_thw": inputs["image_grid_thw"]}
    with torch.no_grad():
        out = vl["encoder"].generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                     pixel_values_videos=inputs["pixel_values_videos"],
                                     video_grid_thw=inputs["video_grid_thw"],
                                     second_per_grid_ts=torch.tensor([seconds]),  # 2-frame patches at 1 fps
                                     mm_token_type_ids=inputs["mm_token_type_ids"], do_sample=False,
                                     max_new_tokens=max_new_tokens, **extra,
                                     eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                                     pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, inputs["input_ids"].shape[1]:].tolist(), skip_special_tokens=True)


def test_greedy_with_a_video_equals_transformers_generate(vl):
    video = _clip_frames(0, 49)  # 49 frames at 24 fps -> frames 0, 24, 48: three, an odd count
    (text,) = TextGenerate().run(vl["clip"], PROMPT, TOKENS, "off", video=video)
    assert text == _reference(vl, video) and text
    assert text != _reference(vl, video, seconds=1.0)  # another time step writes otherwise: the test sees it
    (plain,) = TextGenerate().run(vl["clip"], PROMPT, TOKENS, "off")
    (still,) = TextGenerate().run(vl["clip"], PROMPT, TOKENS, "off", video=video[:1])  # one frame, padded
    assert plain != text and still == _reference(vl, video[:1]) and still != text


def test_a_video_and_pictures_together_equal_transformers_generate(vl):
    video, picture = _clip_frames(1, 30), _clip_frames(2, 1)  # 30 frames -> frames 0 and 24
    (text,) = TextGenerate().run(vl["clip"], PROMPT, TOKENS, "off", image=picture, video=video)
    assert text == _reference(vl, video, image=picture)


def test_frames_are_read_at_one_a_second_and_an_odd_count_repeats_the_last():
    from types import SimpleNamespace

    import torch.nn.functional as F

    from genloom.diffusion.models.qwen_edit import video_patches
    from genloom.diffusion.text_generation import sample_video

    video = torch.arange(50, dtype=torch.float32).view(50, 1, 1, 1).expand(50, 2, 2, 3)
    assert sample_video(video)[:, 0, 0, 0].tolist() == [0.0, 24.0, 48.0]
    assert sample_video(video[:10])[:, 0, 0, 0].tolist() == [0.0]
    config = SimpleNamespace(patch_size=14, temporal_patch_size=2, spatial_merge_size=2)
    frames = _clip_frames(3, 3)
    patches, grid = video_patches(frames, config)
    assert grid.tolist() == [[2, 4, 6]]
    pixels = (F.interpolate(frames.permute(0, 3, 1, 2), size=(56, 84), mode="bilinear", align_corners=False)
              - MEAN) / STD
    cells = patches.view(2, 24, 3, 2, 14, 14)  # (temporal patch, patch, channel, frame slot, y, x)
    for k, slots in enumerate([(0, 1), (2, 2)]):  # the second temporal patch: the last frame twice
        for slot, frame in enumerate(slots):
            # patch 0 of each temporal patch: the top-left 14 x 14 pixels; patch 1: the one right of it
            torch.testing.assert_close(cells[k, 0, :, slot], pixels[frame, :, :14, :14])
            torch.testing.assert_close(cells[k, 1, :, slot], pixels[frame, :, :14, 14:28])
            torch.testing.assert_close(cells[k, 2, :, slot], pixels[frame, :, 14:28, :14])


def test_video_tokens_and_their_3d_positions(vl):
    """Qwen's rule: a temporal patch k of a video sits at time start + k * tokens_per_second * 2 s, rows and
    columns count from start, and the text after the block resumes one past its largest position (here the
    time, 4: transformers 5.24 would resume at start + 3, past the larger merged side only)."""
    from genloom.diffusion.models.qwen_edit import vision_inputs

    model = vl["clip"].text_encoders[0].model
    pad, video_pad = 5, vl["video_id"]
    ids = [1, 2, 3, video_pad, 4, 9, 9]  # two text tokens + vision start, the video, vision end + text
    tokens, embeds, positions = vision_inputs(model, ids, [], pad, [_clip_frames(4, 5)], video_pad, video_fps=1.0)
    # 5 frames -> 3 temporal patches (the last frame twice) of 4 x 6 patches, merged 2 x 2 -> 3 x 2 x 3 = 18
    assert tokens[0].tolist() == [1, 2, 3] + [video_pad] * 18 + [4, 9, 9]
    step = 1 * 2  # tokens_per_second (the fixture's 1) x 2 seconds per temporal patch at 1 fps
    start = 3
    time = [start + step * k for k in range(3) for _ in range(6)]
    rows = [start + r for _k in range(3) for r in range(2) for _c in range(3)]
    cols = [start + c for _k in range(3) for _r in range(2) for c in range(3)]
    after = [start + 2 * step + 1 + i for i in range(3)]
    assert positions[0, 0].tolist() == [0, 1, 2] + time + after
    assert positions[1, 0].tolist() == [0, 1, 2] + rows + after
    assert positions[2, 0].tolist() == [0, 1, 2] + cols + after
    assert embeds.shape[:2] == (1, 24)


def test_video_is_placed_after_the_pictures():
    from genloom.diffusion.text_generation import place_pictures

    image = "<|vision_start|><|image_pad|><|vision_end|>"
    video = "<|vision_start|><|video_pad|><|vision_end|>"
    assert place_pictures("a cat", 1, templated=True, videos=1) == image + video + "a cat"
    assert place_pictures("a cat", 0, templated=True, videos=1) == video + "a cat"
    chat = "<|im_start|>user\na cat<|im_end|>\n"
    assert place_pictures(chat, 0, templated=False, videos=1) == "<|im_start|>user\n" + video + "a cat<|im_end|>\n"
    assert place_pictures("x" + image + "y", 2, templated=False, videos=1) == "x" + image + image + video + "y"
    assert place_pictures("x" + video + "y", 1, templated=False, videos=1) == image + "x" + video + "y"
    assert place_pictures("x" + image + "y", 0, templated=False, videos=1) == "x" + image + video + "y"
    with pytest.raises(ValueError):
        place_pictures(video + video, 0, templated=False, videos=1)


def test_video_needs_a_vision_tower_and_audio_names_the_encoder_that_reads_it(vl):
    from genloom.diffusion.models.handles import ClipHandle

    clip = ClipHandle(tokenizers=vl["clip"].tokenizers, text_encoders=(qwen_tiny.tiny_qwen3(3),), kind="qwen3")
    with pytest.raises(NodeInputError) as err:
        TextGenerate().run(clip, PROMPT, 4, "off", video=_clip_frames(0, 2))
    assert err.value.input_name == "video" and "vision tower" in str(err.value)
    with pytest.raises(NodeInputError) as err:
        TextGenerate().run(vl["clip"], PROMPT, 4, "off", audio={"waveform": torch.zeros(1, 1, 160),
                                                                "sample_rate": 16000})
    assert err.value.input_name == "audio" and "Gemma 4" in str(err.value)
    with pytest.raises(NodeInputError) as err:
        TextGenerate().run(vl["clip"], "<|video_pad|><|video_pad|>", 4, "off", video=_clip_frames(0, 2),
                           use_default_template=False)
    assert err.value.input_name == "prompt"
