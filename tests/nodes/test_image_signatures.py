"""The image nodes' /object_info entries against the signatures read from ComfyUI's source
(nodes.py, comfy_extras/nodes_images.py, nodes_post_processing.py, nodes_compositing.py, nodes_mask.py,
nodes_image_compare.py), and one editor-format workflow that chains several of them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import genloom
from genloom.runtime import build_registry

REGISTRY = build_registry(entry_points_too=False)
R = 16384  # ComfyUI's MAX_RESOLUTION
U64 = 0xFFFFFFFFFFFFFFFF
METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]

# name -> (inputs in order: (name, type or combo options, {option: value}), outputs, output names or None)
SIGNATURES = {
    "ImageInvert": ([("image", "IMAGE", {})], ["IMAGE"], None),
    "ImageBatch": ([("image1", "IMAGE", {}), ("image2", "IMAGE", {})], ["IMAGE"], None),
    "ImageFromBatch": ([("image", "IMAGE", {}), ("batch_index", "INT", {"default": 0, "min": 0, "max": 4095}),
                        ("length", "INT", {"default": 1, "min": 1, "max": 4096})], ["IMAGE"], None),
    "RepeatImageBatch": ([("image", "IMAGE", {}), ("amount", "INT", {"default": 1, "min": 1, "max": 4096})],
                         ["IMAGE"], None),
    "ImageCrop": ([("image", "IMAGE", {}), ("width", "INT", {"default": 512, "min": 1, "max": R, "step": 1}),
                   ("height", "INT", {"default": 512, "min": 1, "max": R, "step": 1}),
                   ("x", "INT", {"default": 0, "min": 0, "max": R, "step": 1}),
                   ("y", "INT", {"default": 0, "min": 0, "max": R, "step": 1})], ["IMAGE"], None),
    "ImageBlend": ([("image1", "IMAGE", {}), ("image2", "IMAGE", {}),
                    ("blend_factor", "FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01}),
                    ("blend_mode", ["normal", "multiply", "screen", "overlay", "soft_light", "difference"], {})],
                   ["IMAGE"], None),
    "ImageBlur": ([("image", "IMAGE", {}), ("blur_radius", "INT", {"default": 1, "min": 1, "max": 31, "step": 1}),
                   ("sigma", "FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1})], ["IMAGE"], None),
    "ImageSharpen": ([("image", "IMAGE", {}),
                      ("sharpen_radius", "INT", {"default": 1, "min": 1, "max": 31, "step": 1}),
                      ("sigma", "FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.01}),
                      ("alpha", "FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.01})], ["IMAGE"], None),
    "ImageQuantize": ([("image", "IMAGE", {}), ("colors", "INT", {"default": 256, "min": 1, "max": 256, "step": 1}),
                       ("dither", ["none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16"], {})],
                      ["IMAGE"], None),
    "ImageCompositeMasked": ([("destination", "IMAGE", {}), ("source", "IMAGE", {}),
                              ("x", "INT", {"default": 0, "min": 0, "max": R, "step": 1}),
                              ("y", "INT", {"default": 0, "min": 0, "max": R, "step": 1}),
                              ("resize_source", "BOOLEAN", {"default": False}), ("mask", "MASK", {"optional": True})],
                             ["IMAGE"], None),
    "PorterDuffImageComposite": ([("source", "IMAGE", {}), ("source_alpha", "MASK", {}), ("destination", "IMAGE", {}),
                                  ("destination_alpha", "MASK", {}),
                                  ("mode", ["ADD", "CLEAR", "DARKEN", "DST", "DST_ATOP", "DST_IN", "DST_OUT",
                                            "DST_OVER", "LIGHTEN", "MULTIPLY", "OVERLAY", "SCREEN", "SRC",
                                            "SRC_ATOP", "SRC_IN", "SRC_OUT", "SRC_OVER", "XOR"],
                                   {"default": "DST"})], ["IMAGE", "MASK"], None),
    "ImageStitch": ([("image1", "IMAGE", {}), ("direction", ["right", "down", "left", "up"], {"default": "right"}),
                     ("match_image_size", "BOOLEAN", {"default": True}),
                     ("spacing_width", "INT", {"default": 0, "min": 0, "max": 1024, "step": 2}),
                     ("spacing_color", ["white", "black", "red", "green", "blue"], {"default": "white"}),
                     ("image2", "IMAGE", {"optional": True})], ["IMAGE"], None),
    "ImageFlip": ([("image", "IMAGE", {}), ("flip_method", ["x-axis: vertically", "y-axis: horizontally"], {})],
                  ["IMAGE"], None),
    "ImageRotate": ([("image", "IMAGE", {}),
                     ("rotation", ["none", "90 degrees", "180 degrees", "270 degrees"], {})], ["IMAGE"], None),
    "EmptyImage": ([("width", "INT", {"default": 512, "min": 1, "max": R, "step": 1}),
                    ("height", "INT", {"default": 512, "min": 1, "max": R, "step": 1}),
                    ("batch_size", "INT", {"default": 1, "min": 1, "max": 4096}),
                    ("color", "INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1})], ["IMAGE"], None),
    "JoinImageWithAlpha": ([("image", "IMAGE", {}), ("alpha", "MASK", {})], ["IMAGE"], None),
    "SplitImageWithAlpha": ([("image", "IMAGE", {})], ["IMAGE", "MASK"], None),
    "GetImageSize": ([("image", "IMAGE", {})], ["INT", "INT", "INT"], ["width", "height", "batch_size"]),
    "ImageScaleToMaxDimension": ([("image", "IMAGE", {}),
                                  ("upscale_method", ["area", "lanczos", "bilinear", "nearest-exact", "bilinear",
                                                      "bicubic"], {}),
                                  ("largest_size", "INT", {"default": 512, "min": 0, "max": R, "step": 1})],
                                 ["IMAGE"], None),
    "ResizeAndPadImage": ([("image", "IMAGE", {}),
                           ("target_width", "INT", {"default": 512, "min": 1, "max": R, "step": 1}),
                           ("target_height", "INT", {"default": 512, "min": 1, "max": R, "step": 1}),
                           ("padding_color", ["white", "black"], {}),
                           ("interpolation", ["area", "bicubic", "nearest-exact", "bilinear", "lanczos"], {})],
                          ["IMAGE"], None),
    "ImageScaleToTotalPixels": ([("image", "IMAGE", {}), ("upscale_method", METHODS, {}),
                                 ("megapixels", "FLOAT", {"default": 1.0, "min": 0.01, "max": 16.0, "step": 0.01}),
                                 ("resolution_steps", "INT", {"default": 1, "min": 1, "max": 256})], ["IMAGE"], None),
    "ImageAddNoise": ([("image", "IMAGE", {}),
                       ("seed", "INT", {"default": 0, "min": 0, "max": U64, "control_after_generate": True}),
                       ("strength", "FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01})],
                      ["IMAGE"], None),
    "ImageColorToMask": ([("image", "IMAGE", {}), ("color", "INT", {"default": 0, "min": 0, "max": 0xFFFFFF,
                                                                      "step": 1})], ["MASK"], None),
    "LoadImageOutput": ([("image", None, {"image_upload": True, "image_folder": "output"})], ["IMAGE", "MASK"], None),
    "SaveImageWebsocket": ([("images", "IMAGE", {})], [], None),
    "SaveAnimatedWEBP": ([("images", "IMAGE", {}), ("filename_prefix", "STRING", {"default": "ComfyUI"}),
                          ("fps", "FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01}),
                          ("lossless", "BOOLEAN", {"default": True}),
                          ("quality", "INT", {"default": 80, "min": 0, "max": 100}),
                          ("method", ["default", "fastest", "slowest"], {})], [], None),
    "SaveAnimatedPNG": ([("images", "IMAGE", {}), ("filename_prefix", "STRING", {"default": "ComfyUI"}),
                         ("fps", "FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01}),
                         ("compress_level", "INT", {"default": 4, "min": 0, "max": 9})], [], None),
    "ImageCompare": ([("image_a", "IMAGE", {"optional": True}), ("image_b", "IMAGE", {"optional": True}),
                      ("compare_view", "IMAGECOMPARE", {"optional": True})], [], None),
    # Dynamic combos: one COMFY_DYNAMICCOMBO_V3 entry each (its options: test_dynamic_combos_match_comfyui).
    "SaveImageAdvanced": ([("images", "IMAGE", {}), ("filename_prefix", "STRING", {"default": "ComfyUI"}),
                           ("format", "COMFY_DYNAMICCOMBO_V3", {})], [], None),
    "ResizeImageMaskNode": ([("input", "IMAGE,MASK", {}), ("resize_type", "COMFY_DYNAMICCOMBO_V3", {}),
                             ("scale_method", METHODS, {"default": "area"})], ["IMAGE,MASK"], None),
}
# name -> (category, display name); a node ComfyUI gives no display name shows its class name.
LABELS = {
    "ImageInvert": ("image", "Invert Image"), "ImageBatch": ("image", "Batch Images"),
    "BatchImagesNode": ("image", "Batch Images"), "ImageFromBatch": ("image/batch", "ImageFromBatch"),
    "RepeatImageBatch": ("image/batch", "RepeatImageBatch"), "ImageCrop": ("image/transform", "Crop Image"),
    "ImageBlend": ("image/postprocessing", "Image Blend"), "ImageBlur": ("image/postprocessing", "Image Blur"),
    "ImageSharpen": ("image/postprocessing", "Image Sharpen"),
    "ImageQuantize": ("image/postprocessing", "Image Quantize"),
    "ImageCompositeMasked": ("image", "Image Composite Masked"),
    "PorterDuffImageComposite": ("mask/compositing", "Porter-Duff Image Composite"),
    "ImageStitch": ("image/transform", "Image Stitch"), "ImageFlip": ("image/transform", "ImageFlip"),
    "ImageRotate": ("image/transform", "Rotate"), "EmptyImage": ("image", "EmptyImage"),
    "JoinImageWithAlpha": ("mask/compositing", "Join Image with Alpha"),
    "SplitImageWithAlpha": ("mask/compositing", "Split Image with Alpha"),
    "GetImageSize": ("image", "Get Image Size"), "ResizeImageMaskNode": ("transform", "Resize Image/Mask"),
    "ImageScaleToMaxDimension": ("image/upscaling", "ImageScaleToMaxDimension"),
    "ResizeAndPadImage": ("image/transform", "ResizeAndPadImage"),
    "ImageScaleToTotalPixels": ("image/upscaling", "Scale Image to Total Pixels"),
    "ImageCompare": ("image", "Image Compare"), "ImageAddNoise": ("image", "ImageAddNoise"),
    "ImageColorToMask": ("mask", "Image Color to Mask"), "LoadImageOutput": ("image", "Load Image (from Outputs)"),
    "SaveImageWebsocket": ("api node/image", "SaveImageWebsocket"),
    "SaveAnimatedWEBP": ("image/animation", "SaveAnimatedWEBP"),
    "SaveAnimatedPNG": ("image/animation", "SaveAnimatedPNG"),
}
OUTPUT_NODES = {"SaveImageWebsocket", "SaveAnimatedWEBP", "SaveAnimatedPNG", "SaveImageAdvanced", "ImageCompare"}


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_object_info_matches_comfyui(name):
    inputs, outputs, names = SIGNATURES[name]
    info = REGISTRY[name].object_info()
    order = info["input_order"].get("required", []) + info["input_order"].get("optional", [])
    assert order == [row[0] for row in inputs]
    for input_name, kind, options in inputs:
        section = "optional" if options.get("optional") else "required"
        spec = info["input"][section][input_name]
        if isinstance(kind, list):
            assert spec[0] == kind
        elif kind is not None:
            assert spec[0] == kind
        for key, value in options.items():
            if key != "optional":
                assert spec[1][key] == value, (input_name, key)
    assert info["output"] == outputs
    if names:
        assert info["output_name"] == names
    assert info["output_node"] == (name in OUTPUT_NODES)


@pytest.mark.parametrize("name", sorted(LABELS))
def test_category_and_display_name(name):
    info = REGISTRY[name].object_info()
    assert (info["category"], info["display_name"]) == LABELS[name]


def test_batch_images_node_autogrow_inputs():
    # ComfyUI: Autogrow.Input("images", TemplatePrefix(Image.Input("image"), prefix="image", min=2, max=50))
    info = REGISTRY["BatchImagesNode"].object_info()
    assert info["input"] == {"required": {"images": ["COMFY_AUTOGROW_V3", {"template": {
        "input": {"required": {"image": ["IMAGE", {}]}}, "prefix": "image", "min": 2, "max": 50}}]}}
    assert info["input_order"] == {"required": ["images"]}
    assert info["output"] == ["IMAGE"]
    # what an API graph sends is still checked slot by slot
    flat = [spec.name for spec in REGISTRY["BatchImagesNode"].inputs]
    assert flat == [f"images.image{i}" for i in range(50)]


# ComfyUI's DynamicCombo options: key -> [(input, type, default, min, max)] in its order.
SIZE = (0, 16384)
DYNAMIC_COMBOS = {
    ("ResizeImageMaskNode", "resize_type"): {
        "scale dimensions": [("width", "INT", 512, *SIZE), ("height", "INT", 512, *SIZE),
                             ("crop", ["disabled", "center"], "center", None, None)],
        "scale by multiplier": [("multiplier", "FLOAT", 1.0, 0.01, 8.0)],
        "scale longer dimension": [("longer_size", "INT", 512, *SIZE)],
        "scale shorter dimension": [("shorter_size", "INT", 512, *SIZE)],
        "scale width": [("width", "INT", 512, *SIZE)],
        "scale height": [("height", "INT", 512, *SIZE)],
        "scale total pixels": [("megapixels", "FLOAT", 1.0, 0.01, 16.0)],
        "match size": [("match", "IMAGE,MASK", None, None, None), ("crop", ["disabled", "center"], "center", None, None)],
        "scale to multiple": [("multiple", "INT", 8, 1, 16384)],
    },
    ("SaveImageAdvanced", "format"): {
        "png": [("bit_depth", ["8-bit", "16-bit"], "8-bit", None, None),
                ("input_color_space", ["sRGB"], "sRGB", None, None)],
        "exr": [("bit_depth", ["32-bit float"], "32-bit float", None, None),
                ("input_color_space", ["sRGB", "HDR", "linear"], "sRGB", None, None)],
    },
}


@pytest.mark.parametrize("node,name", sorted(DYNAMIC_COMBOS))
def test_dynamic_combos_match_comfyui(node, name):
    kind, options = REGISTRY[node].object_info()["input"]["required"][name]
    assert kind == "COMFY_DYNAMICCOMBO_V3"
    expected = DYNAMIC_COMBOS[(node, name)]
    assert [o["key"] for o in options["options"]] == list(expected)
    for option in options["options"]:
        inputs = option["inputs"]
        assert list(inputs) == ["required"]  # every option input is required within its option
        rows = [(n, spec[0], spec[1].get("default"), spec[1].get("min"), spec[1].get("max"))
                for n, spec in inputs["required"].items()]
        assert rows == expected[option["key"]], option["key"]


# ---- an editor-format workflow using several of the nodes ------------------------------------------------

def _node(id_, type_, inputs=(), outputs=(), widgets=None, order=0):
    entry = {"id": id_, "type": type_, "pos": [100 * id_, 50], "size": [315, 98], "flags": {}, "order": order,
             "mode": 0, "properties": {"Node name for S&R": type_}, "inputs": list(inputs), "outputs": list(outputs)}
    if widgets is not None:
        entry["widgets_values"] = widgets
    return entry


def _in(name, type_, link):
    return {"name": name, "type": type_, "link": link}


def _out(name, type_, links):
    return {"name": name, "type": type_, "links": links, "slot_index": 0}


def test_ui_workflow_with_image_nodes(tmp_path):
    """EmptyImage -> ImageInvert -> ImageCrop -> ImageFlip -> ImageAddNoise (seed control value)
    -> ImageStitch (with a second EmptyImage) -> SaveImage, as the editor saves it."""
    nodes = [
        _node(1, "EmptyImage", outputs=[_out("IMAGE", "IMAGE", [1])], widgets=[8, 6, 1, 0x102030]),
        _node(2, "ImageInvert", [_in("image", "IMAGE", 1)], [_out("IMAGE", "IMAGE", [2])]),
        _node(3, "ImageCrop", [_in("image", "IMAGE", 2)], [_out("IMAGE", "IMAGE", [3])], widgets=[4, 6, 2, 0]),
        _node(4, "ImageFlip", [_in("image", "IMAGE", 3)], [_out("IMAGE", "IMAGE", [4])],
              widgets=["y-axis: horizontally"]),
        _node(5, "ImageAddNoise", [_in("image", "IMAGE", 4)], [_out("IMAGE", "IMAGE", [5])],
              widgets=[3, "fixed", 0.0]),
        _node(6, "EmptyImage", outputs=[_out("IMAGE", "IMAGE", [6])], widgets=[2, 6, 1, 0xFFFFFF]),
        _node(7, "ImageStitch", [_in("image1", "IMAGE", 5), _in("image2", "IMAGE", 6)],
              [_out("IMAGE", "IMAGE", [7])], widgets=["right", False, 2, "black"]),
        _node(8, "SaveImage", [_in("images", "IMAGE", 7)], [], widgets=["ui/stitched"]),
    ]
    links = [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"], [3, 3, 0, 4, 0, "IMAGE"], [4, 4, 0, 5, 0, "IMAGE"],
             [5, 5, 0, 7, 0, "IMAGE"], [6, 6, 0, 7, 1, "IMAGE"], [7, 7, 0, 8, 0, "IMAGE"]]
    workflow = {"last_node_id": 8, "last_link_id": 7, "nodes": nodes, "links": links, "groups": [], "config": {},
                "extra": {}, "version": 0.4}
    engine = genloom.Engine(input_dir=tmp_path / "in", output_dir=tmp_path / "out", device="cpu")
    result = engine.run(workflow)
    entry = result.outputs["8"]["images"][0]
    with Image.open(tmp_path / "out" / entry["subfolder"] / entry["filename"]) as img:
        pixels = np.asarray(img.convert("RGB"))
    # inverted 0x102030 is (0xEF, 0xDF, 0xCF) = (239, 223, 207) up to truncation; then 2 black, then 2 white
    inverted = np.floor(np.clip(255 * (1 - np.array([0x10, 0x20, 0x30]) / 255), 0, 255))
    assert pixels.shape == (6, 4 + 2 + 2, 3)
    assert (pixels[:, :4] == inverted).all()
    assert (pixels[:, 4:6] == 0).all() and (pixels[:, 6:] == 255).all()


def test_ui_workflow_resize_and_get_size(tmp_path):
    """ImageScaleToTotalPixels (resolution_steps) -> GetImageSize -> EmptyImage sized by its outputs."""
    nodes = [
        _node(1, "EmptyImage", outputs=[_out("IMAGE", "IMAGE", [1])], widgets=[64, 32, 2, 0]),
        _node(2, "ImageScaleToTotalPixels", [_in("image", "IMAGE", 1)], [_out("IMAGE", "IMAGE", [2])],
              widgets=["bilinear", 0.01, 8]),
        _node(3, "GetImageSize", [_in("image", "IMAGE", 2)],
              [{"name": "width", "type": "INT", "links": [3], "slot_index": 0},
               {"name": "height", "type": "INT", "links": [4], "slot_index": 1},
               {"name": "batch_size", "type": "INT", "links": [], "slot_index": 2}]),
        _node(4, "EmptyImage", [{"name": "width", "type": "INT", "link": 3, "widget": {"name": "width"}},
                                {"name": "height", "type": "INT", "link": 4, "widget": {"name": "height"}}],
              [_out("IMAGE", "IMAGE", [5])], widgets=[512, 512, 1, 0xFF0000]),
        _node(5, "PreviewImage", [_in("images", "IMAGE", 5)], []),
    ]
    links = [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"], [3, 3, 0, 4, 0, "INT"], [4, 3, 1, 4, 1, "INT"],
             [5, 4, 0, 5, 0, "IMAGE"]]
    workflow = {"last_node_id": 5, "last_link_id": 5, "nodes": nodes, "links": links, "version": 0.4}
    engine = genloom.Engine(input_dir=tmp_path / "in", output_dir=tmp_path / "out", temp_dir=tmp_path / "tmp",
                            device="cpu")
    result = engine.run(workflow)
    entry = result.outputs["5"]["images"][0]
    with Image.open(tmp_path / "tmp" / entry["subfolder"] / entry["filename"]) as img:
        # 0.01 MP = 10485.76 px at 2:1 -> 144.8 x 72.4 -> multiples of 8: 144 x 72
        assert img.size == (144, 72)
        assert img.convert("RGB").getpixel((0, 0)) == (255, 0, 0)
