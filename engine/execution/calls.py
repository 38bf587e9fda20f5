"""Call mapping: how a node's input lists become calls (ComfyUI's list semantics), with hidden inputs,
blocked inputs and lazy-input checks. A mixin of `Execution`, so the hot loop reads `self` directly.
"""

from __future__ import annotations

from ..graph import Link
from ..node import Blocker
from .dynamic import DynamicGraph
from .state import SILENT, NodeState


class CallMapping:
    def _single_call(self, node: NodeState) -> list | None:
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

    def _gather(self, node: NodeState) -> dict:
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

    def _hidden(self, node: NodeState, type_: str):
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

    def _calls(self, node: NodeState, data: dict) -> list:
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

    def _block(self, node: NodeState, blocker: Blocker) -> Blocker:
        if blocker.message is not None:
            payload = self._error_payload(node, blocker.message, "ExecutionBlocked", [])
            self.errors.append(payload)
            if self.on_event is not None:
                self.on_event("execution_error", payload)
        return SILENT

    def _lazy_pending(self, node: NodeState, calls: list) -> bool:
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

    def _instance(self, node: NodeState):
        """The node's object, made on first use and kept for its later calls (lazy re-checks)."""
        if node.instance is None:
            node.instance = node.kind.factory()
        return node.instance
