"""GET /openapi.json: an OpenAPI 3.1 document covering every route the app registers, with the request
schemas of the JSON-body routes, and response models that real answers satisfy."""

from __future__ import annotations

import io
import json

import pytest
from aiohttp import web
from PIL import Image

from genloom.server import schemas
from genloom.server.app import build_app
from genloom.server.endpoints import ENDPOINTS
from server_support import module_server, multipart, prompt


srv = module_server("openapi")


@pytest.fixture(scope="module")
def doc(srv):
    status, raw = srv.http.get("/openapi.json", raw=True)
    assert status == 200
    return json.loads(raw)


def _refs(node):
    if isinstance(node, dict):
        if "$ref" in node:
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_the_document_is_openapi_3_1_and_served_under_api_too(srv, doc):
    assert doc["openapi"].startswith("3.1.") and doc["info"]["title"] == "genloom"
    assert srv.http.get("/api/openapi.json") == (200, doc)
    components = doc["components"]["schemas"]
    for ref in set(_refs(doc)):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in components, ref


def test_every_registered_route_is_in_the_document(srv, doc):
    app = build_app(srv.server)
    routes = list(app.router.routes())
    assert len(routes) > 80
    for route in routes:
        resource = route.resource
        if isinstance(resource, web.StaticResource):
            path = resource.get_info()["prefix"] + "/{filename}"
        else:
            path = resource.canonical
        assert path in doc["paths"], path
        assert route.method.lower() in doc["paths"][path], (route.method, path)
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["responses"], (method, path)
            for name in (p["name"] for p in op.get("parameters", ()) if p["in"] == "path"):
                assert "{" + name + "}" in path


def test_json_body_routes_carry_their_request_schemas(srv, doc):
    app = build_app(srv.server)
    with_body = [e for e in app[ENDPOINTS] if e.body is not None]
    assert {(e.method, e.path) for e in with_body} >= {
        ("POST", "/prompt"), ("POST", "/queue"), ("POST", "/history"), ("POST", "/interrupt"), ("POST", "/free"),
        ("POST", "/jobs/cancel"), ("POST", "/settings"), ("POST", "/settings/{id}"),
        ("PATCH", "/internal/logs/subscribe")}
    components = doc["components"]["schemas"]
    for endpoint in with_body:
        for path in (endpoint.path, "/api" + endpoint.path):
            body = doc["paths"][path][endpoint.method.lower()]["requestBody"]
            ref = body["content"]["application/json"]["schema"]["$ref"]
            expected = endpoint.body.model_json_schema(ref_template="#/components/schemas/{model}")
            expected.pop("$defs", None)
            assert components[ref.rsplit("/", 1)[1]] == expected, ref
    prompt_body = components["PromptBody"]
    assert prompt_body["required"] == ["prompt"] and "client_id" in prompt_body["properties"]
    assert doc["paths"]["/prompt"]["post"]["responses"]["400"]["content"]["application/json"]["schema"]["$ref"] \
        .endswith("/PromptRejected")
    upload = doc["paths"]["/upload/image"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert components[upload["$ref"].rsplit("/", 1)[1]]["required"] == ["image"]
    jobs = {p["name"]: p for p in doc["paths"]["/jobs"]["get"]["parameters"]}
    assert set(jobs) == {"status", "sort_by", "sort_order", "limit", "offset"}
    assert jobs["sort_order"]["schema"]["enum"] == ["asc", "desc"]


def test_real_answers_match_the_declared_response_models(srv):
    http = srv.http
    status, accepted = http.post("/prompt", {"prompt": prompt(value=3, prefix="doc")})
    assert status == 200
    schemas.PromptAccepted.model_validate(accepted)
    http.wait_history(accepted["prompt_id"])
    failed = http.submit(prompt(value=4, fail=True, prefix="docfail"))
    http.wait_history(failed)
    schemas.PromptStatus.model_validate(http.get("/prompt")[1])
    schemas.QueueResponse.model_validate(http.get("/queue")[1])
    history = schemas.HistoryResponse.model_validate(http.get("/history")[1])
    assert set(history.root) >= {accepted["prompt_id"], failed}
    page = schemas.JobsPage.model_validate(http.get("/api/jobs")[1])
    assert {j.id for j in page.jobs} >= {accepted["prompt_id"], failed}
    detail = schemas.JobDetail.model_validate(http.get(f"/api/jobs/{failed}")[1])
    assert detail.execution_error is not None and detail.execution_error.node_type == "TestFail"
    schemas.JobCancelled.model_validate(http.post(f"/api/jobs/{failed}/cancel")[1])
    schemas.JobsCancelled.model_validate(http.post("/api/jobs/cancel", {"job_ids": [failed]})[1])
    schemas.SystemStats.model_validate(http.get("/system_stats")[1])
    schemas.PromptRejected.model_validate(http.post("/prompt", {"prompt": "nope"})[1])
    schemas.ErrorResponse.model_validate(http.post("/queue", {"delete": 1})[1])
    schemas.ErrorResponse.model_validate(http.get("/api/jobs/unknown")[1])
    buf = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buf, format="PNG")
    body, ctype = multipart({"type": "input"}, "image", "doc.png", buf.getvalue())
    schemas.UploadResult.model_validate(http.post("/upload/image", body, headers={"Content-Type": ctype})[1])
    http.post("/settings", {"Doc.A": 1})
    schemas.SettingsBody.model_validate(http.get("/settings")[1])
