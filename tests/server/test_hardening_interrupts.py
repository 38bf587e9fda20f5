"""Interrupts land inside long steps: model blocks check before they run (a forward-pre-hook on every
block), tiled passes between tiles; SIGTERM while a node that never checks is running still exits
cleanly, its prompt marked failed, nothing lost."""

from __future__ import annotations

import time

import pytest
import torch

from genloom.engine import context
from genloom.engine.errors import Interrupted
from server_support import SubprocessServer, prompt, running_id, wait_for, write_plugins


class Blocks(torch.nn.Module):
    """Five blocks in a ModuleList (as diffusers' down/up blocks); block 1 raises the interrupt flag."""

    def __init__(self, flag_at: int = 1):
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(5))
        self.ran: list[int] = []
        self.flag_at = flag_at

    def forward(self, x):
        for i, block in enumerate(self.blocks):
            x = block(x)
            self.ran.append(i)
            if i == self.flag_at:
                context.current().interrupt_flag.set()
        return x


@pytest.fixture
def run_context():
    ctx = context.RunContext(device_choice="cpu")
    token = context.use(ctx)
    yield ctx
    context.reset(token)


def test_a_forward_pass_stops_at_the_next_block(run_context):
    from genloom.diffusion.models.owner import interruptible

    net = Blocks()
    with interruptible(net), pytest.raises(Interrupted):
        net(torch.zeros(1, 2))
    assert net.ran == [0, 1]  # blocks 2..4 never ran
    run_context.interrupt_flag.clear()
    net.ran.clear()
    net.flag_at = -1
    net(torch.zeros(1, 2))  # the hooks are gone once outside
    assert net.ran == [0, 1, 2, 3, 4] and not any(b._forward_pre_hooks for b in net.blocks)


def test_model_and_vae_handles_check_inside_their_forward(run_context):
    from genloom.diffusion.models.handles import ModelHandle, VaeHandle

    for handle, attr in ((ModelHandle(unet=Blocks(), scheduler_config={}), "unet"), (VaeHandle(vae=Blocks()), "vae")):
        run_context.interrupt_flag.clear()
        with handle.use("cpu") as module, pytest.raises(Interrupted):
            module(torch.zeros(1, 2))
        assert getattr(handle, attr).ran == [0, 1]


class CountingVae:
    scale_factor = 8

    def __init__(self):
        self.tiles = 0

    def decode(self, latents):
        self.tiles += 1
        context.current().interrupt_flag.set()
        return torch.zeros(latents.shape[0], latents.shape[2] * 8, latents.shape[3] * 8, 3)


def test_tiled_vae_decode_stops_between_tiles(run_context):
    from genloom.diffusion.vae_passes import decode_tiled

    vae = CountingVae()
    with pytest.raises(Interrupted):
        decode_tiled(vae, torch.zeros(1, 4, 64, 64), tile_size=128, overlap=32)
    assert vae.tiles == 1


def test_tiled_upscale_stops_between_tiles(run_context):
    from genloom.diffusion.tiling import run_tiled

    seen = []

    def model(piece):
        seen.append(piece.shape)
        context.current().interrupt_flag.set()
        return piece

    with pytest.raises(Interrupted):
        run_tiled(model, torch.zeros(1, 3, 256, 256), 1, tile=64, overlap=8, device="cpu", progress=None)
    assert len(seen) == 1


def test_sigterm_during_a_node_that_never_checks_exits_cleanly(tmp_path):
    data, plugins = tmp_path / "data", write_plugins(tmp_path / "plugins")
    server = SubprocessServer(data, plugins, "--shutdown-grace", "1")
    try:
        graph = prompt(prefix="blocked")
        graph["b"] = {"class_type": "TestBlock", "inputs": {"value": ["1", 0], "seconds": 60}}
        graph["2"]["inputs"]["value"] = ["b", 0]
        blocked = server.http.submit(graph)
        wait_for(lambda: running_id(server.http) == blocked)
        time.sleep(0.3)  # inside TestBlock's sleep
        started = time.monotonic()
        assert server.terminate(timeout=20) == 0, "".join(server.lines)
        assert time.monotonic() - started < 8
    except BaseException:
        server.kill9()
        raise
    again = SubprocessServer(data, plugins)
    try:
        job = again.http.get(f"/api/jobs/{blocked}")[1]
        assert job["status"] == "failed" and "stopped" in job["execution_error"]["exception_message"]
    finally:
        assert again.terminate() == 0
