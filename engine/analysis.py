"""Graph analysis of a workflow with networkx: its structure, critical path, parallel width and DOT.

Kept out of the execution path on purpose: the executor's own bookkeeping is cheaper per node than a
networkx graph. This serves `genloom graph` (a reader's view of a workflow) and later planners that
partition a workflow (distributed runs), where clarity matters more than microseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from .graph import Link, parse_input


def workflow_digraph(graph: dict) -> nx.DiGraph:
    """API-format graph -> DiGraph: node attributes class_type/title, edge attributes inputs (name, slot)."""
    g = nx.DiGraph()
    for node_id, node in graph.items():
        meta = node.get("_meta") or {}
        g.add_node(str(node_id), class_type=node.get("class_type", "?"), title=meta.get("title"))
    for node_id, node in graph.items():
        for name, raw in (node.get("inputs") or {}).items():
            value = parse_input(raw) if isinstance(raw, (list, tuple)) else raw
            if isinstance(value, Link):
                source = str(value.node)
                if source not in g:
                    g.add_node(source, class_type="(missing)", title=None)
                if g.has_edge(source, str(node_id)):
                    g.edges[source, str(node_id)]["inputs"].append((name, value.slot))
                else:
                    g.add_edge(source, str(node_id), inputs=[(name, value.slot)])
    return g


@dataclass
class Structure:
    nodes: int
    links: int
    sources: list[str]  # nodes with no linked inputs
    sinks: list[str]  # nodes nothing reads from (outputs, or dead ends)
    components: int  # independent sub-workflows
    critical_path: list[str] = field(default_factory=list)  # the longest dependency chain
    levels: list[list[str]] = field(default_factory=list)  # nodes that could run at the same time
    cycle: list[str] | None = None  # a dependency cycle, when there is one (nothing can run then)

    @property
    def width(self) -> int:
        return max((len(level) for level in self.levels), default=0)

    def as_dict(self) -> dict:
        return {"nodes": self.nodes, "links": self.links, "sources": self.sources, "sinks": self.sinks,
                "components": self.components, "critical_path": self.critical_path,
                "depth": len(self.critical_path), "width": self.width, "levels": self.levels,
                "cycle": self.cycle}


def structure(g: nx.DiGraph) -> Structure:
    result = Structure(
        nodes=g.number_of_nodes(), links=sum(len(d["inputs"]) for _, _, d in g.edges(data=True)),
        sources=sorted(n for n in g if g.in_degree(n) == 0), sinks=sorted(n for n in g if g.out_degree(n) == 0),
        components=nx.number_weakly_connected_components(g) if len(g) else 0)
    if not nx.is_directed_acyclic_graph(g):
        result.cycle = [edge[0] for edge in nx.find_cycle(g)]
        return result
    result.critical_path = list(nx.dag_longest_path(g))
    result.levels = [sorted(level) for level in nx.topological_generations(g)]
    return result


def to_dot(g: nx.DiGraph, name: str = "workflow") -> str:
    """Graphviz DOT text (no pydot needed): one box per node, one arrow per linked input."""
    def quote(text) -> str:
        return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    lines = [f"digraph {quote(name)} {{", "  rankdir=LR;", "  node [shape=box];"]
    for node_id, data in g.nodes(data=True):
        label = f"{node_id}: {data.get('class_type')}"
        if data.get("title") and data["title"] != data.get("class_type"):
            label += f"\n{data['title']}"
        lines.append(f"  {quote(node_id)} [label={quote(label)}];")
    for source, target, data in g.edges(data=True):
        label = ", ".join(f"{name}<-{slot}" for name, slot in data["inputs"])
        lines.append(f"  {quote(source)} -> {quote(target)} [label={quote(label)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
