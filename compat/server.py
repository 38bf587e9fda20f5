"""ComfyUI's `server` module for node packs: `PromptServer.instance`.

A pack decorates `PromptServer.instance.routes` at import (`@routes.get("/my/route")`); genloom's
server adds those routes to its aiohttp app (at `/x` and `/api/x`), behind its own token, origin and
Host checks. `send_sync`/`send` reach the editor's websocket when a server is attached, otherwise
(the CLI) the running prompt's event stream, and are dropped outside a run. `client_id` is the client
of the prompt submitted last, `last_node_id` the node running now; on-prompt handlers see (and may
change) each submitted prompt body before it is validated.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from aiohttp import web

from ._services import in_run, run_context

log = logging.getLogger("genloom.compat.server")


class BinaryEventTypes:
    PREVIEW_IMAGE = 1
    UNENCODED_PREVIEW_IMAGE = 2
    TEXT = 3
    PREVIEW_IMAGE_WITH_METADATA = 4


class PromptServer:
    instance: "PromptServer"

    def __init__(self):
        PromptServer.instance = self
        self.loop = None
        self.client_id: str | None = None
        self.supports = ["custom_nodes_from_web"]
        self.sockets: dict = {}  # genloom's websocket clients are the server's own
        self._sender: Callable[[str, Any, str | None], None] | None = None
        self._binary_sender: Callable[[bytes, str | None], None] | None = None
        self._app: web.Application | None = None  # genloom's aiohttp app, once a server attached
        self.fresh()

    def fresh(self) -> None:
        """Forget what packs registered: they register again each time a registry loads them."""
        self.routes = web.RouteTableDef()
        self.on_prompt_handlers: list[Callable[[dict], dict]] = []
        self._placeholder: web.Application | None = None

    @property
    def app(self) -> web.Application:
        """The server's app once attached; before that (packs importing) an app whose routes
        genloom's server takes over when it starts."""
        if self._app is not None:
            return self._app
        if self._placeholder is None:
            self._placeholder = web.Application()
        return self._placeholder

    def routes_added_to_app(self) -> list:
        """Resources packs added straight to `app.router` before the server started."""
        return list(self._placeholder.router.resources()) if self._placeholder is not None else []

    # ---- wiring (genloom's server calls this; compat never imports the server) ----
    def attach(self, app, loop, send: Callable[[str, Any, str | None], None],
               send_bytes: Callable[[bytes, str | None], None] | None = None) -> None:
        self._app, self.loop, self._sender, self._binary_sender = app, loop, send, send_bytes

    def detach(self) -> None:
        self._app = self.loop = self._sender = self._binary_sender = None

    @property
    def last_node_id(self) -> str | None:
        return run_context().node_id if in_run() else None

    @property
    def last_prompt_id(self) -> str | None:
        return run_context().prompt_id if in_run() else None

    # ---- what packs call ----
    def send_sync(self, event, data, sid: str | None = None) -> None:
        """A JSON event (`event` a string) or, for a BinaryEventTypes number, a binary frame: the
        4-byte big-endian type, then the payload bytes."""
        if isinstance(event, int):
            if self._binary_sender is not None and isinstance(data, (bytes, bytearray)):
                self._binary_sender(event.to_bytes(4, "big") + bytes(data), sid)
            return
        if self._sender is not None:
            self._sender(event, data, sid)
        elif in_run():
            run_context().emit(event, data)

    async def send(self, event, data, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    def send_progress_text(self, text, node_id, sid: str | None = None) -> None:
        """Text the editor shows on a node: a binary TEXT frame (node id length, node id, text) to the
        editor; in the CLI a `progress_text` event of the run."""
        if self._binary_sender is None:
            if in_run():
                run_context().emit("progress_text", {"text": str(text), "node": str(node_id)})
            return
        raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        node = str(node_id).encode("utf-8")
        self.send_sync(BinaryEventTypes.TEXT, len(node).to_bytes(4, "big") + node + raw, sid)

    def add_on_prompt_handler(self, handler: Callable[[dict], dict]) -> None:
        self.on_prompt_handlers.append(handler)

    def trigger_on_prompt(self, json_data: dict) -> dict:
        """Each handler in turn may replace the prompt body; one that raises is logged and skipped."""
        for handler in self.on_prompt_handlers:
            try:
                json_data = handler(json_data)
            except Exception:  # noqa: BLE001 - a pack's handler must not refuse every prompt
                log.exception("an on-prompt handler of a node pack failed")
        if isinstance(json_data, dict) and json_data.get("client_id"):
            self.client_id = json_data["client_id"]
        return json_data

    def add_routes(self) -> None:
        """genloom's server adds the routes itself (see genloom.server.extensions)."""

    def queue_updated(self) -> None:
        """The queue view is genloom's server's: nothing to do for a pack."""


PromptServer()
