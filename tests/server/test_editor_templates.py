"""genloom's templates and first screen in ComfyUI's own editor, in a real browser.

A first visit (no settings, nothing saved) opens on genloom's txt2img on the shipped model, which the
Run button turns into a picture; the template browser lists genloom's templates with their
thumbnails, and the one picked loads and runs too; reloading the page keeps it.

Needs Debian's chromium (tools/install_browser.sh) and Playwright; skipped only where chromium is missing.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from server_support import InProcessServer, write_plugins

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                                          "(run tools/install_browser.sh)")
SHOT_DIR = Path(os.environ.get("GENLOOM_SCREENSHOTS", Path(__file__).resolve().parents[2] / "build" / "screens"))
SAVED_PICTURE = ("(side) => app.graph.nodes.some(n => n.type === 'SaveImage' && n.imgs?.length > 0 "
                 "&& n.imgs[0].complete && n.imgs[0].naturalWidth === side)")


def _page(browser, srv, problems):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("response", lambda r: r.status >= 500 and problems.append(f"{r.status} {r.url}"))

    def only_local(route):
        url = urlsplit(route.request.url)
        if url.scheme in ("http", "https", "ws", "wss") and url.netloc != f"127.0.0.1:{srv.port}":
            problems.append(f"outbound {route.request.url}")
            return route.abort()
        return route.continue_()

    page.route("**/*", only_local)
    page.goto(srv.base + "/")
    page.wait_for_function("() => window.app?.graph && window.LiteGraph?.registered_node_types?.KSampler",
                           timeout=60_000)
    return page


def _run(page, srv, side, shot):
    before = set(srv.http.get("/history")[1])
    page.get_by_role("button", name="Run", exact=True).first.click()
    end = time.monotonic() + 300
    while time.monotonic() < end and not set(srv.http.get("/history")[1]) - before:
        time.sleep(0.5)
    history = srv.http.get("/history")[1]
    new = [history[k] for k in set(history) - before]
    assert len(new) == 1, "the Run button queued nothing (or it did not finish)"
    assert new[0]["status"]["status_str"] == "success", new[0]["status"]
    page.wait_for_function(SAVED_PICTURE, arg=side, timeout=30_000)
    page.wait_for_timeout(300)
    page.screenshot(path=str(SHOT_DIR / shot))


def test_first_screen_and_template_browser(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from genloom.server.app import frontend_static

    if frontend_static() is None:
        pytest.fail("the editor extra is not installed: pip install 'genloom[editor]'")
    SHOT_DIR.mkdir(parents=True, exist_ok=True)
    srv = InProcessServer(tmp_path / "data", write_plugins(tmp_path / "plugins"))
    problems, thumbnails = [], []
    try:
        assert srv.http.get("/settings")[1] == {}, "a first visit: no settings"
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=["--no-sandbox", "--disable-background-networking"])
            try:
                page = _page(browser, srv, problems)
                page.wait_for_function("() => app.graph.nodes.some(n => n.type === 'CheckpointLoaderSimple')",
                                       timeout=30_000)
                loader = page.evaluate("() => app.graph.nodes.find(n => n.type === 'CheckpointLoaderSimple')"
                                       ".widgets[0].value")
                assert loader == "genloom-tiny.safetensors"
                types = page.evaluate("() => app.graph.nodes.map(n => n.type).sort()")
                assert types == sorted(["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode",
                                        "EmptyLatentImage", "KSampler", "VAEDecode", "SaveImage"])
                page.screenshot(path=str(SHOT_DIR / "first_screen.png"))
                _run(page, srv, 32, "first_screen_run.png")
                page.close()

                # A second visit from a fresh browser profile: the template browser, a genloom template
                page = _page(browser, srv, problems)
                page.on("response", lambda r: "/templates/" in r.url and r.url.endswith(".webp")
                        and thumbnails.append((r.status, r.url.rsplit("/", 1)[1])))
                page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
                card = page.get_by_text("Hires fix", exact=True).first
                card.wait_for(timeout=30_000)
                # the thumbnails are fetched, then shown from blob: URLs
                page.wait_for_function("(n) => [...document.querySelectorAll('[role=dialog] img')].filter(i => "
                                       "i.complete && i.naturalWidth === 256).length >= n",
                                       arg=len(srv.http.get("/templates/index.json")[1][0]["templates"]),
                                       timeout=30_000)
                page.screenshot(path=str(SHOT_DIR / "template_browser.png"))
                card.click()
                page.wait_for_function("() => app.graph.nodes.some(n => n.type === 'LatentUpscaleBy')",
                                       timeout=30_000)
                _run(page, srv, 64, "template_run.png")
                # what the editor restores (the open workflow) is never replaced by the default
                page.reload()
                page.wait_for_function("() => window.app?.graph?.nodes?.length > 0", timeout=60_000)
                page.wait_for_timeout(500)
                assert "LatentUpscaleBy" in page.evaluate("() => app.graph.nodes.map(n => n.type)")
            finally:
                browser.close()
    finally:
        srv.stop()
    assert (200, "hires_fix-1.webp") in thumbnails
    assert problems == []
