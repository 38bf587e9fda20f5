"""Video nodes: frames -> VIDEO -> MP4/WEBM -> VIDEO -> frames, checked by decoding the files with PyAV
directly (frame count, rate, size, tags) and by pixel and audio arithmetic within the codecs'
tolerance; a saved video carries its workflow back into load_workflow."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
av = pytest.importorskip("av")

import genloom  # noqa: E402
from genloom.engine import context  # noqa: E402
from genloom.engine.errors import NodeInputError  # noqa: E402
from genloom.engine.folders import Folders  # noqa: E402
from genloom.engine.workflow import load_workflow  # noqa: E402
from genloom.nodes.video import CreateVideo, GetVideoComponents, LoadVideo, SaveVideo, SaveWEBM  # noqa: E402


@pytest.fixture
def folders(tmp_path):
    f = Folders(models_dirs=[tmp_path / "models"], input_dir=tmp_path / "input",
                output_dir=tmp_path / "output", temp_dir=tmp_path / "temp")
    f.input_dir.mkdir(parents=True)
    token = context.use(context.RunContext(device_choice="cpu", folders=f))
    yield f
    context.reset(token)


def _frames(t=6, h=32, w=48):
    """Smooth moving gradients: what a lossy codec keeps within a few levels."""
    y = torch.linspace(0, 1, h).reshape(1, h, 1, 1)
    x = torch.linspace(0, 1, w).reshape(1, 1, w, 1)
    k = torch.arange(t).reshape(t, 1, 1, 1) / t
    shape = (t, h, w, 1)
    return torch.cat([(0.5 + 0.35 * torch.sin(2 * math.pi * (x + k))).expand(shape),
                      (y * 0.8 + 0.1).expand(shape), ((1 - x) * 0.5 + k * 0.3).expand(shape)], dim=-1)


def _decode_direct(path):
    """Frames, rate and tags read with PyAV itself (the reference for what the nodes wrote)."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
        return np.stack(frames), stream.average_rate, {k.lower(): v for k, v in c.metadata.items()}, \
            stream.codec_context.name


def test_save_video_writes_h264_with_the_workflow_in_its_tags(folders):
    frames = _frames()
    (video,) = CreateVideo().run(frames, 12.0)
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {}}}
    ui = SaveVideo().run(video, "video/clip", "auto", "auto", prompt=prompt,
                         extra_pnginfo={"workflow": {"nodes": [], "links": []}}).ui
    assert ui["animated"] == (True,)
    entry = ui["images"][0]
    assert entry["subfolder"] == "video" and entry["filename"] == "clip_00001_.mp4"
    pixels, rate, tags, codec = _decode_direct(folders.output_dir / "video" / entry["filename"])
    assert codec == "h264" and rate == 12 and pixels.shape == (6, 32, 48, 3)
    expected = np.clip(255 * frames.numpy(), 0, 255)
    assert np.abs(pixels.astype(np.float32) - expected).mean() < 6.0  # lossy (yuv420p, crf 23)
    assert json.loads(tags["prompt"]) == prompt
    assert json.loads(tags["workflow"]) == {"nodes": [], "links": []}
    # A second save does not overwrite the first.
    again = SaveVideo().run(video, "video/clip", "mp4", "h264").ui["images"][0]
    assert again["filename"] == "clip_00002_.mp4"


def test_load_video_round_trip_keeps_frames_rate_and_audio(folders):
    frames = _frames(t=8)
    rate = 16000
    t = torch.arange(rate) / rate
    wave = torch.stack([torch.sin(2 * math.pi * 440 * t), 0.5 * torch.sin(2 * math.pi * 220 * t)])[None] * 0.5
    (video,) = CreateVideo().run(frames, 24.0, {"waveform": wave, "sample_rate": rate})
    entry = SaveVideo().run(video, "clip", "auto", "auto").ui["images"][0]
    shutil.copy(folders.output_dir / entry["filename"], folders.input_dir / "clip.mp4")
    (loaded,) = LoadVideo().run("clip.mp4")
    assert loaded.get_dimensions() == (48, 32) and loaded.get_frame_count() == 8
    assert loaded.get_frame_rate() == 24 and loaded.get_duration() == pytest.approx(8 / 24, abs=0.05)
    images, audio, fps = GetVideoComponents().run(loaded)
    assert images.shape == (8, 32, 48, 3) and fps == 24.0
    assert (images - frames).abs().mean() < 6.0 / 255
    got = audio["waveform"][0]
    assert audio["sample_rate"] == rate and got.shape[0] == 2 and got.shape[1] >= rate
    # aac delays the signal by its priming samples: compare the spectra, not sample by sample.
    for channel, tone in ((0, 440), (1, 220)):
        spectrum = np.abs(np.fft.rfft(got[channel, :rate].numpy()))
        assert abs(int(np.argmax(spectrum)) - tone) <= 1


def test_create_and_get_components_keep_the_frames_exactly(folders):
    frames = _frames(t=3)
    (video,) = CreateVideo().run(frames, 30.0)
    images, audio, fps = GetVideoComponents().run(video)
    assert torch.equal(images, frames) and audio is None and fps == 30.0


@pytest.mark.parametrize("codec, name", [("vp9", "vp9"), ("av1", "libsvtav1")])
def test_save_webm(folders, codec, name):
    frames = _frames(t=4)
    entry = SaveWEBM().run(frames, "web", codec, 8.0, 20.0, prompt={"a": 1}).ui["images"][0]
    assert entry["filename"].endswith(".webm")
    pixels, rate, tags, found = _decode_direct(folders.output_dir / entry["filename"])
    assert pixels.shape == (4, 32, 48, 3) and rate == 8
    assert found in (name, codec, "libdav1d", "av1", "libvpx-vp9")
    assert np.abs(pixels.astype(np.float32) - 255 * frames.numpy()).mean() < 6.0
    assert json.loads(tags["prompt"]) == {"a": 1}


def test_odd_sizes_are_padded_to_even(folders):
    frames = _frames(t=2, h=31, w=45)
    (video,) = CreateVideo().run(frames, 10.0)
    entry = SaveVideo().run(video, "odd", "auto", "auto").ui["images"][0]
    pixels, *_ = _decode_direct(folders.output_dir / entry["filename"])
    assert pixels.shape == (2, 32, 46, 3)
    assert np.abs(pixels[:, 31].astype(np.float32) - pixels[:, 30]).mean() < 4.0  # the edge repeated


def test_load_video_refuses_bad_files_naming_the_input(folders):
    (folders.input_dir / "fake.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64)
    with pytest.raises(NodeInputError) as err:
        LoadVideo().run("fake.mp4")
    assert err.value.input_name == "file" and "video" in str(err.value)
    assert "not in the input folder" in LoadVideo.validate("missing.mp4")
    assert LoadVideo.validate("../outside.mp4") is not True


def test_load_video_checks_the_budget_before_decoding(folders):
    (video,) = CreateVideo().run(_frames(t=5), 10.0)
    entry = SaveVideo().run(video, "big", "auto", "auto").ui["images"][0]
    shutil.copy(folders.output_dir / entry["filename"], folders.input_dir / "big.mp4")
    ctx = context.RunContext(device_choice="cpu", folders=folders, options={"max_batch": 4})
    token = context.use(ctx)
    try:
        with pytest.raises(NodeInputError) as err:
            LoadVideo().run("big.mp4")
    finally:
        context.reset(token)
    assert err.value.input_name == "file" and "frames 5" in str(err.value)


def test_a_saved_video_runs_again_from_its_tags(tmp_path):
    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 3,
                                                          "color": 0x336699}},
             "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 6.0}},
             "3": {"class_type": "SaveVideo", "inputs": {"video": ["2", 0], "filename_prefix": "again",
                                                         "format": "auto", "codec": "auto"}}}
    engine = genloom.Engine(output_dir=tmp_path / "out", input_dir=tmp_path / "in", device="cpu")
    result = engine.run(graph)
    entry = result.outputs["3"]["images"][0]
    path = tmp_path / "out" / entry["filename"]
    pixels, rate, _tags, _codec = _decode_direct(path)
    assert pixels.shape == (3, 16, 16, 3) and rate == 6
    assert np.abs(pixels.astype(np.float32) - np.array([0x33, 0x66, 0x99])).max() <= 3
    restored = load_workflow(path)
    assert restored.format == "video" and restored.graph == graph
