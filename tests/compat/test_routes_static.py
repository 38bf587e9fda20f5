"""routes.static(prefix, folder) of a pack (tests/plugins_fixtures/extra_packs/static_pack) through the
real server: the folder's files at prefix and /api + prefix, behind the token and origin checks, and
nothing outside the folder (no '..', no link that leads out)."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

from conftest import FIXTURES

sys.path.insert(0, str(FIXTURES.parent / "server"))
from server_support import Http, InProcessServer  # noqa: E402

TOKEN = "static-route-test-token-long-enough"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    packs = tmp_path_factory.mktemp("static_packs") / "custom_nodes"
    shutil.copytree(FIXTURES / "extra_packs" / "static_pack", packs / "static_pack",
                    ignore=shutil.ignore_patterns("__pycache__"))
    secret = tmp_path_factory.mktemp("outside") / "secret.txt"
    secret.write_text("not for the web")
    files = packs / "static_pack" / "files"
    os.symlink(secret, files / "escape.txt")  # a link leading out of the folder
    os.symlink(files / "hello.txt", files / "inside.txt")  # a link that stays inside
    server = InProcessServer(tmp_path_factory.mktemp("static_server") / "data", packs, token=TOKEN)
    server.http = Http(server.base, {"Authorization": f"Bearer {TOKEN}"})
    yield server
    server.stop()


def test_static_folder_is_served(srv):
    for prefix in ("/static_pack/files", "/api/static_pack/files"):
        assert srv.http.get(f"{prefix}/hello.txt") == (200, b"hello from a static folder\n")
    status, body = srv.http.get("/static_pack/files/sub/style.css")
    assert status == 200 and body == b"body { color: teal; }\n"
    assert srv.http.get("/static_pack/files/inside.txt") == (200, b"hello from a static folder\n")
    assert srv.http.get("/static_pack/files/nope.txt")[0] == 404
    assert srv.http.get("/static_pack/files/sub")[0] == 404  # a folder is no file (no listing)


def test_static_folder_is_confined_and_guarded(srv):
    assert srv.http.get("/static_pack/files/escape.txt")[0] == 403
    assert srv.http.get("/static_pack/files/%2e%2e/__init__.py")[0] in (403, 404)
    assert srv.http.get("/static_pack/files/sub/%2e%2e/%2e%2e/__init__.py")[0] in (403, 404)
    status, body = Http(srv.base).get("/static_pack/files/hello.txt")
    assert status == 401 and "token" in body["error"]["message"]
    assert srv.http.get("/static_pack/files/hello.txt", headers={"Origin": "http://evil.example"})[0] == 403
