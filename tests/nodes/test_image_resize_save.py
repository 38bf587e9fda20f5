"""Resizing nodes (sizes by arithmetic, pixels against torch's interpolate) and the extra save nodes
(files read back with PIL / zlib, metadata where ComfyUI puts it)."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageSequence

from genloom.engine import context
from genloom.engine.errors import NodeInputError
from genloom.engine.folders import Folders
from genloom.nodes.image import ImageScaleToTotalPixels, SaveImage
from genloom.nodes.image_resize import ImageScaleToMaxDimension, ResizeAndPadImage, ResizeImageMaskNode
from genloom.nodes.image_save import (ImageCompare, LoadImageOutput, SaveAnimatedPNG, SaveAnimatedWEBP,
                                      SaveImageAdvanced, SaveImageWebsocket)


@pytest.fixture
def folders(tmp_path):
    f = Folders(models_dirs=[tmp_path / "models"], input_dir=tmp_path / "input", output_dir=tmp_path / "output",
                temp_dir=tmp_path / "temp")
    events = []
    token = context.use(context.RunContext(device_choice="cpu", folders=f,
                                           emit=lambda event, data: events.append((event, data))))
    f.events = events
    yield f
    context.reset(token)


def _resize(image, resize_type, **options):
    named = {f"resize_type.{k}": v for k, v in options.items()}
    return ResizeImageMaskNode().run(image, resize_type, "area", **named)[0]


@pytest.mark.parametrize("resize_type, options, size", [
    ("scale by multiplier", {"multiplier": 0.5}, (10, 20)),   # (h, w) of a 20 x 40 picture
    ("scale dimensions", {"width": 30, "height": 0, "crop": "disabled"}, (15, 30)),
    ("scale longer dimension", {"longer_size": 10}, (5, 10)),
    ("scale shorter dimension", {"shorter_size": 10}, (10, 20)),
    ("scale width", {"width": 8}, (4, 8)),
    ("scale height", {"height": 8}, (8, 16)),
    ("scale total pixels", {"megapixels": 200 / 1048576}, (10, 20)),  # sqrt(200 / 800) = 0.5
    ("scale to multiple", {"multiple": 12}, (24, 36)),  # 20 -> 24, 40 -> 36 (nearest multiples)
])
def test_resize_image_mask_sizes(resize_type, options, size):
    image = torch.rand(2, 20, 40, 3)
    out = _resize(image, resize_type, **options)
    assert out.shape == (2, *size, 3)
    mask = _resize(image[..., 0], resize_type, **options)
    assert mask.shape == (2, *size)
    assert torch.allclose(mask, out[..., 0], atol=1e-6)  # a mask resizes like a channel


def test_resize_image_mask_area_pixels_and_match_size():
    image = torch.rand(1, 8, 8, 3)
    out = _resize(image, "scale by multiplier", multiplier=0.5)
    assert torch.allclose(out, F.avg_pool2d(image.movedim(-1, 1), 2).movedim(1, -1), atol=1e-6)
    out = _resize(image, "match size", match=torch.zeros(1, 4, 2), crop="disabled")
    assert out.shape == (1, 4, 2, 3)
    with pytest.raises(NodeInputError, match="resize_type.match"):
        _resize(image, "match size")


def test_scale_to_max_dimension_and_total_pixels_steps():
    image = torch.rand(1, 30, 60, 3)
    assert ImageScaleToMaxDimension().run(image, "area", 20)[0].shape == (1, 10, 20, 3)
    assert ImageScaleToMaxDimension().run(image.transpose(1, 2), "bilinear", 20)[0].shape == (1, 20, 10, 3)
    # 0.002 MP = 2097.152 px at 2:1: 64.76 x 32.38 -> steps of 16: 64 x 32; steps of 1: 65 x 32
    assert ImageScaleToTotalPixels().run(image, "area", 0.002, 16)[0].shape == (1, 32, 64, 3)
    assert ImageScaleToTotalPixels().run(image, "area", 0.002, 1)[0].shape == (1, 32, 65, 3)


def test_resize_and_pad_centres_on_the_padding_colour():
    image = torch.full((1, 2, 4, 3), 0.5)
    out, = ResizeAndPadImage().run(image, 8, 8, "black", "nearest-exact")
    # scale min(8/4, 8/2) = 2 -> 8 x 4, centred vertically: rows 2..5
    assert out.shape == (1, 8, 8, 3)
    assert torch.equal(out[0, 2:6], torch.full((4, 8, 3), 0.5))
    assert out[0, :2].sum() == 0 and out[0, 6:].sum() == 0
    assert torch.equal(ResizeAndPadImage().run(image, 4, 4, "white", "area")[0][0, 0], torch.ones(4, 3))


def test_save_image_bytes_are_truncated_like_comfyui(folders):
    values = torch.tensor([0.0, 0.5, 0.999, 1 / 255 - 1e-6, 254.6 / 255, 1.2, -0.1, 0.3])
    image = values.reshape(1, 1, 8, 1).expand(1, 1, 8, 3).contiguous()
    entry = SaveImage().run(image, "q").ui["images"][0]
    with Image.open(folders.output_dir / entry["filename"]) as img:
        row = np.asarray(img)[0, :, 0].tolist()
    assert row == [0, 127, 254, 0, 254, 255, 0, 76]  # floor(255 x), not round


def test_save_animated_png_and_webp(folders):
    frames = torch.stack([torch.full((4, 5, 3), v) for v in (0.2, 0.6, 1.0)])
    prompt = {"1": {"class_type": "X", "inputs": {}}}
    extra = {"workflow": {"nodes": [], "version": 0.4}}
    out = SaveAnimatedPNG().run(frames, "anim/a", 10.0, 4, prompt=prompt, extra_pnginfo=extra)
    entry = out.ui["images"][0]
    assert out.ui["animated"] == (True,) and entry["filename"].endswith(".png") and entry["subfolder"] == "anim"
    path = folders.output_dir / "anim" / entry["filename"]
    with Image.open(path) as img:
        assert img.n_frames == 3 and img.info["duration"] == 100
        firsts = [frame.convert("RGB").getpixel((0, 0)) for frame in ImageSequence.Iterator(img)]
    assert firsts == [(51, 51, 51), (153, 153, 153), (255, 255, 255)]
    data = path.read_bytes()
    after_idat = data[data.index(b"IDAT"):]
    assert b"comfprompt\0" + json.dumps(prompt).encode() in after_idat
    assert b"comfworkflow\0" in after_idat

    out = SaveAnimatedWEBP().run(frames, "w", 8.0, True, 80, "default", prompt=prompt, extra_pnginfo=extra)
    assert out.ui["animated"] == (True,)
    with Image.open(folders.output_dir / out.ui["images"][0]["filename"]) as img:
        assert img.n_frames == 3
        assert img.convert("RGB").getpixel((0, 0)) == (51, 51, 51)  # lossless
        exif = img.getexif()
    assert exif[0x0110] == "prompt:" + json.dumps(prompt)
    assert exif[0x010F] == "workflow:" + json.dumps(extra["workflow"])


def _png_chunks(data: bytes):
    pos, chunks = 8, []
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        assert int.from_bytes(data[pos + 8 + length:pos + 12 + length], "big") == zlib.crc32(kind + body)
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


def test_save_image_advanced_16_bit_png(folders):
    image = torch.tensor([[[0.0, 0.5, 1.0], [0.25, 0.1, 0.75]]]).reshape(1, 1, 2, 3)
    out = SaveImageAdvanced().run(image, "adv", "png", prompt={"a": 1}, **{"format.bit_depth": "16-bit"})
    data = (folders.output_dir / out.ui["images"][0]["filename"]).read_bytes()
    chunks = dict(_png_chunks(data))
    assert chunks[b"IHDR"][:10] == (2).to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes([16, 2])
    assert chunks[b"tEXt"] == b"prompt\0" + json.dumps({"a": 1}).encode()
    raw = zlib.decompress(chunks[b"IDAT"])
    assert raw[0] == 0  # filter type none
    values = np.frombuffer(raw[1:], ">u2").tolist()
    assert values == [0, 32767, 65535, 16383, 6553, 49151]  # floor(65535 x)
    with Image.open(folders.output_dir / out.ui["images"][0]["filename"]) as img:
        assert img.size == (2, 1)  # PIL reads our file
    out8 = SaveImageAdvanced().run(image, "adv8", "png")
    with Image.open(folders.output_dir / out8.ui["images"][0]["filename"]) as img:
        assert np.asarray(img)[0, 0].tolist() == [0, 127, 255]
    with pytest.raises(NodeInputError, match="format.input_color_space"):
        SaveImageAdvanced().run(image, "x", "png", **{"format.input_color_space": "linear"})


def _exr_pixels(path):
    """FFmpeg's EXR decoder (through PyAV) reading the file: float32 [H, W, C]."""
    import av

    frame = av.CodecContext.create("exr", "r").decode(av.Packet(path.read_bytes()))[0]
    return frame.to_ndarray()


def _exr_string_attribute(data: bytes, name: str) -> str:
    start = data.index(name.encode() + b"\0string\0") + len(name) + 8
    size = int.from_bytes(data[start:start + 4], "little")
    return data[start + 4:start + 4 + size].decode()


@pytest.mark.parametrize("space", ["sRGB", "linear", "HDR"])
def test_save_image_advanced_exr_is_scene_linear_float(folders, space):
    values = [[0.0, 0.02, 0.5], [1.0, 1.5, -0.25]]  # beyond 0..1 on purpose: EXR keeps the full range
    image = torch.tensor(values).reshape(1, 1, 2, 3)
    out = SaveImageAdvanced().run(image, "hdr", "exr", prompt={"p": 1}, extra_pnginfo={"workflow": {"w": 2}},
                                  **{"format.bit_depth": "32-bit float", "format.input_color_space": space})
    entry = out.ui["images"][0]
    assert entry["filename"].endswith(".exr") and entry["type"] == "output"
    path = folders.output_dir / entry["filename"]
    x = np.abs(np.array(values))
    if space == "sRGB":  # IEC 61966-2-1 inverse transfer curve
        expected = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    elif space == "HDR":  # BT.2100 HLG inverse OETF
        a = 0.17883277
        b, c = 1 - 4 * a, 0.5 - a * np.log(4 * a)
        expected = np.where(x <= 0.5, x ** 2 / 3, (np.exp((x - c) / a) + b) / 12)
    else:
        expected = x
    expected = np.sign(values) * expected
    assert np.allclose(_exr_pixels(path)[0], expected, rtol=1e-6, atol=1e-7)
    data = path.read_bytes()
    assert json.loads(_exr_string_attribute(data, "prompt")) == {"p": 1}
    assert json.loads(_exr_string_attribute(data, "workflow")) == {"w": 2}
    with pytest.raises(NodeInputError, match="32-bit float"):
        SaveImageAdvanced().run(image, "x", "exr", **{"format.bit_depth": "16-bit"})


def test_exr_metadata_keeps_every_chunk_readable(folders):
    """Taller than one compressed chunk: every entry of the offset table moves with the header."""
    from genloom.diffusion.exr import exr_bytes

    gradient = torch.linspace(0, 1, 40 * 3 * 4).reshape(40, 3, 4)  # RGBA
    plain, tagged = exr_bytes(gradient, "linear"), exr_bytes(gradient, "linear", {"note": "x" * 50})
    assert len(tagged) == len(plain) + len("note") + 1 + len("string") + 1 + 4 + 50
    (folders.output_dir).mkdir(parents=True, exist_ok=True)
    path = folders.output_dir / "tall.exr"
    path.write_bytes(tagged)
    assert np.allclose(_exr_pixels(path), gradient.numpy())


def test_load_image_output_lists_and_loads_output_files(folders):
    folders.output_dir.mkdir(parents=True)
    Image.fromarray(np.full((3, 4, 3), 200, np.uint8)).save(folders.output_dir / "done.png")
    assert LoadImageOutput.schema().by_name["image"].combo_options() == ["done.png [output]"]
    image, mask = LoadImageOutput().run("done.png [output]")
    assert image.shape == (1, 3, 4, 3) and torch.allclose(image, torch.full_like(image, 200 / 255))
    assert mask.shape == (1, 3, 4) and mask.sum() == 0


def test_websocket_previews_and_compare(folders):
    images = torch.stack([torch.full((2, 3, 3), 0.5), torch.zeros(2, 3, 3)])
    assert SaveImageWebsocket().run(images).ui == {}
    previews = [data for event, data in folders.events if event == "preview"]
    assert len(previews) == 2 and previews[0]["format"] == "PNG"
    assert np.asarray(previews[0]["image"]).tolist()[0][0] == [127, 127, 127]
    ui = ImageCompare().run(image_a=images[:1], image_b=None).ui
    assert len(ui["a_images"]) == 1 and ui["b_images"] == [] and ui["a_images"][0]["type"] == "temp"
    assert (folders.temp_dir / ui["a_images"][0]["filename"]).is_file()
