"""Interrupts that land however a node behaves: a node that never checks is abandoned after the
grace period (the prompt marked interrupted, what ran before kept, the queue goes on); one long model
forward stops within a block; a VAE's decoder blocks check too. Also the router's 405 in the usual
JSON shape, /internal/files as ComfyUI lists it, and SaveImageWebsocket's PNG frames."""

from __future__ import annotations

import io
import struct
import time
import uuid

import numpy as np
import pytest
from PIL import Image

from server_support import InProcessServer, events_of, prompt, running_id, wait_for, write_plugins

# More test nodes, in a plugin module of their own next to server_support's.
LONG_NODES = '''
import time
from genloom.engine.node import Node, Int, Float, Input, Out


class TestLongForward(Node):
    """One forward pass of `blocks` slow blocks (a ModuleList, as a UNet's), never checking itself."""
    category = "testing"
    inputs = [Input("value", "INT"), Int("blocks", 40, min=1, max=1000), Float("seconds", 0.25, min=0, max=10)]
    outputs = [Out("INT")]

    def run(self, value, blocks, seconds):
        import torch
        from genloom.diffusion.models.owner import interruptible

        class Slow(torch.nn.Module):
            def forward(self, x):
                time.sleep(seconds)
                return x + 1

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.blocks = torch.nn.ModuleList(Slow() for _ in range(blocks))

            def forward(self, x):
                for block in self.blocks:
                    x = block(x)
                return x

        net = Net()
        with interruptible(net):
            return (int(net(torch.zeros(1)).item()) + value,)


NODES = [TestLongForward]
'''

GRACE = 1.0


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    base = tmp_path_factory.mktemp("hardening_abandon")
    plugins = write_plugins(base / "plugins")
    (plugins / "long_test_nodes.py").write_text(LONG_NODES)
    server = InProcessServer(base / "data", plugins, interrupt_grace=GRACE)
    yield server
    server.stop()


def _blocked(seconds=30, prefix="abandon"):
    graph = prompt(value=5, prefix=prefix)
    graph["b"] = {"class_type": "TestBlock", "inputs": {"value": ["1", 0], "seconds": seconds}}
    graph["2"]["inputs"]["value"] = ["b", 0]
    graph["s"] = {"class_type": "TestSaveColor", "inputs": {"value": ["1", 0], "prefix": prefix + "_early"}}
    return {k: graph[k] for k in ("1", "s", "b", "2")}  # the engine runs ready nodes in this order


def test_a_node_that_never_checks_is_abandoned_and_the_queue_goes_on(srv):
    cid = uuid.uuid4().hex
    ws = srv.ws(cid)
    try:
        graph = _blocked()
        stuck = srv.http.submit(graph, client_id=cid)
        after = srv.http.submit(prompt(value=7, prefix="after_abandon"), client_id=cid)
        ws.until(lambda m: isinstance(m, dict) and m["type"] == "executing" and m["data"].get("node") == "b")
        assert running_id(srv.http) == stuck
        started = time.monotonic()
        assert srv.http.post("/interrupt", {})[0] == 200
        done = ws.until_done(stuck, timeout=10)
        took = time.monotonic() - started
        assert GRACE <= took < GRACE + 2.0, took  # abandoned after the grace, not after the node's 30 s
        interrupted = next(m["data"] for m in done if isinstance(m, dict) and m["type"] == "execution_interrupted")
        assert interrupted["node_id"] == "b" and interrupted["node_type"] == "TestBlock"
        history = srv.http.wait_history(stuck)
        assert history["status"]["status_str"] == "error"
        assert "execution_interrupted" in [m[0] for m in history["status"]["messages"]]
        # what ran before the stuck node is kept: the early save's picture and its history entry
        assert history["outputs"]["s"]["images"][0]["filename"].startswith("abandon_early")
        job = srv.http.get(f"/api/jobs/{stuck}")[1]
        assert job["status"] == "cancelled"
        # the queue went on at once, while the abandoned node still sleeps
        events = events_of(ws.until_done(after, timeout=10), after)
        assert "execution_success" in events
        assert srv.http.wait_history(after)["status"]["status_str"] == "success"
        assert any(t.is_alive() for t in srv.server.worker.abandoned)
        # the abandoned run sends nothing more, and stores nothing in the cache
        assert not [m for m in list(ws.messages.queue) if isinstance(m, dict)
                    and m["data"].get("prompt_id") == stuck]
    finally:
        ws.close()


def test_an_abandoned_run_leaves_its_late_result_out_of_the_cache(srv):
    graph = _blocked(seconds=GRACE + 1.0, prefix="late")
    stuck = srv.http.submit(graph)
    wait_for(lambda: running_id(srv.http) == stuck)
    time.sleep(0.3)
    srv.http.post("/interrupt", {})
    srv.http.wait_history(stuck)
    time.sleep(1.5)  # the node returns now, into a run that was given up
    rerun = srv.http.submit(graph)
    history = srv.http.wait_history(rerun, timeout=30)
    ran = [m for m in history["status"]["messages"] if m[0] == "execution_cached"][0][1]["nodes"]
    assert "b" not in ran  # not served from the cache: its late result was never stored


def test_interrupt_lands_within_a_second_inside_one_long_forward(srv):
    graph = prompt(value=1, prefix="long")
    graph["f"] = {"class_type": "TestLongForward", "inputs": {"value": ["1", 0], "blocks": 80, "seconds": 0.25}}
    graph["2"]["inputs"]["value"] = ["f", 0]
    pid = srv.http.submit(graph)
    wait_for(lambda: running_id(srv.http) == pid)
    time.sleep(1.0)  # well inside the 20 s forward pass
    started = time.monotonic()
    srv.http.post("/interrupt", {})
    history = srv.http.wait_history(pid, timeout=10)
    took = time.monotonic() - started
    assert took < 1.0, took  # stopped by the next block's check, not abandoned after the grace
    job = srv.http.get(f"/api/jobs/{pid}")[1]
    assert job["status"] == "cancelled" and history["status"]["status_str"] == "error"
    assert not srv.server.worker.abandoned or all(t.name != f"genloom-run-{pid}" for t in srv.server.worker.abandoned)


def test_a_vae_decoder_checks_between_its_up_blocks():
    import torch
    from diffusers import AutoencoderKL

    from genloom.diffusion.models.owner import interruptible
    from genloom.engine import context
    from genloom.engine.errors import Interrupted

    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        layers_per_block=1, norm_num_groups=4)
    ran = []
    for i, block in enumerate(vae.decoder.up_blocks):
        block.register_forward_hook(lambda m, a, out, i=i: ran.append(i) or context.current().interrupt_flag.set())
    ctx = context.RunContext(device_choice="cpu")
    token = context.use(ctx)
    try:
        with torch.no_grad(), interruptible(vae), pytest.raises(Interrupted):
            vae.decode(torch.zeros(1, 4, 4, 4))
    finally:
        context.reset(token)
    assert ran == [0]  # up block 1 checked before it ran
    assert not any(b._forward_pre_hooks for b in vae.decoder.up_blocks)


def test_method_not_allowed_is_json(srv):
    status, body = srv.http.request("DELETE", "/prompt")
    assert status == 405
    assert body["error"]["type"] == "method_not_allowed" and "GET" in body["error"]["message"]


def test_internal_files_lists_names_directly_in_the_folder_newest_first(srv):
    out = srv.config.data_dir / "output"
    (out / "sub").mkdir(exist_ok=True)
    (out / "sub" / "nested.png").write_bytes(b"x")
    (out / "older.png").write_bytes(b"x")
    (out / "newer.png").write_bytes(b"x")
    now = time.time()
    import os

    os.utime(out / "older.png", (now - 100, now - 100))
    os.utime(out / "newer.png", (now + 100, now + 100))
    (out / "link.png").symlink_to(out / "newer.png")
    status, names = srv.http.get("/internal/files/output")
    assert status == 200
    assert names[0] == "newer.png" and names.index("newer.png") < names.index("older.png")
    assert "sub/nested.png" not in names and "nested.png" not in names and "sub" not in names
    assert "link.png" not in names
    status, body = srv.http.get("/internal/files/models")
    assert status == 400


def test_save_image_websocket_sends_png_frames(srv):
    cid = uuid.uuid4().hex
    ws = srv.ws(cid)
    try:
        graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 5, "height": 3, "batch_size": 2,
                                                               "color": 0xFF8001}},
                 "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}}}
        pid = srv.http.submit(graph, client_id=cid)
        frames = [m for m in ws.until_done(pid) if isinstance(m, bytes)]
        assert len(frames) == 2
        for frame in frames:
            assert struct.unpack(">II", frame[:8]) == (1, 2)  # PREVIEW_IMAGE, PNG
            assert frame[8:16] == b"\x89PNG\r\n\x1a\n"
            pixels = np.asarray(Image.open(io.BytesIO(frame[8:])))
            assert pixels.shape == (3, 5, 3) and (pixels == [0xFF, 0x80, 0x01]).all()  # lossless
    finally:
        ws.close()


def test_what_one_client_asks_for_stays_with_that_client(srv):
    import logging

    a, b = uuid.uuid4().hex, uuid.uuid4().hex
    ws_a, ws_b = srv.ws(a), srv.ws(b)
    try:
        # a prompt's events, progress bars and binary previews go to its submitter only
        pid = srv.http.submit(prompt(value=2, steps=2, preview=1, prefix="mine"), client_id=a)
        got_a = ws_a.until_done(pid)
        assert sum(isinstance(m, bytes) for m in got_a) == 2
        assert {"progress", "progress_state", "executed"} <= set(events_of(got_a, pid))
        # live log lines go to the subscriber only, and stop once it has left
        assert srv.http.request("PATCH", "/internal/logs/subscribe", {"clientId": a, "enabled": True})[0] == 200
        logging.getLogger("genloom.server").warning("for a only")
        assert "for a only" in ws_a.until(lambda m: isinstance(m, dict) and m["type"] == "logs")[-1]["data"]["entries"][0]["m"]
        # an empty clientId would reach everyone: refused
        status, body = srv.http.request("PATCH", "/internal/logs/subscribe", {"clientId": "", "enabled": True})
        assert status == 400 and body["error"]["type"] == "invalid_request"
        ws_a.close()
        wait_for(lambda: a not in srv.server.hub.clients)
        assert a not in srv.server.logs.subscribers
        logging.getLogger("genloom.server").warning("after a left")
        done = srv.http.submit(prompt(value=3, prefix="theirs"), client_id=b)
        got_b = ws_b.until_done(done)
        assert not [m for m in got_b if isinstance(m, bytes)]
        assert not [m for m in got_b if isinstance(m, dict) and (m["type"] == "logs" or m["data"].get("prompt_id") == pid)]
    finally:
        ws_b.close()
