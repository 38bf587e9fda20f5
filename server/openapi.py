"""`GET /openapi.json`: an OpenAPI 3.1 document of every route the app registers.

It is generated from the app's router (so no route is missing, the editor's static files included) and
from the routes' declarations (endpoints.py), whose pydantic models give the request bodies, query
parameters and answers their JSON Schemas (draft 2020-12, which OpenAPI 3.1 uses as it is).
"""

from __future__ import annotations

import re

from aiohttp import web
from pydantic.json_schema import models_json_schema

from .. import __version__
from .endpoints import ENDPOINTS, Endpoint
from .errors import json_response
from .schemas import ErrorResponse

REF = "#/components/schemas/{model}"
_STATUS_TEXT = {101: "Switching Protocols", 200: "OK", 204: "No Content", 400: "Bad Request", 403: "Forbidden",
                404: "Not Found", 409: "Conflict", 413: "Content Too Large"}


def endpoints() -> list[Endpoint]:
    cache: dict = {}

    async def openapi(request: web.Request) -> web.Response:
        """This document."""
        if "doc" not in cache:  # the router is frozen once the app runs
            cache["doc"] = build_document(request.app)
        return json_response(cache["doc"])

    return [Endpoint("GET", "/openapi.json", openapi)]


def route_path(route) -> str:
    """The route's path as an OpenAPI path template."""
    resource = route.resource
    if isinstance(resource, web.StaticResource):
        return resource.get_info()["prefix"] + "/{filename}"
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", resource.canonical)


def build_document(app: web.Application) -> dict:
    declared = {(e.method, p): e for e in app.get(ENDPOINTS, []) for p in (e.path, "/api" + e.path)}
    refs, components = _schemas(declared.values())
    paths: dict[str, dict] = {}
    for route in app.router.routes():
        path = route_path(route)
        endpoint = declared.get((route.method, route.resource.canonical))
        paths.setdefault(path, {})[route.method.lower()] = _operation(path, route, endpoint, refs, components)
    return {"openapi": "3.1.0",
            "info": {"title": "genloom", "version": __version__,
                     "description": "ComfyUI's HTTP API as genloom serves it; every route also answers "
                                    "under /api. The websocket /ws carries the events."},
            "paths": paths,
            "components": {"schemas": components}}


def _models(endpoint: Endpoint):
    for model in (endpoint.body, endpoint.form, endpoint.query):
        if model is not None:
            yield model, "validation"
    for model in (endpoint.response, *endpoint.errors.values(), ErrorResponse):
        if model is not None:
            yield model, "serialization"


def _schemas(endpoints) -> tuple[dict, dict]:
    wanted = list(dict.fromkeys(pair for e in endpoints for pair in _models(e)))
    refs, top = models_json_schema(wanted, ref_template=REF)
    return refs, top.get("$defs", {})


def _json(refs, model, mode) -> dict:
    return {"application/json": {"schema": refs[(model, mode)]}}


def _operation(path: str, route, endpoint: Endpoint | None, refs: dict, components: dict) -> dict:
    parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in re.findall(r"\{(\w+)\}", path)]
    if endpoint is None:  # the editor's page and files
        op: dict = {"summary": _summary(route.handler), "responses": {"200": {"description": "OK"}}}
        return {**op, "parameters": parameters} if parameters else op
    op = {"summary": endpoint.summary or _summary(endpoint.handler)}
    if endpoint.query is not None:
        schema = components[refs[(endpoint.query, "validation")]["$ref"].rsplit("/", 1)[1]]
        required = set(schema.get("required", ()))
        parameters += [{"name": name, "in": "query", "required": name in required, "schema": prop}
                       for name, prop in schema["properties"].items()]
    if parameters:
        op["parameters"] = parameters
    if endpoint.body is not None:
        op["requestBody"] = {"required": endpoint.body_required, "content": _json(refs, endpoint.body, "validation")}
    elif endpoint.form is not None:
        op["requestBody"] = {"required": True, "content": {
            "multipart/form-data": {"schema": refs[(endpoint.form, "validation")]}}}
    elif endpoint.raw_body is not None:
        op["requestBody"] = {"required": True, "content": {endpoint.raw_body: {"schema": {}}}}
    ok: dict = {"description": _STATUS_TEXT.get(endpoint.ok, "OK")}
    if endpoint.response is not None:
        ok["content"] = _json(refs, endpoint.response, "serialization")
    responses = {str(endpoint.ok): ok}
    refusals = dict(endpoint.errors)
    if endpoint.body or endpoint.form or endpoint.query:
        refusals.setdefault(400, ErrorResponse)
    for status, model in sorted(refusals.items()):
        responses[str(status)] = {"description": _STATUS_TEXT.get(status, "Error"),
                                  "content": _json(refs, model, "serialization")}
    op["responses"] = responses
    return op


def _summary(handler) -> str:
    doc = (getattr(handler, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""
