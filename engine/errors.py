"""One hierarchy for every error genloom raises on purpose.

Callers catch `GenloomError` to tell "the user's input or environment is wrong" from a bug. Each domain
error carries the fields its reporter needs (ComfyUI's validation shapes, the execution_error payload,
an HTTP status), so no layer parses another layer's message text.
"""

from __future__ import annotations


class GenloomError(Exception):
    """Base of the errors genloom raises deliberately; anything else escaping is a bug."""


class WorkflowFormatError(GenloomError, ValueError):
    """Input that is not a workflow in any format genloom reads."""


class WorkflowError(GenloomError):
    """The workflow cannot run: `error` and `node_errors` in ComfyUI's validation shapes."""

    def __init__(self, error: dict, node_errors: dict | None = None):
        self.error = error
        self.node_errors = node_errors or {}
        lines = [f"{error.get('message', 'invalid workflow')}" + (f": {error['details']}" if error.get("details")
                                                                  and "\n" not in error["details"] else "")]
        for node_id, record in self.node_errors.items():
            for e in record.get("errors", ()):
                lines.append(f"  node {node_id} ({record.get('class_type')}): {e.get('message')}: {e.get('details')}")
        super().__init__("\n".join(lines))


class NodeDefinitionError(GenloomError):
    """A node class that cannot be registered (bad declaration, run() not matching its inputs)."""


class NodeInputError(GenloomError, ValueError):
    """A node was given an input it cannot use. Nodes raise it with the input's name only; the node API
    fills in the class and the executor the node id, and ComfyUI's error fields come from those."""

    def __init__(self, input_name: str | None, message: str):
        self.input_name = input_name
        self.message = message
        self.class_type: str | None = None
        self.node_id: str | None = None
        super().__init__(message)

    def __str__(self) -> str:
        where = f"input '{self.input_name}': " if self.input_name else ""
        who = f"{self.class_type}: " if self.class_type else ""
        return f"{who}{where}{self.message}"


class ModelLoadError(NodeInputError):
    """A model file that exists but cannot be loaded (wrong layout, unsafe pickle, missing weights)."""


class ExpansionError(GenloomError, ValueError):
    """A node returned a subgraph that cannot run (unknown types, bad links, invalid inputs)."""


class Interrupted(GenloomError):
    """The run was interrupted by the user."""


class ExecutionError(GenloomError):
    """A node failed; `payload` is the execution_error event data."""

    def __init__(self, payload: dict):
        self.payload = payload
        super().__init__(f"node {payload['node_id']} ({payload['node_type']}) failed: "
                         f"{payload['exception_type']}: {payload['exception_message']}")


class RequestError(GenloomError):
    """A server request that cannot be served: `status` is the HTTP status, `body` the JSON answer."""

    def __init__(self, status: int, message: str, body: dict | None = None):
        self.status = status
        self.message = message
        self.body = body if body is not None else {"error": message}
        super().__init__(message)
