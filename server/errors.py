"""The server's request errors, and the one middleware that turns every error into a JSON answer.

Handlers and the code they call raise `RequestError`s (genloom's domain error for "this request cannot
be served") instead of building error responses by hand, so every refusal has the same shape and no
handler can forget one. The shapes are ComfyUI's: `{"error": {type, message, details, extra_info}}`
for a bad request, `{"error": {type, message}}` for a missing or conflicting resource.
"""

from __future__ import annotations

import logging

from aiohttp import web

from ..engine.errors import RequestError

log = logging.getLogger("genloom.server")


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


@web.middleware
async def error_middleware(request: web.Request, handler):
    """Request errors become their JSON body; anything unexpected a 500 with a message, never a crash."""
    try:
        return await handler(request)
    except RequestError as exc:
        return web.json_response(exc.body, status=exc.status)
    except web.HTTPRequestEntityTooLarge as exc:
        return web.json_response(error_body(f"request body too large: {exc.text}", "request_too_large"),
                                 status=413)
    except web.HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - a request must never take the server down
        log.exception("error handling %s %s", request.method, request.path)
        return web.json_response(error_body(f"{type(exc).__name__}: {exc}", "server_error"), status=500)
