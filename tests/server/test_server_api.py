"""The HTTP and websocket API against a real server on a loopback port, with test nodes from a plugin
folder: every route, event order, per-client isolation, interrupt, queue/history/jobs."""

from __future__ import annotations

import io
import struct
import time
import uuid

from PIL import Image

from server_support import events_of, module_server, prompt


srv = module_server("server")


def _cid():
    return uuid.uuid4().hex


def test_every_route_answers_at_x_and_api_x(srv):
    for path in ("/object_info", "/system_stats", "/features", "/embeddings", "/models", "/extensions",
                 "/prompt", "/queue", "/history", "/jobs", "/users", "/settings", "/i18n",
                 "/workflow_templates", "/experiment/models", "/object_info/TestSleep", "/models/checkpoints"):
        status, plain = srv.http.get(path)
        status_api, api = srv.http.get("/api" + path)
        assert status == status_api == 200, path
        assert type(plain) is type(api), path
    info = srv.http.get("/api/object_info")[1]
    entry = info["TestSleep"]
    assert entry["input"]["required"]["steps"] == ["INT", {"default": 3, "min": 1, "max": 1000, "step": 1}]
    assert entry["output"] == ["INT"] and entry["category"] == "testing" and entry["output_node"] is False
    assert info["TestSaveColor"]["output_node"] is True
    assert srv.http.get("/object_info/NoSuchNode")[1] == {}
    stats = srv.http.get("/system_stats")[1]
    assert "--disable-api-nodes" in stats["system"]["argv"]
    assert stats["devices"][0]["type"] == "cpu" and stats["system"]["ram_total"] > 0
    assert srv.http.get("/features")[1]["max_upload_size"] == srv.config.max_upload
    assert "checkpoints" in srv.http.get("/models")[1]
    assert srv.http.get("/models/not_a_folder")[0] == 404
    assert srv.http.get("/extensions")[1] == ["/extensions/genloom/first_screen.js"]  # genloom's own
    assert srv.http.get("/users")[1] == {"storage": "server", "migrated": True}
    assert srv.http.post("/users", {"username": "x"})[0] == 400
    assert srv.http.get("/prompt")[1] == {"exec_info": {"queue_remaining": 0}}
    assert srv.http.post("/free", {"unload_models": True, "free_memory": True})[0] == 200


def test_uncached_then_cached_event_order_and_outputs(srv):
    cid = _cid()
    ws = srv.ws(cid)
    try:
        hello = ws.next()
        assert hello["type"] == "status" and hello["data"]["sid"] == cid
        assert ws.next()["type"] == "feature_flags"
        graph = prompt(value=17, steps=2, prefix="order")
        pid = srv.http.submit(graph, client_id=cid)
        msgs = ws.until_done(pid)
        kinds = [t for t in events_of(msgs, pid) if t != "progress_state"]
        assert kinds == ["execution_start", "execution_cached", "executing", "progress", "progress",
                         "executing", "executed", "execution_success", "executing"]
        executing = [m["data"]["node"] for m in msgs if m["type"] == "executing"]
        assert executing == ["1", "2", None]
        states = [m["data"]["nodes"] for m in msgs if m["type"] == "progress_state"]
        assert states and states[-1]["2"]["state"] == "finished"
        executed = next(m["data"] for m in msgs if m["type"] == "executed")
        image = executed["output"]["images"][0]
        assert executed["node"] == "2" and image["type"] == "output"

        status, png = srv.http.get(f"/view?filename={image['filename']}&subfolder=&type=output", raw=True)
        assert status == 200 and Image.open(io.BytesIO(png)).getpixel((0, 0)) == (17, 80, 160)
        status, webp = srv.http.get(f"/api/view?filename={image['filename']}&type=output&preview=webp;50", raw=True)
        assert status == 200 and webp[8:12] == b"WEBP"

        history = srv.http.get(f"/history/{pid}")[1][pid]
        assert history["outputs"] == {"2": executed["output"]}
        assert history["status"]["status_str"] == "success" and history["status"]["completed"]
        assert [m[0] for m in history["status"]["messages"]] == ["execution_start", "execution_cached",
                                                                 "execution_success"]
        assert history["prompt"][1] == pid and history["prompt"][2] == graph and history["prompt"][4] == ["2"]

        again = srv.http.submit(graph, client_id=cid)
        msgs = ws.until_done(again)
        assert [t for t in events_of(msgs, again) if t != "progress_state"] == [
            "execution_start", "execution_cached", "executed", "execution_success", "executing"]
        cached = next(m["data"] for m in msgs if m["type"] == "execution_cached")
        assert sorted(cached["nodes"]) == ["1", "2"]
        assert next(m["data"] for m in msgs if m["type"] == "executed")["output"] == executed["output"]
    finally:
        ws.close()


def test_events_go_only_to_the_submitting_client(srv):
    a, b = _cid(), _cid()
    ws_a, ws_b = srv.ws(a), srv.ws(b)
    try:
        pid = srv.http.submit(prompt(value=3, steps=2, prefix="iso"), client_id=a)
        ws_a.until_done(pid)
        def remaining(n):
            return lambda m: m["type"] == "status" and m["data"]["status"]["exec_info"]["queue_remaining"] == n

        got_b = ws_b.until(remaining(1)) + ws_b.until(remaining(0))  # b hears the queue, not the prompt
        assert {m["type"] for m in got_b} <= {"status", "feature_flags"}
        assert not any(isinstance(m, dict) and m["data"].get("prompt_id") == pid for m in got_b)
        anonymous = srv.http.submit(prompt(value=3, steps=2, prefix="iso"))  # no client_id: everyone hears
        for ws in (ws_a, ws_b):
            assert "execution_success" in events_of(ws.until_done(anonymous), anonymous)
    finally:
        ws_a.close()
        ws_b.close()


def test_preview_frames_are_binary_jpeg(srv):
    cid = _cid()
    ws = srv.ws(cid)
    try:
        pid = srv.http.submit(prompt(value=4, steps=2, preview=1, prefix="preview"), client_id=cid)
        frames = [m for m in ws.until_done(pid) if isinstance(m, bytes)]
        assert len(frames) == 2
        kind, fmt = struct.unpack(">II", frames[0][:8])
        assert (kind, fmt) == (1, 1) and frames[0][8:11] == b"\xff\xd8\xff"
        assert Image.open(io.BytesIO(frames[0][8:])).size == (8, 8)
    finally:
        ws.close()


def test_failure_is_reported_and_kept(srv):
    cid = _cid()
    ws = srv.ws(cid)
    try:
        pid = srv.http.submit(prompt(value=9, fail=True, prefix="fail"), client_id=cid)
        msgs = ws.until_done(pid)
        error = next(m["data"] for m in msgs if m["type"] == "execution_error")
        assert error["node_id"] == "3" and error["node_type"] == "TestFail"
        assert "test failure with value 9" in error["exception_message"] and error["exception_type"] == "RuntimeError"
        history = srv.http.get(f"/history/{pid}")[1][pid]
        assert history["status"]["status_str"] == "error" and not history["status"]["completed"]
        job = srv.http.get(f"/api/jobs/{pid}")[1]
        assert job["status"] == "failed" and job["execution_error"]["node_id"] == "3"
        assert isinstance(job["execution_error"]["traceback"], list)
    finally:
        ws.close()


def _wait_running(srv, pid, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        running = srv.http.get("/queue")[1]["queue_running"]
        if running and running[0][1] == pid:
            return
        time.sleep(0.02)
    raise AssertionError(f"{pid} never started")


def test_interrupt_and_cancel(srv):
    cid = _cid()
    ws = srv.ws(cid)
    try:
        long_id = srv.http.submit(prompt(value=5, steps=500, delay=0.02, prefix="long"), client_id=cid)
        ws.until(lambda m: isinstance(m, dict) and m["type"] == "progress")
        assert srv.http.post("/interrupt", {"prompt_id": "not-the-running-one"})[0] == 200
        time.sleep(0.1)
        assert srv.http.get(f"/api/jobs/{long_id}")[1]["status"] == "in_progress"
        assert srv.http.post("/api/interrupt", {"prompt_id": long_id})[0] == 200
        msgs = ws.until_done(long_id)
        interrupted = next(m["data"] for m in msgs if m["type"] == "execution_interrupted")
        assert interrupted["node_id"] == "1" and interrupted["node_type"] == "TestSleep"
        assert srv.http.get(f"/api/jobs/{long_id}")[1]["status"] == "cancelled"
        assert srv.http.get(f"/history/{long_id}")[1][long_id]["status"]["status_str"] == "error"

        # jobs cancel: a pending job never runs; the running one is interrupted.
        running = srv.http.submit(prompt(value=6, steps=500, delay=0.02, prefix="long"), client_id=cid)
        pending = srv.http.submit(prompt(value=7, steps=1, prefix="never"), client_id=cid)
        _wait_running(srv, running)
        assert srv.http.post(f"/api/jobs/{pending}/cancel")[1]["cancelled"] is True
        assert srv.http.post("/api/jobs/cancel", {"job_ids": [running]})[1]["cancelled"] == [running]
        ws.until_done(running)
        assert srv.http.get(f"/api/jobs/{pending}")[1]["status"] == "cancelled"
        assert srv.http.get(f"/api/jobs/{running}")[1]["status"] == "cancelled"
        assert srv.http.post("/api/jobs/nope/cancel")[0] == 404
        assert srv.http.get("/prompt")[1]["exec_info"]["queue_remaining"] == 0
    finally:
        ws.close()


def test_queue_history_and_jobs_views(srv):
    srv.http.post("/history", {"clear": True})
    cid = _cid()
    ws = srv.ws(cid)
    try:
        blocker = srv.http.submit(prompt(value=8, steps=500, delay=0.02, prefix="block"), client_id=cid)
        _wait_running(srv, blocker)
        later = [srv.http.submit(prompt(value=20 + i, steps=1, prefix=f"q{i}"), client_id=cid) for i in range(3)]
        first = srv.http.submit(prompt(value=30, steps=1, prefix="front"), client_id=cid, front=True)
        queue = srv.http.get("/queue")[1]
        assert [item[1] for item in queue["queue_running"]] == [blocker]
        assert [item[1] for item in queue["queue_pending"]] == [first] + later
        assert srv.http.get("/api/jobs?status=pending&sort_order=asc")[1]["pagination"]["total"] == 4
        srv.http.post("/queue", {"delete": [later[0]]})
        assert [i[1] for i in srv.http.get("/queue")[1]["queue_pending"]] == [first] + later[1:]
        srv.http.post("/interrupt")
        ws.until_done(blocker)
        for pid in [first] + later[1:]:
            srv.http.wait_history(pid)
        assert srv.http.get(f"/history/{later[0]}")[1] == {}

        done_order = [blocker, first] + later[1:]
        history = srv.http.get("/history")[1]
        assert list(history) == done_order
        assert list(srv.http.get("/history?max_items=2")[1]) == done_order[-2:]
        assert list(srv.http.get("/history?max_items=2&offset=1")[1]) == done_order[1:3]
        assert srv.http.get("/history?max_items=x")[0] == 400

        jobs = srv.http.get("/api/jobs?status=completed,cancelled&sort_by=created_at&sort_order=asc&limit=2&offset=1")[1]
        assert [j["id"] for j in jobs["jobs"]] == later[1:]  # by creation: blocker, later..., first
        assert jobs["pagination"] == {"offset": 1, "limit": 2, "total": 4, "has_more": True}
        newest = srv.http.get("/api/jobs?limit=1")[1]["jobs"][0]
        assert newest["id"] == first and newest["outputs_count"] == 1
        assert newest["preview_output"]["nodeId"] == "2" and newest["preview_output"]["mediaType"] == "images"
        detail = srv.http.get(f"/api/jobs/{later[2]}")[1]
        assert detail["workflow"]["prompt"]["1"]["inputs"]["value"] == 22
        assert detail["outputs"]["2"]["images"][0]["filename"].startswith("q2_")
        assert detail["execution_status"]["status_str"] == "success"
        assert srv.http.get("/api/jobs/unknown")[0] == 404
        assert srv.http.get("/api/jobs?status=bogus")[0] == 400
        assert srv.http.get("/api/jobs?limit=-1")[0] == 400

        srv.http.post("/history", {"delete": [first]})
        assert first not in srv.http.get("/history")[1]
        srv.http.post("/history", {"clear": True})
        assert srv.http.get("/history")[1] == {}
    finally:
        ws.close()


def test_bad_prompts_get_clear_400s(srv):
    status, body = srv.http.post("/prompt", {"prompt": {"1": {"class_type": "TestSleep", "inputs": {"steps": 0}}}})
    assert status == 400
    assert body["error"]["type"] == "prompt_no_outputs" or body["node_errors"]
    bad = prompt(value=1)
    bad["1"]["inputs"]["steps"] = 5000
    status, body = srv.http.post("/prompt", {"prompt": bad})
    assert status == 400 and body["error"]["type"] == "prompt_outputs_failed_validation"
    err = body["node_errors"]["2"]["errors"][0] if "2" in body["node_errors"] else body["node_errors"]["1"]["errors"][0]
    assert err["type"] == "value_bigger_than_max" and err["extra_info"]["input_name"] == "steps"
    status, body = srv.http.post("/prompt", {"client_id": "x"})
    assert status == 400 and body["error"]["type"] == "no_prompt"
    assert srv.http.post("/prompt", b"{not json", headers={"Content-Type": "application/json"})[1]["error"]["type"] \
        == "invalid_json"
    assert srv.http.post("/prompt", [1, 2])[0] == 400
    status, body = srv.http.post("/prompt", {"prompt": "/etc/passwd"})
    assert status == 400 and "API-format" in body["error"]["message"] and body["node_errors"] == {}
    assert srv.http.post("/prompt", {"prompt": {"1": {"inputs": {}}}})[0] == 400
    assert srv.http.post("/prompt", {"prompt": prompt(), "client_id": 5})[0] == 400
    assert srv.http.post("/prompt", {"prompt": prompt(), "extra_data": []})[0] == 400
    assert srv.http.post("/queue", {"delete": "all"})[0] == 400
    assert srv.http.post("/interrupt", b"[")[0] == 400
    pid = srv.http.submit(prompt(value=2, prefix="dup"), prompt_id="my-own-id")
    assert pid == "my-own-id"
    assert srv.http.post("/prompt", {"prompt": prompt(), "prompt_id": "my-own-id"})[1]["error"]["type"] \
        == "duplicate_prompt_id"
    srv.http.wait_history(pid)


def test_partial_execution_targets_run_only_those_outputs(srv):
    graph = prompt(value=41, prefix="partA")
    graph["3"] = {"class_type": "TestSaveColor", "inputs": {"value": ["1", 0], "prefix": "partB"}}
    status, body = srv.http.post("/prompt", {"prompt": graph, "partial_execution_targets": ["3"]})
    assert status == 200
    history = srv.http.wait_history(body["prompt_id"])
    assert list(history["outputs"]) == ["3"] and history["prompt"][4] == ["3"]


def test_settings_and_userdata(srv):
    assert srv.http.post("/settings", {"Comfy.TutorialCompleted": True, "A.B": 3})[0] == 200
    assert srv.http.post("/api/settings/A.B", 4)[0] == 200
    settings = srv.http.get("/settings")[1]
    assert settings["Comfy.TutorialCompleted"] is True and settings["A.B"] == 4
    assert srv.http.get("/settings/A.B")[1] == 4
    assert srv.http.post("/settings", b"[1]")[0] == 400

    user = srv.config.data_dir / "user" / "default"
    body = b'{"nodes": []}'
    status, info = srv.http.post("/userdata/workflows%2Fmine.json?overwrite=true&full_info=true", body)
    assert status == 200 and info["path"] == "workflows/mine.json" and info["size"] == len(body)
    assert (user / "workflows" / "mine.json").read_bytes() == body
    assert srv.http.post("/userdata/workflows%2Fmine.json?overwrite=false", body)[0] == 409
    assert srv.http.get("/api/userdata/workflows%2Fmine.json", raw=True) == (200, body)
    listing = srv.http.get("/userdata?dir=workflows&recurse=true&split=false&full_info=true")[1]
    assert [f["path"] for f in listing] == ["mine.json"]
    assert srv.http.get("/userdata?dir=workflows")[1] == ["mine.json"]
    assert srv.http.get("/v2/userdata?path=workflows")[1][0]["name"] == "mine.json"
    assert srv.http.post("/userdata/workflows%2Fmine.json/move/workflows%2Fmoved.json")[0] == 200
    assert (user / "workflows" / "moved.json").is_file() and not (user / "workflows" / "mine.json").exists()
    assert srv.http.request("DELETE", "/userdata/workflows%2Fmoved.json")[0] == 204
    assert srv.http.get("/userdata/workflows%2Fmoved.json")[0] == 404
    assert srv.http.get("/userdata?dir=nope")[0] == 404
    for evil in ("..%2F..%2Fgenloom.db", "%2Fetc%2Fpasswd", "workflows%2F..%2F..%2F..%2Fx"):
        assert srv.http.get(f"/userdata/{evil}")[0] in (400, 403), evil
        assert srv.http.post(f"/userdata/{evil}", b"x")[0] in (400, 403), evil
    assert not (srv.config.data_dir / "x").exists()


def test_internal_routes_and_live_logs(srv):
    import logging

    paths = srv.http.get("/internal/folder_paths")[1]
    assert set(paths) >= {"checkpoints", "loras", "vae"} and all(isinstance(v, list) for v in paths.values())
    (srv.config.data_dir / "input" / "listed.png").write_bytes(b"x")
    assert "listed.png" in srv.http.get("/internal/files/input")[1]
    assert srv.http.get("/internal/files/secrets")[0] == 400
    cid = _cid()
    ws = srv.ws(cid)
    try:
        assert srv.http.request("PATCH", "/internal/logs/subscribe", {"clientId": cid, "enabled": True})[0] == 200
        logging.getLogger("genloom.server").warning("a line for the terminal panel")
        live = ws.until(lambda m: m["type"] == "logs")[-1]["data"]["entries"][0]
        assert "a line for the terminal panel" in live["m"]
        raw = srv.http.get("/internal/logs/raw")[1]
        assert any("a line for the terminal panel" in e["m"] for e in raw["entries"])
        assert srv.http.request("PATCH", "/internal/logs/subscribe", {"enabled": True})[0] == 400
    finally:
        ws.close()


def test_a_node_whose_options_fail_is_left_out_not_fatal(srv):
    from genloom.engine.node import Combo, Node

    def broken():
        raise OSError("models folder unreadable")

    class BrokenOptions(Node):
        """Its option list cannot be computed."""
        inputs = [Combo("choice", broken)]
        outputs = []

    srv.server.engine.registry.register(BrokenOptions, source="test")
    try:
        status, info = srv.http.get("/object_info")
        assert status == 200 and "BrokenOptions" not in info and "TestSleep" in info
        assert srv.http.get("/object_info/BrokenOptions") == (200, {})
    finally:
        del srv.server.engine.registry.nodes["BrokenOptions"]


def test_real_image_nodes_upload_load_scale_save_view(srv):
    """The built-in LoadImage lists the server's input folder, so an upload can be run at once."""
    from server_support import multipart

    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (250, 10, 10)).save(buf, format="PNG")
    body, ctype = multipart({"type": "input"}, "image", "real.png", buf.getvalue())
    assert srv.http.post("/upload/image", body, headers={"Content-Type": ctype})[0] == 200
    info = srv.http.get("/object_info/LoadImage")[1]["LoadImage"]
    assert "real.png" in info["input"]["required"]["image"][0]
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "real.png"}},
             "2": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
                                                           "scale_by": 2.0}},
             "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "real/scaled"}}}
    entry = srv.http.wait_history(srv.http.submit(graph), timeout=60)
    assert entry["status"]["status_str"] == "success", entry["status"]
    image = entry["outputs"]["3"]["images"][0]
    assert image["subfolder"] == "real" and image["type"] == "output"
    status, png = srv.http.get(f"/view?filename={image['filename']}&subfolder=real&type=output", raw=True)
    out = Image.open(io.BytesIO(png))
    assert status == 200 and out.size == (16, 12) and out.convert("RGB").getpixel((3, 3)) == (250, 10, 10)
