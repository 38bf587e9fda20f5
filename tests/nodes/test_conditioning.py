"""Prompt encoding equals the diffusers pipelines' encode_prompt; conditioning nodes keep ComfyUI's shapes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from genloom.nodes.conditioning import (CLIPTextEncode, CLIPTextEncodeSDXL, ConditioningCombine,  # noqa: E402
                                        ConditioningSetArea, ConditioningZeroOut)
from genloom.nodes.loaders import CheckpointLoaderSimple, CLIPSetLastLayer, DiffusersLoader  # noqa: E402

PROMPT = "a photo of a red cat on the white background"


def _pipeline(tiny_models, kind):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
    return cls.from_pretrained(str(tiny_models / "diffusers" / f"tiny-{kind}"), local_files_only=True)


def _reference(pipe, kind, prompt, prompt_2=None, clip_skip=None):
    with torch.no_grad():
        if kind == "sdxl":
            embeds, _, pooled, _ = pipe.encode_prompt(prompt, prompt_2=prompt_2, device="cpu", clip_skip=clip_skip,
                                                      num_images_per_prompt=1, do_classifier_free_guidance=False)
            return embeds, pooled
        return pipe.encode_prompt(prompt, "cpu", 1, False, clip_skip=clip_skip)[0], None


@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
def test_text_encode_equals_diffusers_encode_prompt(tmp_folders, tiny_models, kind):
    pipe = _pipeline(tiny_models, kind)
    expected, expected_pooled = _reference(pipe, kind, PROMPT)
    for clip in (DiffusersLoader().run(f"tiny-{kind}")[1], CheckpointLoaderSimple().run(f"tiny-{kind}.safetensors")[1]):
        (cond, extra), = CLIPTextEncode().run(PROMPT, clip)[0]
        assert cond.dtype == torch.float32 and cond.device.type == "cpu"
        assert cond.shape == expected.shape
        assert torch.allclose(cond, expected, atol=1e-6)
        if kind == "sdxl":
            assert torch.allclose(extra["pooled_output"], expected_pooled, atol=1e-6)
    if kind == "sdxl":
        skipped = CLIPSetLastLayer().run(clip, -2)[0]
        (cond, _), = CLIPTextEncode().run(PROMPT, skipped)[0]
        assert torch.allclose(cond, _reference(pipe, kind, PROMPT, clip_skip=1)[0], atol=1e-6)


def test_clip_skip_sd1_uses_earlier_layer_with_final_norm(tmp_folders, tiny_models):
    clip = DiffusersLoader().run("tiny-sd1")[1]
    skipped = CLIPSetLastLayer().run(clip, -2)[0]
    assert clip.stop_at_layer == -1 and skipped.stop_at_layer == -2  # the input handle is unchanged
    pipe = _pipeline(tiny_models, "sd1")
    ids = pipe.tokenizer(PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        out = pipe.text_encoder(ids, output_hidden_states=True)
        expected = pipe.text_encoder.final_layer_norm(out.hidden_states[-2])
    (cond, _), = CLIPTextEncode().run(PROMPT, skipped)[0]
    assert torch.allclose(cond, expected, atol=1e-6)
    assert not torch.allclose(cond, CLIPTextEncode().run(PROMPT, clip)[0][0][0], atol=1e-3)
    with pytest.raises(ValueError, match="stop_at_clip_layer"):
        CLIPSetLastLayer().run(clip, -5)  # the tiny encoder has 3 layers


def test_long_prompts_are_encoded_in_windows(tmp_folders):
    clip = DiffusersLoader().run("tiny-sd1")[1]
    long = " ".join(["red cat"] * 60)  # 120 tokens: two windows
    (cond, _), = CLIPTextEncode().run(long, clip)[0]
    assert cond.shape == (1, 154, 32)
    first = " ".join(["red cat"] * 37) + " red"  # exactly the first window's 75 tokens
    assert torch.allclose(cond[:, :77], CLIPTextEncode().run(first, clip)[0][0][0], atol=1e-6)


def test_sdxl_encode_routes_text_g_and_text_l_and_keeps_sizes(tmp_folders, tiny_models):
    clip = DiffusersLoader().run("tiny-sdxl")[1]
    (cond, extra), = CLIPTextEncodeSDXL().run(clip, 1024, 768, 16, 8, 2048, 1536, "a blue dog", "a red cat")[0]
    expected, pooled = _reference(_pipeline(tiny_models, "sdxl"), "sdxl", "a red cat", prompt_2="a blue dog")
    assert torch.allclose(cond, expected, atol=1e-6) and torch.allclose(extra["pooled_output"], pooled, atol=1e-6)
    assert {k: extra[k] for k in ("width", "height", "crop_w", "crop_h", "target_width", "target_height")} == \
        {"width": 1024, "height": 768, "crop_w": 16, "crop_h": 8, "target_width": 2048, "target_height": 1536}
    model = DiffusersLoader().run("tiny-sdxl")[0]
    assert model.needs_time_ids
    assert model.time_ids(extra, 512, 640).tolist() == [768, 1024, 8, 16, 1536, 2048]
    assert model.time_ids({}, 512, 640).tolist() == [512, 640, 0, 0, 512, 640]


def test_combine_area_and_zero_out():
    a = [[torch.ones(1, 77, 8), {"pooled_output": torch.ones(1, 8)}]]
    b = [[torch.full((1, 77, 8), 2.0), {"pooled_output": None}]]
    both = ConditioningCombine().run(a, b)[0]
    assert len(both) == 2 and both[0][0] is a[0][0] and len(a) == 1
    area = ConditioningSetArea().run(both, 256, 128, 64, 32, 0.5)[0]
    assert area[0][1]["area"] == (16, 32, 4, 8) and area[1][1]["strength"] == 0.5
    assert "area" not in both[0][1]  # inputs are never modified
    zero = ConditioningZeroOut().run(a)[0]
    assert torch.count_nonzero(zero[0][0]) == 0 and torch.count_nonzero(zero[0][1]["pooled_output"]) == 0
    assert torch.count_nonzero(a[0][0]) > 0


def test_schemas_follow_comfyui():
    sdxl = CLIPTextEncodeSDXL.schema()
    assert [i.name for i in sdxl.inputs] == ["clip", "width", "height", "crop_w", "crop_h", "target_width",
                                             "target_height", "text_g", "text_l"]
    text = CLIPTextEncode.schema().by_name["text"]
    assert text.type == "STRING" and text.multiline and text.extra.get("dynamicPrompts") is True
    area = ConditioningSetArea.schema()
    assert [(i.name, i.default) for i in area.inputs] == [("conditioning", None), ("width", 64), ("height", 64),
                                                          ("x", 0), ("y", 0), ("strength", 1.0)]
    for node in (ConditioningCombine, ConditioningZeroOut, CLIPTextEncode):
        assert [o.type for o in node.schema().outputs] == ["CONDITIONING"]
