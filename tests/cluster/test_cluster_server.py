"""`genloom serve --ray local --workers 2` on a real local Ray instance: the server API tests' core
(submit, event order, caching on re-submit, previews, failures, per-client events) run unchanged
against it, then what only a cluster does: two prompts at once on two workers, cache affinity, where
prompts run, every worker freed, a worker that cannot load a plugin, and a worker killed mid-prompt."""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from server_support import InProcessServer, events_of, prompt, write_plugins  # noqa: E402
from test_server_api import (test_events_go_only_to_the_submitting_client,  # noqa: E402,F401
                             test_failure_is_reported_and_kept, test_preview_frames_are_binary_jpeg,
                             test_uncached_then_cached_event_order_and_outputs)

# Loads on the server but not on a worker (whose plugin folders live under genloom-<worker>-*/).
WORKER_SHY = '''
if "genloom-genloom-worker" in __file__:
    raise ImportError("this pack refuses to load on a worker")
from genloom.engine.node import Node, Int, Out

class TestShy(Node):
    category = "testing"
    output_node = True
    inputs = [Int("value", 1)]
    outputs = [Out("INT")]

    def run(self, value):
        return (value,)

NODES = [TestShy]
'''


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster")
    plugins = write_plugins(base / "plugins")
    (plugins / "shy_nodes.py").write_text(WORKER_SHY)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    server = None
    try:
        server = InProcessServer(base / "data", plugins, ray="local", workers=2, cpus_per_worker=0.5,
                                 cache="lru:200", max_batch=8)
        _wait_workers(server, 2)
        yield server
    finally:
        if server is not None:
            server.stop()
        ray.shutdown()


def _wait_workers(srv, n, timeout=180):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        devices = srv.http.get("/system_stats")[1]["devices"]
        if sum(d["state"] in ("idle", "running") for d in devices) >= n:
            return devices
        time.sleep(0.2)
    raise AssertionError(f"workers did not start: {devices}")


def _cid():
    return uuid.uuid4().hex


def _running_on(srv) -> dict:
    return {item[1]: item[3].get("genloom_worker") for item in srv.http.get("/queue")[1]["queue_running"]}


def _wait(pred, timeout=60, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_system_stats_lists_every_worker_and_free_reaches_them(srv):
    devices = srv.http.get("/system_stats")[1]["devices"]
    assert sorted(d["worker"] for d in devices) == ["genloom-worker-0", "genloom-worker-1"]
    assert all(d["type"] == "cpu" and d["ram_total"] > 0 and d["pid"] != os.getpid() for d in devices)
    assert len({d["pid"] for d in devices}) == 2
    graph = prompt(value=41, steps=1, prefix="free")
    srv.http.wait_history(srv.http.submit(graph), 60)
    assert srv.http.post("/free", {"unload_models": True, "free_memory": True})[0] == 200
    assert all(not slot.keys for slot in srv.server.worker.slots)
    again = srv.http.wait_history(srv.http.submit(graph), 60)
    cached = [m for m in again["status"]["messages"] if m[0] == "execution_cached"][0][1]["nodes"]
    assert cached == []  # every worker's cache was emptied


def test_two_prompts_run_at_once_on_two_workers(srv):
    cid = _cid()
    ws = srv.ws(cid)
    try:
        a = srv.http.submit(prompt(value=51, steps=60, delay=0.02, prefix="pa"), client_id=cid)
        b = srv.http.submit(prompt(value=52, steps=60, delay=0.02, prefix="pb"), client_id=cid)
        where = _wait(lambda: (lambda r: r if len(r) == 2 else None)(_running_on(srv)), what="both running")
        assert set(where) == {a, b} and len(set(where.values())) == 2
        for pid in (a, b):
            srv.http.wait_history(pid, 60)
        jobs = {p: srv.http.get(f"/api/jobs/{p}")[1] for p in (a, b)}
        (s1, e1), (s2, e2) = [(j["execution_start_time"], j["execution_end_time"]) for j in jobs.values()]
        assert s1 < e2 and s2 < e1  # the runs overlapped
        names = [j["outputs"]["2"]["images"][0]["filename"] for j in jobs.values()]
        assert len(set(names)) == 2
        for pid, value in ((a, 51), (b, 52)):
            image = jobs[pid]["outputs"]["2"]["images"][0]
            status, png = srv.http.get(f"/view?filename={image['filename']}&type=output", raw=True)
            from io import BytesIO

            from PIL import Image
            assert status == 200 and Image.open(BytesIO(png)).getpixel((0, 0)) == (value, 80, 160)
    finally:
        ws.close()


def test_affinity_beats_least_loaded(srv):
    def run(value):
        return srv.http.wait_history(srv.http.submit(prompt(value=value, steps=1, prefix="aff")), 60)

    run(61)  # one worker now holds 61's keys
    slots = srv.server.worker.slots
    holder = max(slots, key=lambda s: len(s.keys))
    holder.load += 10  # the other worker is now far less loaded
    try:
        again = run(61)
    finally:
        holder.load -= 10
    cached = [m for m in again["status"]["messages"] if m[0] == "execution_cached"][0][1]["nodes"]
    assert sorted(cached) == ["1", "2"]


def test_interrupt_reaches_the_worker_running_the_prompt(srv):
    cid = _cid()
    ws = srv.ws(cid)
    try:
        long_id = srv.http.submit(prompt(value=5, steps=500, delay=0.02, prefix="long"), client_id=cid)
        ws.until(lambda m: isinstance(m, dict) and m["type"] == "progress", timeout=60)
        assert srv.http.post("/interrupt", {"prompt_id": "not-the-running-one"})[0] == 200
        assert srv.http.post("/api/interrupt", {"prompt_id": long_id})[0] == 200
        msgs = ws.until_done(long_id, timeout=60)
        interrupted = next(m["data"] for m in msgs if m["type"] == "execution_interrupted")
        assert interrupted["node_id"] == "1" and interrupted["node_type"] == "TestSleep"
        assert srv.http.get(f"/api/jobs/{long_id}")[1]["status"] == "cancelled"

        running = srv.http.submit(prompt(value=6, steps=500, delay=0.02, prefix="long"), client_id=cid)
        _wait(lambda: running in _running_on(srv), what="running")
        assert srv.http.post("/api/jobs/cancel", {"job_ids": [running]})[1]["cancelled"] == [running]
        ws.until_done(running, timeout=60)
        assert srv.http.get(f"/api/jobs/{running}")[1]["status"] == "cancelled"
    finally:
        ws.close()


def test_a_pack_a_worker_cannot_load_is_the_prompts_error(srv):
    pid = srv.http.submit({"1": {"class_type": "TestShy", "inputs": {"value": 1}}})
    history = srv.http.wait_history(pid, 60)
    assert history["status"]["status_str"] == "error"
    error = srv.http.get(f"/api/jobs/{pid}")[1]["execution_error"]
    assert "TestShy" in str(error) and error["worker"].startswith("genloom-worker-")


def test_the_servers_size_limits_hold_on_the_workers(srv):
    """--max-batch 8: a batch made at run time on a worker (RepeatLatentBatch) is refused there too."""
    graph = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
             "2": {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["1", 0], "amount": 8}},
             "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}}
    pid = srv.http.submit(graph)
    history = srv.http.wait_history(pid, 120)
    assert history["status"]["status_str"] == "error"
    error = srv.http.get(f"/api/jobs/{pid}")[1]["execution_error"]
    assert "amount" in str(error) and "--max-batch" in str(error), error


def test_a_killed_worker_requeues_once_then_fails(srv):
    cid = _cid()
    ws = srv.ws(cid)
    try:
        pids = {d["worker"]: d["pid"] for d in srv.http.get("/system_stats")[1]["devices"]}
        pid = srv.http.submit(prompt(value=71, steps=150, delay=0.02, prefix="kill"), client_id=cid)
        first = _wait(lambda: _running_on(srv).get(pid), what="started")
        ws.until(lambda m: isinstance(m, dict) and m["type"] == "progress", timeout=60)
        os.kill(pids[first], signal.SIGKILL)
        requeued = ws.until(lambda m: isinstance(m, dict) and m["type"] == "execution_requeued", timeout=60)[-1]
        assert requeued["data"]["worker"] == first
        history = srv.http.wait_history(pid, 90)
        assert history["status"]["status_str"] == "success"
        assert [m[0] for m in history["status"]["messages"]][:2] == ["execution_requeued", "execution_start"]
        assert history["outputs"]["2"]["images"][0]["filename"].startswith("kill_")

        # The killed worker comes back (Ray restarts it); a prompt whose worker dies twice fails.
        _wait_workers(srv, 2)
        pids = {d["worker"]: d["pid"] for d in srv.http.get("/system_stats")[1]["devices"]}
        twice = srv.http.submit(prompt(value=72, steps=300, delay=0.02, prefix="kill2"), client_id=cid)
        on = _wait(lambda: _running_on(srv).get(twice), what="started")
        os.kill(pids[on], signal.SIGKILL)
        second = _wait(lambda: (lambda w: w if w and w != on else None)(_running_on(srv).get(twice)),
                       what="re-run on the other worker")
        os.kill(pids[second], signal.SIGKILL)
        history = srv.http.wait_history(twice, 90)
        assert history["status"]["status_str"] == "error"
        job = srv.http.get(f"/api/jobs/{twice}")[1]
        assert job["status"] == "failed" and "lost 2 times" in job["execution_error"]["exception_message"]
        assert "execution_error" in events_of(ws.until_done(twice, timeout=60), twice)
    finally:
        ws.close()
