"""The server's request errors, strict JSON, and the one middleware that turns every error into a JSON
answer.

Handlers and the code they call raise `RequestError`s (genloom's domain error for "this request cannot
be served") instead of building error responses by hand, so every refusal has the same shape and no
handler can forget one. The shapes are ComfyUI's: `{"error": {type, message, details, extra_info}}`
for a bad request, `{"error": {type, message}}` for a missing or conflicting resource. Every JSON
answer is strict JSON (a NaN a node produced becomes null: browsers' JSON.parse rejects NaN), and no
error answer shows an absolute server path.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

from aiohttp import web

from ..engine.errors import RequestError
from ..engine.folders import UnsafePath, safe_join

log = logging.getLogger("genloom.server")

NAME_MAX = 255  # bytes per path component on every common file system


def error_body(message: str, type_: str) -> dict:
    return {"error": {"type": type_, "message": message, "details": "", "extra_info": {}}}


class BadRequest(RequestError):
    """A client error with the message to send back (400 unless told otherwise)."""

    def __init__(self, message: str, type_: str = "invalid_request", status: int = 400):
        super().__init__(status, message, error_body(message, type_))
        self.type = type_


class NotFound(RequestError):
    def __init__(self, message: str, type_: str = "not_found"):
        super().__init__(404, message, {"error": {"type": type_, "message": message}})


class Conflict(RequestError):
    def __init__(self, message: str, type_: str = "exists"):
        super().__init__(409, message, {"error": {"type": type_, "message": message}})


def safe_path(base: Path, *parts: str) -> Path:
    """`engine.folders.safe_join` for request input: traversal is a 403, an over-long name a 400."""
    for part in parts:
        for segment in (part or "").replace("\\", "/").split("/"):
            if len(segment.encode("utf-8", "surrogatepass")) > NAME_MAX:
                raise BadRequest(f"a path component is longer than {NAME_MAX} bytes", "invalid_filename")
    try:
        return safe_join(base, *parts)
    except UnsafePath as exc:
        raise BadRequest(str(exc), "invalid_path", 403) from None


# --- strict JSON ---

def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(value) -> str:
    """Strict JSON: NaN and infinities become null; anything not JSON its str()."""
    try:
        return json.dumps(value, allow_nan=False, default=str)
    except ValueError:
        return json.dumps(_finite(value), allow_nan=False, default=str)


def json_response(data, status: int = 200, **kwargs) -> web.Response:
    return web.json_response(data, status=status, dumps=dumps, **kwargs)


# --- no absolute paths in error messages ---

# An absolute path: a slash (or drive letter) after a start, blank, quote or bracket, then folders.
_ABSOLUTE = re.compile(r"(?<![\w:/.~-])(?:[A-Za-z]:)?[/\\](?:[^\s'\"/\\<>|:*?]+[/\\])+")


def redact(text: str) -> str:
    """`text` with every absolute folder prefix dropped: '/srv/data/input/a.png' reads '…/a.png'."""
    return _ABSOLUTE.sub("\u2026/", text) if ("/" in text or "\\" in text) else text


def redact_tree(value):
    """`redact` over every string of a JSON value (error payloads)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_tree(v) for v in value]
    return value


@web.middleware
async def error_middleware(request: web.Request, handler):
    """Request errors become their JSON body; anything unexpected a 500 with a message, never a crash."""
    try:
        return await handler(request)
    except RequestError as exc:
        return json_response(redact_tree(exc.body), status=exc.status)
    except web.HTTPRequestEntityTooLarge as exc:
        return json_response(error_body(f"request body too large: {exc.text}", "request_too_large"),
                             status=413)
    except web.HTTPMethodNotAllowed as exc:  # the router's answer, in the same JSON shape as ours
        allowed = ", ".join(sorted(exc.allowed_methods))
        return json_response(error_body(f"method {request.method} is not allowed here; allowed: {allowed}",
                                        "method_not_allowed"), status=405, headers={"Allow": allowed})
    except web.HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - a request must never take the server down
        log.exception("error handling %s %s", request.method, request.path)
        return json_response(error_body(redact(f"{type(exc).__name__}: {exc}"), "server_error"), status=500)


