"""Expansions: a node that returns a subgraph gets it added to the running graph.

Expanded nodes are checked by the same per-node validation as submitted ones (types of links, required
inputs, ranges, COMBO options), then keyed and scheduled like any other node; the parent waits for the
nodes its outputs link to. A mixin of `Execution`.
"""

from __future__ import annotations

from ..errors import ExpansionError
from ..graph import Link, is_link_value
from ..keys import volatile_key
from ..validate import NodeCheck, validate
from .state import SILENT, NodeState


class _Schemas:
    """Node id -> schema for checking an expansion: its own new nodes, then every node of the run."""

    __slots__ = ("local", "nodes")

    def __init__(self, nodes: dict):
        self.local: dict = {}
        self.nodes = nodes

    def get(self, node_id):
        schema = self.local.get(node_id)
        if schema is None:
            node = self.nodes.get(node_id)
            schema = node.kind.schema if node is not None else None
        return schema


class Expansions:
    def _expand(self, node: NodeState, expansions: list, calls: int) -> None:
        """Add the returned subgraphs and park the parent until the nodes its outputs link to are done."""
        nodes = self.nodes
        created: list[NodeState] = []
        pending = []
        for index, (outs, graph) in enumerate(expansions):
            if graph is None:
                pending.append(list(outs))
                continue
            if not isinstance(graph, dict):
                raise ExpansionError(f"an expansion must be an API-format graph (dict), got {type(graph).__name__}")
            prefix = f"{node.id}." if calls == 1 else f"{node.id}.{index}."
            local = {str(k) for k in graph}
            schemas = _Schemas(nodes)
            specs = []
            for local_id, spec in graph.items():
                new_id = prefix + str(local_id)
                if new_id in nodes:
                    raise ExpansionError(f"expansion node id {new_id!r} already exists")
                if not isinstance(spec, dict) or "class_type" not in spec:
                    raise ExpansionError(f"expansion node {local_id!r} has no class_type")
                schema = self.registry.get(spec["class_type"])
                if schema is None:
                    raise ExpansionError(f"expansion node {local_id!r}: unknown node type {spec['class_type']!r}")
                schemas.local[new_id] = schema
                raw = {}
                for name, value in (spec.get("inputs") or {}).items():
                    if is_link_value(value):
                        source = str(value[0])
                        if source in local:
                            value = [prefix + source, value[1]]
                        elif source not in nodes:
                            self._adopt(source, f"expansion node {local_id!r} input {name!r}")
                    raw[name] = value
                specs.append((local_id, new_id, schema, raw))
            check = NodeCheck(schemas)
            for local_id, new_id, schema, raw in specs:
                kind = self.kind(schema)
                for name, default in kind.all_defaults.items():
                    raw.setdefault(name, default)
                valid, errors, _ = check.check(new_id, {"inputs": raw}, schema)
                if errors:
                    first = errors[0]
                    raise ExpansionError(f"expansion node {local_id!r} ({schema.name}) is not valid: "
                                         f"{first['message']}: {first['details']}")
                created.append(self._make(new_id, node.display, kind, valid.inputs, kind.all_defaults))
            slots = []
            for value in outs:
                if is_link_value(value) and str(value[0]) in local:
                    slots.append(Link(prefix + str(value[0]), value[1]))
                else:
                    slots.append(value)
            pending.append(slots)
        for new in topological(created, nodes):
            self._compute_key(new)
        node.pending = pending
        node.created = created
        targets = {nodes[v.node].id: nodes[v.node] for slots in pending for v in slots if type(v) is Link}
        for target in targets.values():
            if target.kind.n_out <= 0:
                raise ExpansionError(f"expansion output links to node {target.id!r}, which has no outputs")
        self._wait_for(node, list(targets.values()))

    def _adopt(self, node_id: str, where: str) -> None:
        """Bring a workflow node that no output needed into the run (an expansion links to it)."""
        if node_id not in self.prompt:
            raise ExpansionError(f"{where} links to node {node_id!r}, which is neither in the expansion nor "
                             f"in the workflow")
        validation = validate(self.prompt, self.registry, [node_id])
        if validation.error is not None:
            raise ExpansionError(f"{where} links to node {node_id!r}, which is not valid: "
                             f"{validation.error['message']}: {validation.error['details']}")
        for valid_id, valid in validation.graph.items():
            if valid_id not in self.nodes:
                kind = self.kind(valid.schema)
                self._compute_key(self._make(valid_id, valid_id, kind, valid.inputs, kind.defaults))

    def _resolve_expansion(self, node: NodeState) -> None:
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
                    blocked = blocked or any(v is SILENT for v in values)
                    if nodes[value.node].volatile and not node.volatile:
                        # Volatility inside flows out; downstream keys assumed otherwise.
                        node.volatile = True
                        node.key = volatile_key()
                        self.stale = True
                elif value is SILENT or not kind.out_is_list[j]:
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


def topological(created: list[NodeState], nodes: dict) -> list[NodeState]:
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
                        raise ExpansionError(f"the expansion has a dependency cycle through node {dep!r}")
                    if dep not in seen:
                        stack.append((nodes[dep], False))
    return order
