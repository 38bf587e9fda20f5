"""Failures and their events: execution_error payloads in ComfyUI's shape, interruptions, and the
summaries of what a failing node was given. A mixin of `Execution`.
"""

from __future__ import annotations

import time
import traceback

from ..errors import ExecutionError, NodeInputError
from .state import DONE, NodeState


def now_ms() -> int:
    return int(time.time() * 1000)


class FailureReports:
    def _error_payload(self, node: NodeState | None, message: str, exc_type: str, tb: list) -> dict:
        return {
            "prompt_id": self.prompt_id,
            "node_id": node.id if node is not None else None,
            "node_type": node.kind.name if node is not None else None,
            "executed": self.executed + self.served,
            "exception_message": message,
            "exception_type": exc_type,
            "traceback": tb,
            "current_inputs": summaries(node) if node is not None else {},
            "current_outputs": [n.id for n in self.nodes.values() if n.state == DONE],
            "timestamp": now_ms(),
        }

    def _failure(self, node: NodeState | None, exc: BaseException) -> ExecutionError:
        if isinstance(exc, NodeInputError) and node is not None:
            # Nodes name only the input; who they are is known here (as in ComfyUI's error fields).
            exc.node_id = node.id
            if exc.class_type is None:
                exc.class_type = node.kind.name
        payload = self._error_payload(node, str(exc), type(exc).__name__, traceback.format_tb(exc.__traceback__))
        if isinstance(exc, NodeInputError) and exc.input_name:
            payload["input_name"] = exc.input_name
        if self.on_event is not None:
            self.on_event("execution_error", payload)
        error = ExecutionError(payload)
        error.__cause__ = exc
        return error

    def _interrupted(self, node: NodeState | None) -> None:
        if self.on_event is not None:
            self.on_event("execution_interrupted", {
                "prompt_id": self.prompt_id, "node_id": node.id if node is not None else None,
                "node_type": node.kind.name if node is not None else None,
                "executed": self.executed + self.served})


class AtNode(Exception):
    """Carries an async node's failure out of the wait, with the node it belongs to."""

    def __init__(self, node, error):
        self.node, self.error = node, error


def summaries(node: NodeState) -> dict:
    """What the failing node was given, in ComfyUI's shape {name: [value per call]}."""
    if node.data is not None:
        return {name: [summary(v) for v in values[:8]] for name, values in node.data.items()}
    if node.call is not None:
        return {name: [summary(value)] for name, value in node.call.items()}
    return {}


def summary(value):
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value if len(value) <= 200 else value[:200] + "..."
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"{type(value).__name__}(shape={list(shape)}, dtype={str(dtype).replace('torch.', '')})"
    if isinstance(value, dict):
        return {str(k): summary(v) for k, v in list(value.items())[:8]}
    if isinstance(value, (list, tuple)):
        return [summary(v) for v in value[:8]]
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."
