"""Turns an API-format graph into the editor's UI workflow (version 0.4): the other way of ui_import.

Each node gets its sockets (the inputs that are not widgets, then any widget fed by a link), its
outputs with the links leaving them, and `widgets_values` in the editor's widget order (the
'control after generate' entry, "fixed", after a seed), so that `ui_import.ui_to_api` gives the graph
back. Nodes are laid out in columns by dependency depth, in the graph's order within a column.
"""

from __future__ import annotations

from typing import Any

from .ui_import import has_control_widget, widget_default, _NOTHING

GAP_X = 60  # px between columns
GAP = 40  # px between nodes of a column
WIDTH = 320
CHAR = 8  # px of a title character, about
SLOT = 22  # the editor's slot and widget heights, about
WIDGET = 26
MULTILINE = 110


def _is_link(value) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def _widget_specs(schema) -> list:
    """The widgets the editor shows, in its order (a dynamic combo's chosen children come later)."""
    return [spec for spec in schema.inputs if spec.is_widget and (spec.group is None or spec.dynamic is not None)]


def _depths(graph: dict) -> dict[str, int]:
    """Each node's column: one more than the deepest node feeding it (cycles cut)."""
    depth: dict[str, int] = {}
    for start in graph:
        stack = [(start, False)]
        on_path = set()
        while stack:
            node_id, done = stack.pop()
            if done:
                on_path.discard(node_id)
                sources = [v[0] for v in graph[node_id].get("inputs", {}).values()
                           if _is_link(v) and v[0] in graph and v[0] != node_id]
                depth[node_id] = 1 + max((depth.get(s, 0) for s in sources), default=-1)
                continue
            if node_id in depth or node_id in on_path:
                continue
            on_path.add(node_id)
            stack.append((node_id, True))
            for value in graph[node_id].get("inputs", {}).values():
                if _is_link(value) and value[0] in graph and value[0] not in depth and value[0] not in on_path:
                    stack.append((value[0], False))
    return depth


def _ui_ids(graph: dict) -> dict[str, int]:
    """API ids -> the editor's integer ids: numeric ids kept, any other given the next free number."""
    ids = {k: int(k) for k in graph if k.isdigit()}
    free = max(ids.values(), default=0) + 1
    for key in graph:
        if key not in ids:
            ids[key] = free
            free += 1
    return ids


def _widgets(schema, inputs: dict) -> tuple[list, list[str]]:
    """widgets_values in the editor's order, and the names of widgets fed by links."""
    values, linked = [], []
    todo = list(reversed(_widget_specs(schema)))
    while todo:
        spec = todo.pop()
        value = inputs.get(spec.name, _NOTHING)
        if _is_link(value):
            linked.append(spec.name)
            value = widget_default(spec)
        elif isinstance(value, dict) and set(value) == {"__value__"}:
            value = value["__value__"]
        if value is _NOTHING:
            value = widget_default(spec)
        if value is _NOTHING:
            value = None
        values.append(value)
        if has_control_widget(spec):
            values.append("fixed")
        if spec.dynamic is not None and spec.dynamic.children:
            children = [schema.by_name[n] for n in spec.dynamic.children.get(value, ()) if n in schema.by_name]
            todo.extend(reversed([c for c in children if c.is_widget]))
    return values, linked


def ui_export(graph: dict, registry) -> dict:
    """The editor's UI workflow for an API-format `graph`, using `registry` for sockets and widgets."""
    ids = _ui_ids(graph)
    depth = _depths(graph)
    links: list[list] = []
    nodes: list[dict] = []
    by_id: dict[str, dict] = {}
    for key, node in graph.items():  # sockets and widgets first; links once every node has outputs
        kind = node["class_type"]
        schema = registry.get(kind)
        inputs = node.get("inputs", {})
        entry: dict[str, Any] = {"id": ids[key], "type": kind, "pos": [0, 0], "size": [WIDTH, 0], "flags": {},
                                 "order": 0, "mode": 0, "inputs": [], "outputs": [],
                                 "properties": {"Node name for S&R": kind}}
        if schema is not None:
            sockets = [(s.name, s.type, None) for s in schema.inputs
                       if s.section != "hidden" and not s.is_widget and s.group is None]
            values, linked = _widgets(schema, inputs)
            sockets += [(n, schema.by_name[n].type, n) for n in linked]
            entry["outputs"] = [{"name": o.label, "type": o.type, "links": []} for o in schema.outputs]
            multiline = sum(1 for s in _widget_specs(schema) if s.multiline)
        else:  # unknown here: links become sockets, other values widgets in the graph's order
            sockets = [(n, "*", None) for n, v in inputs.items() if _is_link(v)]
            values = [v for v in inputs.values() if not _is_link(v)]
            multiline = 0
        entry["inputs"] = [{"name": n, "type": t, "link": None, **({"widget": {"name": w}} if w else {})}
                           for n, t, w in sockets]
        entry["widgets_values"] = values
        title = (node.get("_meta") or {}).get("title")
        if title:
            entry["title"] = title
        rows = max(len(sockets), len(entry["outputs"]))
        entry["size"][1] = 30 + SLOT * rows + WIDGET * len(values) + (MULTILINE - WIDGET) * multiline
        nodes.append(entry)
        by_id[key] = entry
    for key, node in graph.items():
        target = by_id[key]
        for slot, socket in enumerate(target["inputs"]):
            value = node.get("inputs", {}).get(socket["name"])
            if not _is_link(value) or value[0] not in by_id:
                continue
            source = by_id[value[0]]
            outputs = source["outputs"]
            while len(outputs) <= value[1]:  # an unknown node's outputs, known only from its links
                outputs.append({"name": "*", "type": "*", "links": []})
            link_id = len(links) + 1
            kind = outputs[value[1]]["type"]
            links.append([link_id, source["id"], value[1], target["id"], slot, kind])
            outputs[value[1]]["links"].append(link_id)
            socket["link"] = link_id
            if socket["type"] == "*":
                socket["type"] = kind
    view = _lay_out(nodes, [depth[k] for k in graph])
    workflow = {"last_node_id": max(ids.values(), default=0), "last_link_id": len(links), "nodes": nodes,
                "links": links, "groups": [], "config": {}, "extra": {"ds": view}, "version": 0.4}
    return workflow


def _lay_out(nodes: list[dict], depths: list[int]) -> dict:
    """Columns by depth, each node under the previous one of its column, as wide as its title needs;
    `order` follows depth. Returns the view (`extra.ds`) that shows the whole graph on a 1300x760 screen."""
    for order, index in enumerate(sorted(range(len(nodes)), key=lambda i: depths[i])):
        nodes[index]["order"] = order
    widths: dict[int, float] = {}
    for node, column in zip(nodes, depths):
        node["size"][0] = max(WIDTH, CHAR * len(node.get("title") or node["type"]) + 60)
        widths[column] = max(widths.get(column, 0), node["size"][0])
    x, lefts = 0.0, {}
    for column in sorted(widths):
        lefts[column] = x
        x += widths[column] + GAP_X
    heights: dict[int, float] = {}
    for node, column in zip(nodes, depths):
        y = heights.get(column, 0.0)
        node["pos"] = [lefts[column], y]
        heights[column] = y + node["size"][1] + GAP
    scale = max(0.1, round(min(1.0, 1300 / max(x, 1), 760 / max(max(heights.values(), default=1), 1)), 2))
    return {"scale": scale, "offset": [round(90 / scale), round(120 / scale)]}
