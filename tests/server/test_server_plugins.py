"""ComfyUI node packs behind the real server: routes a pack registers (behind the token check),
send_sync reaching the editor's websocket, on-prompt handlers, GET /extensions and the extension
files, V3 packs run through POST /prompt."""

from __future__ import annotations

import shutil
import sys
import uuid
from pathlib import Path

import pytest

from server_support import WS, Http, InProcessServer

FIXTURES = Path(__file__).resolve().parents[1] / "plugins_fixtures"
TOKEN = "plugin-test-token-long-enough"


@pytest.fixture(scope="module")
def packs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugin_packs") / "custom_nodes"
    # The packs that fail to import come too: the server starts and serves the others.
    shutil.copytree(FIXTURES, folder, ignore=shutil.ignore_patterns("__pycache__", "README.md"))
    return folder


@pytest.fixture(scope="module")
def srv(packs, tmp_path_factory):
    server = InProcessServer(tmp_path_factory.mktemp("plugin_server") / "data", packs, token=TOKEN)
    server.http = Http(server.base, {"Authorization": f"Bearer {TOKEN}"})
    yield server
    server.stop()


def test_broken_packs_do_not_stop_the_server(srv):
    packs = srv.server.engine.registry.packs
    assert {n for n, p in packs.items() if p["error"]} == {"missing_cv2_pack", "missing_req_pack"}
    assert "ServicesCount" in srv.http.get("/object_info")[1]


def test_pack_routes_are_served_behind_the_token(srv):
    status, body = srv.http.get("/services_pack/hello?name=genloom")
    assert status == 200 and body["hello"] == "genloom" and "genloom-tiny.safetensors" in body["checkpoints"]
    assert srv.http.post("/api/services_pack/echo", {"a": [1, 2]}) == (200, {"echo": {"a": [1, 2]}})
    assert srv.http.get("/services_pack/direct") == (200, b"added to the app's router at import")
    status, body = Http(srv.base).get("/services_pack/hello")
    assert status == 401 and "token" in body["error"]["message"]
    status, _ = srv.http.get("/services_pack/hello", headers={"Origin": "http://evil.example"})
    assert status == 403


def test_extensions_are_listed_and_served(srv):
    status, listed = srv.http.get("/extensions")
    assert status == 200 and "/extensions/web_pack/js/web_pack.js" in listed
    assert not any("style.css" in url or "missing" in url for url in listed)  # scripts of loaded packs only
    status, script = srv.http.get("/extensions/web_pack/js/web_pack.js")
    assert status == 200 and b"genloomWebPack" in script
    assert srv.http.get("/api/extensions/web_pack/style.css")[0] == 200
    assert srv.http.get("/extensions/web_pack/%2e%2e/__init__.py")[0] in (403, 404)
    assert srv.http.get("/extensions/nope/x.js")[0] == 404
    assert Http(srv.base).get("/extensions")[0] == 401


def test_a_pack_sends_to_the_editor_and_sees_prompts(srv, packs):
    client = uuid.uuid4().hex
    ws = WS(f"ws://127.0.0.1:{srv.port}/ws?clientId={client}&token={TOKEN}")
    try:
        graph = {"1": {"class_type": "ServicesCount",
                       "inputs": {"ckpt_name": "genloom-tiny.safetensors", "steps": 2, "prefix": "srv"}}}
        prompt_id = srv.http.submit(graph, client_id=client)
        messages = ws.until_done(prompt_id, timeout=60)
    finally:
        ws.close()
    sent = [m["data"] for m in messages if isinstance(m, dict) and m["type"] == "services_pack.counted"]
    assert sent == [{"node": "1", "steps": 2, "file": "srv_00001_.txt", "running": "1"}]
    text = [m for m in messages if isinstance(m, bytes) and m[:4] == (3).to_bytes(4, "big")]
    assert text == [(3).to_bytes(4, "big") + (1).to_bytes(4, "big") + b"1" + b"counted 2"]  # BinaryEventTypes.TEXT
    progress = [(m["data"]["value"], m["data"]["max"]) for m in messages
                if isinstance(m, dict) and m["type"] == "progress"]
    assert progress == [(1, 2), (2, 2)]
    history = srv.http.wait_history(prompt_id, timeout=60)
    assert history["outputs"]["1"] == {"text": ["srv_00001_.txt"]}
    assert (srv.server.engine.folders.output_dir / "srv_00001_.txt").read_text() == "genloom-tiny.safetensors 2 cpu"
    from genloom.compat.server import PromptServer
    from genloom.engine.plugins import module_name_of

    pack = sys.modules[module_name_of(packs / "services_pack")]
    assert {"client_id", "prompt"} <= set(pack.CALLS[-1]) and PromptServer.instance.client_id == client


def test_v3_and_deep_packs_run_through_the_server(srv):
    graph = {"1": {"class_type": "V3Scale", "inputs": {"value": 1.25, "factor": 4}},
             "2": {"class_type": "DeepJoin", "inputs": {"text": "srv"}},
             "3": {"class_type": "V3Pick", "inputs": {"mode": "add", "mode.amount": 2, "thing": ["2", 0]}},
             "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}}}
    history = srv.http.wait_history(srv.http.submit(graph))
    assert history["outputs"]["1"] == {"text": ["1:5.0"]}
    assert history["outputs"]["4"] == {"text": ["MOD! SRV! DEEP!"]}
    status, body = srv.http.post("/prompt", {"prompt": {"1": {"class_type": "V3Scale",
                                                              "inputs": {"value": 1.0, "factor": 7}}}})
    assert status == 400 and "factor 7 is unlucky" in str(body["node_errors"])
    info = srv.http.get("/object_info/V3Scale")[1]["V3Scale"]
    assert info["display_name"] == "V3: scale" and info["python_module"] == "custom_nodes.v3_pack"
