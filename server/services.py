"""The services the routes and the worker work through: the prompt queue, its history and the jobs view.

One record per prompt, whatever its state; the queue, /history and /api/jobs are views of the same
records. Status values are the jobs API's: pending, in_progress, completed, failed, cancelled.

Two faces of the same contract:
- `PromptStore` (queue + history + jobs, synchronous) is what a storage backend implements;
  `store.Store` (SQLite) is the one genloom ships. The worker thread calls it directly.
- `QueueService`, `HistoryService` and `JobsService` (asynchronous) are what the aiohttp routes call,
  so no route ever waits on storage on the event loop. `OffLoopPrompts` gives them over any
  `PromptStore` by running each call on one dedicated thread, in the order the routes made them.
"""

from __future__ import annotations

import asyncio
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from ..engine.errors import GenloomError

FINISHED = ("completed", "failed", "cancelled")
STATUSES = ("pending", "in_progress") + FINISHED
JOB_SORTS = ("created_at", "execution_duration")


def now_ms() -> int:
    """Timestamps in records and events: milliseconds since the epoch, as ComfyUI's."""
    return int(time.time() * 1000)


class PromptStoreError(GenloomError):
    """The prompt store cannot do what it was asked."""


class InvalidStoreCall(PromptStoreError, ValueError):
    """Arguments outside the store's contract (an unknown status, say): a bug in the caller."""


class DuplicatePromptId(PromptStoreError):
    """A prompt id that is already in the store."""


@dataclass
class PromptRecord:
    id: str
    number: int  # queue order: negative for prompts queued in front
    client_id: str | None
    prompt: dict
    extra_data: dict
    outputs_to_execute: list
    status: str
    create_time: int
    start_time: int | None
    end_time: int | None
    outputs: dict
    meta: dict
    messages: list
    error: dict | None


# --- what a storage backend implements (called from any thread) ---

class PromptQueue(Protocol):
    def add(self, prompt_id: str, client_id: str | None, prompt: dict, extra_data: dict,
            outputs_to_execute: list, front: bool = False) -> int:
        """Queue a prompt and return its number; `front` puts it before every pending prompt.
        Raises DuplicatePromptId when the id is taken."""

    def exists(self, prompt_id: str) -> bool: ...

    def claim_next(self) -> PromptRecord | None:
        """Move the first pending prompt to in_progress and return it."""

    def finish(self, prompt_id: str, status: str, outputs: dict | None, meta: dict | None,
               messages: list | None, error: dict | None = None) -> None:
        """Record how a prompt ended; `status` is one of FINISHED, None keeps what is stored."""

    def cancel_pending(self, prompt_id: str) -> bool:
        """A pending prompt becomes cancelled; False when it was not pending."""

    def delete_pending(self, ids: list[str] | None) -> int:
        """Remove pending prompts (all of them for None); returns how many went."""

    def queue(self) -> tuple[list[PromptRecord], list[PromptRecord]]:
        """(running, pending), each in queue order."""

    def remaining(self) -> int:
        """How many prompts are pending or running."""


class PromptHistory(Protocol):
    def history(self, max_items: int | None = None, offset: int = -1) -> list[PromptRecord]:
        """Finished prompts in finishing order. Without an offset, `max_items` takes the newest."""

    def get(self, prompt_id: str) -> PromptRecord | None: ...

    def delete_history(self, ids: list[str] | None) -> int:
        """Forget finished prompts (all of them for None); returns how many went."""


class JobsView(Protocol):
    def jobs(self, statuses: list[str] | None, sort_by: str, descending: bool, limit: int | None,
             offset: int) -> tuple[list[PromptRecord], int]:
        """One page of prompts in any state, and the total that match."""

    def get(self, prompt_id: str) -> PromptRecord | None: ...


class PromptStore(PromptQueue, PromptHistory, JobsView, Protocol):
    def close(self) -> None: ...


# --- what the routes call (on the event loop) ---

class QueueService(Protocol):
    async def add(self, prompt_id: str, client_id: str | None, prompt: dict, extra_data: dict,
                  outputs_to_execute: list, front: bool = False) -> int: ...
    async def exists(self, prompt_id: str) -> bool: ...
    async def delete_pending(self, ids: list[str] | None) -> int: ...
    async def queue(self) -> tuple[list[PromptRecord], list[PromptRecord]]: ...
    async def remaining(self) -> int: ...


class HistoryService(Protocol):
    async def history(self, max_items: int | None = None, offset: int = -1) -> list[PromptRecord]: ...
    async def get(self, prompt_id: str) -> PromptRecord | None: ...
    async def delete_history(self, ids: list[str] | None) -> int: ...


class JobsService(Protocol):
    async def jobs(self, statuses: list[str] | None, sort_by: str, descending: bool, limit: int | None,
                   offset: int) -> tuple[list[PromptRecord], int]: ...
    async def get(self, prompt_id: str) -> PromptRecord | None: ...
    async def cancel_pending(self, prompt_id: str) -> bool: ...


class Runner(Protocol):
    """The worker as the routes see it: both calls return at once."""

    def wake(self) -> None: ...
    def interrupt(self, prompt_id: str | None = None) -> bool: ...


class OffLoopPrompts:
    """QueueService, HistoryService and JobsService over a synchronous PromptStore.

    Every call runs on one thread of its own, so a slow disk (or the worker holding the store for a
    write) delays only the requests that need the store, never the event loop, and calls reach the
    store in the order the routes made them.
    """

    def __init__(self, store: PromptStore):
        self.store = store
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genloom-store")

    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._thread, functools.partial(fn, *args))

    def close(self) -> None:
        """Wait for calls in flight, then close the store."""
        self._thread.shutdown(wait=True)
        self.store.close()

    async def add(self, prompt_id, client_id, prompt, extra_data, outputs_to_execute, front=False):
        return await self._call(self.store.add, prompt_id, client_id, prompt, extra_data, outputs_to_execute,
                                front)

    async def exists(self, prompt_id):
        return await self._call(self.store.exists, prompt_id)

    async def delete_pending(self, ids):
        return await self._call(self.store.delete_pending, ids)

    async def queue(self):
        return await self._call(self.store.queue)

    async def remaining(self):
        return await self._call(self.store.remaining)

    async def history(self, max_items=None, offset=-1):
        return await self._call(self.store.history, max_items, offset)

    async def get(self, prompt_id):
        return await self._call(self.store.get, prompt_id)

    async def delete_history(self, ids):
        return await self._call(self.store.delete_history, ids)

    async def jobs(self, statuses, sort_by, descending, limit, offset):
        return await self._call(self.store.jobs, statuses, sort_by, descending, limit, offset)

    async def cancel_pending(self, prompt_id):
        return await self._call(self.store.cancel_pending, prompt_id)
