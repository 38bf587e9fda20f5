"""Runs a validated graph: cache lookups, lazy inputs, list mapping, expansions, async nodes, events.

One `Execution` per run. It first keys every node in dependency order (engine/keys.py), then walks back
from the requested outputs, stopping at nodes the cache can serve, and executes the rest as their inputs
become ready. Everything is driven by explicit stacks and counters (no recursion, so a 10,000-node chain
runs), and the per-node path does no more than build the arguments, call the node and store its lists.

Value model (as ComfyUI): every output slot holds a list. A node is called once per index of its
longest input list (shorter lists repeat their last item) unless it takes whole lists (input_is_list);
results are concatenated, and an is_list output contributes its items rather than itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect

from .. import context
from ..cache import Cache
from ..graph import Link
from ..keys import Unkeyable, node_key, volatile_key, with_consumed
from ..schema import NodeSchema
from .calls import CallMapping
from .expansion import Expansions
from .failures import AtNode, FailureReports, now_ms
from .results import merge_ui, normalise
from .scheduling import Scheduling
from .state import ALWAYS, RUNNING, SILENT, NodeKind, NodeState


class Execution(Scheduling, CallMapping, Expansions, FailureReports):
    """One run of one validated graph. This module holds the hot loop (plan, step, finish, store);
    the mixins hold scheduling, call mapping, expansions and failure reports."""

    def __init__(self, registry, cache: Cache, ctx: context.RunContext, on_event, prompt: dict,
                 extra_data: dict | None, kinds: dict):
        self.registry = registry
        self.cache = cache
        self.ctx = ctx
        self.on_event = on_event
        self.prompt = prompt
        self.prompt_id = ctx.prompt_id
        self.extra_pnginfo = (extra_data or {}).get("extra_pnginfo")
        self.kinds = kinds  # id(schema) -> NodeKind, shared across runs by the engine
        self.nodes: dict[str, NodeState] = {}
        self.ready: list[NodeState] = []
        self.tasks: dict[asyncio.Task, NodeState] = {}
        self.executed: list[str] = []
        self.served: list[str] = []
        self.outputs: dict[str, dict] = {}
        self.errors: list[dict] = []  # execution_error payloads of blocked nodes (the run goes on)
        self.listed_cached: list[str] = []
        self.stale = False
        self.kept: list[str] = []  # keys of expansions behind served nodes
        self._dynprompt = None

    # ---- set-up -------------------------------------------------------------------------------
    def kind(self, schema: NodeSchema) -> NodeKind:
        entry = self.kinds.get(id(schema))
        if entry is None or entry.schema is not schema:
            entry = self.kinds[id(schema)] = NodeKind(schema)
        return entry

    def _make(self, node_id: str, display: str, kind: NodeKind, inputs: dict, defaults: dict) -> NodeState:
        if defaults:
            missing = [n for n in defaults if n not in inputs]
            if missing:
                inputs = dict(inputs)
                for name in missing:
                    inputs[name] = defaults[name]
        node = NodeState(node_id, display, kind, inputs)
        if kind.fingerprint is not None and not node.volatile:
            fp = self._fingerprint(node)
            if fp is ALWAYS:
                node.volatile = True
            else:
                node.fp = fp
        if kind.by_id:
            node.fp = (node.fp, node_id)
        self.nodes[node_id] = node
        return node

    def _fingerprint(self, node: NodeState):
        kind = node.kind
        params = kind.fp_params
        args = {k: v for k, v in node.inputs.items()
                if type(v) is not Link and (params is None or k in params)}
        try:
            value = kind.fingerprint(**args)
        except Exception:  # noqa: BLE001 - a node's own code: when unsure, run it
            return ALWAYS
        if isinstance(value, float) and value != value:
            return ALWAYS
        return value

    def _compute_key(self, node: NodeState) -> None:
        """Set the node's keys if its upstream keys are known; volatility flows downstream."""
        nodes = self.nodes
        if not node.volatile:
            for dep in node.deps:
                if nodes[dep].volatile:
                    node.volatile = True
                    break
        if node.volatile:
            node.ckey = node.key = volatile_key()
            return
        kind = node.kind
        try:
            base = node_key(kind.name, kind.version, node.fp, node.inputs, self.nodes, kind.lazy)
        except Unkeyable:
            node.volatile = True
            node.ckey = node.key = volatile_key()
            return
        if base is None:
            return
        node.ckey = base
        if node.lazy is None:
            node.key = base
            return
        entry = self.cache.peek(base)
        if entry is not None and self._consumed_match(node, entry.consumed):
            node.key = with_consumed(base, entry.consumed)

    def _consumed_match(self, node: NodeState, consumed: tuple) -> bool:
        nodes = self.nodes
        for name, upstream_key, slot in consumed:
            link = node.lazy.get(name)
            if link is None or link.slot != slot:
                return False
            source = nodes.get(link.node)
            if source is None or source.volatile or source.key != upstream_key:
                return False
        return True

    def _serve(self, node: NodeState, entry) -> None:
        node.outputs = entry.outputs
        if node.lazy is not None:
            node.key = with_consumed(node.ckey, entry.consumed)
        self.served.append(node.id)
        if entry.children:
            self.kept.extend(entry.children)
        if entry.ui:
            self._show(node, entry.ui)
        self._done(node)

    def _show(self, node: NodeState, ui: dict) -> None:
        node.ui = ui
        self.outputs[node.id] = ui
        if self.on_event is not None:
            self.on_event("executed", {"node": node.id, "display_node": node.display, "output": ui,
                                       "prompt_id": self.prompt_id})

    # ---- the run ------------------------------------------------------------------------------
    def plan(self, validation) -> None:
        """Key every node (dependencies first), announce what the cache holds, queue what must run."""
        on_event = self.on_event
        make, compute, kind_of = self._make, self._compute_key, self.kind
        order = []
        for node_id, valid in validation.graph.items():
            kind = kind_of(valid.schema)
            node = make(node_id, node_id, kind, valid.inputs, kind.defaults)
            compute(node)
            order.append(node)
        cache = self.cache
        listed = self.listed_cached
        kept = self.kept
        peek = cache.peek
        for node in order:
            if node.volatile or node.ckey is None or (node.lazy is not None and node.key is None):
                continue
            entry = peek(node.ckey)
            if entry is not None:
                listed.append(node.id)
                if entry.children:
                    kept.extend(entry.children)
        if on_event is not None:
            on_event("execution_start", {"prompt_id": self.prompt_id, "timestamp": now_ms()})
            on_event("execution_cached", {"nodes": list(self.listed_cached), "prompt_id": self.prompt_id,
                                          "timestamp": now_ms()})
        self._require([self.nodes[o] for o in validation.outputs])

    async def execute(self) -> None:
        await self._loop()
        on_event = self.on_event
        if on_event is not None:
            on_event("execution_success", {"prompt_id": self.prompt_id, "timestamp": now_ms()})

    async def _loop(self) -> None:
        ready = self.ready
        flag = self.ctx.interrupt_flag
        step = self._step
        node = None
        try:
            while True:
                if not ready:
                    if not self.tasks:
                        return
                    node = await self._wait_tasks()
                    continue
                node = ready.pop()
                if flag.is_set():
                    raise context.Interrupted()
                step(node)
        except Exception as exc:  # noqa: BLE001 - a node's failure becomes an execution_error
            self._cancel_tasks()
            if isinstance(exc, AtNode):
                node, exc = exc.node, exc.error
            if isinstance(exc, context.Interrupted):
                self._interrupted(node)
                raise exc from None
            raise self._failure(node, exc) from exc
        finally:
            if self.tasks:  # cancelled from outside
                self._cancel_tasks()

    def _step(self, node: NodeState) -> None:
        if node.pending is not None:
            self._resolve_expansion(node)
            return
        if not node.checked:
            node.checked = True
            if node.ckey is None or node.lazy is None:
                if node.ckey is None:
                    self._compute_key(node)
                if not node.volatile and node.ckey is not None and node.lazy is None:
                    entry = self.cache.get(node.ckey)  # also finds results made earlier in this run
                    if entry is not None:
                        self._serve(node, entry)
                        return
        kind = node.kind
        calls = None
        if node.lazy is None and not kind.input_is_list:
            calls = self._single_call(node)
        if calls is None:
            data = self._gather(node)
            node.data = data
            calls = self._calls(node, data)
            if node.lazy is not None and self._lazy_pending(node, calls):
                return
            if calls and all(c is SILENT for c in calls):  # every call blocked: skipped, never cached
                node.outputs = [[SILENT] * len(calls) for _ in range(kind.n_out)]
                node.data = None
                self._done(node)
                return
        on_event = self.on_event
        if on_event is not None:
            on_event("executing", {"node": node.id, "display_node": node.display, "prompt_id": self.prompt_id})
        ctx = self.ctx
        instance = self._instance(node)
        fn = kind.direct.__get__(instance) if kind.direct is not None else getattr(instance, kind.function)
        if kind.is_async:
            node_ctx = dataclasses.replace(ctx, node_id=node.id, display_node_id=node.display)
            node.state = RUNNING
            self.tasks[asyncio.ensure_future(call_async(fn, calls, node_ctx))] = node
            return
        ctx.node_id = node.id
        ctx.display_node_id = node.display
        if len(calls) == 1 and type(calls[0]) is dict:
            results = [fn(**calls[0])]
        else:
            results = [fn(**c) if type(c) is dict else c for c in calls]
        self._finish(node, results)

    # ---- results ------------------------------------------------------------------------------
    def _finish(self, node: NodeState, results: list) -> None:
        kind = node.kind
        n_out = kind.n_out
        ui = None
        expand = None
        blocked = False
        if len(results) == 1 and not kind.any_out_list:
            outs, ui, expand = normalise(kind, results[0])
            if outs is SILENT:
                blocked = True
                outputs = [[SILENT] for _ in range(n_out)]
            else:
                outputs = [[v] for v in outs[:n_out]]
            if expand is not None:
                expand = [(outs, expand)]
        else:
            outputs = [[] for _ in range(n_out)]
            uis = []
            parts = []  # (outputs, expansion or None) per call, in case any call expands
            for result in results:
                outs, one_ui, one_expand = normalise(kind, result)
                if outs is SILENT:
                    blocked = True
                    outs = (SILENT,) * n_out
                    parts.append((outs, None))
                    for slot in outputs:
                        slot.append(SILENT)
                    continue
                parts.append((outs, one_expand))
                if one_ui:
                    uis.append(one_ui)
                if one_expand is not None:
                    continue
                for j in range(n_out):
                    if kind.out_is_list[j]:
                        outputs[j].extend(outs[j])
                    else:
                        outputs[j].append(outs[j])
            ui = merge_ui(uis)
            if any(part[1] is not None for part in parts):
                expand = parts
        node.data = node.call = None
        self.executed.append(node.id)
        if ui:
            self._show(node, ui)
        if expand is not None:
            self._expand(node, expand, len(results))
            return
        node.outputs = outputs
        self._store(node, blocked)

    def _store(self, node: NodeState, blocked: bool) -> None:
        consumed = ()
        if node.lazy is not None:
            nodes = self.nodes
            consumed = tuple(sorted((name, nodes[node.lazy[name].node].key, node.lazy[name].slot)
                                    for name in (node.evaluated or ())))
            predicted = node.key
            if any(nodes[node.lazy[name].node].volatile for name in (node.evaluated or ())):
                node.volatile = True
                node.key = volatile_key()
            else:
                node.key = with_consumed(node.ckey, consumed)
            if predicted is not None and predicted != node.key:
                # Downstream keys were built on the prediction: store nothing more this run.
                self.stale = True
        if not node.volatile and not blocked and not self.stale:
            self.cache.put(node.ckey, node.outputs, node.ui, consumed, node.children)
        self._done(node)

    # ---- expansions ---------------------------------------------------------------------------
    # ---- async nodes --------------------------------------------------------------------------
    async def _wait_tasks(self) -> NodeState | None:
        flag = self.ctx.interrupt_flag
        done, _ = await asyncio.wait(list(self.tasks), timeout=0.05, return_when=asyncio.FIRST_COMPLETED)
        last = None
        for task in done:
            node = self.tasks.pop(task)
            last = node
            try:
                results = task.result()
            except context.Interrupted:
                raise AtNode(node, context.Interrupted()) from None
            except Exception as exc:  # noqa: BLE001
                raise AtNode(node, exc) from exc
            try:
                self._finish(node, results)
            except Exception as exc:  # noqa: BLE001
                raise AtNode(node, exc) from exc
        if flag.is_set():
            raise AtNode(last or next(iter(self.tasks.values()), None), context.Interrupted())
        return last

    def _cancel_tasks(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.tasks.clear()

    def cache_keys(self) -> set:
        """Everything this run's workflow consists of (what the default policy keeps)."""
        keys = {n.ckey for n in self.nodes.values() if n.ckey is not None and not n.volatile}
        keys.update(self.kept)
        return keys


async def call_async(fn, calls: list, node_ctx):
    token = context.use(node_ctx)
    try:
        results = []
        for call in calls:
            if type(call) is dict:
                result = fn(**call)
                if inspect.isawaitable(result):
                    result = await result
                results.append(result)
            else:
                results.append(call)
        return results
    finally:
        context.reset(token)


