"""ComfyUI's V3 dynamic inputs read back from editor files as its editor lays them out: a dynamic
combo's chosen option brings its widgets right after the combo's own (and only those); autogrow
sockets arrive under their dotted names; CustomCombo's index comes from the widgets its editor
extension adds. Then the imported graphs run."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import genloom
from genloom.engine.ui_import import ui_to_api
from genloom.runtime import build_registry

from comfy_facts import ui_node, ui_workflow

REGISTRY = build_registry(entry_points_too=False)


def _inputs(type_, widgets, inputs=()):
    node = ui_node(1, type_, inputs, [("out", "IMAGE", [])])
    if widgets is not None:
        node["widgets_values"] = widgets  # a list, or a dict by name
    return ui_to_api(ui_workflow([node]), REGISTRY)["1"]["inputs"]


@pytest.mark.parametrize("widgets, expected", [
    # the chosen option's widgets sit between the combo and scale_method
    (["scale width", 300, "bicubic"], {"resize_type": "scale width", "resize_type.width": 300,
                                       "scale_method": "bicubic"}),
    (["scale dimensions", 640, 480, "disabled", "area"],
     {"resize_type": "scale dimensions", "resize_type.width": 640, "resize_type.height": 480,
      "resize_type.crop": "disabled", "scale_method": "area"}),
    (["scale by multiplier", 1.5, "lanczos"], {"resize_type": "scale by multiplier",
                                               "resize_type.multiplier": 1.5, "scale_method": "lanczos"}),
    # no values saved: the editor's defaults, the first option's inputs only
    (None, {"resize_type": "scale dimensions", "resize_type.width": 512, "resize_type.height": 512,
            "resize_type.crop": "center", "scale_method": "area"}),
    # saved by name (newer editors can)
    ({"resize_type": "scale height", "resize_type.height": 77, "scale_method": "area"},
     {"resize_type": "scale height", "resize_type.height": 77, "scale_method": "area"}),
])
def test_dynamic_combo_widgets_follow_the_chosen_option(widgets, expected):
    assert _inputs("ResizeImageMaskNode", widgets) == expected


def test_dynamic_combo_sockets_and_other_nodes():
    # 'match size' brings a socket (linked here) and the crop widget
    api = ui_to_api(ui_workflow([
        ui_node(1, "EmptyImage", [], [("IMAGE", "IMAGE", [1, 2])], widgets=[8, 8, 1, 0]),
        ui_node(2, "ResizeImageMaskNode", [("input", "IMAGE,MASK", 1), ("resize_type.match", "IMAGE,MASK", 2)],
                [("resized", "IMAGE,MASK", [])], widgets=["match size", "disabled", "area"]),
    ]), REGISTRY)
    assert api["2"]["inputs"] == {"input": ["1", 0], "resize_type": "match size", "resize_type.match": ["1", 0],
                                  "resize_type.crop": "disabled", "scale_method": "area"}
    assert _inputs("SaveImageAdvanced", ["shot", "exr", "32-bit float", "linear"]) == {
        "filename_prefix": "shot", "format": "exr", "format.bit_depth": "32-bit float",
        "format.input_color_space": "linear"}
    assert _inputs("ColorTransfer", ["mkl_lab", "target_frame", 3, 0.5]) == {
        "method": "mkl_lab", "source_stats": "target_frame", "source_stats.target_index": 3, "strength": 0.5}
    assert _inputs("ColorTransfer", ["histogram", "uniform", 0.25]) == {
        "method": "histogram", "source_stats": "uniform", "strength": 0.25}


def test_custom_combo_index_from_its_editor_widgets():
    # [choice, index, option1, option2, ...] as the editor's extension saves it; older ones had no index
    assert _inputs("CustomCombo", ["blue", 1, "red", "blue", ""]) == {"choice": "blue", "index": 1}
    assert _inputs("CustomCombo", ["blue", "red", "blue", ""]) == {"choice": "blue"}
    api = ui_to_api(ui_workflow([
        ui_node(1, "CustomCombo", [], [("STRING", "STRING", []), ("INDEX", "INT", [1])],
                widgets=["green", 2, "red", "blue", "green", ""]),
        ui_node(2, "PreviewAny", [("source", "*", 1)], []),
    ]), REGISTRY)
    engine = genloom.Engine(device="cpu")
    result = engine.run(api)
    assert result.outputs["2"]["text"] == ["2"]


def test_imported_dynamic_and_grown_inputs_run(tmp_path):
    nodes = [
        ui_node(1, "EmptyImage", [], [("IMAGE", "IMAGE", [1])], widgets=[64, 32, 1, 0x000000]),
        ui_node(2, "EmptyImage", [], [("IMAGE", "IMAGE", [2])], widgets=[64, 32, 1, 0xFFFFFF]),
        ui_node(3, "BatchImagesNode", [("images.image0", "IMAGE", 1), ("images.image1", "IMAGE", 2),
                                       ("images.image2", "IMAGE", None)], [("IMAGE", "IMAGE", [3])]),
        ui_node(4, "ResizeImageMaskNode", [("input", "IMAGE,MASK", 3)], [("resized", "IMAGE,MASK", [4])],
                widgets=["scale width", 100, "nearest-exact"]),
        ui_node(5, "SaveImage", [("images", "IMAGE", 4)], [], widgets=["dyn/out"]),
    ]
    engine = genloom.Engine(input_dir=tmp_path / "in", output_dir=tmp_path / "out", device="cpu")
    result = engine.run(ui_workflow(nodes))
    saved = result.outputs["5"]["images"]
    assert len(saved) == 2  # both grown slots batched
    for entry, value in zip(saved, (0, 255)):
        with Image.open(tmp_path / "out" / entry["subfolder"] / entry["filename"]) as img:
            assert img.size == (100, 50)  # 64x32 to a width of 100, keeping 2:1
            assert (np.asarray(img.convert("RGB")) == value).all()


def test_every_options_choices_pass_validation():
    engine = genloom.Engine(device="cpu")

    def check(fmt, depth):
        graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 1, "color": 0}},
                 "2": {"class_type": "SaveImageAdvanced", "inputs": {"images": ["1", 0], "filename_prefix": "v",
                                                                     "format": fmt, "format.bit_depth": depth}}}
        return engine.validate(graph)

    assert check("exr", "32-bit float").ok and check("png", "16-bit").ok
    refused = check("png", "12-bit")
    assert not refused.ok and refused.node_errors["2"]["errors"][0]["type"] == "value_not_in_list"
