"""Hostile input gets a structured 4xx (never a 500), every JSON answer is strict JSON, and no error
message shows an absolute server path."""

from __future__ import annotations

import io
import json

import pytest

from server_support import Http, InProcessServer, module_server, multipart, prompt, write_plugins

srv = module_server("hardening_input")


def strict(payload: bytes):
    """Parses like a browser's JSON.parse: NaN and Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")
    return json.loads(payload, parse_constant=refuse)


def refused(srv, status, body):
    assert 400 <= status < 500, (status, body)
    assert isinstance(body, dict) and "error" in body, body
    text = json.dumps(body)
    assert str(srv.config.data_dir) not in text and "/tmp/" not in text, text


def png(size=(4, 4), mode="RGB") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def upload(srv, data, name="a.png", fields=None, path="/upload/image"):
    body, ctype = multipart(fields or {}, "image", name, data)
    return srv.http.post(path, body, headers={"Content-Type": ctype})


def test_empty_prompt_object_is_a_400(srv):
    status, body = srv.http.post("/prompt", {"prompt": {}})
    refused(srv, status, body)
    assert "node_errors" in body


def test_deeply_nested_json_is_a_400_on_every_json_route(srv):
    deep = b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for path in ("/prompt", "/queue", "/history", "/interrupt", "/free", "/settings", "/jobs/cancel"):
        status, body = srv.http.post(path, deep, headers={"Content-Type": "application/json"})
        refused(srv, status, body)
        assert body["error"]["type"] == "invalid_json", (path, body)


def test_moderately_deep_values_never_escape(srv):
    nested = "0"
    for _ in range(800):
        nested = "[" + nested + "]"
    raw = ('{"prompt": {"1": {"class_type": "TestSleep", "inputs": {"value": ' + nested + '}}}}').encode()
    status, body = srv.http.post("/prompt", raw, headers={"Content-Type": "application/json"})
    refused(srv, status, body)


@pytest.mark.parametrize("field", ["prompt_id", "client_id"])
def test_lone_surrogates_in_ids_are_a_400(srv, field):
    raw = json.dumps({"prompt": prompt(), field: "\ud800x"}).encode()
    status, body = srv.http.post("/prompt", raw, headers={"Content-Type": "application/json"})
    refused(srv, status, body)
    assert field in body["error"]["message"]


def test_lone_surrogates_in_delete_lists_are_a_400(srv):
    for path, key in (("/queue", "delete"), ("/history", "delete"), ("/jobs/cancel", "job_ids")):
        raw = json.dumps({key: ["\udfff"]}).encode()
        status, body = srv.http.post(path, raw, headers={"Content-Type": "application/json"})
        refused(srv, status, body)


@pytest.mark.parametrize("query", ["/history?max_items=99999999999999999999999",
                                   "/history?offset=99999999999999999999999",
                                   "/jobs?limit=99999999999999999999999",
                                   "/jobs?offset=99999999999999999999999",
                                   "/jobs?limit=0", "/jobs?limit=-1", "/jobs?offset=-3",
                                   "/history?max_items=-1"])
def test_counts_out_of_range_are_a_400(srv, query):
    status, body = srv.http.get(query)
    refused(srv, status, body)
    assert body["error"]["type"] == "invalid_query"


def test_file_names_beyond_the_file_system_limit_are_a_400(srv):
    status, body = upload(srv, png(), name="x" * 300 + ".png")
    refused(srv, status, body)
    status, body = upload(srv, png(), fields={"subfolder": "d" * 300})
    refused(srv, status, body)
    status, body = srv.http.get("/view?filename=" + "y" * 300 + ".png&type=input")
    refused(srv, status, body)


def test_view_preview_options_are_checked(srv):
    status, body = upload(srv, png((8, 8)), name="view.png")
    assert status == 200, body
    for preview in ("gif;90", "webp;99999999999999999999999", "jpeg;-5", "png;abc"):
        status, body = srv.http.get(f"/view?filename=view.png&type=input&preview={preview}")
        refused(srv, status, body)
    status, body = srv.http.get("/view?filename=view.png&type=input&channel=bogus")
    refused(srv, status, body)
    status, data = srv.http.get("/view?filename=view.png&type=input&preview=webp;80", raw=True)
    assert status == 200 and data[:4] == b"RIFF"


def test_webp_preview_beyond_the_encoder_limit_is_a_400(srv):
    status, body = upload(srv, png((16500, 1), mode="L"), name="wide.png")
    assert status == 200, body
    status, body = srv.http.get("/view?filename=wide.png&type=input&preview=webp;80")
    refused(srv, status, body)
    status, data = srv.http.get("/view?filename=wide.png&type=input&preview=png", raw=True)
    assert status == 200 and data[:4] == b"\x89PNG"


def test_multipart_without_boundary_or_truncated_is_a_400(srv):
    status, body = srv.http.post("/upload/image", b"--x\r\n", headers={"Content-Type": "multipart/form-data"})
    refused(srv, status, body)
    whole, ctype = multipart({}, "image", "t.png", png())
    for cut in (20, len(whole) // 2, len(whole) - 10):
        status, body = srv.http.post("/upload/image", whole[:cut], headers={"Content-Type": ctype})
        refused(srv, status, body)


def test_mask_upload_that_verifies_but_does_not_decode_is_a_400(srv):
    status, body = upload(srv, png((8, 8)), name="orig.png")
    assert status == 200, body
    good = png((8, 8), mode="RGBA")
    broken = good[:-40] + bytes(28) + good[-12:]  # the IDAT payload damaged, the chunk layout intact
    ref = json.dumps({"filename": "orig.png", "subfolder": "", "type": "input"})
    status, body = upload(srv, broken, name="mask.png", fields={"original_ref": ref}, path="/upload/mask")
    refused(srv, status, body)


def test_nan_float_inputs_are_rejected_at_validation(srv):
    for value in ("NaN", "Infinity", "-Infinity"):
        raw = ('{"prompt": {"1": {"class_type": "TestSleep", "inputs": {"value": 1, "steps": 1, "delay": '
               + value + ', "preview": 0}}, "2": {"class_type": "TestSaveColor", "inputs": '
               '{"value": ["1", 0], "prefix": "nan"}}}}').encode()
        status, body = srv.http.post("/prompt", raw, headers={"Content-Type": "application/json"})
        refused(srv, status, body)
        errors = body["node_errors"]["1"]["errors"]
        assert errors[0]["extra_info"]["input_name"] == "delay"


def test_every_json_answer_is_strict(srv):
    raw = '{"prompt": ' + json.dumps(prompt(prefix="strictnan")) + ', "extra_data": {"x": NaN, "y": [Infinity]}}'
    status, body = srv.http.post("/prompt", raw.encode(), headers={"Content-Type": "application/json"})
    assert status == 200, body
    srv.http.wait_history(body["prompt_id"])
    for path in ("/history", "/queue", "/jobs", f"/jobs/{body['prompt_id']}", "/system_stats"):
        status, payload = srv.http.get(path, raw=True)
        assert status == 200
        strict(payload)


def test_non_utf8_credentials_are_a_401_not_a_500(tmp_path):
    server = InProcessServer(tmp_path / "data", write_plugins(tmp_path / "plugins"), token="a-long-enough-token-1")
    try:
        for headers in ({"Authorization": "Bearer \xff\xfe"}, {"Cookie": "genloom_token=\xff\xfe"}):
            status, body = Http(server.base, headers).get("/queue")
            assert status == 401, (status, body)
            assert body["error"]["type"] == "unauthorized"
    finally:
        server.stop()


def test_unexpected_errors_do_not_show_server_paths(srv):
    from genloom.server.errors import redact

    data = str(srv.config.data_dir)
    assert data not in redact(f"cannot open {data}/input/x.png")
    assert "x.png" in redact(f"cannot open {data}/input/x.png")


def test_empty_partial_execution_targets_are_a_400(srv):
    status, body = srv.http.post("/prompt", {"prompt": prompt(), "partial_execution_targets": []})
    refused(srv, status, body)
    assert "partial_execution_targets" in body["error"]["message"]
    status, body = srv.http.post("/prompt", {"prompt": prompt(prefix="partial"), "partial_execution_targets": ["2"]})
    assert status == 200, body


def test_execution_errors_in_history_show_no_server_paths(srv):
    from server_support import prompt as graph_of

    prompt_id = srv.http.submit(graph_of(prefix="failing", fail=True))
    entry = srv.http.wait_history(prompt_id)
    text = json.dumps(entry) + json.dumps(srv.http.get(f"/jobs/{prompt_id}")[1])
    assert "test failure with value" in text
    assert str(srv.config.data_dir) not in text and "/site-packages/" not in text
    assert "File \\\"/" not in text and str(srv.config.plugins_dirs[0]) not in text  # traceback lines too
