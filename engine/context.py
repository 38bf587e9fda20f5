"""What a running node can reach: progress reporting, interruption, the device and the folders.

Nodes call `current()`; outside a run (a node called directly) they get a quiet default context.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import Interrupted
from .folders import Folders
from .resources import Resources

__all__ = ["Interrupted", "RunContext", "Resources", "current", "use", "reset", "resolve_device"]


def resolve_device(choice: str = "auto") -> str:
    """'auto' is CUDA when torch sees a GPU, else the CPU. Imports torch only when asked to decide."""
    if choice != "auto":
        return choice
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class RunContext:
    device_choice: str = "auto"
    folders: Folders = field(default_factory=Folders)
    emit: Callable[[str, dict], None] = lambda event, data: None
    interrupt_flag: threading.Event = field(default_factory=threading.Event)
    prompt_id: str | None = None
    node_id: str | None = None
    display_node_id: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # engine-wide settings (memory limits, ...)
    resources: Resources = field(default_factory=Resources)  # the engine's model owner and the like
    _device: str | None = None

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = resolve_device(self.device_choice)
        return self._device

    def check_interrupt(self) -> None:
        if self.interrupt_flag.is_set():
            raise Interrupted()

    def progress(self, value: float, max: float, preview: Any = None) -> None:
        """Report progress of the running node; `preview` is an optional PIL image to stream."""
        self.emit("progress", {"value": value, "max": max, "prompt_id": self.prompt_id,
                               "node": self.node_id})
        if preview is not None:
            self.emit("preview", {"image": preview, "prompt_id": self.prompt_id, "node": self.node_id})
        self.check_interrupt()


_current: ContextVar[RunContext | None] = ContextVar("genloom_run_context", default=None)
# Nodes called directly (outside any engine) share this context and its resources.
_fallback = RunContext()


def current() -> RunContext:
    ctx = _current.get()
    return ctx if ctx is not None else _fallback


def use(ctx: RunContext):
    """Make `ctx` current; returns the token to pass to `reset(token)`."""
    return _current.set(ctx)


def reset(token) -> None:
    _current.reset(token)
