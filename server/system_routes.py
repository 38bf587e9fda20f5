"""Node definitions, system and device information, model folders and the editor's stub lists.

The routes get the engine service (definitions, devices, freeing memory; all blocking, so they run
off the loop), the file areas for the asset browser, the server's feature flags and its argv.
"""

from __future__ import annotations

import asyncio
import os
import platform
import sys
from importlib import metadata

from aiohttp import web

from .. import __version__
from ..engine.folders import MODEL_FOLDERS
from .endpoints import Endpoint
from .engine_service import EngineService
from .errors import NotFound, json_response
from .files import Files
from .schemas import ErrorResponse, FreeBody, SystemStats, parse
from .security import hide_token, read_json

# The ComfyUI API level genloom speaks, reported where the editor expects ComfyUI's version.
COMFYUI_API_VERSION = "0.15.0"


class SystemRoutes:
    def __init__(self, engine: EngineService, files: Files, server_flags: dict, argv: list[str]):
        self.engine, self.files, self.server_flags, self.argv = engine, files, server_flags, argv
        self.folders = engine.folders

    def endpoints(self) -> list[Endpoint]:
        missing = {404: ErrorResponse}
        return [
            Endpoint("GET", "/object_info", self.object_info),
            Endpoint("GET", "/object_info/{node_class}", self.object_info_one),
            Endpoint("POST", "/free", self.free, body=FreeBody, body_required=False),
            Endpoint("GET", "/system_stats", self.system_stats, response=SystemStats),
            Endpoint("GET", "/features", self.features),
            Endpoint("GET", "/embeddings", self.embeddings),
            Endpoint("GET", "/models", self.models),
            Endpoint("GET", "/models/{folder}", self.models_in, errors=missing),
            Endpoint("GET", "/experiment/models", self.experiment_models),
            Endpoint("GET", "/experiment/models/{folder}", self.experiment_models_in, errors=missing),
            Endpoint("GET", "/internal/folder_paths", self.folder_paths),
            Endpoint("GET", "/internal/files/{kind}", self.list_files),
            *(Endpoint("GET", path, _constant(value), summary="empty: genloom has none")
              for path, value in (("/i18n", {}), ("/global_subgraphs", {}), ("/node_replacements", {}))),
        ]

    async def object_info(self, request):
        """Every node's definition (COMBO lists evaluated with this server's folders)."""
        return json_response(await asyncio.get_running_loop().run_in_executor(None, self.engine.object_info))

    async def object_info_one(self, request):
        """One node's definition ({} for an unknown class)."""
        name = request.match_info["node_class"]
        info = await asyncio.get_running_loop().run_in_executor(None, self.engine.object_info, name)
        return json_response(info)

    async def free(self, request):
        """Unload models and free memory."""
        body = parse(FreeBody, await read_json(request, required=False) or {})
        if body.unload_models or body.free_memory:
            await asyncio.get_running_loop().run_in_executor(None, self.engine.free)
        return web.Response(status=200)

    async def system_stats(self, request):
        """System, versions and devices; argv includes --disable-api-nodes."""
        devices = await asyncio.get_running_loop().run_in_executor(None, self.engine.devices)
        total, free = _memory()
        argv = hide_token(self.argv)
        if "--disable-api-nodes" not in argv:
            argv.append("--disable-api-nodes")  # tells the editor not to call out to the internet
        return json_response({
            "system": {"os": sys.platform, "ram_total": total, "ram_free": free,
                       "comfyui_version": COMFYUI_API_VERSION, "genloom_version": __version__,
                       "required_frontend_version": "", "installed_templates_version": "",
                       "required_templates_version": "",
                       "python_version": sys.version, "pytorch_version": _version("torch"),
                       "embedded_python": False, "argv": argv, "platform": platform.platform()},
            "devices": devices})

    async def features(self, request):
        """The server's feature flags (also the websocket's feature_flags)."""
        return json_response(self.server_flags)

    async def embeddings(self, request):
        """Embedding names, without extensions."""
        names = self.folders.list_models("embeddings")
        return json_response([os.path.splitext(n)[0] for n in names])

    async def models(self, request):
        """The model folder kinds."""
        return json_response(list(MODEL_FOLDERS))

    async def models_in(self, request):
        """The files of one model folder kind."""
        return json_response(self.folders.list_models(_model_folder(request)))

    async def folder_paths(self, request):
        """Where each model folder kind is looked for."""
        return json_response({kind: [str(d / kind) for d in self.folders.models_dirs] for kind in MODEL_FOLDERS})

    async def list_files(self, request):
        """The names of the files directly in the input/output/temp folder, newest first, as ComfyUI
        lists them (LoadImageOutput's refresh, the asset browser). Links and half-written uploads
        (dot files) are left out, as /view refuses links."""
        folder = self.files.folder(request.match_info["kind"])
        files = [p for p in folder.iterdir() if not p.is_symlink() and p.is_file() and not p.name.startswith(".")] \
            if folder.is_dir() else []
        files.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        return json_response([p.name for p in files])

    async def experiment_models(self, request):
        """The model folder kinds with their folders."""
        return json_response([{"name": kind, "folders": [str(d / kind) for d in self.folders.models_dirs]}
                                  for kind in MODEL_FOLDERS])

    async def experiment_models_in(self, request):
        """The files of one model folder kind, as the model library lists them."""
        return json_response([{"name": n, "pathIndex": 0}
                                  for n in self.folders.list_models(_model_folder(request))])


def _model_folder(request) -> str:
    folder = request.match_info["folder"]
    if folder not in MODEL_FOLDERS:
        raise NotFound(f"unknown model folder {folder!r}")
    return folder


def _constant(value):
    async def handler(request):
        return json_response(value)
    return handler


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def _memory() -> tuple[int, int]:
    try:
        fields = {}
        with open("/proc/meminfo") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                fields[key] = int(rest.split()[0]) * 1024
        return fields.get("MemTotal", 0), fields.get("MemAvailable", 0)
    except (OSError, ValueError):
        return 0, 0
