"""Video through the server: uploads that must decode (and fit), a saved video in history and
/api/jobs, and /view serving it with its content type and byte ranges (how browsers seek)."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
import pytest

av = pytest.importorskip("av")

from server_support import module_server, multipart  # noqa: E402

srv = module_server("video_server", max_pixels=200_000)


def mp4(width=32, height=32, frames=4) -> bytes:
    """A small h264 file written with PyAV directly (independent of genloom's writer)."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(10))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            pixels = np.full((height, width, 3), i * 40 % 256, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def upload(srv, data, name):
    body, ctype = multipart({}, "image", name, data, "video/mp4")
    return srv.http.post("/upload/image", body, headers={"Content-Type": ctype})


def test_video_upload_is_checked_and_listed_by_load_video(srv):
    status, answer = upload(srv, mp4(), "clip.mp4")
    assert status == 200 and answer["name"] == "clip.mp4"
    _, info = srv.http.get("/object_info/LoadVideo")
    spec = info["LoadVideo"]["input"]["required"]["file"]
    assert "clip.mp4" in spec[0] and spec[1]["video_upload"] is True


def test_a_file_that_only_looks_like_a_video_is_a_400(srv):
    status, answer = upload(srv, b"\x00\x00\x00\x18ftypisom" + b"\x01" * 200, "fake.mp4")
    assert status == 400 and answer["error"]["type"] == "invalid_video"


def test_the_pixel_limit_counts_every_frame_of_a_video(srv):
    status, answer = upload(srv, mp4(64, 64, 60), "long.mp4")  # 245,760 pixels over 60 frames
    assert status == 413 and answer["error"]["type"] == "video_too_large"
    assert "60 frames" in answer["error"]["message"]


def test_saved_video_in_history_jobs_and_view_with_ranges(srv):
    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 4,
                                                          "color": 0x204060}},
             "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 8.0}},
             "3": {"class_type": "SaveVideo", "inputs": {"video": ["2", 0], "filename_prefix": "video/srv",
                                                         "format": "auto", "codec": "auto"}}}
    prompt_id = srv.http.submit(graph)
    entry = srv.http.wait_history(prompt_id, timeout=60)
    ui = entry["outputs"]["3"]
    assert ui["animated"] == [True]
    item = ui["images"][0]
    assert item["filename"].endswith(".mp4") and item["subfolder"] == "video"
    _, jobs = srv.http.get("/api/jobs")
    job = next(j for j in jobs["jobs"] if j["id"] == prompt_id)
    assert job["outputs_count"] == 1 and job["preview_output"]["filename"] == item["filename"]
    query = f"/view?filename={item['filename']}&subfolder=video&type=output"
    status, whole = srv.http.get(query, raw=True)
    assert status == 200
    with av.open(io.BytesIO(whole)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert sum(1 for _ in c.decode(video=0)) == 4
    import urllib.request

    req = urllib.request.Request(srv.base + query, headers={"Range": "bytes=10-109"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 206 and resp.headers["Content-Type"] == "video/mp4"
        assert resp.headers["Content-Range"] == f"bytes 10-109/{len(whole)}"
        assert resp.read() == whole[10:110]
