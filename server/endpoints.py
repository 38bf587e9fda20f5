"""How a route is declared: method, path, handler and the models of what it takes and answers.

Each group of routes (prompt_routes, job_routes, system_routes, files, userdata, logs, ws) returns a
list of `Endpoint`s; `register` adds each at `/x` and `/api/x`, as ComfyUI answers both, and keeps the
declarations on the app, where openapi.py reads them. The models are the ones the handler parses with
(schemas.py), so the document says what the server checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from aiohttp import web
from pydantic import BaseModel

ENDPOINTS = web.AppKey("genloom_endpoints", list)


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Callable
    summary: str = ""
    body: type[BaseModel] | None = None  # a JSON request body
    body_required: bool = True
    form: type[BaseModel] | None = None  # a multipart/form-data request body
    raw_body: str | None = None  # the media type of any other request body
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None  # the JSON answer on success
    ok: int = 200
    errors: dict[int, type[BaseModel]] = field(default_factory=dict)  # refusals with their own shape


def register(app: web.Application, endpoints: list[Endpoint]) -> None:
    declared = app.setdefault(ENDPOINTS, [])
    for endpoint in endpoints:
        for path in (endpoint.path, "/api" + endpoint.path):
            app.router.add_route(endpoint.method, path, endpoint.handler)
        declared.append(endpoint)
