"""The node types an engine knows: built-in packs first, then plugins, never overriding a built-in."""

from __future__ import annotations

import importlib
from types import ModuleType

from .node import Node
from .schema import NodeSchema
from .v1 import NodeDefinitionError, compile_v1, is_v1_class


class Registry:
    def __init__(self):
        self.nodes: dict[str, NodeSchema] = {}
        self.problems: list[dict] = []  # {"source", "node"?, "message"}: reported, never fatal

    def __contains__(self, name: str) -> bool:
        return name in self.nodes

    def __getitem__(self, name: str) -> NodeSchema:
        return self.nodes[name]

    def get(self, name: str) -> NodeSchema | None:
        return self.nodes.get(name)

    def add(self, schema: NodeSchema) -> bool:
        existing = self.nodes.get(schema.name)
        if existing is not None and existing.source != schema.source:
            kind = "built-in" if existing.source == "builtin" else f"from {existing.source}"
            self.problems.append({"source": schema.source, "node": schema.name,
                                  "message": f"node {schema.name!r} is already defined ({kind}); "
                                             f"the definition from {schema.source} is ignored"})
            return False
        self.nodes[schema.name] = schema
        return True

    def register(self, node, name: str | None = None, display_name: str | None = None,
                 source: str = "builtin", module: str | None = None) -> NodeSchema:
        """Register a native `Node` subclass or a ComfyUI V1 class."""
        if isinstance(node, type) and issubclass(node, Node):
            schema = node.schema()
            if name and name != schema.name:
                raise NodeDefinitionError(f"{node.__name__} is named {schema.name!r}, not {name!r}")
        elif is_v1_class(node):
            schema = compile_v1(name or node.__name__, node, display_name, module or node.__module__)
        else:
            raise NodeDefinitionError(f"{node!r} is neither a genloom Node nor a ComfyUI node class")
        if self.nodes.get(schema.name) is schema:  # a pack re-exporting a class already registered
            return schema
        schema.source = source
        if source != "builtin":  # the editor shows the pack of nodes whose module is custom_nodes.<pack>
            schema.python_module = f"custom_nodes.{source.removeprefix('entry point ')}"
        self.add(schema)
        return schema

    def register_module(self, module: ModuleType, source: str) -> int:
        """Register what a pack module exports: `NODES` (genloom) and/or `NODE_CLASS_MAPPINGS` (V1)."""
        count = 0
        for cls in getattr(module, "NODES", ()) or ():
            count += self._try(lambda: self.register(cls, source=source), source, getattr(cls, "__name__", cls))
        mappings = getattr(module, "NODE_CLASS_MAPPINGS", None) or {}
        display = getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {}
        for name, cls in mappings.items():
            count += self._try(
                lambda: self.register(cls, name=name, display_name=display.get(name), source=source)
                if is_v1_class(cls) else self.register(cls, source=source), source, name)
        return count

    def _try(self, fn, source, name) -> int:
        try:
            fn()
            return 1
        except Exception as exc:  # noqa: BLE001 - one bad node must not stop the rest
            self.problems.append({"source": source, "node": str(name), "message": str(exc)})
            return 0

    def load_builtins(self) -> None:
        from ..nodes import PACKS

        for module_name in PACKS:
            self.register_module(importlib.import_module(module_name), source="builtin")

    def object_info(self) -> dict:
        return {name: schema.object_info() for name, schema in self.nodes.items()}
