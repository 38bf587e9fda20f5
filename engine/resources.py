"""Per-engine owners of state that outlives one run but is not a cached result: loaded models, the
memory manager, LoRA tables. The engine owns one `Resources`; nodes reach it through the run context
(`context.current().resources`), so two engines in one process never share or fight over models, and
the engine never needs to know which library made an owner.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class Resources:
    def __init__(self):
        self._owners: dict[str, Any] = {}
        self._hooks: list[Callable[[], Any]] = []
        self._lock = threading.Lock()

    def get(self, name: str, factory: Callable[[], T]) -> T:
        """The owner registered as `name`, made by `factory()` on first use."""
        owner = self._owners.get(name)
        if owner is None:
            with self._lock:
                owner = self._owners.get(name)
                if owner is None:
                    owner = self._owners[name] = factory()
        return owner

    def peek(self, name: str) -> Any | None:
        return self._owners.get(name)

    def add_free_hook(self, fn: Callable[[], Any]) -> None:
        """`fn()` runs on every `free()`, after the owners have released what they hold."""
        if fn not in self._hooks:
            self._hooks.append(fn)

    def free(self) -> None:
        """The one free path (Engine.free, the server's POST /free): each owner with a `free()` method
        releases what it holds, then the hooks run."""
        for owner in list(self._owners.values()):
            release = getattr(owner, "free", None)
            if callable(release):
                release()
        for fn in list(self._hooks):
            fn()
