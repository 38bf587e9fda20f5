"""Helpers for the core-node tests: checking /object_info entries against signature facts read from
ComfyUI's source, building editor-format (UI) workflows as the editor saves them, and capturing what
reaches a node in a run."""

from __future__ import annotations

from genloom.engine.node import Input, Node, NodeOutput

MAX = 16384
MISSING = object()


def check_entry(info: dict, facts: dict) -> None:
    """`facts`: category, display, output, required / optional: [(name, type, default, min, max, step)],
    a type being a socket name, a primitive or a list of combo options; missing tail items unchecked."""
    assert info["category"] == facts["category"], info["name"]
    assert info["display_name"] == facts["display"], info["name"]
    assert info["output"] == facts["output"], info["name"]
    for section in ("required", "optional"):
        rows = facts.get(section, [])
        assert info["input_order"].get(section, []) == [row[0] for row in rows], (info["name"], section)
        for name, type_, *limits in rows:
            declared = info["input"][section][name]
            opts = declared[1] if len(declared) > 1 else {}
            assert declared[0] == type_, (info["name"], name, declared[0])
            for key, want in zip(("default", "min", "max", "step"), limits):
                if want is not MISSING:
                    assert opts.get(key, MISSING) == want, (info["name"], name, key, opts.get(key))


def ui_node(id_: int, type_: str, inputs=(), outputs=(), widgets=None) -> dict:
    """A node entry shaped as the editor saves it. inputs: (name, type, link id or None);
    outputs: (name, type, [link ids])."""
    entry = {"id": id_, "type": type_, "pos": [200 * id_, 100], "size": [300, 100], "flags": {},
             "order": id_, "mode": 0, "properties": {"Node name for S&R": type_},
             "inputs": [{"name": n, "type": t, "link": link} for n, t, link in inputs],
             "outputs": [{"name": n, "type": t, "links": list(links), "slot_index": i}
                         for i, (n, t, links) in enumerate(outputs)]}
    if widgets is not None:
        entry["widgets_values"] = list(widgets)
    return entry


def ui_workflow(nodes: list[dict]) -> dict:
    """The workflow file for `nodes`, its link table derived from their link ids."""
    links = {}
    for node in nodes:
        for slot, output in enumerate(node["outputs"]):
            for link in output["links"]:
                links[link] = [link, node["id"], slot, None, None, output["type"]]
    for node in nodes:
        for slot, entry in enumerate(node["inputs"]):
            if entry["link"] is not None:
                links[entry["link"]][3:5] = [node["id"], slot]
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": max(links, default=0),
            "nodes": nodes, "links": [links[k] for k in sorted(links)], "groups": [], "config": {},
            "extra": {}, "version": 0.4}


def capture_node(name: str):
    """A fresh output node class that records every value it receives in `seen`."""

    class Capture(Node):
        output_node = True
        inputs = [Input("value", "*")]
        outputs = []
        seen: list = []

        def run(self, value):
            type(self).seen.append(value)
            return NodeOutput(ui={"n": [len(type(self).seen)]})

    Capture.name = name
    return Capture
