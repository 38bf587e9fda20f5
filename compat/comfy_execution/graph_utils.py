"""ComfyUI's `comfy_execution.graph_utils`: `GraphBuilder` writes the subgraph a node returns as
`{"result": ..., "expand": graph.finalize()}`, which genloom's executor expands like its own."""

from __future__ import annotations

from genloom.engine.graph import is_link_value


def is_link(obj) -> bool:
    """True for `[node_id (str), output index (int)]`, the API format's link."""
    return isinstance(obj, list) and is_link_value(obj) and isinstance(obj[0], str)


class GraphBuilder:
    _default_prefix_root = ""
    _default_prefix_call_index = 0
    _default_prefix_graph_index = 0

    def __init__(self, prefix: str | None = None):
        self.prefix = prefix if prefix is not None else GraphBuilder.alloc_prefix()
        self.nodes: dict[str, Node] = {}
        self.id_gen = 1

    @classmethod
    def set_default_prefix(cls, prefix_root, call_index, graph_index=0):
        cls._default_prefix_root, cls._default_prefix_call_index = prefix_root, call_index
        cls._default_prefix_graph_index = graph_index

    @classmethod
    def alloc_prefix(cls, root=None, call_index=None, graph_index=None) -> str:
        root = cls._default_prefix_root if root is None else root
        call_index = cls._default_prefix_call_index if call_index is None else call_index
        if graph_index is None:
            graph_index = cls._default_prefix_graph_index
            cls._default_prefix_graph_index += 1
        return f"{root}.{call_index}.{graph_index}."

    def node(self, class_type: str, id: str | None = None, **kwargs) -> "Node":
        if id is None:
            id = str(self.id_gen)
            self.id_gen += 1
        id = self.prefix + str(id)
        if id in self.nodes:
            return self.nodes[id]
        node = Node(id, class_type, kwargs)
        self.nodes[id] = node
        return node

    def lookup_node(self, id: str) -> "Node | None":
        return self.nodes.get(self.prefix + str(id))

    def finalize(self) -> dict:
        return {node_id: node.serialize() for node_id, node in self.nodes.items()}

    def replace_node_output(self, node_id, index, new_value) -> None:
        node_id = self.prefix + str(node_id)
        for node in self.nodes.values():
            for key, value in list(node.inputs.items()):
                if is_link(value) and value[0] == node_id and value[1] == index:
                    node.inputs[key] = new_value

    def remove_node(self, id) -> None:
        self.nodes.pop(self.prefix + str(id), None)


class Node:
    def __init__(self, id: str, class_type: str, inputs: dict):
        self.id, self.class_type, self.inputs = id, class_type, dict(inputs)
        self.override_display_id = None

    def out(self, index: int) -> list:
        return [self.id, index]

    def set_input(self, key: str, value) -> None:
        if value is None:
            self.inputs.pop(key, None)
        else:
            self.inputs[key] = value

    def get_input(self, key: str):
        return self.inputs.get(key)

    def set_override_display_id(self, override_display_id) -> None:
        self.override_display_id = override_display_id

    def serialize(self) -> dict:
        out = {"class_type": self.class_type, "inputs": self.inputs}
        if self.override_display_id is not None:
            out["override_display_id"] = self.override_display_id
        return out
