"""Submitting prompts, and the queue and history views of them (ComfyUI's /prompt, /queue, /history,
/interrupt).

The routes get the services they work on and nothing else: the queue and history services (async,
so storage never blocks the loop), the worker as a `Runner`, the hub for status broadcasts and the
engine service for validation. Bodies are parsed with the models in schemas.py.
"""

from __future__ import annotations

import asyncio
import uuid

from aiohttp import web

from ..engine.errors import RequestError, WorkflowError
from .endpoints import Endpoint
from .engine_service import EngineService
from .errors import BadRequest, json_response
from .schemas import (ClearOrDelete, HistoryQuery, HistoryResponse, InterruptBody, PromptAccepted, PromptBody,
                      PromptRejected, PromptStatus, QueueResponse, parse, parse_query)
from .security import read_json
from .services import FINISHED, DuplicatePromptId, HistoryService, QueueService, Runner, now_ms
from .views import history_view, queue_view, status_payload
from .ws import Hub

_NO_PROMPT = {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided",
              "extra_info": {}}


def _duplicate(prompt_id: str) -> BadRequest:
    return BadRequest(f"prompt_id {prompt_id!r} is already in use", "duplicate_prompt_id")


async def _clear_or_delete(request, delete) -> None:
    """POST /queue and POST /history: `delete(None)` for clear, then `delete(ids)` for the listed ones."""
    change = parse(ClearOrDelete, await read_json(request))
    if change.clear:
        await delete(None)
    if change.delete:
        await delete(change.delete)


class PromptRoutes:
    def __init__(self, queue: QueueService, history: HistoryService, runner: Runner, hub: Hub,
                 engine: EngineService, on_prompt=None):
        self.queue, self.history, self.runner, self.hub, self.engine = queue, history, runner, hub, engine
        self.on_prompt = on_prompt  # node packs' on-prompt handlers (body -> body), or None

    def endpoints(self) -> list[Endpoint]:
        rejected = {400: PromptRejected, 413: PromptRejected}
        return [
            Endpoint("POST", "/prompt", self.post_prompt, body=PromptBody, response=PromptAccepted, errors=rejected),
            Endpoint("GET", "/prompt", self.get_prompt, response=PromptStatus),
            Endpoint("GET", "/queue", self.get_queue, response=QueueResponse),
            Endpoint("POST", "/queue", self.post_queue, body=ClearOrDelete),
            Endpoint("GET", "/history", self.get_history, query=HistoryQuery, response=HistoryResponse),
            Endpoint("GET", "/history/{prompt_id}", self.get_history_one, response=HistoryResponse),
            Endpoint("POST", "/history", self.post_history, body=ClearOrDelete),
            Endpoint("POST", "/interrupt", self.interrupt, body=InterruptBody, body_required=False),
        ]

    async def post_prompt(self, request):
        """Queue an API-format prompt after validating it."""
        try:
            return await self._post_prompt(request)
        except BadRequest as exc:  # ComfyUI clients read node_errors from every refused prompt
            raise RequestError(exc.status, exc.message, {**exc.body, "node_errors": {}}) from None

    async def _post_prompt(self, request):
        body = await read_json(request)
        if self.on_prompt is not None and isinstance(body, dict):
            body = self.on_prompt(body)
        if isinstance(body, dict) and body.get("prompt") is None:
            raise RequestError(400, _NO_PROMPT["message"], {"error": _NO_PROMPT, "node_errors": {}})
        submitted = parse(PromptBody, body)
        prompt = body["prompt"]  # the submitted object itself: the engine sees every value as it was sent
        prompt_id = submitted.prompt_id or uuid.uuid4().hex
        if await self.queue.exists(prompt_id):
            raise _duplicate(prompt_id)
        try:
            validation = await asyncio.get_running_loop().run_in_executor(
                None, self.engine.validate, prompt, submitted.partial_execution_targets)
        except WorkflowError as exc:  # not a workflow at all (an empty object, say)
            raise RequestError(400, str(exc.error.get("message", "invalid prompt")),
                               {"error": exc.error, "node_errors": exc.node_errors}) from None
        if validation.error:
            raise RequestError(400, str(validation.error.get("message", "invalid prompt")),
                               {"error": validation.error, "node_errors": validation.node_errors or {}})
        extra_data = {**(submitted.extra_data or {}), "create_time": now_ms()}
        if submitted.client_id:
            extra_data["client_id"] = submitted.client_id
        try:
            number = await self.queue.add(prompt_id, submitted.client_id, prompt, extra_data,
                                          list(validation.outputs), front=submitted.front)
        except DuplicatePromptId:  # the same id submitted twice at once
            raise _duplicate(prompt_id) from None
        self.runner.wake()
        await self.hub.broadcast_status()
        return json_response({"prompt_id": prompt_id, "number": number,
                                  "node_errors": validation.node_errors or {}})

    async def get_prompt(self, request):
        """How many prompts are pending or running."""
        return json_response(status_payload(await self.queue.remaining())["status"])

    async def get_queue(self, request):
        """The running and the pending prompts, in queue order."""
        return json_response(queue_view(*await self.queue.queue()))

    async def post_queue(self, request):
        """Remove pending prompts: {clear: true} or {delete: [ids]}."""
        await _clear_or_delete(request, self.queue.delete_pending)
        await self.hub.broadcast_status()
        return web.Response(status=200)

    async def get_history(self, request):
        """Finished prompts in finishing order; without offset, max_items gives the newest."""
        query = parse_query(HistoryQuery, request.query)
        return json_response(history_view(await self.history.history(query.max_items, query.offset)))

    async def get_history_one(self, request):
        """One finished prompt ({} while it is queued or unknown)."""
        record = await self.history.get(request.match_info["prompt_id"])
        return json_response(history_view([record] if record and record.status in FINISHED else []))

    async def post_history(self, request):
        """Forget finished prompts: {clear: true} or {delete: [ids]}."""
        await _clear_or_delete(request, self.history.delete_history)
        return web.Response(status=200)

    async def interrupt(self, request):
        """Interrupt the running prompt (only if it is prompt_id, when given)."""
        body = await read_json(request, required=False) or {}
        self.runner.interrupt(parse(InterruptBody, body).prompt_id)
        return web.Response(status=200)
