"""Joining a Ray cluster at an address ships genloom's own code to the workers (Ray's `py_modules`):
a separate Ray head whose processes cannot import the installed genloom still runs a worker, which
imports genloom from Ray's runtime resources and makes the picture a single-process run makes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[2]
TXT2IMG = ROOT / "workflows" / "txt2img.json"
RAY = Path(sys.executable).with_name("ray")

# On the head's processes' path: drops the editable install's finder, so genloom is not installed there.
# The same (no) token for the head and the driver, whatever ~/.ray holds.
AUTH = {"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN_PATH": "/nonexistent/ray-auth-token"}
HIDE_GENLOOM = """
import sys
import tempfile
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable___genloom")]
"""

DRIVER = """
import json, sys
import ray
from genloom.cluster.workers import ClusterConfig, connect, start_workers, stop_workers

address, graph_file = sys.argv[1], sys.argv[2]
config = ClusterConfig(address=address, workers=1, cpus_per_worker=1, device="cpu", ship_code=sys.argv[3])
owned = connect(config)
actors = start_workers(config)
try:
    name, actor = actors[0]
    bare = ray.get(ray.remote(lambda: not any(getattr(f, "__module__", "").startswith("__editable___genloom")
                                              for f in sys.meta_path)).remote(), timeout=60)
    info = ray.get(actor.info.remote(), timeout=120)
    got = ray.get(actor.run_headless.remote(json.load(open(graph_file)), None, {}), timeout=120)
finally:
    stop_workers(actors, owned)
for kind, rel, data in got["files"]:
    open(rel, "wb").write(data)
print("RESULT " + json.dumps({"bare": bare, "package": info["package"], "error": got["error"],
                              "files": [rel for _, rel, _ in got["files"]]}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_pids(sid: int) -> list[int]:
    """The processes of one session (the Ray head this test started and everything it spawned)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            pids.append(int(stat.parent.name))
    return pids


@pytest.fixture
def ray_head(tmp_path):
    """A separate Ray head (its own session of processes, its own temp folder); its address."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE_GENLOOM)
    port = _free_port()
    env = {**os.environ, **AUTH, "PYTHONPATH": str(hide)}
    short = tempfile.mkdtemp(prefix="gl-ray-")  # Ray's socket paths must stay under 108 bytes
    log = tmp_path / "head.log"
    with log.open("w") as out:
        head = subprocess.Popen([str(RAY), "start", "--head", "--block", "--num-cpus", "2", "--disable-usage-stats",
                                 "--include-dashboard=false", "--port", str(port), "--node-ip-address", "127.0.0.1",
                                 "--temp-dir", short],
                                env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "Ray runtime started" not in log.read_text():  # --block: it says so, then waits
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        # `ray stop --force` would end every Ray on this machine (other tests' too): end only this one.
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            pass
        for pid in _session_pids(head.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(short, ignore_errors=True)


def _graph(tmp_path) -> Path:
    graph = json.loads(TXT2IMG.read_text())["graph"]
    graph["3"]["inputs"]["steps"] = 2
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(graph))
    return path


def test_a_cluster_at_an_address_gets_genloom_shipped(tmp_path, ray_head):
    from genloom.runtime import Engine

    graph_file = _graph(tmp_path)
    work = tmp_path / "driver"
    work.mkdir()
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(DRIVER), ray_head, str(graph_file), "auto"],
                          cwd=work, env={**os.environ, **AUTH}, capture_output=True, text=True, timeout=120)
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    assert done.returncode == 0 and line, done.stdout[-3000:] + done.stderr[-3000:]
    got = json.loads(line[0][len("RESULT "):])
    assert got["bare"]  # the head's processes cannot import the installed genloom: only the shipped copy serves
    package = Path(got["package"])
    assert "runtime_resources" in package.parts and package.name == "genloom", package
    assert ROOT not in package.parents and package != ROOT
    assert got["error"] is None and len(got["files"]) == 1, got
    print(f"shipped run: {time.monotonic() - started:.1f}s")

    engine = Engine(device="cpu", output_dir=tmp_path / "local")  # the same picture in this process
    result = engine.run(json.loads(graph_file.read_text()))
    here = np.asarray(Image.open(tmp_path / "local" / result.outputs["9"]["images"][0]["filename"]), np.int16)
    there = np.asarray(Image.open(work / got["files"][0]), np.int16)
    assert here.shape == there.shape and np.abs(here - there).max() <= 1


def test_ship_code_is_switchable_and_the_staged_copy_is_the_package_alone():
    from genloom.cluster.workers import ClusterConfig, staged_package
    from genloom.server.app import parse_args

    assert parse_args(["--ray", "auto"]).ship_code == "auto"
    assert parse_args(["--ray", "auto", "--ship-code", "never"]).ship_code == "never"
    wants = {(a, s): ClusterConfig(address=a, ship_code=s).ships_code()
             for a in ("local", "ray://head:10001") for s in ("auto", "always", "never")}
    assert wants == {("local", "auto"): False, ("local", "always"): True, ("local", "never"): False,
                     ("ray://head:10001", "auto"): True, ("ray://head:10001", "always"): True,
                     ("ray://head:10001", "never"): False}
    staged = staged_package()
    assert staged.name == "genloom"
    assert {p.name for p in staged.iterdir()} == {"__init__.py", "cli.py", "runtime.py", "engine", "diffusion",
                                                  "nodes", "compat", "server", "cluster", "models"}
    assert (staged / "diffusion" / "configs").is_dir()
    assert (staged / "models" / "checkpoints" / "genloom-tiny.safetensors").read_bytes() == \
        (ROOT / "models" / "checkpoints" / "genloom-tiny.safetensors").read_bytes()
    assert not [p for p in staged.rglob("*") if p.name == "__pycache__" or p.suffix == ".pyc"]
