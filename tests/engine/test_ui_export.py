"""API graph -> the editor's UI workflow (engine.ui_export), checked by reading it back with ui_import
and against the editor's layout of widgets written out here by hand."""

import json
from pathlib import Path

import pytest

from genloom.engine.ui_export import ui_export
from genloom.engine.ui_import import ui_to_api

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def registry():
    from genloom.runtime import build_registry

    return build_registry()


def _with_titles(graph, registry):
    """What the import gives a node without a title: its display name."""
    out = {}
    for key, node in graph.items():
        meta = node.get("_meta") or {"title": registry.get(node["class_type"]).display_name}
        out[key] = {**node, "_meta": meta}
    return out


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_every_example_round_trips(path, registry):
    graph = json.loads(path.read_text())["graph"]
    ui = json.loads(json.dumps(ui_export(graph, registry)))  # strict JSON, as the editor gets it
    assert ui_to_api(ui, registry) == _with_titles(graph, registry)


def test_txt2img_as_the_editor_lays_it_out(registry):
    graph = json.loads((WORKFLOWS[0].parent / "txt2img.json").read_text())["graph"]
    ui = ui_export(graph, registry)
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert ui["version"] == 0.4 and ui["last_node_id"] == 9
    # KSampler's widgets in ComfyUI's order, "control after generate" right after the seed
    assert nodes[3]["widgets_values"] == [42, "fixed", 20, 3.5, "euler", "normal", 1.0]
    assert [i["name"] for i in nodes[3]["inputs"]] == ["model", "positive", "negative", "latent_image"]
    assert nodes[6]["widgets_values"] == ["a red circle on a blue background"]
    assert nodes[6]["title"] == "Positive prompt"
    # one link per linked input, each [id, from, slot, to, slot, type], listed on both ends
    wanted = sum(1 for n in graph.values() for v in n["inputs"].values() if isinstance(v, list))
    assert len(ui["links"]) == ui["last_link_id"] == wanted
    for link_id, src, src_slot, dst, dst_slot, kind in ui["links"]:
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert nodes[src]["outputs"][src_slot]["type"] == kind
    assert [l[5] for l in ui["links"] if l[3] == 8] == ["LATENT", "VAE"]
    # columns by dependency depth: loader, prompts, sampler, decode, save
    x = {i: nodes[i]["pos"][0] for i in nodes}
    assert x[4] == x[5] < x[6] == x[7] < x[3] < x[8] < x[9]
    assert nodes[6]["pos"][1] != nodes[7]["pos"][1], "nodes of one column are stacked"


def test_a_widget_fed_by_a_link(registry):
    graph = {"1": {"class_type": "PrimitiveInt", "inputs": {"value": 7}, "_meta": {"title": "seed"}},
             "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": ["1", 0], "batch_size": 2},
                   "_meta": {"title": "latent"}}}
    ui = ui_export(graph, registry)
    latent = next(n for n in ui["nodes"] if n["id"] == 2)
    assert latent["inputs"] == [{"name": "height", "type": "INT", "link": 1, "widget": {"name": "height"}}]
    assert latent["widgets_values"] == [64, 512, 2]  # the linked widget keeps the default it shows
    assert ui_to_api(ui, registry) == graph
