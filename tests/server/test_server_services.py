"""The server's layers: routes reach storage through async services that never block the event loop,
request errors are genloom domain errors answered by one middleware, and pydantic-declared bodies
give 400s that name the field."""

from __future__ import annotations

import asyncio
import threading
import time

from aiohttp import ClientSession, web

from genloom.engine.errors import GenloomError, RequestError
from genloom.server.errors import BadRequest, Conflict, NotFound, error_middleware
from genloom.server.services import OffLoopPrompts
from genloom.server.store import Store
from server_support import module_server, prompt


srv = module_server("services")


def test_a_slow_store_call_does_not_block_other_requests(srv):
    store = srv.server.store
    entered, release = threading.Event(), threading.Event()
    real_queue = store.queue

    def slow_queue():
        entered.set()
        release.wait(20)
        return real_queue()

    store.queue = slow_queue
    answers = {}
    try:
        waiting = threading.Thread(target=lambda: answers.setdefault("queue", srv.http.get("/queue")))
        waiting.start()
        assert entered.wait(10), "GET /queue never reached the store"
        started = time.monotonic()
        assert srv.http.get("/system_stats")[0] == 200
        assert srv.http.get("/features")[0] == 200
        assert srv.http.get("/object_info/TestSleep")[0] == 200
        assert time.monotonic() - started < 5
        assert "queue" not in answers  # still held by the slow store call
    finally:
        release.set()
        del store.queue
    waiting.join(10)
    status, body = answers["queue"]
    assert status == 200 and set(body) == {"queue_running", "queue_pending"}


def test_async_service_calls_run_on_one_store_thread_in_order(tmp_path):
    store = Store(tmp_path / "genloom.db")
    seen = []
    real_add = store.add

    def add(*args, **kw):
        seen.append((args[0], threading.current_thread().name))
        return real_add(*args, **kw)

    store.add = add
    service = OffLoopPrompts(store)

    async def main():
        graph = prompt()
        return await asyncio.gather(*(service.add(f"p{i}", None, graph, {}, ["2"]) for i in range(5)))

    try:
        assert asyncio.run(main()) == [1, 2, 3, 4, 5]
        assert [s[0] for s in seen] == [f"p{i}" for i in range(5)]
        assert {s[1] for s in seen} == {s[1] for s in seen[:1]} and seen[0][1].startswith("genloom-store")
    finally:
        service.close()


def test_request_errors_are_domain_errors_answered_by_one_middleware():
    for error in (BadRequest("bad"), NotFound("gone"), Conflict("there")):
        assert isinstance(error, RequestError) and isinstance(error, GenloomError)
    assert (BadRequest("bad", "invalid_x", 413).status, BadRequest("bad").body) == (
        413, {"error": {"type": "invalid_request", "message": "bad", "details": "", "extra_info": {}}})

    async def teapot(request):
        raise RequestError(418, "short and stout", {"error": "teapot", "spout": True})

    async def broken(request):
        raise ZeroDivisionError("oops")

    async def main():
        app = web.Application(middlewares=[error_middleware])
        app.router.add_get("/teapot", teapot)
        app.router.add_get("/broken", broken)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/teapot") as r:
                    teapot_answer = (r.status, await r.json())
                async with http.get(f"http://127.0.0.1:{port}/broken") as r:
                    broken_answer = (r.status, await r.json())
        finally:
            await runner.cleanup()
        return teapot_answer, broken_answer

    teapot_answer, broken_answer = asyncio.run(main())
    assert teapot_answer == (418, {"error": "teapot", "spout": True})
    assert broken_answer[0] == 500 and broken_answer[1]["error"]["type"] == "server_error"
    assert "ZeroDivisionError: oops" in broken_answer[1]["error"]["message"]


def test_declared_bodies_give_400s_naming_the_field(srv):
    status, body = srv.http.post("/prompt", {"prompt": prompt(), "client_id": 5})
    assert status == 400 and body["node_errors"] == {}
    assert body["error"]["type"] == "invalid_request" and body["error"]["message"].startswith("client_id:")
    status, body = srv.http.post("/prompt", {"prompt": {"1": {"class_type": 3}}})
    assert status == 400 and body["error"]["type"] == "invalid_prompt"
    assert "prompt.1.class_type" in body["error"]["message"]
    status, body = srv.http.post("/prompt", {"prompt": prompt(), "prompt_id": "x" * 200})
    assert status == 400 and "prompt_id" in body["error"]["message"] and "128" in body["error"]["message"]
    status, body = srv.http.post("/queue", {"delete": "all"})
    assert status == 400 and body["error"]["message"].startswith("delete:")
    status, body = srv.http.get("/api/jobs?limit=-1")
    assert status == 400 and body["error"]["type"] == "invalid_query" and "limit" in body["error"]["message"]
    status, body = srv.http.get("/api/jobs?status=pending,bogus")
    assert status == 400 and "'bogus'" in body["error"]["message"]
    status, body = srv.http.request("PATCH", "/internal/logs/subscribe", {"enabled": True})
    assert status == 400 and "clientId" in body["error"]["message"]
    status, body = srv.http.post("/settings", [1])
    assert status == 400 and body["error"]["type"] == "invalid_settings"
    status, body = srv.http.post("/api/jobs/cancel", {"job_ids": [1]})
    assert status == 400 and "job_ids.0" in body["error"]["message"]
