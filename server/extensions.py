"""What node packs add to the server: their web extensions (WEB_DIRECTORY) and their own routes.

`GET /extensions` lists the JavaScript files of every loaded pack's web folder as
`/extensions/<pack>/<file>` (the editor imports each), and those files are served from there. Routes a
pack decorated on `PromptServer.instance.routes` (genloom.compat.server) are added at `/x` and
`/api/x`, folders it declared with `routes.static(prefix, folder)` likewise (confined to the folder:
'..', absolute names and links leading out are refused); the app's middlewares (token, origin and
Host checks) guard them like every other route. The compat PromptServer is wired to the websocket
hub, so a pack's `send_sync` reaches the editor.
"""

from __future__ import annotations

import logging
import mimetypes
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from ..engine.folders import UnsafePath, safe_join
from .endpoints import Endpoint
from ..engine.errors import RequestError

log = logging.getLogger("genloom.server")


class Extensions:
    def __init__(self, packs: dict, editor_static: Path | None = None):
        self.web_dirs = {name: Path(p["web_dir"]) for name, p in packs.items() if p.get("web_dir")}
        # The editor's own /extensions/core/... files, which pack scripts import, stay reachable.
        self.editor_extensions = editor_static / "extensions" if editor_static is not None else None

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("GET", "/extensions", self.list, summary="the editor extensions of node packs"),
                Endpoint("GET", "/extensions/{pack}/{path:.+}", self.file,
                         summary="a file of a node pack's web folder")]

    def scripts(self) -> list[str]:
        out = []
        for name, root in sorted(self.web_dirs.items()):
            for path in sorted(root.rglob("*.js")):
                out.append(f"/extensions/{quote(name)}/{quote(path.relative_to(root).as_posix())}")
        return out

    async def list(self, request):
        """The extension scripts the editor loads."""
        return web.json_response(self.scripts())

    async def file(self, request):
        """One file of a pack's web folder."""
        pack = request.match_info["pack"]
        root = self.web_dirs.get(pack)
        if root is None and self.editor_extensions is not None and (self.editor_extensions / pack).is_dir():
            root = self.editor_extensions / pack
        if root is None:
            raise RequestError(404, "no such extension")
        return folder_file(root, request.match_info["path"])


def folder_file(root: Path, relative: str) -> web.FileResponse:
    """The file `relative` names under `root`; '..', absolute names and links leading out are refused."""
    try:
        path = safe_join(root, relative)
    except UnsafePath:
        raise RequestError(403, "path not allowed") from None
    if not path.is_file():
        raise RequestError(404, "no such file")
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if path.suffix == ".js":
        kind = "application/javascript"
    return web.FileResponse(path, headers={"Content-Type": kind, "Cache-Control": "no-cache"})


def _static(folder: str):
    """A GET handler serving the files of a folder a pack declared with routes.static()."""
    root = Path(folder)

    async def serve(request):
        return folder_file(root, request.match_info["path"])

    return serve


def prompt_server():
    """The compat PromptServer when genloom loaded plugin packs (compat installed), else None."""
    from .. import compat

    if not compat.installed():
        return None
    from ..compat.server import PromptServer

    return PromptServer.instance


def add_pack_routes(app: web.Application, instance) -> int:
    """Add the routes packs decorated at import, at /x and /api/x; one that clashes with a route
    already there is skipped and logged. Returns how many were added."""
    added = 0
    latest = {}  # a pack loaded again (another registry in this process) declares its routes again
    for route in instance.routes:
        if isinstance(route, web.RouteDef):
            latest[(route.method, route.path)] = (route.method, route.path, route.handler, route.kwargs)
        elif isinstance(route, web.StaticDef):  # routes.static(prefix, folder): the folder's files
            path = route.prefix.rstrip("/") + "/{path:.+}"
            latest[("GET", path)] = ("GET", path, _static(route.path), {})
    for method, route_path, handler, kwargs in latest.values():
        for path in (route_path, "/api" + route_path):
            try:
                app.router.add_route(method, path, handler, **kwargs)
                added += 1
            except (RuntimeError, ValueError) as exc:
                log.warning("node pack route %s %s not added: %s", method, path, exc)
    for resource in instance.routes_added_to_app():
        try:
            app.router.register_resource(resource)
            added += 1
        except (RuntimeError, ValueError) as exc:
            log.warning("node pack route %s not added: %s", resource.canonical, exc)
    return added


def attach(instance, hub, app) -> None:
    """Point the pack-facing PromptServer at the websocket hub (called once the loop runs)."""
    instance.attach(app, hub.loop, send=lambda event, data, sid=None: hub.send_threadsafe(sid, event, data),
                    send_bytes=lambda frame, sid=None: hub.send_bytes_threadsafe(sid, frame))
