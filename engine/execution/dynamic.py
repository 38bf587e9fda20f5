"""The DYNPROMPT hidden input: nodes that inspect or extend the graph they run in read it here."""

from __future__ import annotations

from ..graph import to_api_value


class DynamicGraph:
    """The DYNPROMPT hidden input: a read-only view of the running graph, expansions included."""

    def __init__(self, execution):
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
