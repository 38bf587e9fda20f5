"""Budgets before work: an empty latent batch that cannot fit is refused at validation, naming the
node and its inputs; the pixel limit covers every frame of an animated upload, and LoadImage applies
it before decoding."""

from __future__ import annotations

import io

import pytest

from genloom.engine.errors import ExecutionError
from server_support import module_server, multipart

srv = module_server("hardening_budgets", max_pixels=200_000)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from genloom import Engine

    base = tmp_path_factory.mktemp("budgets")
    return Engine(device="cpu", input_dir=base / "input", output_dir=base / "output", temp_dir=base / "temp")


def latent(width, height, batch):
    return {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height,
                                                               "batch_size": batch}}}


def refusal(engine, graph, **options):
    saved = dict(engine.options)
    engine.options.update(options)
    try:
        v = engine.validate(graph, ["1"])
    finally:
        engine.options.clear()
        engine.options.update(saved)
    assert v.error is not None
    (err,) = v.node_errors["1"]["errors"]
    assert v.node_errors["1"]["class_type"] == "EmptyLatentImage"
    assert err["extra_info"]["input_name"] == "width, height, batch_size"
    return err["details"]


def test_a_16384_square_latent_is_refused_at_validation(engine):
    details = refusal(engine, latent(16384, 16384, 1))
    assert "16384x16384" in details and "--max-pixels" in details
    assert engine.validate(latent(512, 512, 1), ["1"]).ok


def test_batch_and_byte_limits(engine):
    assert "batch_size 8 is over the limit of 4" in refusal(engine, latent(64, 64, 8), max_batch=4)
    # 512 x 512 x 2 pictures x 3 channels x 4 bytes = 6 MiB, over a 1 MiB budget
    assert "needs 6 MiB" in refusal(engine, latent(512, 512, 2), max_bytes=1 << 20)
    assert engine.validate(latent(512, 512, 2), ["1"]).ok


def test_declared_ranges_still_hold(engine):
    assert "Value 8 smaller than min of 16" in refusal(engine, latent(8, 64, 1))
    assert "Value 5000 bigger than max of 4096" in refusal(engine, latent(64, 64, 5000))


def gif(size, frames) -> bytes:
    from PIL import Image

    pictures = [Image.new("RGB", size, (i * 6 % 256, 255 - i * 6 % 256, 0)) for i in range(frames)]
    buf = io.BytesIO()
    pictures[0].save(buf, format="GIF", save_all=True, append_images=pictures[1:], duration=10, loop=0)
    return buf.getvalue()


def test_the_upload_pixel_limit_counts_every_frame(srv):
    small = gif((100, 100), 19)  # 190,000 pixels in all: under the 200,000 limit
    body, ctype = multipart({}, "image", "ok.gif", small, "image/gif")
    assert srv.http.post("/upload/image", body, headers={"Content-Type": ctype})[0] == 200
    many = gif((100, 100), 40)  # each frame is small; 400,000 pixels in all
    assert len(many) < 10_000
    body, ctype = multipart({}, "image", "many.gif", many, "image/gif")
    status, answer = srv.http.post("/upload/image", body, headers={"Content-Type": ctype})
    assert status == 413 and answer["error"]["type"] == "image_too_large"
    assert "40 frames" in answer["error"]["message"]


def test_load_image_applies_the_limit_before_decoding(engine):
    from genloom.diffusion.images import PictureTooLarge, load_picture

    path = engine.folders.input_dir / "frames.gif"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gif((100, 100), 40))
    image, mask = load_picture(path, max_pixels=400_000)
    assert tuple(image.shape) == (40, 100, 100, 3) and tuple(mask.shape) == (40, 100, 100)
    with pytest.raises(PictureTooLarge, match="100x100 x 40 frames"):
        load_picture(path, max_pixels=399_999)
    engine.options["max_pixels"] = 100_000
    try:
        with pytest.raises(ExecutionError) as info:
            engine.run({"1": {"class_type": "LoadImage", "inputs": {"image": "frames.gif"}}}, outputs=["1"])
    finally:
        del engine.options["max_pixels"]
    payload = info.value.payload
    assert payload["node_type"] == "LoadImage" and "over the limit of 100000" in payload["exception_message"]
