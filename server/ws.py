"""The /ws endpoint and the hub that routes events: a prompt's events to its submitter, status to all.

Every connection has its own outgoing queue drained by one task, so messages reach a client in the
order they were produced, and the worker thread only ever does a non-blocking `put_nowait` through
`call_soon_threadsafe`. The queue status comes from an async callable (the queue service), so
greeting a client or broadcasting a change never waits on storage on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import uuid

from typing import Awaitable, Callable

from aiohttp import WSMsgType, web

from .endpoints import Endpoint
from .errors import dumps

log = logging.getLogger("genloom.server")

PREVIEW_IMAGE = 1  # the binary event type of every image frame
MAX_CLIENT_ID = 128
IMAGE_FORMATS = {"JPEG": 1, "PNG": 2}  # the frame's second word: how its image bytes are encoded


def preview_frame(image, fmt: str = "JPEG") -> bytes:
    """A binary image frame as ComfyUI sends one: event type PREVIEW_IMAGE (4 bytes, big-endian), the
    format (4 bytes: 1 JPEG, 2 PNG), then the encoded picture. Sampling previews are JPEG;
    SaveImageWebsocket's images are PNG, lossless. The encoder settings are ComfyUI's (quality 95,
    PNG compression level 1)."""
    import io

    fmt = fmt.upper() if isinstance(fmt, str) and fmt.upper() in IMAGE_FORMATS else "JPEG"
    buf = io.BytesIO()
    if fmt == "PNG":
        image.save(buf, format="PNG", compress_level=1)
    else:
        image.convert("RGB").save(buf, format="JPEG", quality=95)
    return struct.pack(">II", PREVIEW_IMAGE, IMAGE_FORMATS[fmt]) + buf.getvalue()


class Client:
    def __init__(self, sid: str, ws: web.WebSocketResponse):
        self.sid, self.ws = sid, ws
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.feature_flags: dict = {}
        self.held: list | None = []  # messages for this client until its greeting is queued
        self.task = asyncio.get_running_loop().create_task(self._drain())

    def deliver(self, msg) -> None:
        if self.held is not None:
            self.held.append(msg)
        else:
            self.outbox.put_nowait(msg)

    def greet(self, greeting: str) -> None:
        """Queue the greeting, then what arrived while it was being made: the greeting stays first and
        nothing sent meanwhile is lost."""
        self.outbox.put_nowait(greeting)
        for msg in self.held or ():
            self.outbox.put_nowait(msg)
        self.held = None

    async def _drain(self) -> None:
        while True:
            msg = await self.outbox.get()
            if msg is None:
                return
            try:
                if isinstance(msg, bytes):
                    await self.ws.send_bytes(msg)
                else:
                    await self.ws.send_str(msg)
            except (ConnectionError, RuntimeError):
                return


class Hub:
    """Connected clients by sid (the clientId they connected with, or a fresh one)."""

    def __init__(self, status: Callable[[], Awaitable[dict]], server_flags: dict):
        self.clients: dict[str, Client] = {}
        self._status = status  # async () -> status event data
        self.server_flags = server_flags
        self.loop: asyncio.AbstractEventLoop | None = None
        self.on_disconnect: list[Callable[[str], None]] = []  # called with a sid once its client left

    # Called on the loop thread. A prompt submitted without a client_id has no one to report to:
    # its events go to every client, as ComfyUI's do.
    def send(self, sid: str | None, event: str, data) -> None:
        self._put(sid, dumps({"type": event, "data": data}))

    def send_bytes(self, sid: str | None, frame: bytes) -> None:
        self._put(sid, frame)

    def _put(self, sid: str | None, msg) -> None:
        if not sid:
            for client in list(self.clients.values()):
                client.deliver(msg)
            return
        client = self.clients.get(sid)
        if client is not None:
            client.deliver(msg)

    def listening(self, sid: str | None) -> bool:
        """Whether anyone would receive a prompt's events (saves encoding previews for no one)."""
        return bool(self.clients) if not sid else sid in self.clients

    async def broadcast_status(self) -> None:
        self.send(None, "status", await self._status())

    # Called from any thread.
    def send_threadsafe(self, sid, event, data) -> None:
        self.loop.call_soon_threadsafe(self.send, sid, event, data)

    def send_bytes_threadsafe(self, sid, frame: bytes) -> None:
        self.loop.call_soon_threadsafe(self.send_bytes, sid, frame)

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("GET", "/ws", self.handle, ok=101)]

    async def close_all(self) -> None:
        for client in list(self.clients.values()):
            client.outbox.put_nowait(None)
            await client.ws.close(code=1001, message=b"server shutting down")

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """The event websocket: ?clientId=ID receives that client's prompts' events and every status."""
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=1 << 20)
        await ws.prepare(request)
        sid = request.query.get("clientId") or ""
        if not sid or len(sid) > MAX_CLIENT_ID:
            sid = uuid.uuid4().hex
        old = self.clients.pop(sid, None)
        if old is not None:  # the same client reconnecting: the newer socket wins
            old.outbox.put_nowait(None)
        client = Client(sid, ws)
        self.clients[sid] = client  # registered at once: events sent while the status is read are held
        status = await self._status()
        client.greet(json.dumps({"type": "status", "data": {**status, "sid": sid}}))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._on_text(client, msg.data)
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            if self.clients.get(sid) is client:  # not replaced by a newer socket of the same client
                del self.clients[sid]
                for forget in self.on_disconnect:
                    forget(sid)
            client.outbox.put_nowait(None)
        return ws

    def _on_text(self, client: Client, text: str) -> None:
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError):
            log.debug("ignored a websocket message that is not JSON from %s", client.sid)
            return
        if isinstance(msg, dict) and msg.get("type") == "feature_flags":
            data = msg.get("data")
            client.feature_flags = data if isinstance(data, dict) else {}
            client.outbox.put_nowait(json.dumps({"type": "feature_flags", "data": self.server_flags}))
