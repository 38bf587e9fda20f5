"""The server's recent log lines for the editor's terminal panel, and live lines to subscribed clients.

The editor reads /internal/logs/raw (`{entries: [{t, m}], size}`) when its logs tab opens, then
subscribes and receives `logs` websocket messages with new entries.
"""

from __future__ import annotations

import collections
import logging
import time

from aiohttp import web

from .endpoints import Endpoint
from .errors import BadRequest, json_response
from .schemas import LogsSubscribeBody, parse
from .security import read_json

KEEP = 2000
_SIZE = {"cols": None, "rows": None}


class LogBuffer(logging.Handler):
    def __init__(self, hub):
        super().__init__(logging.INFO)
        self.hub = hub
        self.entries: collections.deque = collections.deque(maxlen=KEEP)
        self.subscribers: set[str] = set()
        hub.on_disconnect.append(self.subscribers.discard)  # a client that left hears nothing more
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = {"t": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created)),
                     "m": self.format(record) + "\n"}
        except Exception:  # noqa: BLE001 - logging must never raise
            return
        self.entries.append(entry)
        loop = self.hub.loop
        if self.subscribers and loop is not None and not loop.is_closed():
            for sid in list(self.subscribers):
                self.hub.send_threadsafe(sid, "logs", {"entries": [entry], "size": _SIZE})

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("GET", "/internal/logs", self.get_text), Endpoint("GET", "/internal/logs/raw", self.get_raw),
                Endpoint("PATCH", "/internal/logs/subscribe", self.subscribe, body=LogsSubscribeBody)]

    async def get_text(self, request):
        """The recent log lines as one text."""
        return json_response("".join(e["m"] for e in self.entries))

    async def get_raw(self, request):
        """The recent log lines as entries {t, m}."""
        return json_response({"entries": list(self.entries), "size": _SIZE})

    async def subscribe(self, request):
        """Start or stop sending new log lines to a websocket client."""
        body = parse(LogsSubscribeBody, await read_json(request))
        if not body.clientId:  # the hub sends a message for no client to every client
            raise BadRequest("clientId must name a connected websocket client", "invalid_request")
        if body.enabled:
            self.subscribers.add(body.clientId)
        else:
            self.subscribers.discard(body.clientId)
        return web.Response(status=200)
