"""ComfyUI's HTTP API over genloom's engine, queue and folders.

Each handler turns a request into a call on the `Server` state and back into ComfyUI's JSON shapes;
request bodies are checked field by field so a bad one gets a 400 naming the field.
"""

from __future__ import annotations

import asyncio
import os
import platform
import sqlite3
import sys
import uuid
from importlib import metadata

from aiohttp import web

from .. import __version__
from ..engine.folders import MODEL_FOLDERS
from .jobs import history_entry, job_detail, job_summary, parse_jobs_query, query_int
from .security import BadRequest, read_json
from .store import now_ms

# The ComfyUI API level genloom speaks, reported where the editor expects ComfyUI's version.
COMFYUI_API_VERSION = "0.15.0"
MAX_PROMPT_ID = 128


def _id_list(body: dict, key: str) -> list[str] | None:
    ids = body.get(key)
    if ids is None:
        return None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise BadRequest(f"{key} must be a list of prompt ids", "invalid_request")
    return ids


def _check_api_prompt(prompt) -> None:
    """POST /prompt takes the API format only: {id: {class_type, inputs}}. Never a path or a UI graph."""
    if not isinstance(prompt, dict):
        raise BadRequest("prompt must be an API-format workflow object {node_id: {class_type, inputs}}",
                         "invalid_prompt")
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise BadRequest(f"node {node_id!r}: each node must be an object with a string class_type",
                             "invalid_prompt")
        if not isinstance(node.get("inputs", {}), dict):
            raise BadRequest(f"node {node_id!r}: inputs must be an object", "invalid_prompt")


class Routes:
    def __init__(self, server):
        self.s = server

    def table(self) -> list[tuple[str, str, object]]:
        s = self.s
        return [
            ("POST", "/prompt", self.post_prompt),
            ("GET", "/prompt", self.get_prompt),
            ("GET", "/object_info", self.object_info),
            ("GET", "/object_info/{node_class}", self.object_info_one),
            ("GET", "/queue", self.get_queue),
            ("POST", "/queue", self.post_queue),
            ("GET", "/history", self.get_history),
            ("GET", "/history/{prompt_id}", self.get_history_one),
            ("POST", "/history", self.post_history),
            ("GET", "/jobs", self.get_jobs),
            ("POST", "/jobs/cancel", self.cancel_jobs),
            ("GET", "/jobs/{job_id}", self.get_job),
            ("POST", "/jobs/{job_id}/cancel", self.cancel_job),
            ("POST", "/interrupt", self.interrupt),
            ("POST", "/free", self.free),
            ("GET", "/system_stats", self.system_stats),
            ("GET", "/features", self.features),
            ("GET", "/embeddings", self.embeddings),
            ("GET", "/models", self.models),
            ("GET", "/models/{folder}", self.models_in),
            ("GET", "/experiment/models", self.experiment_models),
            ("GET", "/experiment/models/{folder}", self.experiment_models_in),
            ("GET", "/internal/folder_paths", self.folder_paths),
            ("GET", "/internal/files/{kind}", self.list_files),
            ("GET", "/extensions", self.empty([])),
            ("GET", "/i18n", self.empty({})),
            ("GET", "/workflow_templates", self.empty({})),
            ("GET", "/global_subgraphs", self.empty({})),
            ("GET", "/node_replacements", self.empty({})),
            ("POST", "/upload/image", s.files.upload),
            ("POST", "/upload/mask", s.files.upload_mask),
            ("GET", "/view", s.files.view),
            ("GET", "/ws", s.hub.handle),
        ]

    @staticmethod
    def empty(value):
        async def handler(request):
            return web.json_response(value)
        return handler

    # --- prompts ---

    async def post_prompt(self, request):
        try:
            return await self._post_prompt(request)
        except BadRequest as exc:  # ComfyUI clients read node_errors from every refused prompt
            return web.json_response({"error": {"type": exc.type, "message": exc.message, "details": "",
                                                "extra_info": {}}, "node_errors": {}}, status=exc.status)

    async def _post_prompt(self, request):
        body = await read_json(request)
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object with a 'prompt'", "invalid_request")
        if body.get("prompt") is None:
            return web.json_response({"error": {"type": "no_prompt", "message": "No prompt provided",
                                                "details": "No prompt provided", "extra_info": {}},
                                      "node_errors": {}}, status=400)
        prompt = body["prompt"]
        _check_api_prompt(prompt)
        client_id = body.get("client_id")
        if client_id is not None and not isinstance(client_id, str):
            raise BadRequest("client_id must be a string", "invalid_request")
        prompt_id = body.get("prompt_id") or uuid.uuid4().hex
        if not isinstance(prompt_id, str) or len(prompt_id) > MAX_PROMPT_ID:
            raise BadRequest(f"prompt_id must be a string of at most {MAX_PROMPT_ID} characters", "invalid_request")
        extra_data = body.get("extra_data")
        extra_data = {} if extra_data is None else extra_data
        if not isinstance(extra_data, dict):
            raise BadRequest("extra_data must be an object", "invalid_request")
        targets = body.get("partial_execution_targets")
        if targets is not None and (not isinstance(targets, list) or not all(isinstance(t, str) for t in targets)):
            raise BadRequest("partial_execution_targets must be a list of node ids", "invalid_request")
        if self.s.store.exists(prompt_id):
            raise BadRequest(f"prompt_id {prompt_id!r} is already in use", "duplicate_prompt_id")

        loop = asyncio.get_running_loop()
        validation = await loop.run_in_executor(None, self.s.validate, prompt, targets or None)
        if validation.error:
            return web.json_response({"error": validation.error, "node_errors": validation.node_errors or {}},
                                     status=400)
        extra_data = {**extra_data, "create_time": now_ms()}
        if client_id:
            extra_data["client_id"] = client_id
        try:
            number = self.s.store.add(prompt_id, client_id, prompt, extra_data, list(validation.outputs),
                                      front=bool(body.get("front")))
        except sqlite3.IntegrityError:  # the same id submitted twice at once
            raise BadRequest(f"prompt_id {prompt_id!r} is already in use", "duplicate_prompt_id") from None
        self.s.worker.wake()
        self.s.hub.broadcast_status()
        return web.json_response({"prompt_id": prompt_id, "number": number,
                                  "node_errors": validation.node_errors or {}})

    async def get_prompt(self, request):
        return web.json_response(self.s.status()["status"])

    async def object_info(self, request):
        info = await asyncio.get_running_loop().run_in_executor(None, self.s.object_info)
        return web.json_response(info)

    async def object_info_one(self, request):
        name = request.match_info["node_class"]
        info = await asyncio.get_running_loop().run_in_executor(None, self.s.object_info, name)
        return web.json_response(info)

    # --- queue and history ---

    async def get_queue(self, request):
        running, pending = self.s.store.queue()
        return web.json_response({"queue_running": [r.queue_item() for r in running],
                                  "queue_pending": [r.queue_item() for r in pending]})

    async def post_queue(self, request):
        body = await read_json(request)
        if not isinstance(body, dict):
            raise BadRequest("expected {clear: true} or {delete: [ids]}", "invalid_request")
        if body.get("clear"):
            self.s.store.delete_pending(None)
        ids = _id_list(body, "delete")
        if ids:
            self.s.store.delete_pending(ids)
        self.s.hub.broadcast_status()
        return web.Response(status=200)

    async def get_history(self, request):
        max_items = query_int(request.query, "max_items")
        offset = query_int(request.query, "offset", -1, minimum=-1)
        rows = self.s.store.history(max_items, offset)
        return web.json_response({r.id: history_entry(r) for r in rows})

    async def get_history_one(self, request):
        row = self.s.store.get(request.match_info["prompt_id"])
        if row is None or row.status not in ("completed", "failed", "cancelled"):
            return web.json_response({})
        return web.json_response({row.id: history_entry(row)})

    async def post_history(self, request):
        body = await read_json(request)
        if not isinstance(body, dict):
            raise BadRequest("expected {clear: true} or {delete: [ids]}", "invalid_request")
        if body.get("clear"):
            self.s.store.delete_history(None)
        ids = _id_list(body, "delete")
        if ids:
            self.s.store.delete_history(ids)
        return web.Response(status=200)

    # --- jobs ---

    async def get_jobs(self, request):
        statuses, sort_by, descending, limit, offset = parse_jobs_query(request.query)
        rows, total = self.s.store.jobs(statuses, sort_by, descending, limit, offset)
        return web.json_response({
            "jobs": [job_summary(r) for r in rows],
            "pagination": {"offset": offset, "limit": limit if limit is not None else total, "total": total,
                           "has_more": offset + len(rows) < total}})

    async def get_job(self, request):
        row = self.s.store.get(request.match_info["job_id"])
        if row is None:
            return _not_found("job not found")
        return web.json_response(job_detail(row))

    def _cancel(self, job_id: str) -> bool:
        if self.s.store.cancel_pending(job_id):
            return True
        return self.s.worker.interrupt(job_id)

    async def cancel_job(self, request):
        job_id = request.match_info["job_id"]
        if self.s.store.get(job_id) is None:
            return _not_found("job not found")
        cancelled = self._cancel(job_id)
        self.s.hub.broadcast_status()
        return web.json_response({"id": job_id, "cancelled": cancelled})

    async def cancel_jobs(self, request):
        body = await read_json(request)
        ids = _id_list(body if isinstance(body, dict) else {}, "job_ids")
        if ids is None:
            raise BadRequest("expected {job_ids: [ids]}", "invalid_request")
        cancelled = [i for i in ids if self._cancel(i)]
        self.s.hub.broadcast_status()
        return web.json_response({"cancelled": cancelled})

    async def interrupt(self, request):
        body = await read_json(request, required=False) or {}
        if not isinstance(body, dict):
            raise BadRequest("expected {prompt_id?}", "invalid_request")
        prompt_id = body.get("prompt_id")
        if prompt_id is not None and not isinstance(prompt_id, str):
            raise BadRequest("prompt_id must be a string", "invalid_request")
        self.s.worker.interrupt(prompt_id)
        return web.Response(status=200)

    async def free(self, request):
        body = await read_json(request, required=False) or {}
        if not isinstance(body, dict):
            raise BadRequest("expected {unload_models?, free_memory?}", "invalid_request")
        if body.get("unload_models") or body.get("free_memory"):
            await asyncio.get_running_loop().run_in_executor(None, self.s.engine.free)
        return web.Response(status=200)

    # --- system ---

    async def system_stats(self, request):
        info = await asyncio.get_running_loop().run_in_executor(None, self.s.devices)
        total, free = _memory()
        argv = list(self.s.config.argv)
        if "--disable-api-nodes" not in argv:
            argv.append("--disable-api-nodes")  # tells the editor not to call out to the internet
        return web.json_response({
            "system": {"os": sys.platform, "ram_total": total, "ram_free": free,
                       "comfyui_version": COMFYUI_API_VERSION, "genloom_version": __version__,
                       "required_frontend_version": "", "installed_templates_version": "",
                       "required_templates_version": "",
                       "python_version": sys.version, "pytorch_version": _version("torch"),
                       "embedded_python": False, "argv": argv, "platform": platform.platform()},
            "devices": info})

    async def features(self, request):
        return web.json_response(self.s.hub.server_flags)

    async def embeddings(self, request):
        names = self.s.folders.list_models("embeddings")
        return web.json_response([os.path.splitext(n)[0] for n in names])

    async def models(self, request):
        return web.json_response(list(MODEL_FOLDERS))

    async def models_in(self, request):
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return _not_found(f"unknown model folder {folder!r}")
        return web.json_response(self.s.folders.list_models(folder))

    async def folder_paths(self, request):
        return web.json_response({kind: [str(d / kind) for d in self.s.folders.models_dirs] for kind in MODEL_FOLDERS})

    async def list_files(self, request):
        """Files of the input/output/temp folder, newest first (the editor's asset browser)."""
        folder = self.s.files.folder(request.match_info["kind"])
        files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")] if folder.is_dir() else []
        files.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        return web.json_response([p.relative_to(folder).as_posix() for p in files])

    async def experiment_models(self, request):
        return web.json_response([{"name": kind, "folders": [str(d / kind) for d in self.s.folders.models_dirs]}
                                  for kind in MODEL_FOLDERS])

    async def experiment_models_in(self, request):
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return _not_found(f"unknown model folder {folder!r}")
        return web.json_response([{"name": n, "pathIndex": 0} for n in self.s.folders.list_models(folder)])


def _not_found(message: str) -> web.Response:
    return web.json_response({"error": {"type": "not_found", "message": message}}, status=404)


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
