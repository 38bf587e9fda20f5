"""A real server process killed with SIGKILL, or stopped with SIGTERM, loses nothing: finished prompts
keep their outputs, pending ones run after the restart, the interrupted one is marked failed."""

from __future__ import annotations

import time

import pytest

from server_support import SubprocessServer, prompt, running_id as _running, wait_for as _wait, write_plugins


def test_kill_9_then_restart_keeps_queue_and_history(tmp_path):
    data, plugins = tmp_path / "data", write_plugins(tmp_path / "plugins")
    first = SubprocessServer(data, plugins)
    try:
        done = first.http.submit(prompt(value=11, prefix="before"))
        before = first.http.wait_history(done)
        busy = first.http.submit(prompt(value=12, steps=1000, delay=0.03, prefix="busy"))
        _wait(lambda: _running(first.http) == busy)
        waiting = [first.http.submit(prompt(value=13 + i, prefix=f"after{i}")) for i in range(2)]
    finally:
        first.kill9()

    second = SubprocessServer(data, plugins)
    try:
        for pid in waiting:
            entry = second.http.wait_history(pid)
            assert entry["status"]["status_str"] == "success"
            assert entry["outputs"]["2"]["images"][0]["filename"].startswith("after")
        history = second.http.get("/history")[1]
        assert history[done]["outputs"] == before["outputs"]
        crashed = history[busy]
        assert crashed["status"]["status_str"] == "error"
        job = second.http.get(f"/api/jobs/{busy}")[1]
        assert job["status"] == "failed"
        assert "stopped while this prompt was running" in job["execution_error"]["exception_message"]
        statuses = {j["id"]: j["status"] for j in second.http.get("/api/jobs")[1]["jobs"]}
        assert statuses == {done: "completed", busy: "failed", waiting[0]: "completed", waiting[1]: "completed"}
        assert second.http.get("/prompt")[1] == {"exec_info": {"queue_remaining": 0}}

        # SIGTERM: the running prompt is interrupted and marked, the pending one stays queued.
        long_id = second.http.submit(prompt(value=20, steps=1000, delay=0.03, prefix="term"))
        _wait(lambda: _running(second.http) == long_id)
        queued = second.http.submit(prompt(value=21, prefix="queued"))
        started = time.monotonic()
        assert second.terminate() == 0
        assert time.monotonic() - started < 10
    except BaseException:
        second.kill9()
        raise

    third = SubprocessServer(data, plugins)
    try:
        assert third.http.wait_history(queued)["status"]["status_str"] == "success"
        job = third.http.get(f"/api/jobs/{long_id}")[1]
        assert job["status"] == "failed" and "server was stopped" in job["execution_error"]["exception_message"]
    finally:
        assert third.terminate() == 0


def test_a_second_server_on_the_same_data_folder_is_refused(tmp_path):
    from genloom.server.store import DataDirInUse, Store

    store = Store(tmp_path / "genloom.db")
    try:
        with pytest.raises(DataDirInUse, match="in use by another genloom server"):
            Store(tmp_path / "genloom.db")
    finally:
        store.close()
    Store(tmp_path / "genloom.db").close()  # free again once the first one closed
