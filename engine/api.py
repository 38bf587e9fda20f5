"""The public face of the engine: load, validate and run workflows, with a cache kept between runs.

    engine = genloom.Engine(cache="ram:4GB")
    result = engine.run("workflow.json", on_event=print)

One run at a time per engine (runs are serialised by a lock); `interrupt()` may be called from any
thread and stops the run in progress at the next node boundary or `ctx.progress` call.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import context
from .cache import Cache, make_cache
from .errors import ExecutionError, Interrupted, WorkflowError
from .execution import Execution
from .folders import Folders, default_models_dirs
from .coroutines import run_sync
from .plugins import build_registry
from .registry import Registry
from .resources import Resources

__all__ = ["Engine", "RunResult", "WorkflowError", "ExecutionError", "Interrupted"]


@dataclass
class RunResult:
    prompt_id: str
    outputs: dict[str, dict] = field(default_factory=dict)  # node id -> UI payload
    executed: list[str] = field(default_factory=list)  # ran this time
    cached: list[str] = field(default_factory=list)  # served from the cache
    node_errors: dict = field(default_factory=dict)  # outputs left out because they failed validation
    errors: list[dict] = field(default_factory=list)  # execution_error payloads of blocked nodes


class Engine:
    """Owns one registry, one result cache and one `Resources` (models and the like): two engines in
    a process share none of them. `genloom.Engine` is this class with genloom's packs built in."""

    builtin_packs: tuple = ()  # the packs a subclass (the composition root) registers as built-in

    def __init__(self, plugins_dir: str | Path | None = None, cache: str | Cache = "default",
                 device: str = "auto", models_dirs: list | None = None, input_dir: str | Path | None = None,
                 output_dir: str | Path | None = None, temp_dir: str | Path | None = None,
                 load_builtins: bool = True, registry: Registry | None = None):
        """`load_builtins=False` gives a bare registry (no built-in packs, no entry-point packs)."""
        if registry is None:
            registry = build_registry(self.builtin_packs if load_builtins else (),
                                      [plugins_dir] if plugins_dir is not None else (), load_builtins)
        self.registry = registry
        folders = Folders()
        if models_dirs:
            user = [Path(p) for p in models_dirs]
            folders.models_dirs = user + [p for p in default_models_dirs() if p not in user]
        for name, value in (("input_dir", input_dir), ("output_dir", output_dir), ("temp_dir", temp_dir)):
            if value is not None:
                setattr(folders, name, Path(value))
        self.folders = folders
        self.cache = make_cache(cache)
        self.device = device
        self.options: dict[str, Any] = {"cache": self.cache.spec, "device": device}
        self._device: str | None = None if device == "auto" else device
        self.resources = Resources()
        self._interrupt = threading.Event()
        self._lock = threading.Lock()
        self._abandon_lock = threading.Lock()
        self._running: tuple | None = None  # (lock, interrupt flag, execution) of the run in progress
        self._kinds: dict = {}

    # ---- workflows ----------------------------------------------------------------------------
    def load(self, workflow):
        """Any supported workflow format -> `Workflow` (WorkflowError when it cannot be read)."""
        from .workflow import WorkflowFormatError, load_workflow

        try:
            return load_workflow(workflow, self.registry)
        except WorkflowFormatError as exc:
            raise WorkflowError({"type": "invalid_prompt", "message": "Cannot read the workflow",
                                 "details": str(exc), "extra_info": {}}) from None

    def validate(self, workflow, outputs: list[str] | None = None):
        return self._checked(self.load(workflow).graph, outputs)

    def _checked(self, graph: dict, outputs):
        """Validate inside this engine's context: COMBO lists (models, inputs) come from its folders."""
        from .validate import validate

        token = context.use(context.RunContext(device_choice=self.device, folders=self.folders,
                                               options=self.options, resources=self.resources))
        try:
            return validate(graph, self.registry, outputs)
        finally:
            context.reset(token)

    # ---- running ------------------------------------------------------------------------------
    def run(self, workflow, outputs: list[str] | None = None, on_event: Callable[[str, dict], Any] | None = None,
            prompt_id: str | None = None, extra_data: dict | None = None) -> RunResult:
        """Run to completion in this thread (events are delivered synchronously from it)."""
        return run_sync(self._run(workflow, outputs, on_event, prompt_id, extra_data), "genloom-run")

    async def run_async(self, workflow, outputs: list[str] | None = None, on_event=None,
                        prompt_id: str | None = None, extra_data: dict | None = None) -> RunResult:
        """The same run, awaited in the caller's loop: sync nodes block that loop while they run."""
        return await self._run(workflow, outputs, on_event, prompt_id, extra_data)

    async def _run(self, workflow, outputs, on_event, prompt_id, extra_data) -> RunResult:
        with _gc_paused():
            wf = self.load(workflow)
            validation = self._checked(wf.graph, outputs)
        if validation.error is not None:
            raise WorkflowError(validation.error, validation.node_errors)
        prompt_id = prompt_id or str(uuid.uuid4())
        while not (lock := self._lock).acquire(blocking=False):  # polling stays safe if this task is cancelled
            await asyncio.sleep(0.01)
        try:
            flag = self._interrupt = threading.Event()  # this run's own: an abandoned run stays interrupted
            ctx = context.RunContext(device_choice=self.device, folders=self.folders,
                                     emit=on_event or _quiet, interrupt_flag=flag,
                                     prompt_id=prompt_id, options=self.options, resources=self.resources,
                                     _device=self._device)
            execution = Execution(self.registry, self.cache, ctx, on_event, wf.graph, extra_data, self._kinds)
            self._running = (lock, flag, execution)
            token = context.use(ctx)
            try:
                with _gc_paused():
                    execution.plan(validation)
                await execution.execute()
            finally:
                context.reset(token)
                if lock is self._lock:  # not abandoned: the next run has not begun
                    self._running = None
                    self._device = ctx._device
                    self.cache.end_run(execution.cache_keys())
                if on_event is not None:
                    on_event("executing", {"node": None, "display_node": None, "prompt_id": prompt_id})
        finally:
            lock.release()
        executed = set(execution.executed)
        return RunResult(prompt_id=prompt_id, outputs=execution.outputs, executed=execution.executed,
                         cached=_unique([i for i in execution.listed_cached if i not in executed]
                                        + execution.served),
                         node_errors=validation.node_errors, errors=execution.errors)

    def plan_keys(self, workflow, outputs: list[str] | None = None) -> dict[str, str]:
        """The cache key each node of a run would have, without running anything (volatile nodes and
        nodes whose key only a run can know are left out). A cluster sends a prompt to the worker
        whose cache holds most of these keys."""
        wf = self.load(workflow)
        validation = self._checked(wf.graph, outputs)
        if validation.error is not None:
            raise WorkflowError(validation.error, validation.node_errors)
        ctx = context.RunContext(device_choice=self.device, folders=self.folders, options=self.options,
                                 resources=self.resources)
        execution = Execution(self.registry, make_cache("none"), ctx, None, wf.graph, None, self._kinds)
        token = context.use(ctx)
        try:
            execution.plan(validation)
        finally:
            context.reset(token)
        return {node.id: node.ckey for node in execution.nodes.values()
                if node.ckey is not None and not node.volatile}

    def cache_keys(self) -> set:
        """The keys of the results this engine's cache holds now."""
        return set(getattr(self.cache, "entries", ()))

    # ---- control ------------------------------------------------------------------------------
    def interrupt(self) -> None:
        """Stop the run in progress (thread-safe); completed nodes stay cached."""
        self._interrupt.set()

    def abandon(self) -> bool:
        """Give up on the run in progress when a node in it never checks for interrupts: its flag
        stays set (it stops at its next check), it stores nothing more in the cache, and the next run
        starts at once instead of waiting for it. Returns whether a run was abandoned. Python cannot
        stop the thread itself; it ends when the node returns."""
        with self._abandon_lock:
            running = self._running
            if running is None or running[0] is not self._lock:
                return False
            _lock, flag, execution = running
            flag.set()
            execution.stale = True  # results finished from now on are not stored
            self._running = None
            self._lock = threading.Lock()
            return True

    def add_free_hook(self, fn: Callable[[], Any]) -> None:
        """`fn()` is called by `free()` after the engine's model owners have released their models."""
        self.resources.add_free_hook(fn)

    def free(self) -> None:
        """Drop every cached result and let the engine's resources release what they hold."""
        self.cache.clear()
        self.resources.free()
        gc.collect()


def _quiet(event: str, data: dict) -> None:
    pass


@contextmanager
def _gc_paused():
    """No cyclic GC while building the run's bookkeeping: it allocates many small objects that all
    survive, and collecting them repeatedly made planning superlinear in the graph size. Nodes
    themselves always run with the collector on."""
    enabled = gc.isenabled()
    if enabled:
        gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _unique(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))
