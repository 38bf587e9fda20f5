"""What stands between the network and the engine: the access token, the origin check, body limits,
and the rule that a bad request gets a 400 with a message instead of a crash.

The token travels as `Authorization: Bearer T`, as `?token=T` (which also sets a cookie so a browser
can open the editor from one link), or in that cookie. The origin check refuses pages of other sites
(and DNS-rebinding hosts) that try to drive a server bound to loopback through a user's browser.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from urllib.parse import urlsplit

from aiohttp import web

log = logging.getLogger("genloom.server")

COOKIE = "genloom_token"
JSON_LIMIT = 32 * 1024 * 1024  # a prompt with an embedded UI workflow stays far below this


class BadRequest(Exception):
    """A client error with the message to send back (400 unless told otherwise)."""

    def __init__(self, message: str, type_: str = "invalid_request", status: int = 400):
        super().__init__(message)
        self.message, self.type, self.status = message, type_, status


def error_response(message: str, type_: str, status: int) -> web.Response:
    return web.json_response({"error": {"type": type_, "message": message, "details": "", "extra_info": {}}},
                             status=status)


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostname(netloc: str) -> str:
    return (urlsplit("//" + netloc).hostname or "").lower()


async def read_json(request: web.Request, limit: int = JSON_LIMIT, required: bool = True):
    """The request body as JSON, with a clear 400 for anything else and a 413 when too large."""
    if request.content_length is not None and request.content_length > limit:
        raise BadRequest(f"request body too large ({request.content_length} bytes, limit {limit})",
                         "request_too_large", 413)
    body = bytearray()
    while len(body) <= limit:  # one read returns what has arrived so far, not the whole body
        chunk = await request.content.read(limit + 1 - len(body))
        if not chunk:
            break
        body += chunk
    if len(body) > limit:
        raise BadRequest(f"request body too large (limit {limit} bytes)", "request_too_large", 413)
    if not body.strip():
        if required:
            raise BadRequest("the request body must be JSON", "invalid_json")
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON body: {exc}", "invalid_json") from None


def make_middlewares(token: str | None, loopback_only: bool) -> list:
    @web.middleware
    async def errors(request: web.Request, handler):
        try:
            return await handler(request)
        except BadRequest as exc:
            return error_response(exc.message, exc.type, exc.status)
        except web.HTTPRequestEntityTooLarge as exc:
            return error_response(f"request body too large: {exc.text}", "request_too_large", 413)
        except web.HTTPException:
            raise
        except Exception as exc:  # noqa: BLE001 - a request must never take the server down
            log.exception("error handling %s %s", request.method, request.path)
            return error_response(f"{type(exc).__name__}: {exc}", "server_error", 500)

    @web.middleware
    async def origin(request: web.Request, handler):
        host = request.headers.get("Host", "")
        if loopback_only and host and not is_loopback(_hostname(host)):
            return error_response(f"host {host!r} is not allowed on a loopback server", "forbidden", 403)
        origin_header = request.headers.get("Origin")
        if origin_header is not None:
            parts = urlsplit(origin_header)
            if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower():
                return error_response(f"cross-origin request from {origin_header!r} refused", "forbidden", 403)
        return await handler(request)

    @web.middleware
    async def auth(request: web.Request, handler):
        given = request.query.get("token")
        header = request.headers.get("Authorization", "")
        candidates = [given, header[7:] if header.startswith("Bearer ") else None, request.cookies.get(COOKIE)]
        if not any(c and hmac.compare_digest(c.encode(), token.encode()) for c in candidates):
            return error_response("an access token is required (Authorization: Bearer TOKEN or ?token=)",
                                  "unauthorized", 401)
        response = await handler(request)
        if given and not request.cookies.get(COOKIE) and isinstance(response, web.StreamResponse) \
                and not response.prepared:
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
        return response

    middlewares = [errors, origin]
    if token:
        middlewares.append(auth)
    return middlewares
