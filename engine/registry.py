"""The node types an engine knows: built-in packs first, then plugins, never overriding a built-in.

The registry knows no pack by name: whoever composes an engine (genloom.runtime) hands it the packs.
Registering checks a node's contract (its function accepts the declared inputs), so a misspelt
parameter is reported when the pack loads, not when a workflow first runs the node.
"""

from __future__ import annotations

import dataclasses
import inspect
from types import ModuleType

from .errors import NodeDefinitionError
from .node import Node
from .schema import NodeSchema
from .v1 import compile_v1, is_v1_class


class Registry:
    def __init__(self):
        self.nodes: dict[str, NodeSchema] = {}
        self.problems: list[dict] = []  # {"source", "node"?, "message"}: reported, never fatal
        # plugin folder packs: name -> {"name", "path", "nodes", "web_dir", "error"} (engine.plugins)
        self.packs: dict[str, dict] = {}

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
                if not getattr(node, "keyed_by_mapping", False):
                    raise NodeDefinitionError(f"{node.__name__} is named {schema.name!r}, not {name!r}")
                # A V3 class listed in NODE_CLASS_MAPPINGS: ComfyUI keys it (and prompts name it) by
                # the mapping's key; its schema's display name stays.
                schema = dataclasses.replace(schema, name=name)
        elif is_v1_class(node):
            schema = compile_v1(name or node.__name__, node, display_name, module or node.__module__)
        else:
            raise NodeDefinitionError(f"{node!r} is neither a genloom Node nor a ComfyUI node class")
        if self.nodes.get(schema.name) is schema:  # a pack re-exporting a class already registered
            return schema
        check_signature(schema)
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

    def object_info(self) -> dict:
        return {name: schema.object_info() for name, schema in self.nodes.items()}


def check_signature(schema: NodeSchema) -> None:
    """Raise NodeDefinitionError when the node's function cannot take its declared inputs.

    Native nodes must accept every input (they are always passed). V1 classes must accept their
    required inputs; optional ones are passed only when connected, and ComfyUI packs in the wild declare
    some that only their **kwargs see, so those are not held against them."""
    target = getattr(schema.factory, schema.function, None) if isinstance(schema.factory, type) else None
    if target is None:
        return
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    accepted = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    wanted = [s.name for s in schema.inputs
              if not schema.is_v1 or s.section == "required"]
    missing = [n for n in wanted if n not in accepted]
    if missing:
        raise NodeDefinitionError(
            f"{schema.name}: {schema.function}() does not accept the declared input(s) "
            f"{', '.join(missing)}; its parameters are ({', '.join(sorted(accepted - {'self', 'cls'}))})")
