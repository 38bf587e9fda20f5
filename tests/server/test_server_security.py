"""Uploads, /view and the request gates: traversal, links, oversized and fake images, origin, token,
body limits. Every refusal is a 4xx with a message, and nothing lands outside its folder."""

from __future__ import annotations

import io
import os

from PIL import Image

from genloom.server.app import main
from server_support import Http, InProcessServer, module_server, multipart, write_plugins


def _png(size=(4, 4), colour=(255, 0, 0, 255)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", size, colour).save(buf, format="PNG")
    return buf.getvalue()


srv = module_server("secure", max_upload=200_000, max_pixels=512 * 512)


def _upload(srv, name, data, path="/upload/image", **fields):
    body, ctype = multipart(fields, "image", name, data)
    return srv.http.post(path, body, headers={"Content-Type": ctype})


def test_upload_lands_in_input_and_keeps_existing_files(srv):
    data_dir = srv.config.data_dir
    status, body = _upload(srv, "cat.png", _png())
    assert status == 200 and body == {"name": "cat.png", "subfolder": "", "type": "input"}
    assert (data_dir / "input" / "cat.png").read_bytes() == _png()
    other = _png(colour=(0, 255, 0, 255))
    assert _upload(srv, "cat.png", other)[1]["name"] == "cat (1).png"
    assert _upload(srv, "cat.png", other, overwrite="true")[1]["name"] == "cat.png"
    assert (data_dir / "input" / "cat.png").read_bytes() == other
    status, body = _upload(srv, "a.png", _png(), subfolder="masks", type="temp")
    assert status == 200 and (data_dir / "temp" / "masks" / "a.png").is_file()
    assert srv.http.get("/view?filename=a.png&subfolder=masks&type=temp", raw=True) == (200, _png())


def test_mask_upload_puts_the_mask_alpha_on_the_original(srv):
    _upload(srv, "photo.png", _png((6, 6), (10, 20, 30, 255)))
    mask = _png((3, 3), (0, 0, 0, 0))
    status, body = _upload(srv, "photo_mask.png", mask, path="/api/upload/mask",
                           original_ref='{"filename": "photo.png", "subfolder": "", "type": "input"}')
    assert status == 200, body
    out = Image.open(srv.config.data_dir / "input" / body["name"])
    assert out.size == (6, 6) and out.getpixel((2, 2)) == (10, 20, 30, 0)
    assert _upload(srv, "m.png", mask, path="/upload/mask", original_ref="not json")[0] == 400
    assert _upload(srv, "m.png", mask, path="/upload/mask",
                   original_ref='{"filename": "../../genloom.db", "type": "input"}')[0] == 403


def test_uploads_that_are_not_images_or_too_big_are_refused(srv):
    status, body = _upload(srv, "evil.png", b"<script>alert(1)</script>")
    assert status == 400 and body["error"]["type"] == "invalid_image"
    assert _upload(srv, "trunc.png", _png()[:30])[0] == 400
    status, body = _upload(srv, "huge.png", os.urandom(300_000))
    assert status == 413 and "too large" in body["error"]["message"]
    status, body = _upload(srv, "wide.png", _png((2000, 200)))
    assert status == 413 and "2000x200" in body["error"]["message"]
    for name in ("evil.png", "trunc.png", "huge.png", "wide.png"):
        assert not (srv.config.data_dir / "input" / name).exists()


def test_uploads_never_leave_their_folder(srv):
    data_dir = srv.config.data_dir
    assert _upload(srv, "../escape.png", _png())[0] == 400
    assert _upload(srv, "x.png", _png(), subfolder="../..")[0] == 403
    assert _upload(srv, "x.png", _png(), subfolder="/tmp")[0] == 403
    assert _upload(srv, "x.png", _png(), type="models")[0] == 400
    assert not (data_dir / "escape.png").exists() and not (data_dir.parent / "x.png").exists()
    body, ctype = multipart({}, "other", "x.png", _png())
    assert srv.http.post("/upload/image", body, headers={"Content-Type": ctype})[0] == 400
    assert srv.http.post("/upload/image", b"{}", headers={"Content-Type": "application/json"})[0] == 400


def test_view_refuses_traversal_absolute_paths_and_links(srv):
    data_dir = srv.config.data_dir
    secret = data_dir / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    (data_dir / "output" / "inside.png").write_bytes(_png())
    os.symlink(secret, data_dir / "output" / "link.png")
    os.symlink(data_dir, data_dir / "output" / "dirlink")
    for query in ("filename=../secret.txt", "filename=secret.txt&subfolder=..", f"filename={secret}",
                  "filename=genloom.db&subfolder=../", "filename=link.png", "filename=secret.txt&subfolder=dirlink",
                  "filename=..%2Fsecret.txt", "filename=inside.png&subfolder=%2Fetc"):
        status, body = srv.http.get(f"/view?{query}&type=output", raw=True)
        assert status in (400, 403), query
        assert b"TOP-SECRET-CONTENT" not in body, query
    assert srv.http.get("/view?filename=inside.png&type=nowhere")[0] == 400
    assert srv.http.get("/view?filename=missing.png")[0] == 404
    assert srv.http.get("/view?type=output")[0] == 400
    assert srv.http.get("/view?filename=inside.png&type=output", raw=True) == (200, _png())
    status, rgb = srv.http.get("/view?filename=inside.png&type=output&channel=rgb", raw=True)
    assert status == 200 and Image.open(io.BytesIO(rgb)).mode == "RGB"


def test_cross_origin_and_rebinding_requests_are_refused(srv):
    host = f"127.0.0.1:{srv.port}"
    status, body = srv.http.post("/prompt", {"prompt": {}}, headers={"Origin": "http://evil.example"})
    assert status == 403 and "cross-origin" in body["error"]["message"]
    assert srv.http.get("/queue", headers={"Origin": "null"})[0] == 403
    assert srv.http.get("/queue", headers={"Origin": f"http://{host}"})[0] == 200
    assert srv.http.get("/queue", headers={"Host": "evil.example"})[0] == 403
    assert srv.http.get("/queue", headers={"Host": f"localhost:{srv.port}"})[0] == 200


def test_oversized_and_malformed_bodies(srv):
    from genloom.server.security import JSON_LIMIT

    status, body = srv.http.post("/prompt", b" " * (JSON_LIMIT + 10), headers={"Content-Type": "application/json"})
    assert status == 413 and body["error"]["type"] == "request_too_large"
    assert srv.http.post("/userdata/workflows%2Fbig.json", b"x" * 300_000 + b"x" * (1 << 20))[0] == 413
    for raw in (b"\xff\xfe", b"[", b"nul"):
        status, body = srv.http.post("/history", raw)
        assert status == 400 and body["error"]["type"] == "invalid_json"
    assert srv.http.get("/queue")[0] == 200  # still alive


def test_token_is_required_when_set(tmp_path):
    server = InProcessServer(tmp_path / "data", write_plugins(tmp_path / "plugins"), token="s3cret-token-long-enough")
    try:
        status, body = server.http.get("/queue")
        assert status == 401 and "token" in body["error"]["message"]
        assert server.http.get("/queue", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert Http(server.base, {"Authorization": "Bearer s3cret-token-long-enough"}).get("/queue")[0] == 200
        import urllib.request

        with urllib.request.urlopen(server.base + "/api/queue?token=s3cret-token-long-enough") as resp:
            assert "genloom_token=s3cret-token-long-enough" in resp.headers["Set-Cookie"]
        assert server.http.get("/queue", headers={"Cookie": "genloom_token=s3cret-token-long-enough"})[0] == 200
    finally:
        server.stop()


def test_binding_beyond_loopback_needs_a_token(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GENLOOM_TOKEN", raising=False)
    assert main(["--host", "0.0.0.0", "--data-dir", str(tmp_path)]) == 2
    assert "--token" in capsys.readouterr().err


def test_json_body_arriving_in_pieces_is_read_whole(srv):
    """A large body sent chunk by chunk (a /prompt carrying its editor workflow, say) must not be cut
    at whatever had arrived when the handler first read."""
    import http.client
    import json
    import time

    value = "x" * 1_500_000
    payload = json.dumps({"Test.big": value}).encode()
    pieces = [payload[i:i + 65536] for i in range(0, len(payload), 65536)]

    def slowly():
        for piece in pieces:
            time.sleep(0.002)
            yield piece

    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    conn.request("POST", "/api/settings", body=slowly(), encode_chunked=True,
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200, response.read()[:200]
    conn.close()
    assert srv.http.get("/api/settings/Test.big")[1] == value
