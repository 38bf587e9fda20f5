"""Converting the editor's UI workflows (version 0.4) to API graphs, as ComfyUI's frontend does."""

import pytest

from genloom.engine.node import Boolean, Combo, Float, Hidden, Input, Int, Node, Out, Seed, String
from genloom.engine.registry import Registry
from genloom.engine.ui_import import UIImportError, ui_to_api
from genloom.engine.validate import validate
from genloom.engine.workflow import load_workflow


class Loader(Node):
    inputs = [Combo("ckpt_name", ["tiny.safetensors", "other.safetensors"])]
    outputs = [Out("MODEL"), Out("CLIP"), Out("VAE")]


class Encode(Node):
    inputs = [String("text", multiline=True), Input("clip", "CLIP")]
    outputs = [Out("CONDITIONING")]


class Empty(Node):
    inputs = [Int("width", 512, min=16, max=4096), Int("height", 512, min=16, max=4096),
              Int("batch_size", 1, min=1, max=64)]
    outputs = [Out("LATENT")]


class Sampler(Node):
    inputs = [Input("model", "MODEL"), Seed(), Int("steps", 20, min=1, max=100),
              Float("cfg", 8.0, min=0.0, max=100.0), Combo("sampler_name", ["euler", "ddim"]),
              Combo("scheduler", ["normal", "karras"]), Input("positive", "CONDITIONING"),
              Input("negative", "CONDITIONING"), Input("latent_image", "LATENT"),
              Float("denoise", 1.0, min=0.0, max=1.0)]
    outputs = [Out("LATENT")]


class Decode(Node):
    inputs = [Input("samples", "LATENT"), Input("vae", "VAE")]
    outputs = [Out("IMAGE")]


class Sharpen(Node):
    inputs = [Input("image", "IMAGE"), Float("amount", 0.5, min=0.0, max=1.0)]
    outputs = [Out("IMAGE")]


class Mix(Node):
    """Two typed inputs: a bypass must pick the input whose type matches the output."""
    inputs = [Input("mask", "MASK"), Input("image", "IMAGE"), Int("noise_seed", 0, min=0, max=99),
              Float("strength", 1.0, optional=True, forceInput=True), String("note", "", optional=True)]
    outputs = [Out("IMAGE")]


class Save(Node):
    output_node = True
    inputs = [Input("images", "IMAGE"), String("filename_prefix", "genloom"), Hidden("prompt", "PROMPT")]
    outputs = []


@pytest.fixture(scope="module")
def registry():
    reg = Registry()
    for cls in (Loader, Encode, Empty, Sampler, Decode, Sharpen, Mix, Save):
        reg.register(cls)
    return reg


def node(id_, type_, inputs=(), outputs=(), widgets=None, mode=0, title=None, order=0):
    """A UI node entry shaped as the editor saves it."""
    entry = {"id": id_, "type": type_, "pos": [100 * id_, 50], "size": [315, 98], "flags": {},
             "order": order, "mode": mode, "properties": {"Node name for S&R": type_},
             "inputs": [dict(i) for i in inputs], "outputs": [dict(o) for o in outputs]}
    if widgets is not None:
        entry["widgets_values"] = widgets
    if title:
        entry["title"] = title
    return entry


def inp(name, type_, link=None, widget=None):
    d = {"name": name, "type": type_, "link": link}
    if widget:
        d["widget"] = {"name": widget}
    return d


def out(name, type_, links=(), slot=0):
    return {"name": name, "type": type_, "links": list(links), "slot_index": slot}


def txt2img_ui():
    """A txt2img graph with every editor-only construct in the way of the real nodes."""
    nodes = [
        node(4, "Loader", outputs=[out("MODEL", "MODEL", [1], 0), out("CLIP", "CLIP", [3, 5], 1),
                                   out("VAE", "VAE", [8], 2)], widgets=["tiny.safetensors"]),
        node(6, "Encode", [inp("clip", "CLIP", 3)], [out("CONDITIONING", "CONDITIONING", [4])],
             widgets=["a red square on blue"], title="Positive"),
        node(7, "Encode", [inp("clip", "CLIP", 5)], [out("CONDITIONING", "CONDITIONING", [6])],
             widgets=["blurry"]),
        node(5, "Empty", [inp("width", "INT", 12, widget="width")], [out("LATENT", "LATENT", [2])],
             widgets=[512, 32, 2]),
        node(3, "Sampler",
             [inp("model", "MODEL", 1), inp("positive", "CONDITIONING", 4), inp("negative", "CONDITIONING", 6),
              inp("latent_image", "LATENT", 2), inp("steps", "INT", 11, widget="steps")],
             [out("LATENT", "LATENT", [7])],
             widgets=[1234, "randomize", 20, 3.5, "euler", "karras", 1.0]),
        node(8, "Decode", [inp("samples", "LATENT", 7), inp("vae", "VAE", 9)], [out("IMAGE", "IMAGE", [10])]),
        node(20, "Reroute", [inp("", "*", 8)], [out("", "VAE", [13])]),
        node(21, "Reroute", [inp("", "*", 13)], [out("", "VAE", [9])]),
        node(30, "Sharpen", [inp("image", "IMAGE", 10)], [out("IMAGE", "IMAGE", [14])], widgets=[0.7], mode=4),
        node(31, "Mix", [inp("mask", "MASK", None), inp("image", "IMAGE", 14)], [out("IMAGE", "IMAGE", [15])],
             widgets=[3, "fixed", "x"], mode=4),
        node(9, "Save", [inp("images", "IMAGE", 15)], [], widgets=["txt2img"], title="Save result"),
        node(40, "PrimitiveNode", [], [out("INT", "INT", [11], 0)], widgets=[4, "fixed"],
             title="steps"),
        node(41, "PrimitiveNode", [], [out("INT", "INT", [12], 0)], widgets=[48, "fixed"]),
        node(50, "Note", [], [], widgets=["Remember to pick a model"]),
        node(51, "MarkdownNote", [], [], widgets=["# Notes"]),
    ]
    links = [
        [1, 4, 0, 3, 0, "MODEL"], [2, 5, 0, 3, 3, "LATENT"], [3, 4, 1, 6, 0, "CLIP"],
        [4, 6, 0, 3, 1, "CONDITIONING"], [5, 4, 1, 7, 0, "CLIP"], [6, 7, 0, 3, 2, "CONDITIONING"],
        [7, 3, 0, 8, 0, "LATENT"], [8, 4, 2, 20, 0, "*"], [13, 20, 0, 21, 0, "*"], [9, 21, 0, 8, 1, "VAE"],
        [10, 8, 0, 30, 0, "IMAGE"], [14, 30, 0, 31, 1, "IMAGE"], [15, 31, 0, 9, 0, "IMAGE"],
        [11, 40, 0, 3, 4, "INT"], [12, 41, 0, 5, 0, "INT"],
    ]
    return {"last_node_id": 51, "last_link_id": 15, "nodes": nodes, "links": links, "groups": [],
            "config": {}, "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4}


def test_txt2img_conversion(registry):
    api = ui_to_api(txt2img_ui(), registry)
    assert set(api) == {"3", "4", "5", "6", "7", "8", "9"}  # editor-only and bypassed nodes gone
    assert api["4"] == {"class_type": "Loader", "inputs": {"ckpt_name": "tiny.safetensors"},
                        "_meta": {"title": "Loader"}}
    assert api["6"]["inputs"] == {"text": "a red square on blue", "clip": ["4", 1]}
    assert api["6"]["_meta"]["title"] == "Positive"
    # The control value after the seed is skipped: steps, cfg ... keep their positions.
    assert api["3"]["inputs"] == {
        "model": ["4", 0], "seed": 1234, "steps": 4, "cfg": 3.5, "sampler_name": "euler",
        "scheduler": "karras", "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0],
        "denoise": 1.0}
    assert api["5"]["inputs"] == {"width": 48, "height": 32, "batch_size": 2}  # PrimitiveNode value
    assert api["8"]["inputs"] == {"samples": ["3", 0], "vae": ["4", 2]}  # through two Reroutes
    assert api["9"]["inputs"] == {"images": ["8", 0], "filename_prefix": "txt2img"}  # two bypasses
    v = validate(api, registry)
    assert v.ok and v.node_errors == {} and v.outputs == ["9"]


def test_muted_source_drops_the_input(registry):
    wf = txt2img_ui()
    by_id = {n["id"]: n for n in wf["nodes"]}
    by_id[7]["mode"] = 2  # mute the negative prompt
    by_id[41]["mode"] = 2  # a muted PrimitiveNode feeds nothing: the widget keeps its own value
    api = ui_to_api(wf, registry)
    assert "7" not in api and "negative" not in api["3"]["inputs"]
    assert api["5"]["inputs"]["width"] == 512
    v = validate(api, registry)
    assert [e["type"] for e in v.node_errors["3"]["errors"]] == ["required_input_missing"]


def test_bypass_picks_input_of_matching_type(registry):
    wf = {"nodes": [
        node(1, "Empty", [], [out("LATENT", "LATENT", [1])], widgets=[64, 64, 1]),
        node(2, "Loader", [], [out("MODEL", "MODEL"), out("CLIP", "CLIP"), out("VAE", "VAE", [2], 2)],
             widgets=["tiny.safetensors"]),
        node(3, "Decode", [inp("samples", "LATENT", 1), inp("vae", "VAE", 2)], [out("IMAGE", "IMAGE", [3])]),
        node(4, "Mix", [inp("mask", "MASK", None), inp("image", "IMAGE", 3)], [out("IMAGE", "IMAGE", [4])],
             widgets=[1, "randomize", "n"], mode=4),
        node(5, "Save", [inp("images", "IMAGE", 4)], [], widgets=["b"]),
    ], "links": [[1, 1, 0, 3, 0, "LATENT"], [2, 2, 2, 3, 1, "VAE"], [3, 3, 0, 4, 1, "IMAGE"],
                 [4, 4, 0, 5, 0, "IMAGE"]], "version": 0.4}
    api = ui_to_api(wf, registry)
    assert api["5"]["inputs"]["images"] == ["3", 0]
    # Same-typed inputs: each output takes the input at its own position.
    swap = node(6, "UnknownSwap", [inp("a", "IMAGE", 5), inp("b", "IMAGE", 6)],
                [out("a", "IMAGE", [], 0), out("b", "IMAGE", [7], 1)], mode=4)
    other = node(7, "Decode", [inp("samples", "LATENT", 1), inp("vae", "VAE", 2)], [out("IMAGE", "IMAGE", [6])])
    wf2 = {"nodes": wf["nodes"][:3] + [other, swap, node(8, "Save", [inp("images", "IMAGE", 7)], [], widgets=["s"])],
           "links": wf["links"][:2] + [[5, 3, 0, 6, 0, "IMAGE"], [6, 7, 0, 6, 1, "IMAGE"],
                                       [7, 6, 1, 8, 0, "IMAGE"]], "version": 0.4}
    assert ui_to_api(wf2, registry)["8"]["inputs"]["images"] == ["7", 0]
    wf["nodes"][3]["mode"] = 0
    api = ui_to_api(wf, registry)
    # Unbypassed: noise_seed's control value is skipped; forceInput `strength` is not a widget.
    assert api["4"]["inputs"] == {"image": ["3", 0], "noise_seed": 1, "note": "n"}


def test_dict_widgets_unknown_nodes_and_lists(registry):
    wf = {"nodes": [
        node(1, "Empty", [], [out("LATENT", "LATENT", [1])],
             widgets={"width": 64, "height": 96, "batch_size": 3, "stale": 1}),
        node(2, "SomeCustomNode", [inp("latent", "LATENT", 1)], [out("IMAGE", "IMAGE", [2])], widgets=[1, 2]),
        node(3, "Save", [inp("images", "IMAGE", 2)], [], widgets=[["a", "b"]]),
    ], "links": [{"id": 1, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "LATENT"},
                 [2, 2, 0, 3, 0, "IMAGE"]], "version": 0.4}
    api = ui_to_api(wf, registry)
    assert api["1"]["inputs"] == {"width": 64, "height": 96, "batch_size": 3}
    assert api["2"] == {"class_type": "SomeCustomNode", "inputs": {"latent": ["1", 0]},
                        "_meta": {"title": "SomeCustomNode", "widgets_values": [1, 2]}}  # raw values kept
    assert api["3"]["inputs"]["filename_prefix"] == {"__value__": ["a", "b"]}  # a list constant, not a link
    v = validate(api, registry)
    assert v.error["type"] == "missing_node_type" and v.error["extra_info"]["class_type"] == "SomeCustomNode"


def test_long_reroute_and_bypass_chains_are_iterative(registry):
    n = 5000
    nodes = [node(1, "Empty", [], [out("LATENT", "LATENT", [1])], widgets=[64, 64, 1])]
    links = []
    for i in range(2, n):
        kind = "Reroute" if i % 2 else "Sharpen"
        nodes.append(node(i, kind, [inp("", "LATENT", i - 1)], [out("", "LATENT", [i])],
                          widgets=[0.5] if kind == "Sharpen" else None, mode=4 if kind == "Sharpen" else 0))
        links.append([i - 1, i - 1, 0, i, 0, "LATENT"])
    nodes.append(node(n, "Decode", [inp("samples", "LATENT", n - 1), inp("vae", "VAE", None)], []))
    links.append([n - 1, n - 1, 0, n, 0, "LATENT"])
    api = ui_to_api({"nodes": nodes, "links": links, "version": 0.4}, registry)
    assert set(api) == {"1", str(n)} and api[str(n)]["inputs"] == {"samples": ["1", 0]}


def test_reroute_loop_does_not_hang(registry):
    wf = {"nodes": [node(1, "Reroute", [inp("", "*", 2)], [out("", "*", [1])]),
                    node(2, "Reroute", [inp("", "*", 1)], [out("", "*", [2, 3])]),
                    node(3, "Save", [inp("images", "IMAGE", 3)], [], widgets=["x"])],
          "links": [[1, 1, 0, 2, 0, "*"], [2, 2, 0, 1, 0, "*"], [3, 2, 0, 3, 0, "*"]], "version": 0.4}
    assert ui_to_api(wf, registry) == {"3": {"class_type": "Save", "inputs": {"filename_prefix": "x"},
                                             "_meta": {"title": "Save"}}}


def test_load_workflow_detects_ui(registry):
    wf = load_workflow(txt2img_ui(), registry)
    assert wf.format == "ui" and wf.layout["version"] == 0.4 and set(wf.graph) == {"3", "4", "5", "6", "7", "8", "9"}


def subgraph_definition(def_id, inner_nodes, links, inputs, outputs, definitions=None):
    """A subgraph definition as the editor (frontend 1.2x+) stores it under definitions.subgraphs."""
    d = {"id": def_id, "version": 1, "revision": 0, "name": f"sub {def_id}", "config": {},
         "state": {"lastNodeId": 9, "lastLinkId": 99}, "inputNode": {"id": -10, "bounding": [0, 0, 120, 60]},
         "outputNode": {"id": -20, "bounding": [900, 0, 120, 60]}, "inputs": inputs, "outputs": outputs,
         "widgets": [], "nodes": inner_nodes, "groups": [], "extra": {},
         "links": [dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), link))
                   for link in links]}
    if definitions:
        d["definitions"] = {"subgraphs": definitions}
    return d


def test_subgraphs_are_flattened_with_path_ids(registry):
    # Inner "decode" subgraph: (samples, vae) -> Decode -> IMAGE; plus a pass-through of vae.
    decode = subgraph_definition(
        "def-decode",
        [node(1, "Decode", [inp("samples", "LATENT", 10), inp("vae", "VAE", 11)], [out("IMAGE", "IMAGE", [12])])],
        [[10, -10, 0, 1, 0, "LATENT"], [11, -10, 1, 1, 1, "VAE"], [12, 1, 0, -20, 0, "IMAGE"],
         [13, -10, 1, -20, 1, "VAE"]],
        inputs=[{"id": "i1", "name": "samples", "type": "LATENT", "linkIds": [10]},
                {"id": "i2", "name": "vae", "type": "VAE", "linkIds": [11, 13]}],
        outputs=[{"id": "o1", "name": "IMAGE", "type": "IMAGE", "linkIds": [12]},
                 {"id": "o2", "name": "vae", "type": "VAE", "linkIds": [13]}])
    # Outer subgraph: (latent, vae, width) -> Empty (width promoted) ... -> nested decode instance 3.
    outer = subgraph_definition(
        "def-outer",
        [node(2, "Empty", [inp("width", "INT", 20, widget="width")], [out("LATENT", "LATENT", [21])],
              widgets=[64, 64, 1]),
         node(3, "def-decode", [inp("samples", "LATENT", 21), inp("vae", "VAE", 22)],
              [out("IMAGE", "IMAGE", [23]), out("vae", "VAE", [])])],
        [[20, -10, 1, 2, 0, "INT"], [21, 2, 0, 3, 0, "LATENT"], [22, -10, 0, 3, 1, "VAE"],
         [23, 3, 0, -20, 0, "IMAGE"]],
        inputs=[{"id": "a", "name": "vae", "type": "VAE", "linkIds": [22]},
                {"id": "b", "name": "width", "type": "INT", "linkIds": [20]}],
        outputs=[{"id": "c", "name": "IMAGE", "type": "IMAGE", "linkIds": [23]}])
    wf = {"nodes": [
        node(4, "Loader", [], [out("MODEL", "MODEL"), out("CLIP", "CLIP"), out("VAE", "VAE", [1, 4], 2)],
             widgets=["tiny.safetensors"]),
        node(5, "def-outer", [inp("vae", "VAE", 1), inp("width", "INT", None, widget="width")],
             [out("IMAGE", "IMAGE", [2])], widgets=[256], title="Outer"),
        node(9, "Save", [inp("images", "IMAGE", 2)], [], widgets=["sub"]),
        node(7, "def-decode", [inp("samples", "LATENT", None), inp("vae", "VAE", 4)],
             [out("IMAGE", "IMAGE", []), out("vae", "VAE", [5])]),
        node(8, "Decode", [inp("samples", "LATENT", None), inp("vae", "VAE", 5)], []),
    ], "links": [[1, 4, 2, 5, 0, "VAE"], [2, 5, 0, 9, 0, "IMAGE"], [4, 4, 2, 7, 1, "VAE"], [5, 7, 1, 8, 1, "VAE"]],
        "definitions": {"subgraphs": [outer, decode]}, "version": 0.4}
    api = ui_to_api(wf, registry)
    assert list(api) == ["4", "5:2", "5:3:1", "9", "7:1", "8"]
    assert api["5:2"]["inputs"] == {"width": 256, "height": 64, "batch_size": 1}  # the promoted widget
    assert api["5:3:1"]["inputs"] == {"samples": ["5:2", 0], "vae": ["4", 2]}
    assert api["9"]["inputs"]["images"] == ["5:3:1", 0]
    assert api["7:1"]["inputs"] == {"vae": ["4", 2]}  # its samples input is unconnected outside
    assert api["8"]["inputs"] == {"vae": ["4", 2]}  # through a subgraph's input-to-output pass-through
    assert validate(api, registry, outputs=["9"]).ok

    outer["nodes"][1]["type"] = "def-outer"  # a subgraph containing itself
    with pytest.raises(UIImportError, match="contains itself"):
        ui_to_api(wf, registry)


def test_comfyui_default_workflow_with_builtin_nodes():
    """ComfyUI's stock txt2img graph, as the editor saves it, converts as ComfyUI's frontend would."""
    from genloom.runtime import build_registry

    builtins = build_registry(entry_points_too=False)
    clip = [out("CLIP", "CLIP", [3, 5], 1)]
    wf = {"last_node_id": 9, "last_link_id": 9, "version": 0.4, "groups": [], "config": {}, "extra": {},
          "nodes": [
              node(7, "CLIPTextEncode", [inp("clip", "CLIP", 5)], [out("CONDITIONING", "CONDITIONING", [6], 0)],
                   widgets=["text, watermark"]),
              node(6, "CLIPTextEncode", [inp("clip", "CLIP", 3)], [out("CONDITIONING", "CONDITIONING", [4], 0)],
                   widgets=["beautiful scenery nature glass bottle landscape"]),
              node(5, "EmptyLatentImage", [], [out("LATENT", "LATENT", [2], 0)], widgets=[512, 512, 1]),
              node(3, "KSampler", [inp("model", "MODEL", 1), inp("positive", "CONDITIONING", 4),
                                   inp("negative", "CONDITIONING", 6), inp("latent_image", "LATENT", 2)],
                   [out("LATENT", "LATENT", [7], 0)],
                   widgets=[156680208700286, "randomize", 20, 8, "euler", "normal", 1]),
              node(8, "VAEDecode", [inp("samples", "LATENT", 7), inp("vae", "VAE", 8)],
                   [out("IMAGE", "IMAGE", [9], 0)]),
              node(9, "SaveImage", [inp("images", "IMAGE", 9)], [], widgets=["ComfyUI"]),
              node(4, "CheckpointLoaderSimple", [], [out("MODEL", "MODEL", [1], 0), *clip, out("VAE", "VAE", [8], 2)],
                   widgets=["v1-5-pruned-emaonly.safetensors"]),
          ],
          "links": [[1, 4, 0, 3, 0, "MODEL"], [2, 5, 0, 3, 3, "LATENT"], [3, 4, 1, 6, 0, "CLIP"],
                    [4, 6, 0, 3, 1, "CONDITIONING"], [5, 4, 1, 7, 0, "CLIP"], [6, 7, 0, 3, 2, "CONDITIONING"],
                    [7, 3, 0, 8, 0, "LATENT"], [8, 4, 2, 8, 1, "VAE"], [9, 8, 0, 9, 0, "IMAGE"]]}
    api = ui_to_api(wf, builtins)
    expected = {
        "3": {"seed": 156680208700286, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal",
              "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]},
        "4": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"},
        "5": {"width": 512, "height": 512, "batch_size": 1},
        "6": {"text": "beautiful scenery nature glass bottle landscape", "clip": ["4", 1]},
        "7": {"text": "text, watermark", "clip": ["4", 1]},
        "8": {"samples": ["3", 0], "vae": ["4", 2]},
    }
    assert {k: api[k]["inputs"] for k in expected} == expected
    assert api["9"]["inputs"]["images"] == ["8", 0]
    graph = {k: v for k, v in api.items() if k != "9"}
    v = validate(graph, builtins, outputs=["8"])
    # Only the checkpoint, absent from this machine's model folders, is refused.
    assert list(v.node_errors) == ["4"]
    assert [e["type"] for e in v.node_errors["4"]["errors"]] == ["value_not_in_list"]


def test_boolean_seed_controls_and_missing_widget_values_follow_the_editor(registry):
    """Older files store the seed control as a boolean; a node saved without widgets_values (or by an
    older definition with fewer widgets) gets the defaults the editor would show."""
    wf = {"nodes": [
        node(3, "Sampler", [], [out("LATENT", "LATENT", [])], widgets=[5, True, 12, 2.5, "ddim", "karras", 0.5]),
        node(4, "Sampler", [], [out("LATENT", "LATENT", [])], widgets=[6, False, 30]),
        node(9, "Save", [], []),
        node(1, "Loader", [], [out("MODEL", "MODEL", [])]),
    ], "links": [], "version": 0.4}
    api = ui_to_api(wf, registry)
    assert api["3"]["inputs"] == {"seed": 5, "steps": 12, "cfg": 2.5, "sampler_name": "ddim",
                                  "scheduler": "karras", "denoise": 0.5}
    assert api["4"]["inputs"] == {"seed": 6, "steps": 30, "cfg": 8.0, "sampler_name": "euler",
                                  "scheduler": "normal", "denoise": 1.0}
    assert api["9"]["inputs"] == {"filename_prefix": "genloom"}
    assert api["1"]["inputs"] == {"ckpt_name": "tiny.safetensors"}  # a COMBO's first option


def test_widgets_without_a_declared_default_start_as_the_editor_starts_them():
    class Bare(Node):
        inputs = [Int("count", None, min=3, max=9), Int("offset", None), Float("gain", None, max=-1.0),
                  String("label", None), Boolean("flag", None)]
        outputs = [Out("INT")]

        def run(self, count, offset, gain, label, flag):
            return count

    reg = Registry()
    reg.register(Bare)
    api = ui_to_api({"nodes": [node(1, "Bare", [], [out("INT", "INT")])], "links": [], "version": 0.4}, reg)
    assert api["1"]["inputs"] == {"count": 3, "offset": 0, "gain": -1.0, "label": "", "flag": False}


def test_golden_editor_file_of_the_current_frontend():
    """A file shaped as ComfyUI's editor (frontend 1.x) saves it — every widget also listed among the
    inputs with a `widget` entry, widgets converted to inputs fed by primitives, both kinds of seed
    control, a node saved without widgets_values, a bypassed and a muted node, a note — converts to
    exactly the API graph written out here, which validates and runs on the shipped model."""
    from genloom import Engine
    from genloom.runtime import build_registry

    builtins = build_registry(entry_points_too=False)

    def w(name, type_, link=None):  # a widget input as the current editor lists it
        return inp(name, type_, link, widget=name)

    wf = {"version": 0.4, "last_node_id": 50, "last_link_id": 20, "groups": [], "config": {}, "extra": {},
          "nodes": [
              node(4, "CheckpointLoaderSimple", [w("ckpt_name", "COMBO")],
                   [out("MODEL", "MODEL", [1, 12], 0), out("CLIP", "CLIP", [3, 5], 1), out("VAE", "VAE", [8], 2)],
                   widgets=["genloom-tiny.safetensors"]),
              node(6, "CLIPTextEncode", [inp("clip", "CLIP", 3), w("text", "STRING")],
                   [out("CONDITIONING", "CONDITIONING", [4, 13])], widgets=["a red circle on a blue background"]),
              node(7, "CLIPTextEncode", [inp("clip", "CLIP", 5), w("text", "STRING", 16)],
                   [out("CONDITIONING", "CONDITIONING", [6, 14])], widgets=["stale text the primitive overrides"]),
              node(5, "EmptyLatentImage", [w("width", "INT", 17), w("height", "INT"), w("batch_size", "INT")],
                   [out("LATENT", "LATENT", [2])], widgets=[512, 64, 1]),
              node(3, "KSampler", [inp("model", "MODEL", 1), inp("positive", "CONDITIONING", 4),
                                   inp("negative", "CONDITIONING", 6), inp("latent_image", "LATENT", 2),
                                   w("seed", "INT"), w("steps", "INT"), w("cfg", "FLOAT")],
                   [out("LATENT", "LATENT", [9])], widgets=[42, "randomize", 4, 3.5, "euler", "normal", 1.0]),
              node(11, "LatentUpscaleBy", [inp("samples", "LATENT", 9)], [out("LATENT", "LATENT", [10])],
                   widgets=["nearest-exact", 1.5], mode=4),
              node(10, "KSamplerAdvanced", [inp("model", "MODEL", 12), inp("positive", "CONDITIONING", 13),
                                            inp("negative", "CONDITIONING", 14), inp("latent_image", "LATENT", 10)],
                   [out("LATENT", "LATENT", [7])],
                   widgets=["enable", 7, True, 4, 3.5, "euler", "normal", 2, 10000, "disable"]),
              node(8, "VAEDecode", [inp("samples", "LATENT", 7), inp("vae", "VAE", 8)],
                   [out("IMAGE", "IMAGE", [11, 15])]),
              node(9, "SaveImage", [inp("images", "IMAGE", 11)], []),
              node(12, "PreviewImage", [inp("images", "IMAGE", 15)], [], widgets=[], mode=2),
              node(20, "PrimitiveNode", [], [out("STRING", "STRING", [16])], widgets=["blurry"]),
              node(21, "PrimitiveNode", [], [out("INT", "INT", [17])], widgets=[64, "fixed"]),
              node(50, "Note", [], [], widgets=["two samplers, the second refines"]),
          ],
          "links": [[1, 4, 0, 3, 0, "MODEL"], [2, 5, 0, 3, 3, "LATENT"], [3, 4, 1, 6, 0, "CLIP"],
                    [4, 6, 0, 3, 1, "CONDITIONING"], [5, 4, 1, 7, 0, "CLIP"], [6, 7, 0, 3, 2, "CONDITIONING"],
                    [7, 10, 0, 8, 0, "LATENT"], [8, 4, 2, 8, 1, "VAE"], [9, 3, 0, 11, 0, "LATENT"],
                    [10, 11, 0, 10, 3, "LATENT"], [11, 8, 0, 9, 0, "IMAGE"], [12, 4, 0, 10, 0, "MODEL"],
                    [13, 6, 0, 10, 1, "CONDITIONING"], [14, 7, 0, 10, 2, "CONDITIONING"], [15, 8, 0, 12, 0, "IMAGE"],
                    [16, 20, 0, 7, 1, "STRING"], [17, 21, 0, 5, 0, "INT"]]}
    api = ui_to_api(wf, builtins)
    golden = {
        "4": {"ckpt_name": "genloom-tiny.safetensors"},
        "6": {"text": "a red circle on a blue background", "clip": ["4", 1]},
        "7": {"text": "blurry", "clip": ["4", 1]},
        "5": {"width": 64, "height": 64, "batch_size": 1},
        "3": {"seed": 42, "steps": 4, "cfg": 3.5, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
              "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]},
        "10": {"add_noise": "enable", "noise_seed": 7, "steps": 4, "cfg": 3.5, "sampler_name": "euler",
               "scheduler": "normal", "start_at_step": 2, "end_at_step": 10000, "return_with_leftover_noise": "disable",
               "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["3", 0]},
        "8": {"samples": ["10", 0], "vae": ["4", 2]},
        "9": {"filename_prefix": "ComfyUI", "images": ["8", 0]},
    }
    assert {k: v["inputs"] for k, v in api.items()} == golden
    assert list(api) == ["4", "6", "7", "5", "3", "10", "8", "9"]  # the editor's order; editor-only nodes gone
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        result = Engine(output_dir=folder, device="cpu").run(wf)
        assert result.outputs["9"]["images"][0]["filename"].startswith("ComfyUI_")
