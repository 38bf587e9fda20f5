"""A node pack's web extension in ComfyUI's own editor, in a real browser: the editor reads
GET /extensions, imports the pack's script (which imports the editor's app by a relative path, as
community packs do) and the extension's hooks run: setup() and beforeRegisterNodeDef for its node.

Needs Debian's chromium (tools/install_browser.sh) and Playwright; skipped only where chromium is missing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from server_support import InProcessServer

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                                          "(run tools/install_browser.sh)")
FIXTURES = Path(__file__).resolve().parents[1] / "plugins_fixtures"


def test_the_editor_loads_a_packs_extension(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from genloom.server.app import frontend_static

    if frontend_static() is None:
        pytest.fail("the editor extra is not installed: pip install 'genloom[editor]'")
    packs = tmp_path / "custom_nodes"
    shutil.copytree(FIXTURES / "web_pack", packs / "web_pack", ignore=shutil.ignore_patterns("__pycache__"))
    server = InProcessServer(tmp_path / "data", packs)
    page_errors, scripts = [], []
    try:
        assert server.http.post("/settings", {"Comfy.TutorialCompleted": True})[0] == 200
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=["--no-sandbox", "--disable-background-networking"])
            try:
                page = browser.new_page()
                page.on("pageerror", lambda exc: page_errors.append(str(exc)))
                page.on("response", lambda r: "/extensions/web_pack/" in r.url and scripts.append(r.status))
                page.route("**/*", lambda route: route.continue_() if f"127.0.0.1:{server.port}" in route.request.url
                           or not route.request.url.startswith("http") else route.abort())
                page.goto(server.base + "/")
                page.wait_for_function("() => document.documentElement.dataset.genloomWebPackSetup === 'done'",
                                       timeout=60_000)
                assert page.evaluate("() => document.documentElement.dataset.genloomWebPack") == "loaded"
                page.wait_for_function("() => window.LiteGraph?.registered_node_types?.WebPackNode")
                touched = page.evaluate(
                    "() => LiteGraph.registered_node_types.WebPackNode.prototype.genloomWebPackTouched")
                assert touched is True
            finally:
                browser.close()
    finally:
        server.stop()
    assert scripts == [200]
    assert page_errors == []
