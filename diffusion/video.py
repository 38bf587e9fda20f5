"""VIDEO values and video files, through PyAV (its wheels bundle FFmpeg: x264, libvpx, SVT-AV1, aac).

A VIDEO is what ComfyUI's video nodes pass: frames [T, H, W, 3] float 0..1, an optional AUDIO
({"waveform": [B, C, S], "sample_rate"}) and a frame rate. `Video` answers the methods ComfyUI's
VideoInput has (get_components, get_dimensions, get_frame_count, get_frame_rate, get_duration,
save_to), so a node pack that receives one works unchanged. A video loaded from a file is decoded
only when its frames are asked for, and once.

Files are written as ComfyUI writes them: h264 yuv420p in MP4 (aac audio) with "prompt" and each
extra_pnginfo key as JSON container tags, or VP9 / AV1 in WEBM. yuv420p needs even sizes: an odd
width or height is padded by repeating the last column or row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from genloom.diffusion.errors import VideoError

CONTAINERS = ["auto", "mp4"]
CODECS = ["auto", "h264"]
WEBM_CODECS = {"vp9": ("libvpx-vp9", "yuv420p"), "av1": ("libsvtav1", "yuv420p10le")}
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")


@dataclass(frozen=True, eq=False)
class VideoComponents:
    images: Any  # [T, H, W, 3] float32 0..1
    frame_rate: Fraction
    audio: dict | None = None


def frame_rate(fps) -> Fraction:
    """A frame rate as the containers store it: fps to a thousandth (29.97 -> 29970/1000)."""
    if isinstance(fps, Fraction):
        return fps
    fps = float(fps)
    if not fps > 0:
        raise VideoError(f"a frame rate must be positive, not {fps}")
    return Fraction(round(fps * 1000), 1000)


class Video:
    """A VIDEO: components in memory, or a file decoded on first use."""

    def __init__(self, components: VideoComponents | None = None, path: Path | None = None):
        if (components is None) == (path is None):
            raise ValueError("a Video is made from components or from a file, not both")
        self._components, self.path = components, (Path(path) if path is not None else None)
        self._probe: dict | None = None

    @classmethod
    def from_components(cls, images, fps, audio: dict | None = None) -> "Video":
        if images.ndim != 4 or images.shape[-1] not in (3, 4) or images.shape[0] < 1:
            raise VideoError(f"video frames are [frames, height, width, 3], got {tuple(images.shape)}")
        return cls(VideoComponents(images[..., :3], frame_rate(fps), audio))

    @classmethod
    def from_file(cls, path) -> "Video":
        return cls(path=Path(path))

    # --- ComfyUI's VideoInput surface ---

    def get_components(self) -> VideoComponents:
        if self._components is None:
            self._components = decode(self.path)
        return self._components

    def get_dimensions(self) -> tuple[int, int]:
        if self._components is not None:
            _t, h, w, _c = self._components.images.shape
            return int(w), int(h)
        info = self._info()
        return info["width"], info["height"]

    def get_frame_count(self) -> int:
        if self._components is not None:
            return int(self._components.images.shape[0])
        return self._info()["frames"]

    def get_frame_rate(self) -> Fraction:
        return self._components.frame_rate if self._components is not None else self._info()["fps"]

    def get_duration(self) -> float:
        return float(self.get_frame_count() / self.get_frame_rate())

    def get_stream_source(self):
        """The file it was read from (ComfyUI returns a path or a BytesIO); None when in memory."""
        return str(self.path) if self.path is not None else None

    def save_to(self, path, format: str = "auto", codec: str = "auto", metadata: dict | None = None) -> None:
        with open(path, "wb") as fh:
            write_mp4(fh, self.get_components(), metadata)

    def _info(self) -> dict:
        if self._probe is None:
            self._probe = probe(self.path)
        return self._probe


def _open(source, **kwargs):
    import av

    try:
        return av.open(str(source) if isinstance(source, Path) else source, **kwargs)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(f"{getattr(source, 'name', 'the file')} is not a readable video: {exc}") from None


def probe(path: Path) -> dict:
    """What the file measures (engine.videofiles.probe_video), as a VideoError when it is no video."""
    from genloom.engine.videofiles import probe_video

    try:
        return probe_video(path)
    except ValueError as exc:
        raise VideoError(f"{Path(path).name}: {exc}") from None


def decode(path: Path) -> VideoComponents:
    """Every frame as float 0..1 RGB, and the first audio stream as a waveform [1, C, S]."""
    import numpy as np
    import torch

    from genloom.engine import context

    ctx = context.current()
    with _open(path) as container:
        if not container.streams.video:
            raise VideoError(f"{path.name} has no video stream")
        stream = container.streams.video[0]
        fps = Fraction(stream.average_rate or stream.guessed_rate or 1)
        frames = []
        for frame in container.decode(stream):
            ctx.check_interrupt()
            frames.append(frame.to_ndarray(format="rgb24"))
        if not frames:
            raise VideoError(f"{path.name} holds no video frames")
    audio = _decode_audio(path)
    images = torch.from_numpy(np.stack(frames)).float() / 255.0
    return VideoComponents(images, fps, audio)


def _decode_audio(path: Path) -> dict | None:
    import numpy as np
    import torch

    with _open(path) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        chunks = []
        for frame in container.decode(stream):
            data = frame.to_ndarray()
            if not frame.format.is_planar:  # interleaved [1, S * C] -> [C, S]
                data = data.reshape(-1, len(frame.layout.channels)).T
            chunks.append(data.astype(np.float32) / (32768.0 if data.dtype == np.int16 else 1.0))
        if not chunks:
            return None
        wave = torch.from_numpy(np.concatenate(chunks, axis=1)).unsqueeze(0)
        return {"waveform": wave, "sample_rate": int(stream.rate)}


def _rgb24(images):
    """uint8 frames [T, H, W, 3] as ComfyUI writes them (clip(255 x), truncated), padded to even."""
    import numpy as np

    pixels = np.clip(255.0 * images[..., :3].detach().float().cpu().numpy(), 0, 255).astype(np.uint8)
    _t, h, w, _c = pixels.shape
    if h % 2 or w % 2:
        pixels = np.pad(pixels, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return pixels


def _tag(container, metadata: dict | None) -> None:
    for key, value in (metadata or {}).items():
        container.metadata[str(key)] = json.dumps(value)


def _encode_frames(container, stream, pixels, check) -> None:
    import av

    for frame in pixels:
        check()
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_mp4(fh, video: VideoComponents, metadata: dict | None = None) -> None:
    """h264 yuv420p MP4 (+ aac when the video has audio), tags readable by `read_tags`."""
    from genloom.engine import context

    pixels = _rgb24(video.images)
    container = _open(fh, mode="w", format="mp4", options={"movflags": "use_metadata_tags"})
    try:
        _tag(container, metadata)
        stream = container.add_stream("libx264", rate=video.frame_rate)
        stream.height, stream.width = pixels.shape[1:3]
        stream.pix_fmt = "yuv420p"
        audio = _audio_stream(container, video.audio)
        _encode_frames(container, stream, pixels, context.current().check_interrupt)
        if audio is not None:
            _encode_audio(container, *audio)
    finally:
        container.close()


def write_webm(fh, images, fps, codec: str, crf: float, metadata: dict | None = None) -> None:
    import os

    from genloom.engine import context

    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner on every file otherwise

    name, pix_fmt = WEBM_CODECS[codec]
    pixels = _rgb24(images)
    container = _open(fh, mode="w", format="webm")
    try:
        _tag(container, metadata)
        stream = container.add_stream(name, rate=frame_rate(fps))
        stream.height, stream.width = pixels.shape[1:3]
        stream.pix_fmt = pix_fmt
        stream.bit_rate = 0
        stream.options = {"crf": str(int(crf))} | ({"preset": "6"} if codec == "av1" else {})
        _encode_frames(container, stream, pixels, context.current().check_interrupt)
    finally:
        container.close()


def _audio_stream(container, audio: dict | None):
    if not audio or audio.get("waveform") is None:
        return None
    wave = audio["waveform"]
    wave = wave[0] if wave.ndim == 3 else wave  # [C, S] of the first batch item
    channels = int(wave.shape[0])
    if channels not in (1, 2):
        raise VideoError(f"audio with {channels} channels cannot be written; mono or stereo only")
    rate = int(audio["sample_rate"])
    stream = container.add_stream("aac", rate=rate)
    stream.layout = "mono" if channels == 1 else "stereo"
    return stream, wave.detach().float().cpu().numpy(), rate


def _encode_audio(container, stream, wave, rate: int) -> None:
    """The waveform in frames of the encoder's size (aac takes 1024 samples a frame)."""
    import av
    import numpy as np

    size = stream.codec_context.frame_size or 1024
    layout = "mono" if wave.shape[0] == 1 else "stereo"
    for start in range(0, wave.shape[1], size):
        chunk = np.ascontiguousarray(wave[:, start:start + size], dtype=np.float32)
        if chunk.shape[1] < size:
            chunk = np.pad(chunk, ((0, 0), (0, size - chunk.shape[1])))
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
