"""The editor plays a video output: a SaveVideo result appears as a <video> element served by /view,
and Chromium decodes and plays it (its clock advances); the file dropped back on the editor restores
the workflow from its tags. Needs Debian's chromium, as the image test."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from test_editor_browser import CHROMIUM, SHOT_DIR, editor_server  # noqa: F401 - the fixture

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                                          "(run tools/install_browser.sh)")

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 12,
                                                      "color": 0x3366CC}},
         "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 6.0}},
         "3": {"class_type": "SaveVideo", "inputs": {"video": ["2", 0], "filename_prefix": "video/editor",
                                                     "format": "auto", "codec": "auto"}}}


def test_editor_shows_and_plays_a_saved_video(editor_server):  # noqa: F811
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    srv = editor_server
    SHOT_DIR.mkdir(parents=True, exist_ok=True)
    page_errors = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-background-networking",
                                           "--autoplay-policy=no-user-gesture-required"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.route("**/*", lambda route: route.abort()
                       if urlsplit(route.request.url).netloc not in ("", f"127.0.0.1:{srv.port}")
                       and urlsplit(route.request.url).scheme in ("http", "https", "ws", "wss")
                       else route.continue_())
            page.goto(srv.base + "/")
            page.wait_for_function("() => window.app?.graph && window.LiteGraph?.registered_node_types?.SaveVideo",
                                   timeout=60_000)
            page.evaluate("async (g) => { await app.loadApiJson(g, 'video.json'); }", GRAPH)
            page.wait_for_function("() => app.graph.nodes.length === 3")
            page.get_by_role("button", name="Run", exact=True).first.click()
            page.wait_for_function(
                "() => [...document.querySelectorAll('video')].some(v => v.src.includes('/view?') "
                "&& v.src.includes('.mp4') && v.readyState >= 2)", timeout=60_000)
            played = page.evaluate("""async () => {
                const v = [...document.querySelectorAll('video')].find(v => v.src.includes('.mp4'));
                v.muted = true; v.loop = false; v.currentTime = 0;
                await v.play();
                await new Promise(r => setTimeout(r, 700));
                return {time: v.currentTime, width: v.videoWidth, height: v.videoHeight,
                        error: v.error && v.error.code};
            }""")
            page.screenshot(path=str(SHOT_DIR / "editor_video.png"))
            # The saved MP4 carries its workflow: dropped on a cleared editor, it brings the graph back.
            restored = page.evaluate("""async () => {
                const v = [...document.querySelectorAll('video')].find(v => v.src.includes('.mp4'));
                const blob = await (await fetch(v.src)).blob();
                app.graph.clear();
                await app.handleFile(new File([blob], 'dropped.mp4', {type: 'video/mp4'}));
                return app.graph.nodes.map(n => n.type).sort();
            }""")
        finally:
            browser.close()
    assert played["error"] is None and played["width"] == 64 and played["height"] == 64
    assert played["time"] > 0.2, played
    assert restored == ["CreateVideo", "EmptyImage", "SaveVideo"], restored
    assert page_errors == []
