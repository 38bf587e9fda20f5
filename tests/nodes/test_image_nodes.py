"""Image I/O and resizing nodes against real files in temporary folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from genloom.engine import context
from genloom.engine.folders import Folders
from genloom.engine.registry import Registry
from genloom.nodes import image as image_nodes
from genloom.nodes.image import (ImagePadForOutpaint, ImageScale, ImageScaleBy, ImageScaleToTotalPixels,
                                 LoadImage, PreviewImage, SaveImage)
from genloom.engine.pngtext import read_png_json, read_png_text

torch.set_num_threads(2)


@pytest.fixture
def folders(tmp_path):
    f = Folders(models_dirs=[tmp_path / "models"], input_dir=tmp_path / "input",
                output_dir=tmp_path / "output", temp_dir=tmp_path / "temp")
    f.input_dir.mkdir()
    token = context.use(context.RunContext(device_choice="cpu", folders=f))
    yield f
    context.reset(token)


def _rgba(h=6, w=5):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 4), dtype=np.uint8)


def test_load_image_mask_is_one_minus_alpha(folders):
    pixels = _rgba()
    Image.fromarray(pixels, "RGBA").save(folders.input_dir / "a.png")
    Image.fromarray(pixels[..., :3], "RGB").save(folders.input_dir / "b.png")
    assert LoadImage.schema().by_name["image"].combo_options() == ["a.png", "b.png"]
    image, mask = LoadImage().run("a.png")
    assert image.shape == (1, 6, 5, 3) and image.dtype == torch.float32
    assert mask.shape == (1, 6, 5)
    assert torch.allclose(image[0], torch.from_numpy(pixels[..., :3] / 255.0).float())
    assert torch.allclose(mask[0], 1 - torch.from_numpy(pixels[..., 3] / 255.0).float())
    _, mask_b = LoadImage().run("b.png")
    assert mask_b.shape == (1, 6, 5) and mask_b.abs().sum() == 0


def test_load_image_fingerprint_follows_content_and_missing_file_is_named(folders):
    path = folders.input_dir / "a.png"
    Image.fromarray(_rgba()[..., :3]).save(path)
    first = LoadImage.fingerprint(image="a.png")
    assert LoadImage.fingerprint(image="a.png") == first
    Image.fromarray(255 - _rgba()[..., :3]).save(path)
    assert LoadImage.fingerprint(image="a.png") != first
    message = LoadImage.validate(image="missing.png")
    assert isinstance(message, str) and "image" in message and "missing.png" in message
    with pytest.raises(ValueError, match="LoadImage: input 'image'"):
        LoadImage().run("missing.png")


@pytest.mark.parametrize("name", ["../secret.png", "/etc/passwd", "sub/../../x.png"])
def test_load_image_refuses_path_traversal(folders, tmp_path, name):
    Image.fromarray(_rgba()[..., :3]).save(tmp_path / "secret.png")
    message = LoadImage.validate(image=name)
    assert isinstance(message, str) and "LoadImage: input 'image'" in message
    with pytest.raises(ValueError):
        LoadImage().run(name)


def test_save_image_counter_subfolder_and_metadata_round_trip(folders):
    images = torch.rand(2, 8, 7, 3)
    prompt = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}}
    workflow = {"nodes": [{"id": 1, "type": "SaveImage"}], "version": 0.4, "note": "héllo ✓"}
    out = SaveImage().run(images, "run/pic", prompt=prompt, extra_pnginfo={"workflow": workflow})
    entries = out.ui["images"]
    assert entries == [{"filename": "pic_00001_.png", "subfolder": "run", "type": "output"},
                       {"filename": "pic_00002_.png", "subfolder": "run", "type": "output"}]
    saved = folders.output_dir / "run" / "pic_00001_.png"
    assert read_png_json(saved, "prompt") == prompt
    assert read_png_json(saved, "workflow") == workflow
    assert set(read_png_text(saved)) == {"prompt", "workflow"}
    # PIL agrees on the pixels and on the chunks
    with Image.open(saved) as img:
        assert json.loads(img.text["workflow"]) == workflow
        raw = np.asarray(img)
    back = raw.astype(np.float32) / 255
    # ComfyUI's quantisation: clip(255 * x) truncated, so every saved byte is at most one step below
    assert np.array_equal(raw, np.clip(255.0 * images[0].numpy(), 0, 255).astype(np.uint8))
    assert np.abs(back - images[0].numpy()).max() <= 1 / 255 + 1e-6
    again = SaveImage().run(images[:1], "run/pic").ui["images"]
    assert again[0]["filename"] == "pic_00003_.png"
    assert read_png_text(folders.output_dir / "run" / "pic_00003_.png") == {}


@pytest.mark.parametrize("prefix", ["../escape", "/abs/file", "a/../../b"])
def test_save_image_prefix_cannot_leave_output_folder(folders, tmp_path, prefix):
    with pytest.raises(ValueError, match="SaveImage: input 'filename_prefix'"):
        SaveImage().run(torch.rand(1, 4, 4, 3), prefix)
    assert not any(p.suffix == ".png" for p in tmp_path.rglob("*") if "output" not in p.parts)


def test_preview_image_goes_to_temp(folders):
    entries = PreviewImage().run(torch.rand(1, 4, 4, 3)).ui["images"]
    assert entries[0]["type"] == "temp" and entries[0]["subfolder"] == ""
    assert entries[0]["filename"].startswith("ComfyUI_temp_")
    assert (folders.temp_dir / entries[0]["filename"]).is_file()


def test_read_png_text_handles_compressed_and_international_chunks(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("plain", "a")
    info.add_text("zipped", "b" * 1000, zip=True)
    info.add_itxt("intl", "ünïcode ✓", zip=True)
    Image.new("RGB", (2, 2)).save(tmp_path / "t.png", pnginfo=info)
    assert read_png_text(tmp_path / "t.png") == {"plain": "a", "zipped": "b" * 1000, "intl": "ünïcode ✓"}
    with pytest.raises(ValueError):
        read_png_text(b"GIF89a....")


def test_image_scale_keeps_aspect_and_crops():
    image = torch.rand(2, 20, 40, 3)
    (out,) = ImageScale().run(image, "bilinear", 0, 10, "disabled")
    assert out.shape == (2, 10, 20, 3)
    (out,) = ImageScale().run(image, "lanczos", 30, 30, "center")
    assert out.shape == (2, 30, 30, 3) and 0 <= out.min() and out.max() <= 1
    (same,) = ImageScale().run(image, "area", 0, 0, "disabled")
    assert same is image
    # centre crop of a half-black half-white picture to a square keeps both halves equally
    split = torch.zeros(1, 10, 30, 3)
    split[:, :, 15:] = 1
    (sq,) = ImageScale().run(split, "nearest-exact", 10, 10, "center")
    assert sq[0, :, :5].max() == 0 and sq[0, :, 5:].min() == 1


def test_image_scale_by_and_total_pixels():
    image = torch.rand(1, 30, 20, 3)
    assert ImageScaleBy().run(image, "bicubic", 1.5)[0].shape == (1, 45, 30, 3)
    (out,) = ImageScaleToTotalPixels().run(image, "area", 0.01)
    assert abs(out.shape[1] * out.shape[2] - 0.01 * 1024 * 1024) < 200
    assert abs(out.shape[1] / out.shape[2] - 1.5) < 0.05


def test_pad_for_outpaint_feathers_only_padded_sides():
    image = torch.rand(1, 100, 100, 3)
    padded, mask = ImagePadForOutpaint().run(image, 16, 0, 0, 8, 10)
    assert padded.shape == (1, 108, 116, 3) and mask.shape == (1, 108, 116)
    assert torch.equal(padded[:, :100, 16:], image)
    assert torch.all(padded[:, 100:] == 0.5) and torch.all(padded[:, :, :16] == 0.5)
    assert torch.all(mask[0, 100:] == 1) and torch.all(mask[0, :, :16] == 1)
    inner = mask[0, :100, 16:]
    assert inner[0, 0] == 1.0  # on the left edge: distance 0
    assert inner[50, 5] == pytest.approx(0.25)  # (10 - 5) / 10 squared
    assert inner[0, 50] == 0 and inner[50, 99] == 0  # top and right were not padded
    assert inner[99, 50] == pytest.approx(0.81)  # 1 px from the padded bottom: (10 - 1) / 10 squared
    (_, no_feather) = ImagePadForOutpaint().run(image, 8, 8, 8, 8, 0)
    assert no_feather[0, 8:108, 8:108].sum() == 0


def test_schemas_match_comfyui():
    registry = Registry()
    registry.register_module(image_nodes, "builtin")
    info = registry.object_info()
    assert info["SaveImage"]["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert info["SaveImage"]["output_node"] is True and info["SaveImage"]["output"] == []
    assert info["SaveImage"]["input"]["required"]["filename_prefix"][1]["default"] == "ComfyUI"
    assert info["LoadImage"]["input"]["required"]["image"][1]["image_upload"] is True
    assert info["LoadImage"]["output"] == ["IMAGE", "MASK"]
    assert info["ImageScale"]["input_order"]["required"] == ["image", "upscale_method", "width", "height",
                                                            "crop"]
    assert info["ImageScale"]["input"]["required"]["upscale_method"][0] == [
        "nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
    assert info["ImageScaleBy"]["input"]["required"]["scale_by"][1]["default"] == 1.0
    assert info["ImagePadForOutpaint"]["input_order"]["required"] == ["image", "left", "top", "right",
                                                                     "bottom", "feathering"]
    assert info["ImagePadForOutpaint"]["output"] == ["IMAGE", "MASK"]


def test_engine_round_trip_load_scale_save(tmp_path):
    """Through the real engine: hidden prompt/extra_pnginfo reach SaveImage, the saved PNG loads back
    as a workflow, and replacing the input file makes LoadImage run again."""
    import genloom
    (tmp_path / "in").mkdir()
    Image.fromarray(_rgba(16, 12), "RGBA").save(tmp_path / "in" / "pic.png")
    engine = genloom.Engine(cache="default", device="cpu", models_dirs=[tmp_path / "models"],
                            input_dir=tmp_path / "in", output_dir=tmp_path / "out", temp_dir=tmp_path / "tmp")
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "pic.png"}},
              "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bicubic",
                                                           "width": 24, "height": 0, "crop": "disabled"}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "t/run"}}}
    workflow = {"last_node_id": 3, "nodes": [], "links": [], "version": 0.4}
    result = engine.run(prompt, extra_data={"extra_pnginfo": {"workflow": workflow}})
    entry = result.outputs["3"]["images"][0]
    assert entry == {"filename": "run_00001_.png", "subfolder": "t", "type": "output"}
    saved = tmp_path / "out" / "t" / "run_00001_.png"
    with Image.open(saved) as img:
        assert img.size == (24, 32)
    assert read_png_json(saved, "prompt")["2"]["inputs"]["width"] == 24
    assert read_png_json(saved, "workflow") == workflow
    assert engine.load(saved).format == "png"  # the workflow loader reads what SaveImage wrote
    again = engine.run(prompt)
    assert "1" in again.cached
    Image.fromarray(_rgba(16, 12)[::-1].copy(), "RGBA").save(tmp_path / "in" / "pic.png")
    third = engine.run(prompt)
    assert "1" in third.executed
    bad = dict(prompt, **{"1": {"class_type": "LoadImage", "inputs": {"image": "../pic.png"}}})
    with pytest.raises(genloom.WorkflowError) as info:
        engine.run(bad)
    assert "LoadImage: input 'image'" in json.dumps(info.value.node_errors)
