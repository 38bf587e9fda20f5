"""Budgets before work: an empty latent, image or mask that cannot fit is refused at validation,
naming the node and its inputs; video frame stacks count every frame; a batch repeated at run time
fails at its input; the pixel limit covers every frame of an animated upload, and LoadImage applies
it before decoding; `genloom run` and `genloom validate` take the server's --max-pixels/--max-batch/
--max-bytes from the one shared implementation."""

from __future__ import annotations

import argparse
import io
import json

import pytest

from genloom.engine import budgets, context
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


def refused(engine, graph, **options) -> dict:
    """Node 1's one validation error under these engine options."""
    saved = dict(engine.options)
    engine.options.update(options)
    try:
        v = engine.validate(graph, ["1"])
    finally:
        engine.options.clear()
        engine.options.update(saved)
    assert v.error is not None
    assert v.node_errors["1"]["class_type"] == graph["1"]["class_type"]  # the message names the node
    (err,) = v.node_errors["1"]["errors"]
    return err


def refusal(engine, graph, **options):
    err = refused(engine, graph, **options)
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


def test_empty_image_and_solid_mask_are_refused_before_they_are_made(engine):
    image = {"1": {"class_type": "EmptyImage", "inputs": {"width": 4096, "height": 4096, "batch_size": 8,
                                                          "color": 0}}}
    err = refused(engine, image, max_pixels=1 << 20)
    assert err["extra_info"]["input_name"] == "width, height, batch_size"
    assert "4096x4096 is 16777216 pixels, over the limit of 1048576" in err["details"]
    # 4096 x 4096 x 8 pictures x 3 channels x 4 bytes = 1536 MiB
    assert "needs 1536 MiB" in refused(engine, image, max_bytes=1 << 30)["details"]
    assert "Value 0 smaller than min of 1" in refused(engine, {"1": {"class_type": "EmptyImage", "inputs": {
        "width": 0, "height": 8, "batch_size": 1, "color": 0}}})["details"]
    mask = {"1": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 8192, "height": 8192}}}
    # one channel: 8192 x 8192 x 4 bytes = 256 MiB
    assert "needs 256 MiB" in refused(engine, mask, max_bytes=100 << 20)["details"]
    assert engine.validate(mask, ["1"]).ok


def test_frame_stacks_count_every_frame():
    ctx = context.RunContext(device_choice="cpu", options={"max_pixels": 1_000_000, "max_bytes": 64 << 20})
    token = context.use(ctx)
    try:
        # 640 x 480 x 5 frames = 1,536,000 pixels: over a million, though one frame is not
        assert budgets.image_batch_problem(640, 480, 1) is None
        assert "x length 5 is 1536000 pixels" in budgets.image_batch_problem(640, 480, 1, frames=5)
        ctx.options["max_pixels"] = 10**8
        # 320 x 240 x 3 x 4 bytes = 0.88 MiB a frame; 2 videos of 40 frames = 70 MiB > 64 MiB
        message = budgets.image_batch_problem(320, 240, 2, frames=40)
        assert "2 x 40 frames of 320x240 needs 70 MiB" in message
        assert budgets.image_batch_problem(320, 240, 2, frames=30) is None
        assert "needs 128 MiB" in budgets.tensor_problem((8, 1024, 1024, 4), "a batch")
        # a video latent node's validate: its declared ranges, then every frame counted
        from genloom.engine.node import Int

        specs = [Int("width", 64, min=16, max=4096), Int("height", 64, min=16, max=4096), Int("length", 1, min=1),
                 Int("batch_size", 1, min=1)]
        video = {"width": 320, "height": 240, "length": 40, "batch_size": 2}
        assert "70 MiB" in budgets.declared_size(specs, video, frames="length")
        assert budgets.declared_size(specs, {**video, "length": 30}, frames="length") is True
        assert "smaller than min of 1" in budgets.declared_size(specs, {**video, "length": 0}, frames="length")
        ctx.options["max_batch"] = 4
        assert "would hold 8 entries, over the limit of 4" in budgets.tensor_problem((8, 2, 2, 3), "a batch")
    finally:
        context.reset(token)


def test_a_batch_repeated_past_the_budget_fails_at_its_input(engine):
    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 2, "color": 0}},
             "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 100}},
             "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}
    saved = dict(engine.options)
    engine.options["max_bytes"] = 4 << 20  # 200 x 64 x 64 x 3 x 4 bytes = 9.4 MiB
    try:
        with pytest.raises(ExecutionError) as info:
            engine.run(graph)
    finally:
        engine.options.clear()
        engine.options.update(saved)
    payload = info.value.payload
    assert payload["node_id"] == "2" and payload["input_name"] == "amount"
    assert "the repeated batch (200x64x64x3) needs 9 MiB" in payload["exception_message"]


def test_cuda_memory_is_none_off_cuda():
    token = context.use(context.RunContext(device_choice="cpu"))
    try:
        assert budgets.cuda_memory() is None
    finally:
        context.reset(token)


def _limit_flags(parser) -> dict:
    return {a.dest: (a.default, a.type) for a in parser._actions if a.dest.startswith("max_")}


def test_run_and_serve_share_the_limit_flags(tmp_path, capsys):
    from genloom.cli import build_parser, main
    from genloom.server.app import parse_args

    expected = argparse.ArgumentParser()
    budgets.add_limit_arguments(expected)
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    assert _limit_flags(run) == _limit_flags(expected)
    served = parse_args(["--max-pixels", "5000", "--max-batch", "3", "--max-bytes", "2MB"])
    assert budgets.limit_options(served) == {"max_pixels": 5000, "max_batch": 3, "max_bytes": 2 << 20}

    workflow = tmp_path / "image.json"
    workflow.write_text(json.dumps({"1": {"class_type": "EmptyImage",
                                          "inputs": {"width": 512, "height": 512, "batch_size": 1, "color": 0}},
                                    "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}))
    assert main(["validate", str(workflow)]) == 0
    assert main(["validate", str(workflow), "--max-pixels", "100000"]) == 1
    assert "512x512 is 262144 pixels, over the limit of 100000 (--max-pixels)" in capsys.readouterr().err
    assert main(["run", str(workflow), "--device", "cpu", "--max-bytes", "1MB",
                 "--output-dir", str(tmp_path / "out")]) == 1
    assert "needs 3 MiB as images, over the 1 MiB of --max-bytes" in capsys.readouterr().err
