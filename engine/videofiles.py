"""Video containers as formats: the workflow a video carries and what a video file measures.

SaveVideo writes "prompt" and "workflow" as container tags (MP4 with use_metadata_tags, WEBM/Matroska
tags), as ComfyUI does; `read_video_tags` reads them back so a saved video can be run or dropped on the
editor like a PNG. `probe_video` measures a file before anything decodes all of it (uploads, LoadVideo).

PyAV is imported only when a video is actually read: loading JSON workflows never pays for it."""

from __future__ import annotations

import os
from fractions import Fraction

# The first bytes that tell a video container: MP4/MOV ('ftyp' at offset 4), Matroska/WEBM (EBML).
_EBML = b"\x1a\x45\xdf\xa3"


def looks_like_video(head: bytes) -> bool:
    return head[4:8] == b"ftyp" or head[:4] == _EBML


def read_video_tags(path: str | os.PathLike) -> dict[str, str]:
    """The container's tags, names lower-cased (Matroska stores them upper-case); ValueError when the
    file does not open as a video."""
    import av

    try:
        with av.open(os.fspath(path)) as container:
            return {str(k).lower(): str(v) for k, v in container.metadata.items()}
    except (av.error.FFmpegError, OSError) as exc:
        raise ValueError(f"not a readable video: {exc}") from None


def probe_video(source) -> dict:
    """width, height, frames, fps (a Fraction) and duration (s) of a video file path or file object.
    One frame is decoded, so a file that only looks like a video is refused: ValueError says why."""
    import av

    try:
        container = av.open(os.fspath(source) if isinstance(source, (str, os.PathLike)) else source)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise ValueError(f"not a readable video: {exc}") from None
    with container:
        if not container.streams.video:
            raise ValueError("the file has no video stream")
        stream = container.streams.video[0]
        fps = Fraction(stream.average_rate or stream.guessed_rate or 0)
        try:
            first = next(container.decode(stream), None)
        except av.error.FFmpegError as exc:
            raise ValueError(f"the video stream does not decode: {exc}") from None
        if first is None:
            raise ValueError("the video stream holds no frames")
        duration = float(container.duration / av.time_base) if container.duration else 0.0
        if not duration and stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        frames = int(stream.frames or 0)
        if not frames:  # WEBM and some MP4s do not count their frames: estimate from the duration
            frames = max(1, round(duration * float(fps))) if fps else 1
        return {"width": first.width, "height": first.height, "frames": frames,
                "fps": fps if fps else Fraction(1), "duration": duration}
