"""What stands between the network and the engine: the access token, the origin check and body limits.

The token travels as `Authorization: Bearer T`, as `?token=T` (which also sets a cookie so a browser
can open the editor from one link), or in that cookie. The origin check refuses pages of other sites
(and DNS-rebinding hosts) that try to drive a server bound to loopback through a user's browser.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from urllib.parse import urlsplit

from aiohttp import web

from .errors import BadRequest, error_middleware

COOKIE = "genloom_token"
JSON_LIMIT = 32 * 1024 * 1024  # a prompt with an embedded UI workflow stays far below this


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
    """Errors outermost, so a refusal by the origin or token check gets the same JSON answer."""
    @web.middleware
    async def origin(request: web.Request, handler):
        host = request.headers.get("Host", "")
        if loopback_only and host and not is_loopback(_hostname(host)):
            raise BadRequest(f"host {host!r} is not allowed on a loopback server", "forbidden", 403)
        origin_header = request.headers.get("Origin")
        if origin_header is not None:
            parts = urlsplit(origin_header)
            if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower():
                raise BadRequest(f"cross-origin request from {origin_header!r} refused", "forbidden", 403)
        return await handler(request)

    @web.middleware
    async def auth(request: web.Request, handler):
        given = request.query.get("token")
        header = request.headers.get("Authorization", "")
        candidates = [given, header[7:] if header.startswith("Bearer ") else None, request.cookies.get(COOKIE)]
        if not any(c and hmac.compare_digest(c.encode(), token.encode()) for c in candidates):
            raise BadRequest("an access token is required (Authorization: Bearer TOKEN or ?token=)",
                             "unauthorized", 401)
        response = await handler(request)
        if given and not request.cookies.get(COOKIE) and isinstance(response, web.StreamResponse) \
                and not response.prepared:
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
        return response

    middlewares = [error_middleware, origin]
    if token:
        middlewares.append(auth)
    return middlewares
