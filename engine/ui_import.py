"""Turns the editor's UI workflow (nodes + links, version 0.4) into an API-format graph.

The UI stores widget values by position, so the conversion needs each node's schema to know which
inputs are widgets. Editor-only nodes vanish: Reroutes and bypassed nodes are followed to the real
source, a PrimitiveNode's value is written into the inputs it feeds, notes are dropped, muted nodes
disappear with the links that leave them, and subgraph instances are flattened into their inner nodes.
"""

from __future__ import annotations

from typing import Any

from .schema import InputSpec

MODE_MUTED = 2
MODE_BYPASSED = 4
EDITOR_ONLY = {"Reroute", "PrimitiveNode", "Note", "MarkdownNote"}
CONTROL_VALUES = {"fixed", "randomize", "increment", "decrement"}
_NOTHING = object()


class UIImportError(ValueError):
    """A UI workflow whose structure cannot be read."""


def _links_by_id(links) -> dict[int, tuple]:
    """Links as id -> (src_node, src_slot, dst_node, dst_slot, type); arrays or the newer objects."""
    out = {}
    if isinstance(links, dict):  # old LiteGraph files keep links as an object keyed by id
        links = links.values()
    for link in links or ():
        if link is None:
            continue
        if isinstance(link, dict):
            out[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"],
                               link["target_slot"], link.get("type"))
        elif isinstance(link, (list, tuple)) and len(link) >= 5:
            out[link[0]] = (link[1], link[2], link[3], link[4], link[5] if len(link) > 5 else None)
        else:
            raise UIImportError(f"unreadable link entry: {link!r}")
    return out


def has_control_widget(spec: InputSpec) -> bool:
    """Inputs after which the editor stores its 'control after generate' value."""
    if spec.extra.get("control_after_generate"):
        return True
    return spec.type == "INT" and spec.name in ("seed", "noise_seed")


def widget_values(schema, values) -> dict[str, Any]:
    """A node's widgets_values (a positional list, or a by-name dict) mapped onto its widget inputs,
    each widget the file lacks given its default, as the editor lays the widgets out: a dynamic combo's
    chosen option brings its own widgets right after the combo's (`resize_type`, then
    `resize_type.width`, ...), and only the chosen option's are there."""
    out: dict[str, Any] = {}
    by_name = values if isinstance(values, dict) else None
    items = list(values or ()) if by_name is None else []
    position = 0
    todo = [spec for spec in schema.inputs if spec.is_widget and (spec.group is None or spec.dynamic is not None)]
    todo.reverse()
    while todo:
        spec = todo.pop()
        if by_name is not None:
            value = by_name.get(spec.name, _NOTHING)
        elif position < len(items):
            value = items[position]
            position += 1
            if has_control_widget(spec) and position < len(items) and _is_control_value(items[position]):
                position += 1
        else:
            value = _NOTHING
        if value is _NOTHING:
            value = widget_default(spec)
        if value is _NOTHING:
            continue
        out[spec.name] = value
        if spec.dynamic is not None and spec.dynamic.children:  # the chosen option's widgets come next
            chosen = value if isinstance(value, str) else None
            children = [schema.by_name[n] for n in spec.dynamic.children.get(chosen, ())]
            todo.extend(reversed([c for c in children if c.is_widget]))
    return out


def _is_control_value(value) -> bool:
    """The editor's 'control after generate' entry: a mode string, or a boolean in older files."""
    return isinstance(value, bool) or (isinstance(value, str) and value in CONTROL_VALUES)


def widget_default(spec: InputSpec):
    """What the editor shows in a fresh widget: the declared default, else a COMBO's first option, else
    0 (within min..max), "" or false."""
    if spec.default is not None:
        return spec.default
    if spec.type == "COMBO":
        options = spec.combo_options()
        return options[0] if options else _NOTHING
    if spec.type in ("INT", "FLOAT"):
        zero = 0 if spec.type == "INT" else 0.0
        if spec.min is not None and zero < spec.min:
            return spec.min
        if spec.max is not None and zero > spec.max:
            return spec.max
        return zero
    return {"STRING": "", "BOOLEAN": False}.get(spec.type, _NOTHING)


class _Scope:
    """One graph level: the top-level workflow, or one instance of a subgraph inside its parent.

    Nodes inside a subgraph instance get API ids prefixed with the instance path ("5:3:2"), as the
    editor gives them.
    """

    __slots__ = ("nodes", "links", "prefix", "parent", "instance", "definition", "chain")

    def __init__(self, nodes_list, links, prefix="", parent=None, instance=None, definition=None, chain=()):
        self.nodes = {}
        for node in nodes_list or ():
            if not isinstance(node, dict) or "id" not in node or "type" not in node:
                raise UIImportError(f"unreadable node entry: {str(node)[:200]}")
            self.nodes[node["id"]] = node
        self.links = links
        self.prefix, self.parent, self.instance, self.definition = prefix, parent, instance, definition
        self.chain = chain  # subgraph ids from the top down to this one, to refuse self-nesting

    def boundary(self, key: str, default: int):
        return ((self.definition or {}).get(key) or {}).get("id", default)


class _Resolver:
    """Follows a link back through editor-only nodes, bypassed nodes and subgraph boundaries to a real
    output or a constant."""

    def __init__(self, definitions: dict):
        self.definitions = definitions
        self.children: dict[tuple, _Scope] = {}
        self.link_tables: dict[str, dict] = {}

    def child(self, scope: _Scope, instance: dict) -> _Scope:
        """The scope of a subgraph instance node (made once per instance)."""
        key = (scope.prefix, instance["id"])
        found = self.children.get(key)
        if found is None:
            definition = self.definitions[instance["type"]]
            def_id = definition["id"]
            if def_id in scope.chain:
                raise UIImportError(f"subgraph {definition.get('name') or def_id!r} contains itself")
            links = self.link_tables.get(def_id)
            if links is None:
                links = self.link_tables[def_id] = _links_by_id(definition.get("links"))
            found = _Scope(definition.get("nodes"), links, f"{scope.prefix}{instance['id']}:", scope, instance,
                           definition, scope.chain + (def_id,))
            self.children[key] = found
        return found

    def resolve(self, link_id, scope: _Scope) -> Any:
        """A `[source_id, slot]` link, a constant (`_Const`), or `_NOTHING` when nothing feeds it."""
        seen = set()
        while True:
            if link_id is None or (scope.prefix, link_id) in seen:
                return _NOTHING
            seen.add((scope.prefix, link_id))
            link = scope.links.get(link_id)
            if link is None:
                return _NOTHING
            src_id, slot = link[0], link[1]
            if scope.definition is not None and src_id == scope.boundary("inputNode", -10):
                link_id, scope, const = _leave_subgraph(scope, slot)
                if const is not _NOTHING:
                    return const
                continue
            node = scope.nodes.get(src_id)
            if node is None:
                return _NOTHING
            kind = node.get("type")
            mode = node.get("mode", 0)
            if kind == "PrimitiveNode":
                values = node.get("widgets_values") or []
                return _Const(values[0]) if values and mode != MODE_MUTED else _NOTHING
            if mode == MODE_MUTED or kind in ("Note", "MarkdownNote"):
                return _NOTHING
            if kind == "Reroute":
                link_id = _input_link(node, 0)
                continue
            if mode == MODE_BYPASSED:
                link_id = _bypass_link(node, slot)
                continue
            if kind in self.definitions:
                inner = self.child(scope, node)
                link_id = _output_link(inner, node, slot)
                scope = inner
                continue
            return [f"{scope.prefix}{src_id}", int(slot)]


def _leave_subgraph(scope: _Scope, slot: int):
    """Cross a subgraph's input boundary: the instance's matching input in the parent, or its widget."""
    def_inputs = scope.definition.get("inputs") or []
    name = def_inputs[slot].get("name") if slot < len(def_inputs) else None
    instance = scope.instance
    for inp in instance.get("inputs") or []:
        if inp.get("name") == name and inp.get("link") is not None:
            return inp["link"], scope.parent, _NOTHING
    promoted = _promoted_widgets(scope)
    values = instance.get("widgets_values")
    if name in promoted and isinstance(values, list) and len(values) == len(promoted):
        return None, scope, _Const(values[promoted.index(name)])
    return None, scope, _NOTHING


def _promoted_widgets(scope: _Scope) -> list[str]:
    """Names of the subgraph inputs that feed widgets inside: the instance shows them as its widgets."""
    names = []
    for sub_input in scope.definition.get("inputs") or []:
        for link_id in sub_input.get("linkIds") or ():
            link = scope.links.get(link_id)
            target = scope.nodes.get(link[2]) if link else None
            inputs = (target or {}).get("inputs") or []
            if link and link[3] < len(inputs) and inputs[link[3]].get("widget"):
                names.append(sub_input.get("name"))
                break
    return names


def _output_link(inner: _Scope, instance: dict, slot: int):
    """The link inside a subgraph that feeds its output `slot` (matched by name, else by position)."""
    def_outputs = inner.definition.get("outputs") or []
    outputs = instance.get("outputs") or []
    index = slot
    name = outputs[slot].get("name") if slot < len(outputs) else None
    names = [o.get("name") for o in def_outputs]
    if name in names:
        index = names.index(name)
    boundary = inner.boundary("outputNode", -20)
    for link_id, link in inner.links.items():
        if link[2] == boundary and link[3] == index:
            return link_id
    return None


class _Const:
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def _input_link(node: dict, index: int):
    inputs = node.get("inputs") or []
    return inputs[index].get("link") if index < len(inputs) else None


def _bypass_link(node: dict, slot: int):
    """A bypassed node hands each output an input of the same type: the one at the same position
    when it matches (as the editor does), else the first that does."""
    outputs = node.get("outputs") or []
    inputs = node.get("inputs") or []
    if slot >= len(outputs):
        return None
    wanted = outputs[slot].get("type")
    for index in (slot, *range(len(inputs))):
        if index < len(inputs) and inputs[index].get("type") == wanted:
            return inputs[index].get("link")
    return None


def _definitions(workflow: dict) -> dict[str, dict]:
    """Every subgraph definition by id, including those declared inside other definitions."""
    found: dict[str, dict] = {}
    todo = [workflow]
    while todo:
        holder = todo.pop()
        for definition in ((holder.get("definitions") or {}).get("subgraphs") or ()):
            if isinstance(definition, dict) and "id" in definition and definition["id"] not in found:
                found[definition["id"]] = definition
                todo.append(definition)
    return found


def ui_to_api(workflow: dict, registry) -> dict:
    """The API-format graph for a UI workflow, using `registry` for widget order."""
    if not isinstance(workflow.get("nodes"), list):
        raise UIImportError("a UI workflow needs a 'nodes' list")
    resolver = _Resolver(_definitions(workflow))
    graph: dict[str, dict] = {}
    pending = [(_Scope(workflow["nodes"], _links_by_id(workflow.get("links"))), workflow["nodes"], 0)]
    while pending:  # depth-first over subgraph instances, keeping the editor's node order
        scope, nodes_list, index = pending.pop()
        while index < len(nodes_list):
            node = nodes_list[index]
            index += 1
            kind = node["type"]
            if kind in EDITOR_ONLY or node.get("mode", 0) in (MODE_MUTED, MODE_BYPASSED):
                continue
            if kind in resolver.definitions:
                inner = resolver.child(scope, node)
                pending.append((scope, nodes_list, index))
                pending.append((inner, inner.definition.get("nodes") or [], 0))
                break
            graph[f"{scope.prefix}{node['id']}"] = _convert(node, scope, resolver, registry)
    return graph


def _convert(node: dict, scope: _Scope, resolver: _Resolver, registry) -> dict:
    kind = node["type"]
    schema = registry.get(kind)
    inputs: dict[str, Any] = {}
    if schema is not None:  # values the file lacks (none saved, or a newer definition) take defaults
        saved = node.get("widgets_values")
        for name, value in widget_values(schema, saved).items():
            inputs[name] = {"__value__": value} if isinstance(value, list) else value
        if schema.editor_values is not None and saved is not None:
            inputs.update(schema.editor_values(saved))
    for inp in node.get("inputs") or []:
        link_id = inp.get("link")
        if link_id is None:
            continue
        name = (inp.get("widget") or {}).get("name") or inp.get("name")
        source = resolver.resolve(link_id, scope)
        if isinstance(source, _Const):
            inputs[name] = {"__value__": source.value} if isinstance(source.value, list) else source.value
        elif source is not _NOTHING:
            inputs[name] = source
        elif schema is None or name not in schema.by_name or not schema.by_name[name].is_widget:
            inputs.pop(name, None)
    title = node.get("title") or (schema.display_name if schema is not None else kind)
    meta = {"title": title}
    if schema is None and node.get("widgets_values") is not None:
        # Unknown here: keep the raw values, so that installing the pack (or the error) can use them.
        meta["widgets_values"] = node["widgets_values"]
    return {"class_type": kind, "inputs": inputs, "_meta": meta}
