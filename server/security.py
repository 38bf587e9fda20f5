"""What stands between the network and the engine: the access token, the origin check and body limits.

The token travels as `Authorization: Bearer T`, as `?token=T` (which also sets a cookie so a browser
can open the editor from one link), or in that cookie. The origin check refuses pages of other sites
(and DNS-rebinding hosts) that try to drive a server bound to loopback through a user's browser.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import time
from collections import OrderedDict, deque
from urllib.parse import urlsplit

from aiohttp import web

from .errors import BadRequest, error_middleware

COOKIE = "genloom_token"
JSON_LIMIT = 32 * 1024 * 1024  # a prompt with an embedded UI workflow stays far below this
MIN_TOKEN = 16  # characters: a token is a secret, not a password to remember


class WeakToken(ValueError):
    """A token too short to stand between the network and the machine."""


def check_token(token: str | None) -> None:
    if token is not None and len(token) < MIN_TOKEN:
        raise WeakToken(f"the access token must be at least {MIN_TOKEN} characters long (got {len(token)})")


def hide_token(argv: list[str]) -> list[str]:
    """argv as shown to clients (/system_stats): the token's value replaced."""
    out, hide = [], False
    for arg in argv:
        if hide:
            out.append("***")
        elif arg.startswith("--token="):
            out.append("--token=***")
        else:
            out.append(arg)
        hide = arg == "--token"
    return out


class FailedAuth:
    """Failed authentications per client address: after `limit` within `window` seconds, every request
    from that address is refused (429) until the window has passed, so a token cannot be guessed
    by trying. Bounded: the oldest addresses are forgotten past `addresses`."""

    def __init__(self, limit: int = 10, window: float = 60.0, addresses: int = 4096):
        self.limit, self.window, self.addresses = limit, window, addresses
        self._failures: OrderedDict[str, deque] = OrderedDict()

    def _recent(self, address: str, now: float) -> deque | None:
        times = self._failures.get(address)
        if times is not None:
            while times and now - times[0] > self.window:
                times.popleft()
        return times

    def retry_after(self, address: str) -> float:
        """Seconds until this address may try again (0: now)."""
        now = time.monotonic()
        times = self._recent(address, now)
        if not times or len(times) < self.limit:
            return 0.0
        return max(0.0, self.window - (now - times[0]))

    def failed(self, address: str) -> None:
        now = time.monotonic()
        times = self._recent(address, now)
        if times is None:
            times = self._failures[address] = deque(maxlen=self.limit)
        self._failures.move_to_end(address)
        times.append(now)
        while len(self._failures) > self.addresses:
            self._failures.popitem(last=False)


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
    except RecursionError:
        raise BadRequest("the JSON body is nested too deeply", "invalid_json") from None


def _same(given: str, token: str) -> bool:
    """Constant-time comparison; header bytes that are not UTF-8 arrive as surrogates and never match."""
    try:
        return hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))
    except UnicodeEncodeError:
        return False


def make_middlewares(token: str | None, loopback_only: bool, failures: FailedAuth | None = None) -> list:
    """Errors outermost, so a refusal by the origin or token check gets the same JSON answer."""
    check_token(token)
    failures = failures or FailedAuth()
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
        address = request.remote or ""
        wait = failures.retry_after(address)
        if wait:
            raise BadRequest(f"too many failed authentications; try again in {wait:.0f} s", "rate_limited", 429)
        given = request.query.get("token")
        header = request.headers.get("Authorization", "")
        candidates = [given, header[7:] if header.startswith("Bearer ") else None, request.cookies.get(COOKIE)]
        if not any(c and _same(c, token) for c in candidates):
            failures.failed(address)
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
