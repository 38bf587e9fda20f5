"""Shared by the server tests: a plugin pack of small test nodes, a server on a free loopback port
(in-process thread or a real subprocess), a blocking HTTP client and a websocket recorder."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]

# A plugin pack: loaded through --plugins-dir like any user's pack.
TEST_NODES = '''
import time
from genloom.engine.node import Node, Int, Float, String, Input, Out, NodeOutput
from genloom.engine import context


class TestSleep(Node):
    """Counts steps with a pause between them, reporting progress (and a preview when asked)."""
    category = "testing"
    inputs = [Int("value", 1, min=0, max=1000), Int("steps", 3, min=1, max=1000),
              Float("delay", 0.01, min=0, max=10), Int("preview", 0, min=0, max=1)]
    outputs = [Out("INT")]

    def run(self, value, steps, delay, preview):
        ctx = context.current()
        for i in range(steps):
            time.sleep(delay)
            image = None
            if preview:
                from PIL import Image
                image = Image.new("RGB", (8, 8), (i * 40 % 256, 0, 0))
            ctx.progress(i + 1, steps, preview=image)
        return (value,)


class TestSaveColor(Node):
    """Writes a small PNG whose colour comes from `value` and shows it."""
    category = "testing"
    output_node = True
    inputs = [Input("value", "INT"), String("prefix", "test")]
    outputs = []

    def run(self, value, prefix):
        from PIL import Image
        ctx = context.current()
        out = ctx.folders.output_dir
        out.mkdir(parents=True, exist_ok=True)
        n = len(list(out.glob(prefix + "_*.png")))
        name = f"{prefix}_{n:05}_.png"
        Image.new("RGB", (16, 16), (value % 256, 80, 160)).save(out / name)
        return NodeOutput(ui={"images": [{"filename": name, "subfolder": "", "type": "output"}]})


class TestFail(Node):
    """Always fails, naming its input."""
    category = "testing"
    inputs = [Input("value", "INT")]
    outputs = [Out("INT")]

    def run(self, value):
        raise RuntimeError(f"test failure with value {value}")


class TestBlock(Node):
    """Sleeps without ever checking for an interrupt (a node that cannot be stopped)."""
    category = "testing"
    inputs = [Input("value", "INT"), Float("seconds", 1.0, min=0, max=600)]
    outputs = [Out("INT")]

    def run(self, value, seconds):
        time.sleep(seconds)
        return (value,)


NODES = [TestSleep, TestSaveColor, TestFail, TestBlock]
'''


def write_plugins(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "server_test_nodes.py").write_text(TEST_NODES)
    return folder


def prompt(value=1, steps=1, delay=0.0, prefix="test", fail=False, preview=0) -> dict:
    """Sleep -> (Fail ->) SaveColor, in the API format."""
    graph = {"1": {"class_type": "TestSleep", "inputs": {"value": value, "steps": steps, "delay": delay,
                                                         "preview": preview}},
             "2": {"class_type": "TestSaveColor", "inputs": {"value": ["1", 0], "prefix": prefix}}}
    if fail:
        graph["3"] = {"class_type": "TestFail", "inputs": {"value": ["1", 0]}}
        graph["2"]["inputs"]["value"] = ["3", 0]
    return graph


def wait_for(fn, timeout=20.0):
    """fn()'s first true value, polled until `timeout`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def running_id(http):
    """The id of the prompt a server is running, or None."""
    running = http.get("/queue")[1]["queue_running"]
    return running[0][1] if running else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Http:
    """A tiny blocking client: returns (status, parsed JSON or bytes)."""

    def __init__(self, base: str, headers: dict | None = None):
        self.base, self.headers = base, headers or {}

    def request(self, method, path, body=None, headers=None, raw=False):
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={**self.headers, **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, payload, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            status, payload, ctype = exc.code, exc.read(), exc.headers.get("Content-Type", "")
        if not raw and "json" in ctype:
            return status, json.loads(payload)
        return status, payload

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def submit(self, graph, client_id=None, **extra):
        status, body = self.post("/prompt", {"prompt": graph, "client_id": client_id, **extra})
        assert status == 200, body
        return body["prompt_id"]

    def wait_history(self, prompt_id, timeout=20.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            status, body = self.get(f"/history/{prompt_id}")
            if body:
                return body[prompt_id]
            time.sleep(0.02)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s")


def multipart(fields: dict, file_field: str, filename: str, data: bytes, ctype="image/png") -> tuple[bytes, str]:
    boundary = "genloomtestboundary"
    out = []
    for key, value in fields.items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{filename}"\r\n'
               f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


class WS:
    """Records a websocket's messages on a background thread; tests wait for the ones they need."""

    def __init__(self, url: str, send_flags: bool = True):
        self.url, self.send_flags = url, send_flags
        self.messages: queue.Queue = queue.Queue()
        self.seen: list = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "websocket did not connect"

    def _run(self):
        self._loop.run_until_complete(self._main())

    async def _main(self):
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(self.url) as ws:
                self._ws = ws
                if self.send_flags:
                    await ws.send_str(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": False}}))
                self._ready.set()
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        self.messages.put(json.loads(msg.data))
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        self.messages.put(msg.data)

    def next(self, timeout=10.0):
        item = self.messages.get(timeout=timeout)
        self.seen.append(item)
        return item

    def until(self, pred, timeout=20.0) -> list:
        """Messages up to and including the first one matching `pred`."""
        got, end = [], time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; got {[m if isinstance(m, dict) else '<binary>' for m in got]}")
            try:
                msg = self.next(left)
            except queue.Empty:
                continue
            got.append(msg)
            if pred(msg):
                return got

    def until_done(self, prompt_id, timeout=20.0) -> list:
        return self.until(lambda m: isinstance(m, dict) and m["type"] == "executing"
                          and m["data"].get("node") is None and m["data"].get("prompt_id") == prompt_id, timeout)

    def close(self):
        asyncio.run_coroutine_threadsafe(self._ws.close(), self._loop).result(5)
        self._thread.join(5)


def events_of(messages, prompt_id) -> list[str]:
    return [m["type"] for m in messages if isinstance(m, dict) and m["type"] != "status"
            and m["data"].get("prompt_id") == prompt_id]


def module_server(name: str, **config):
    """A module-scoped `srv` fixture: one in-process server with the test nodes for a test module."""
    import pytest

    @pytest.fixture(scope="module")
    def srv(tmp_path_factory):
        base = tmp_path_factory.mktemp(name)
        server = InProcessServer(base / "data", write_plugins(base / "plugins"), **config)
        yield server
        server.stop()

    return srv


class InProcessServer:
    """A real server on a free loopback port, served by a thread of this process."""

    def __init__(self, data_dir: Path, plugins_dir: Path, **config):
        from genloom.server.app import Config, Server, serve

        self.config = Config(host="127.0.0.1", port=0, data_dir=data_dir, plugins_dirs=[plugins_dir],
                             device="cpu", argv=["genloom", "serve"], **config)
        self.server = Server(self.config)
        ready = threading.Event()
        self.port = None

        def on_ready(port):
            self.port = port
            ready.set()

        def run():
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            self._stop = asyncio.Event()
            self.loop.run_until_complete(serve(self.server, ready=on_ready, stop=self._stop))

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(30), "server did not start"
        self.base = f"http://127.0.0.1:{self.port}"
        self.http = Http(self.base)

    def ws(self, client_id, **kw) -> WS:
        return WS(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}", **kw)

    def stop(self):
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)


class SubprocessServer:
    """`python -m genloom.server.app` as a real process, for restart and signal tests."""

    def __init__(self, data_dir: Path, plugins_dir: Path, *extra: str):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "genloom.server.app", "--port", "0", "--data-dir", str(data_dir),
             "--plugins-dir", str(plugins_dir), "--device", "cpu", "--no-editor", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(data_dir.parent))
        self.lines = []
        end = time.monotonic() + 60
        while time.monotonic() < end:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError("server exited:\n" + "".join(self.lines))
            self.lines.append(line)
            m = re.search(r"serving on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        else:
            raise AssertionError("server did not start:\n" + "".join(self.lines))
        threading.Thread(target=self._drain, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.port}"
        self.http = Http(self.base)

    def _drain(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout=20) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)
