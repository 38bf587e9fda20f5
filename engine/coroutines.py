"""Running a coroutine to completion from synchronous code, also when an event loop is already
running in this thread (a notebook, a coroutine, the server building its registry)."""

from __future__ import annotations

import asyncio
import threading


def run_sync(coro, thread_name: str = "genloom-run"):
    """What `coro` returns (or raises): in this thread when no loop runs here, else on a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict = {}

    def target():
        try:
            box["result"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=thread_name)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]
