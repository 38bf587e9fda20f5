"""Per-node bookkeeping of a run: what a node type needs in the hot loop, and one node's state.

Both are plain slotted objects built once (kinds once per schema, across runs) so that the per-node
path reads attributes instead of looking things up.
"""

from __future__ import annotations

import inspect

from ..graph import Link
from ..node import Blocker
from ..schema import NodeSchema

NEW, WAITING, RUNNING, DONE = 0, 1, 2, 3
ALWAYS = object()  # fingerprint verdict: re-run every time
SILENT = Blocker(None)  # a blocked value without a message: consumers are skipped quietly


class NodeKind:
    """What the hot loop needs to know about a node type, worked out once per schema."""

    __slots__ = ("schema", "name", "version", "function", "factory", "is_v1", "is_async", "hidden",
                 "lazy", "check_lazy", "fingerprint", "fp_params", "n_out", "out_is_list", "any_out_list",
                 "input_is_list", "not_idempotent", "defaults", "all_defaults", "by_id", "direct")

    def __init__(self, schema: NodeSchema):
        self.schema = schema
        self.name = schema.name
        self.version = schema.version
        self.function = schema.function
        # A native node's run() is wrapped to name its class in NodeInputErrors; the executor names
        # nodes itself (failures.py), so it calls the function underneath and saves a frame per call.
        method = getattr(schema.factory, schema.function, None) if isinstance(schema.factory, type) else None
        self.direct = method.__wrapped__ if hasattr(method, "__genloom_node__") else None
        self.factory = schema.factory
        self.is_v1 = schema.is_v1
        self.is_async = schema.is_async
        self.hidden = tuple((s.name, s.type) for s in schema.inputs if s.section == "hidden")
        # A node told its own id may put it in its result, so equal nodes must not share one; a
        # NOT_IDEMPOTENT node is never merged with an identical twin (ComfyUI: the id joins its key;
        # a resubmission is still served from cache, only IS_CHANGED returning NaN always re-runs).
        self.by_id = schema.not_idempotent or any(type_ == "UNIQUE_ID" for _, type_ in self.hidden)
        # Lazy inputs only matter when the node can say which ones it needs; otherwise all are needed.
        self.check_lazy = schema.check_lazy
        self.lazy = frozenset(schema.lazy_inputs) if schema.check_lazy else frozenset()
        self.fingerprint = schema.fingerprint
        self.fp_params = accepted_params(schema.fingerprint) if schema.fingerprint else None
        self.n_out = len(schema.outputs)
        self.out_is_list = tuple(o.is_list for o in schema.outputs)
        self.any_out_list = any(self.out_is_list)
        self.input_is_list = schema.input_is_list
        self.not_idempotent = schema.not_idempotent
        widgets = [s for s in schema.inputs if s.section != "hidden" and s.default is not None]
        # Native optional widgets take their declared default when the workflow leaves them out.
        self.defaults = {} if schema.is_v1 else {s.name: s.default for s in widgets if s.section == "optional"}
        self.all_defaults = {s.name: s.default for s in widgets}


def accepted_params(fn) -> frozenset | None:
    """Keyword names `fn` accepts; None when it takes **kwargs."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params)


class NodeState:
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

    def __init__(self, node_id: str, display: str, kind: NodeKind, inputs: dict):
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
