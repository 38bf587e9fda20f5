"""ComfyUI's own editor (comfyui-frontend-package, served unmodified) against genloom in a real
browser: it boots without page errors, lists genloom's nodes, loads a workflow, runs it with the Run
button, shows the resulting image and saves the workflow into the user data folder.

Needs Debian's chromium (tools/install_browser.sh) and Playwright for Python; skipped, with the
reason, only where chromium is missing. Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from server_support import InProcessServer, prompt, write_plugins

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                                          "(run tools/install_browser.sh)")
SHOT_DIR = Path(os.environ.get("GENLOOM_SCREENSHOTS", Path(__file__).resolve().parents[2] / "build" / "screens"))


@pytest.fixture()
def editor_server(tmp_path):
    from genloom.server.app import frontend_static

    if frontend_static() is None:
        pytest.fail("the editor extra is not installed: pip install 'genloom[editor]'")
    server = InProcessServer(tmp_path / "data", write_plugins(tmp_path / "plugins"))
    # A first-time user sees a template browser; a returning one sees the graph.
    assert server.http.post("/settings", {"Comfy.TutorialCompleted": True})[0] == 200
    yield server
    server.stop()


def test_editor_runs_a_workflow_and_saves_it(editor_server):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    srv = editor_server
    SHOT_DIR.mkdir(parents=True, exist_ok=True)
    page_errors, outbound, failed, console_errors, jobs_calls = [], [], [], [], []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.on("response", lambda r: r.status >= 500 and failed.append((r.status, r.url)))
            page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
            page.on("request", lambda r: "/jobs" in r.url and jobs_calls.append(r.url))

            def only_local(route):
                url = urlsplit(route.request.url)
                if url.scheme in ("http", "https", "ws", "wss") and url.netloc != f"127.0.0.1:{srv.port}":
                    outbound.append(route.request.url)
                    return route.abort()
                return route.continue_()

            page.route("**/*", only_local)
            page.goto(srv.base + "/")
            page.wait_for_function("() => window.app?.graph && window.LiteGraph?.registered_node_types?.TestSleep",
                                   timeout=60_000)
            listed = page.evaluate("() => Object.keys(LiteGraph.registered_node_types)")
            assert {"TestSleep", "TestSaveColor", "TestFail"} <= set(listed)

            graph = prompt(value=200, steps=12, delay=0.1, prefix="editor")
            page.evaluate("async (g) => { await app.loadApiJson(g, 'from-test.json'); }", graph)
            page.wait_for_function("() => app.graph.nodes.length === 2")
            types = page.evaluate("() => app.graph.nodes.map(n => n.type).sort()")
            assert types == ["TestSaveColor", "TestSleep"]

            with page.expect_response(lambda r: "/view?" in r.url and "editor_" in r.url and r.status == 200,
                                      timeout=30_000):
                page.get_by_role("button", name="Run", exact=True).first.click()
                page.wait_for_function(
                    "() => app.graph.nodes.some(n => n.type === 'TestSleep' && n.progress > 0 && n.progress < 1)",
                    timeout=20_000)
                page.screenshot(path=str(SHOT_DIR / "editor_progress.png"))
            page.wait_for_function(
                "() => app.graph.nodes.some(n => n.type === 'TestSaveColor' && n.imgs?.length > 0 "
                "&& n.imgs[0].complete && n.imgs[0].naturalWidth === 16)", timeout=30_000)
            page.wait_for_timeout(300)
            page.screenshot(path=str(SHOT_DIR / "editor_run.png"))
            history = srv.http.get("/history")[1]
            assert len(history) == 1
            entry = next(iter(history.values()))
            assert entry["status"]["status_str"] == "success"
            assert entry["prompt"][3]["extra_pnginfo"]["workflow"]["nodes"], "the editor sends its UI graph"

            page.mouse.click(300, 650)  # an empty spot of the canvas, so the shortcut reaches the app
            page.keyboard.press("Control+s")
            # The save prompt by its title: any other dialog's input (a search box) would swallow the name.
            dialog = page.get_by_role("dialog").filter(has_text="Save workflow")
            name_box = dialog.locator("input").first
            name_box.wait_for(timeout=10_000)
            name_box.fill("saved-by-browser")
            sync_api.expect(name_box).to_have_value("saved-by-browser")
            page.screenshot(path=str(SHOT_DIR / "editor_save_prompt.png"))
            with page.expect_response(lambda r: r.request.method == "POST" and "/userdata/" in r.url,
                                      timeout=30_000) as posted:
                name_box.press("Enter")
                # On a loaded machine the first Enter can land before the prompt listens; its button then.
                try:
                    dialog.wait_for(state="hidden", timeout=5_000)
                except sync_api.TimeoutError:
                    dialog.get_by_role("button", name="Confirm").click()
            assert posted.value.status == 200, (posted.value.status, posted.value.url)
            saved = srv.config.data_dir / "user" / "default" / "workflows" / "saved-by-browser.json"
            end = time.monotonic() + 15
            while not saved.is_file() and time.monotonic() < end:
                time.sleep(0.1)
            assert saved.is_file(), "the saved workflow did not reach the user data folder"
            workflow = json.loads(saved.read_text())
            assert sorted(n["type"] for n in workflow["nodes"]) == ["TestSaveColor", "TestSleep"]
            page.screenshot(path=str(SHOT_DIR / "editor_saved.png"))
        finally:
            browser.close()
    assert page_errors == []
    assert jobs_calls, "the editor's queue and history panels read /api/jobs"
    assert not [e for e in console_errors if "Jobs API" in e or "Failed to fetch" in e], console_errors
    assert failed == []
    assert outbound == []
