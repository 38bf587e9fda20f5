"""User data: a quota per user folder, and a write never turns a file the server owns into a folder."""

from __future__ import annotations

from server_support import module_server

srv = module_server("hardening_userdata", user_quota=64 * 1024)


def test_the_settings_file_never_becomes_a_folder(srv):
    for path in ("/userdata/comfy.settings.json%2Fx", "/userdata/comfy.settings.json%2Fa%2Fb.json"):
        status, body = srv.http.post(path, b"{}")
        assert status == 409 and body["error"]["type"] == "not_a_folder", (status, body)
    assert not (srv.server.userdata.root / "comfy.settings.json").is_dir()
    assert srv.http.post("/settings", {"Comfy.A": 1})[0] == 200
    assert srv.http.get("/settings")[1]["Comfy.A"] == 1
    status, body = srv.http.post("/userdata/comfy.settings.json%2Fy", b"{}")  # now that it exists
    assert status == 409
    assert srv.http.post("/settings", {"Comfy.B": 2})[0] == 200


def test_a_file_is_never_written_below_a_file_or_over_a_folder(srv):
    assert srv.http.post("/userdata/workflows%2Fa.json", b"{}")[0] == 200
    assert srv.http.post("/userdata/workflows%2Fa.json%2Fb.json", b"{}")[0] == 409
    assert srv.http.post("/userdata/workflows", b"{}")[1]["error"]["type"] == "is_a_folder"
    status, body = srv.http.post("/userdata/workflows%2Fa.json/move/workflows%2Fa.json%2Fc.json")
    assert status == 409


def test_the_quota_holds_for_files_and_settings(srv):
    assert srv.http.post("/userdata/workflows%2Fbig.json", b"x" * 40_000)[0] == 200
    status, body = srv.http.post("/userdata/workflows%2Fbig2.json", b"x" * 40_000)
    assert status == 413 and body["error"]["type"] == "quota_exceeded"
    assert srv.http.post("/userdata/workflows%2Fbig.json", b"y" * 40_000)[0] == 200  # replacing: no growth
    status, body = srv.http.post("/settings", {"Comfy.Huge": "z" * 30_000})
    assert status == 413
    assert srv.http.request("DELETE", "/userdata/workflows%2Fbig.json")[0] == 204
    assert srv.http.post("/userdata/workflows%2Fbig2.json", b"x" * 40_000)[0] == 200
