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
import time
import traceback

from .. import context
from ..cache import Cache
from ..errors import ExecutionError
from ..graph import Link, is_link_value, parse_input, to_api_value
from ..keys import Unkeyable, node_key, volatile_key, with_consumed
from ..node import Blocker, NodeOutput
from ..schema import NodeSchema
from ..validate import validate

NEW, WAITING, RUNNING, DONE = 0, 1, 2, 3
_ALWAYS = object()  # fingerprint verdict: re-run every time


class _Kind:
    """What the hot loop needs to know about a node type, worked out once per schema."""

    __slots__ = ("schema", "name", "version", "function", "factory", "is_v1", "is_async", "hidden",
                 "lazy", "check_lazy", "fingerprint", "fp_params", "n_out", "out_is_list", "any_out_list",
                 "input_is_list", "not_idempotent", "defaults", "all_defaults", "by_id")

    def __init__(self, schema: NodeSchema):
        self.schema = schema
        self.name = schema.name
        self.version = schema.version
        self.function = schema.function
        self.factory = schema.factory
        self.is_v1 = schema.is_v1
        self.is_async = schema.is_async
        self.hidden = tuple((s.name, s.type) for s in schema.inputs if s.section == "hidden")
        # A node told its own id may put it in its result, so equal nodes must not share one (as ComfyUI).
        self.by_id = any(type_ == "UNIQUE_ID" for _, type_ in self.hidden)
        # Lazy inputs only matter when the node can say which ones it needs; otherwise all are needed.
        self.check_lazy = schema.check_lazy
        self.lazy = frozenset(schema.lazy_inputs) if schema.check_lazy else frozenset()
        self.fingerprint = schema.fingerprint
        self.fp_params = _accepted_params(schema.fingerprint) if schema.fingerprint else None
        self.n_out = len(schema.outputs)
        self.out_is_list = tuple(o.is_list for o in schema.outputs)
        self.any_out_list = any(self.out_is_list)
        self.input_is_list = schema.input_is_list
        self.not_idempotent = schema.not_idempotent
        widgets = [s for s in schema.inputs if s.section != "hidden" and s.default is not None]
        # Native optional widgets take their declared default when the workflow leaves them out.
        self.defaults = {} if schema.is_v1 else {s.name: s.default for s in widgets if s.section == "optional"}
        self.all_defaults = {s.name: s.default for s in widgets}


def _accepted_params(fn) -> frozenset | None:
    """Keyword names `fn` accepts; None when it takes **kwargs."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params)


class _Node:
    # Class-level defaults: a node sets only what differs, which keeps building 10,000 of them cheap.
    evaluated = None  # lazy input names asked for
    ckey = key = None  # cache key (base) / key downstream nodes build on
    fp = None
    volatile = False
    state = NEW
    waiting = 0
    waiters = None
    outputs = None
    ui = None
    instance = None
    checked = False
    pending = None  # an expansion's outputs while its nodes run
    created = None  # the nodes its expansion made
    children = ()  # cache keys of everything its expansion made, nested expansions included
    data = None  # the inputs as lists while the node runs (for error reports)
    call = None  # or its one call's arguments, on the common path

    def __init__(self, node_id: str, display: str, kind: _Kind, inputs: dict):
        self.id = node_id
        self.display = display
        self.kind = kind
        self.inputs = inputs
        deps = []
        lazy = None
        lazy_names = kind.lazy
        for name, value in inputs.items():
            if type(value) is Link:
                if lazy_names and name in lazy_names:
                    if lazy is None:
                        lazy = {}
                    lazy[name] = value
                elif value.node not in deps:
                    deps.append(value.node)
        self.deps = deps
        self.lazy = lazy  # name -> Link for lazy linked inputs, None when there are none
        if kind.not_idempotent:
            self.volatile = True


class DynamicGraph:
    """The DYNPROMPT hidden input: a read-only view of the running graph, expansions included."""

    def __init__(self, execution: "Execution"):
        self._execution = execution

    def get_original_prompt(self) -> dict:
        return self._execution.prompt

    def has_node(self, node_id: str) -> bool:
        return node_id in self._execution.nodes or node_id in self._execution.prompt

    def get_node(self, node_id: str) -> dict:
        node = self._execution.nodes.get(node_id)
        if node is None:
            return self._execution.prompt[node_id]
        return {"class_type": node.kind.name, "inputs": {k: to_api_value(v) for k, v in node.inputs.items()}}

    def all_node_ids(self) -> set:
        return set(self._execution.prompt) | set(self._execution.nodes)

    def get_display_node_id(self, node_id: str) -> str:
        node = self._execution.nodes.get(node_id)
        return node.display if node is not None else node_id

    def get_real_node_id(self, node_id: str) -> str:
        return node_id


def _now_ms() -> int:
    return int(time.time() * 1000)


class Execution:
    """One run of one validated graph."""

    def __init__(self, registry, cache: Cache, ctx: context.RunContext, on_event, prompt: dict,
                 extra_data: dict | None, kinds: dict):
        self.registry = registry
        self.cache = cache
        self.ctx = ctx
        self.on_event = on_event
        self.prompt = prompt
        self.prompt_id = ctx.prompt_id
        self.extra_pnginfo = (extra_data or {}).get("extra_pnginfo")
        self.kinds = kinds  # id(schema) -> _Kind, shared across runs by the engine
        self.nodes: dict[str, _Node] = {}
        self.ready: list[_Node] = []
        self.tasks: dict[asyncio.Task, _Node] = {}
        self.executed: list[str] = []
        self.served: list[str] = []
        self.outputs: dict[str, dict] = {}
        self.errors: list[dict] = []  # execution_error payloads of blocked nodes (the run goes on)
        self.listed_cached: list[str] = []
        self.stale = False
        self.kept: list[str] = []  # keys of expansions behind served nodes
        self._dynprompt = None

    # ---- set-up -------------------------------------------------------------------------------
    def kind(self, schema: NodeSchema) -> _Kind:
        entry = self.kinds.get(id(schema))
        if entry is None or entry.schema is not schema:
            entry = self.kinds[id(schema)] = _Kind(schema)
        return entry

    def _make(self, node_id: str, display: str, kind: _Kind, inputs: dict, defaults: dict) -> _Node:
        if defaults:
            missing = [n for n in defaults if n not in inputs]
            if missing:
                inputs = dict(inputs)
                for name in missing:
                    inputs[name] = defaults[name]
        node = _Node(node_id, display, kind, inputs)
        if kind.fingerprint is not None and not node.volatile:
            fp = self._fingerprint(node)
            if fp is _ALWAYS:
                node.volatile = True
            else:
                node.fp = fp
        if kind.by_id:
            node.fp = (node.fp, node_id)
        self.nodes[node_id] = node
        return node

    def _fingerprint(self, node: _Node):
        kind = node.kind
        params = kind.fp_params
        args = {k: v for k, v in node.inputs.items()
                if type(v) is not Link and (params is None or k in params)}
        try:
            value = kind.fingerprint(**args)
        except Exception:  # noqa: BLE001 - a node's own code: when unsure, run it
            return _ALWAYS
        if isinstance(value, float) and value != value:
            return _ALWAYS
        return value

    def _compute_key(self, node: _Node) -> None:
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

    def _consumed_match(self, node: _Node, consumed: tuple) -> bool:
        nodes = self.nodes
        for name, upstream_key, slot in consumed:
            link = node.lazy.get(name)
            if link is None or link.slot != slot:
                return False
            source = nodes.get(link.node)
            if source is None or source.volatile or source.key != upstream_key:
                return False
        return True

    # ---- scheduling ---------------------------------------------------------------------------
    def _require(self, roots) -> None:
        """Make sure `roots` get values: serve from the cache or queue them with their missing inputs."""
        nodes = self.nodes
        cache = self.cache
        ready = self.ready
        stack = list(roots)
        while stack:
            node = stack.pop()
            if node.state != NEW:
                continue
            if node.ckey is not None and not node.volatile and (node.lazy is None or node.key is not None):
                entry = cache.get(node.ckey)
                if entry is not None and (node.lazy is None or self._consumed_match(node, entry.consumed)):
                    self._serve(node, entry)
                    continue
            node.state = WAITING
            waiting = 0
            for dep_id in node.deps:
                dep = nodes[dep_id]
                if dep.state != DONE:
                    if dep.waiters is None:
                        dep.waiters = [node]
                    else:
                        dep.waiters.append(node)
                    waiting += 1
                    if dep.state == NEW:
                        stack.append(dep)
            node.waiting = waiting
            if not waiting:
                ready.append(node)

    def _wait_for(self, node: _Node, sources: list[_Node]) -> None:
        """Park `node` until `sources` are done (they are required here)."""
        waiting = 0
        for source in sources:
            if source.state != DONE:
                if source.waiters is None:
                    source.waiters = [node]
                else:
                    source.waiters.append(node)
                waiting += 1
        node.state = WAITING
        node.waiting = waiting
        if not waiting:
            self.ready.append(node)
            return
        self._require([s for s in sources if s.state == NEW])

    def _done(self, node: _Node) -> None:
        node.state = DONE
        waiters = node.waiters
        if waiters is not None:
            ready = self.ready
            for waiter in waiters:
                waiter.waiting -= 1
                if not waiter.waiting:
                    ready.append(waiter)
            node.waiters = None

    def _serve(self, node: _Node, entry) -> None:
        node.outputs = entry.outputs
        if node.lazy is not None:
            node.key = with_consumed(node.ckey, entry.consumed)
        self.served.append(node.id)
        if entry.children:
            self.kept.extend(entry.children)
        if entry.ui:
            self._show(node, entry.ui)
        self._done(node)

    def _show(self, node: _Node, ui: dict) -> None:
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
            on_event("execution_start", {"prompt_id": self.prompt_id, "timestamp": _now_ms()})
            on_event("execution_cached", {"nodes": list(self.listed_cached), "prompt_id": self.prompt_id,
                                          "timestamp": _now_ms()})
        self._require([self.nodes[o] for o in validation.outputs])

    async def execute(self) -> None:
        await self._loop()
        on_event = self.on_event
        if on_event is not None:
            on_event("execution_success", {"prompt_id": self.prompt_id, "timestamp": _now_ms()})

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
            if isinstance(exc, _AtNode):
                node, exc = exc.node, exc.error
            if isinstance(exc, context.Interrupted):
                self._interrupted(node)
                raise exc from None
            raise self._failure(node, exc) from exc
        finally:
            if self.tasks:  # cancelled from outside
                self._cancel_tasks()

    def _step(self, node: _Node) -> None:
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
            if calls and all(c is _SILENT for c in calls):  # every call blocked: skipped, never cached
                node.outputs = [[_SILENT] * len(calls) for _ in range(kind.n_out)]
                node.data = None
                self._done(node)
                return
        on_event = self.on_event
        if on_event is not None:
            on_event("executing", {"node": node.id, "display_node": node.display, "prompt_id": self.prompt_id})
        ctx = self.ctx
        fn = getattr(self._instance(node), kind.function)
        if kind.is_async:
            node_ctx = dataclasses.replace(ctx, node_id=node.id, display_node_id=node.display)
            node.state = RUNNING
            self.tasks[asyncio.ensure_future(_call_async(fn, calls, node_ctx))] = node
            return
        ctx.node_id = node.id
        ctx.display_node_id = node.display
        if len(calls) == 1 and type(calls[0]) is dict:
            results = [fn(**calls[0])]
        else:
            results = [fn(**c) if type(c) is dict else c for c in calls]
        self._finish(node, results)

    def _single_call(self, node: _Node) -> list | None:
        """The common case in one pass: every input holds one unblocked value. None otherwise."""
        nodes = self.nodes
        kwargs = {}
        for name, value in node.inputs.items():
            if type(value) is Link:
                values = nodes[value.node].outputs[value.slot]
                if len(values) != 1:
                    return None
                value = values[0]
                if type(value) is Blocker:
                    return None
            kwargs[name] = value
        for name, type_ in node.kind.hidden:
            kwargs[name] = self._hidden(node, type_)
        node.call = kwargs
        return [kwargs]

    def _gather(self, node: _Node) -> dict:
        """Input name -> list of values; constants become one-item lists, unevaluated lazy ones [None]."""
        nodes = self.nodes
        data = {}
        lazy = node.lazy
        for name, value in node.inputs.items():
            if type(value) is Link:
                if lazy is not None and name in lazy and (node.evaluated is None or name not in node.evaluated):
                    data[name] = [None]
                else:
                    data[name] = nodes[value.node].outputs[value.slot]
            else:
                data[name] = [value]
        for name, type_ in node.kind.hidden:
            data[name] = [self._hidden(node, type_)]
        return data

    def _hidden(self, node: _Node, type_: str):
        if type_ == "UNIQUE_ID":
            return node.id
        if type_ == "PROMPT":
            return self.prompt
        if type_ == "EXTRA_PNGINFO":
            return self.extra_pnginfo
        if type_ == "DYNPROMPT":
            if self._dynprompt is None:
                self._dynprompt = DynamicGraph(self)
            return self._dynprompt
        return None

    def _calls(self, node: _Node, data: dict) -> list:
        """One kwargs dict per call; a Blocker in place of a call whose inputs are blocked."""
        if node.kind.input_is_list:
            for values in data.values():
                for value in values:
                    if type(value) is Blocker:
                        return [self._block(node, value)]
            return [data]
        count = 1
        for values in data.values():
            n = len(values)
            if n != 1:
                if n == 0:
                    return []
                if n > count:
                    count = n
        calls = []
        for i in range(count):
            kwargs = {}
            blocked = None
            for name, values in data.items():
                value = values[i] if i < len(values) else values[-1]
                if type(value) is Blocker:
                    blocked = value
                    break
                kwargs[name] = value
            calls.append(kwargs if blocked is None else self._block(node, blocked))
        return calls

    def _block(self, node: _Node, blocker: Blocker) -> Blocker:
        if blocker.message is not None:
            payload = self._error_payload(node, blocker.message, "ExecutionBlocked", [])
            self.errors.append(payload)
            if self.on_event is not None:
                self.on_event("execution_error", payload)
        return _SILENT

    def _lazy_pending(self, node: _Node, calls: list) -> bool:
        """Ask the node which lazy inputs it needs; True when some must run first."""
        fn = getattr(self._instance(node), node.kind.check_lazy)
        asked = set()
        for call in calls:
            if type(call) is dict:
                names = fn(**call)
                if names:
                    asked.update([names] if isinstance(names, str) else names)
        evaluated = node.evaluated
        needed = [n for n in asked if n in node.lazy and (evaluated is None or n not in evaluated)]
        if not needed:
            return False
        if evaluated is None:
            evaluated = node.evaluated = set()
        evaluated.update(needed)
        self._wait_for(node, [self.nodes[node.lazy[n].node] for n in needed])
        return True

    def _instance(self, node: _Node):
        """The node's object, made on first use and kept for its later calls (lazy re-checks)."""
        if node.instance is None:
            node.instance = node.kind.factory()
        return node.instance

    # ---- results ------------------------------------------------------------------------------
    def _finish(self, node: _Node, results: list) -> None:
        kind = node.kind
        n_out = kind.n_out
        ui = None
        expand = None
        blocked = False
        if len(results) == 1 and not kind.any_out_list:
            outs, ui, expand = _normalise(kind, results[0])
            if outs is _SILENT:
                blocked = True
                outputs = [[_SILENT] for _ in range(n_out)]
            else:
                outputs = [[v] for v in outs[:n_out]]
            if expand is not None:
                expand = [(outs, expand)]
        else:
            outputs = [[] for _ in range(n_out)]
            uis = []
            parts = []  # (outputs, expansion or None) per call, in case any call expands
            for result in results:
                outs, one_ui, one_expand = _normalise(kind, result)
                if outs is _SILENT:
                    blocked = True
                    outs = (_SILENT,) * n_out
                    parts.append((outs, None))
                    for slot in outputs:
                        slot.append(_SILENT)
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
            ui = _merge_ui(uis)
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

    def _store(self, node: _Node, blocked: bool) -> None:
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
    def _expand(self, node: _Node, expansions: list, calls: int) -> None:
        """Add the returned subgraphs and park the parent until the nodes its outputs link to are done."""
        nodes = self.nodes
        created: list[_Node] = []
        pending = []
        for index, (outs, graph) in enumerate(expansions):
            if graph is None:
                pending.append(list(outs))
                continue
            if not isinstance(graph, dict):
                raise TypeError(f"an expansion must be an API-format graph (dict), got {type(graph).__name__}")
            prefix = f"{node.id}." if calls == 1 else f"{node.id}.{index}."
            local = {str(k) for k in graph}
            for local_id, spec in graph.items():
                new_id = prefix + str(local_id)
                if new_id in nodes:
                    raise ValueError(f"expansion node id {new_id!r} already exists")
                if not isinstance(spec, dict) or "class_type" not in spec:
                    raise ValueError(f"expansion node {local_id!r} has no class_type")
                schema = self.registry.get(spec["class_type"])
                if schema is None:
                    raise ValueError(f"expansion node {local_id!r}: unknown node type {spec['class_type']!r}")
                inputs = {}
                for name, raw in (spec.get("inputs") or {}).items():
                    value = parse_input(raw)
                    if type(value) is Link:
                        if value.node in local:
                            value = Link(prefix + value.node, value.slot)
                        elif value.node not in nodes:
                            self._adopt(value.node, f"expansion node {local_id!r} input {name!r}")
                    inputs[name] = value
                kind = self.kind(schema)
                created.append(self._make(new_id, node.display, kind, _schema_order(schema, inputs),
                                          kind.all_defaults))
            slots = []
            for value in outs:
                if is_link_value(value) and str(value[0]) in local:
                    slots.append(Link(prefix + str(value[0]), value[1]))
                else:
                    slots.append(value)
            pending.append(slots)
        for new in _topological(created, nodes):
            self._compute_key(new)
        node.pending = pending
        node.created = created
        targets = {nodes[v.node].id: nodes[v.node] for slots in pending for v in slots if type(v) is Link}
        for target in targets.values():
            if target.kind.n_out <= 0:
                raise ValueError(f"expansion output links to node {target.id!r}, which has no outputs")
        self._wait_for(node, list(targets.values()))

    def _adopt(self, node_id: str, where: str) -> None:
        """Bring a workflow node that no output needed into the run (an expansion links to it)."""
        if node_id not in self.prompt:
            raise ValueError(f"{where} links to node {node_id!r}, which is neither in the expansion nor "
                             f"in the workflow")
        validation = validate(self.prompt, self.registry, [node_id])
        if validation.error is not None:
            raise ValueError(f"{where} links to node {node_id!r}, which is not valid: "
                             f"{validation.error['message']}: {validation.error['details']}")
        for valid_id, valid in validation.graph.items():
            if valid_id not in self.nodes:
                kind = self.kind(valid.schema)
                self._compute_key(self._make(valid_id, valid_id, kind, valid.inputs, kind.defaults))

    def _resolve_expansion(self, node: _Node) -> None:
        kind = node.kind
        nodes = self.nodes
        outputs = [[] for _ in range(kind.n_out)]
        blocked = False
        for slots in node.pending:
            for j in range(kind.n_out):
                value = slots[j]
                if type(value) is Link:
                    values = nodes[value.node].outputs[value.slot]
                    outputs[j].extend(values)
                    blocked = blocked or any(v is _SILENT for v in values)
                    if nodes[value.node].volatile and not node.volatile:
                        # Volatility inside flows out; downstream keys assumed otherwise.
                        node.volatile = True
                        node.key = volatile_key()
                        self.stale = True
                elif value is _SILENT or not kind.out_is_list[j]:
                    outputs[j].append(value)
                else:
                    outputs[j].extend(value)
        node.pending = None
        node.outputs = outputs
        children = []
        for made in node.created or ():
            if made.ckey is not None and not made.volatile:
                children.append(made.ckey)
            children.extend(made.children)
        node.children = tuple(children)
        node.created = None
        self._store(node, blocked)

    # ---- async nodes --------------------------------------------------------------------------
    async def _wait_tasks(self) -> _Node | None:
        flag = self.ctx.interrupt_flag
        done, _ = await asyncio.wait(list(self.tasks), timeout=0.05, return_when=asyncio.FIRST_COMPLETED)
        last = None
        for task in done:
            node = self.tasks.pop(task)
            last = node
            try:
                results = task.result()
            except context.Interrupted:
                raise _AtNode(node, context.Interrupted()) from None
            except Exception as exc:  # noqa: BLE001
                raise _AtNode(node, exc) from exc
            try:
                self._finish(node, results)
            except Exception as exc:  # noqa: BLE001
                raise _AtNode(node, exc) from exc
        if flag.is_set():
            raise _AtNode(last or next(iter(self.tasks.values()), None), context.Interrupted())
        return last

    def _cancel_tasks(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.tasks.clear()

    # ---- failures -----------------------------------------------------------------------------
    def _error_payload(self, node: _Node | None, message: str, exc_type: str, tb: list) -> dict:
        return {
            "prompt_id": self.prompt_id,
            "node_id": node.id if node is not None else None,
            "node_type": node.kind.name if node is not None else None,
            "executed": self.executed + self.served,
            "exception_message": message,
            "exception_type": exc_type,
            "traceback": tb,
            "current_inputs": _summaries(node) if node is not None else {},
            "current_outputs": [n.id for n in self.nodes.values() if n.state == DONE],
            "timestamp": _now_ms(),
        }

    def _failure(self, node: _Node | None, exc: BaseException) -> ExecutionError:
        payload = self._error_payload(node, str(exc), type(exc).__name__, traceback.format_tb(exc.__traceback__))
        if self.on_event is not None:
            self.on_event("execution_error", payload)
        error = ExecutionError(payload)
        error.__cause__ = exc
        return error

    def _interrupted(self, node: _Node | None) -> None:
        if self.on_event is not None:
            self.on_event("execution_interrupted", {
                "prompt_id": self.prompt_id, "node_id": node.id if node is not None else None,
                "node_type": node.kind.name if node is not None else None,
                "executed": self.executed + self.served})

    def cache_keys(self) -> set:
        """Everything this run's workflow consists of (what the default policy keeps)."""
        keys = {n.ckey for n in self.nodes.values() if n.ckey is not None and not n.volatile}
        keys.update(self.kept)
        return keys


class _AtNode(Exception):
    """Carries an async node's failure out of the wait, with the node it belongs to."""

    def __init__(self, node, error):
        self.node, self.error = node, error


_SILENT = Blocker(None)


async def _call_async(fn, calls: list, node_ctx):
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


def _normalise(kind: _Kind, result):
    """(outputs tuple, ui, expand) from any accepted return shape; outputs is _SILENT when blocked."""
    ui = expand = None
    if type(result) is tuple:
        outs = result
    elif result is _SILENT:
        return _SILENT, None, None
    elif type(result) is Blocker:
        outs = (result,) * kind.n_out
    elif isinstance(result, NodeOutput):
        outs, ui, expand = result.outputs, result.ui, result.expand
    elif kind.is_v1 and isinstance(result, dict):
        ui, expand = result.get("ui"), result.get("expand")
        outs = tuple(result.get("result") or ())
    elif kind.is_v1 and isinstance(result, list):
        outs = tuple(result)
    elif result is None and kind.n_out == 0:
        outs = ()
    elif not kind.is_v1 and kind.n_out == 1:
        outs = (result,)
    else:
        raise TypeError(f"{kind.name} returned {type(result).__name__}; expected a tuple of "
                        f"{kind.n_out} output(s)")
    if len(outs) < kind.n_out:
        raise TypeError(f"{kind.name} returned {len(outs)} output(s) but declares {kind.n_out}")
    return outs, ui, expand


def _merge_ui(uis: list) -> dict | None:
    if not uis:
        return None
    if len(uis) == 1:
        return uis[0]
    merged: dict = {}
    for ui in uis:
        for key, value in ui.items():
            if isinstance(value, list) and isinstance(merged.get(key), list):
                merged[key] = merged[key] + value
            else:
                merged[key] = list(value) if isinstance(value, list) else value
    return merged


def _topological(created: list[_Node], nodes: dict) -> list[_Node]:
    """Dependency order of freshly expanded nodes (links may also point at older nodes)."""
    new_ids = {n.id for n in created}
    order, seen, finished = [], set(), set()
    for root in created:
        if root.id in seen:
            continue
        stack = [(root, False)]
        while stack:
            node, leaving = stack.pop()
            if leaving:
                order.append(node)
                finished.add(node.id)
                continue
            if node.id in seen:
                continue
            seen.add(node.id)
            stack.append((node, True))
            sources = list(node.deps) + [link.node for link in (node.lazy or {}).values()]
            for dep in sources:
                if dep in new_ids:
                    if dep in seen and dep not in finished:
                        raise ValueError(f"the expansion has a dependency cycle through node {dep!r}")
                    if dep not in seen:
                        stack.append((nodes[dep], False))
    return order


def _schema_order(schema: NodeSchema, inputs: dict) -> dict:
    """Inputs in declaration order (as validation gives them), so equal nodes get equal keys."""
    ordered = {spec.name: inputs[spec.name] for spec in schema.inputs if spec.name in inputs}
    if len(ordered) != len(inputs):
        ordered.update(inputs)
    return ordered


def _summaries(node: _Node) -> dict:
    """What the failing node was given, in ComfyUI's shape {name: [value per call]}."""
    if node.data is not None:
        return {name: [_summary(v) for v in values[:8]] for name, values in node.data.items()}
    if node.call is not None:
        return {name: [_summary(value)] for name, value in node.call.items()}
    return {}


def _summary(value):
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value if len(value) <= 200 else value[:200] + "..."
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"{type(value).__name__}(shape={list(shape)}, dtype={str(dtype).replace('torch.', '')})"
    if isinstance(value, dict):
        return {str(k): _summary(v) for k, v in list(value.items())[:8]}
    if isinstance(value, (list, tuple)):
        return [_summary(v) for v in value[:8]]
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."
