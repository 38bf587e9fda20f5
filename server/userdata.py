"""The editor's per-user storage: settings and files (saved workflows land in user/default/workflows).

genloom serves one user, "default", which is what the editor expects of a single-user server
(`{"storage": "server", "migrated": true}`). Every path from a request stays inside that user's folder.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from urllib.parse import unquote

from aiohttp import web

from .endpoints import Endpoint
from .errors import BadRequest, Conflict, dumps, json_response, safe_path
from .schemas import SettingsBody, SettingValue, parse
from .security import read_json

USER = "default"
SETTINGS_FILE = "comfy.settings.json"
DEFAULT_QUOTA = 1024 ** 3  # bytes per user folder


class UserData:
    def __init__(self, user_root: Path, quota: int = DEFAULT_QUOTA):
        self.root = Path(user_root) / USER
        self.quota = quota
        for folder in ("workflows", "subgraphs"):  # the editor lists these at boot
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self._settings_lock = threading.Lock()

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("GET", "/users", self.get_users),
            Endpoint("POST", "/users", self.post_users),
            Endpoint("GET", "/settings", self.get_settings, response=SettingsBody),
            Endpoint("POST", "/settings", self.post_settings, body=SettingsBody),
            Endpoint("GET", "/settings/{id}", self.get_setting, response=SettingValue),
            Endpoint("POST", "/settings/{id}", self.post_setting, body=SettingValue),
            Endpoint("GET", "/userdata", self.list_files),
            Endpoint("GET", "/v2/userdata", self.list_v2),
            Endpoint("GET", "/userdata/{file}", self.get_file),
            Endpoint("POST", "/userdata/{file}", self.post_file, raw_body="application/octet-stream"),
            Endpoint("DELETE", "/userdata/{file}", self.delete_file, ok=204),
            Endpoint("POST", "/userdata/{file}/move/{dest}", self.move_file),
        ]

    def path(self, rel: str) -> Path:
        rel = unquote(rel or "")
        if not rel.strip("/"):
            raise BadRequest("a file path is required", "invalid_path")
        return safe_path(self.root, rel)

    def writable(self, rel: str, size: int) -> Path:
        """Where a write of `size` bytes to `rel` goes: never below a file (the server's settings file
        must stay a file), never over a folder, and within the folder's quota."""
        path = self.path(rel)
        for parent in path.parents:
            if parent == self.root:
                break
            if parent == self._settings_path() or parent.is_file():
                raise Conflict(f"{parent.relative_to(self.root).as_posix()} is a file, not a folder", "not_a_folder")
        if path.is_dir():
            raise Conflict(f"{path.relative_to(self.root).as_posix()} is a folder", "is_a_folder")
        self._check_quota(size - (path.stat().st_size if path.is_file() else 0))
        return path

    def _check_quota(self, growth: int) -> None:
        if growth <= 0:
            return
        used = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
        if used + growth > self.quota:
            raise BadRequest(f"the user folder's quota of {self.quota} bytes would be exceeded "
                             f"({used} used, {growth} more asked)", "quota_exceeded", 413)

    # --- users ---

    async def get_users(self, request):
        """Single-user storage: {"storage": "server", "migrated": true}."""
        return json_response({"storage": "server", "migrated": True})

    async def post_users(self, request):
        """Refused: genloom serves one user, "default"."""
        raise BadRequest("genloom serves a single user; there are no users to create", "single_user")

    # --- settings ---

    def _settings_path(self) -> Path:
        return self.root / SETTINGS_FILE

    def load_settings(self) -> dict:
        try:
            data = json.loads(self._settings_path().read_text("utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _update_settings(self, changes: dict) -> None:
        with self._settings_lock:
            settings = self.load_settings()
            settings.update(changes)
            data = dumps(settings).encode()
            path = self._settings_path()
            self._check_quota(len(data) - (path.stat().st_size if path.is_file() else 0))
            _atomic_write(path, data)

    async def get_settings(self, request):
        """Every setting the editor stored."""
        return json_response(self.load_settings())

    async def get_setting(self, request):
        """One setting's value (null when unset)."""
        return json_response(self.load_settings().get(request.match_info["id"]))

    async def post_settings(self, request):
        """Change several settings: {id: value}."""
        self._update_settings(parse(SettingsBody, await read_json(request)).root)
        return web.Response(status=200)

    async def post_setting(self, request):
        """Change one setting; the body is its new value."""
        self._update_settings({request.match_info["id"]: await read_json(request)})
        return web.Response(status=200)

    # --- files ---

    def _info(self, path: Path, base: Path) -> dict:
        st = path.stat()
        return {"path": path.relative_to(base).as_posix(), "size": st.st_size, "modified": st.st_mtime}

    async def list_files(self, request):
        """The files under ?dir= (recurse, full_info and split as the editor asks)."""
        q = request.query
        if not q.get("dir"):
            raise BadRequest("the 'dir' query parameter is required", "invalid_path")
        base = self.path(q["dir"])
        if not base.is_dir():
            raise web.HTTPNotFound(text=f"no such folder: {q['dir']}")
        recurse = q.get("recurse", "").lower() == "true"
        files = sorted(p for p in (base.rglob("*") if recurse else base.iterdir())
                       if p.is_file() and not p.name.startswith("."))
        if q.get("full_info", "").lower() == "true":
            return json_response([self._info(p, base) for p in files])
        rel = [p.relative_to(base).as_posix() for p in files]
        if q.get("split", "").lower() == "true":
            return json_response([[r, *r.split("/")] for r in rel])
        return json_response(rel)

    async def list_v2(self, request):
        """The entries of ?path= (files and folders)."""
        rel = request.query.get("path", "")
        base = self.path(rel) if rel.strip("/") else self.root
        if not base.is_dir():
            raise web.HTTPNotFound(text=f"no such folder: {rel}")
        out = []
        for p in sorted(base.iterdir()):
            if p.name.startswith("."):
                continue
            item = {"name": p.name, "path": p.relative_to(self.root).as_posix(),
                    "type": "directory" if p.is_dir() else "file"}
            if p.is_file():
                st = p.stat()
                item.update(size=st.st_size, modified=st.st_mtime)
            out.append(item)
        return json_response(out)

    async def get_file(self, request):
        """A user file (the path URL-encoded: workflows%2Fa.json)."""
        path = self.path(request.match_info["file"])
        if not path.is_file():
            raise web.HTTPNotFound(text="file not found")
        return web.FileResponse(path)

    async def post_file(self, request):
        """Write a user file (409 when it exists and ?overwrite=false)."""
        body = await request.read()
        path = self.writable(request.match_info["file"], len(body))
        overwrite = request.query.get("overwrite", "true").lower() != "false"
        if path.exists() and not overwrite:
            raise Conflict("file exists")
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, body)
        return self._written(request, path)

    def _written(self, request, path: Path):
        if request.query.get("full_info", "").lower() == "true":
            return json_response(self._info(path, self.root))
        return json_response(path.relative_to(self.root).as_posix())

    async def delete_file(self, request):
        """Delete a user file."""
        path = self.path(request.match_info["file"])
        if not path.is_file():
            raise web.HTTPNotFound(text="file not found")
        path.unlink()
        return web.Response(status=204)

    async def move_file(self, request):
        """Move a user file (409 when the destination exists and ?overwrite=false)."""
        source = self.path(request.match_info["file"])
        if not source.is_file():
            raise web.HTTPNotFound(text="file not found")
        dest = self.writable(request.match_info["dest"], 0)
        overwrite = request.query.get("overwrite", "true").lower() != "false"
        if dest.exists() and not overwrite:
            raise Conflict("destination exists")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, dest)
        return self._written(request, dest)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
