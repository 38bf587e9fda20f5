"""The core mask nodes: /object_info against ComfyUI's signatures, results on small masks checked by
hand arithmetic, and a run of an editor-format workflow built from them."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from comfy_facts import MAX, capture_node, check_entry, ui_node, ui_workflow  # noqa: E402

from genloom.nodes import masks as M  # noqa: E402

# Read from ComfyUI's nodes.py (LoadImageMask) and comfy_extras/nodes_mask.py / nodes_post_processing.py
# (V3 schemas): (name, type, default, min, max, step) in input order; then the outputs.
FACTS = {
    "LoadImageMask": dict(category="mask", display="Load Image (as Mask)", output=["MASK"],
                          required=[("image", []), ("channel", ["alpha", "red", "green", "blue"])]),
    "ImageToMask": dict(category="mask", display="Convert Image to Mask", output=["MASK"],
                        required=[("image", "IMAGE"), ("channel", ["red", "green", "blue", "alpha"])]),
    "MaskToImage": dict(category="mask", display="Convert Mask to Image", output=["IMAGE"],
                        required=[("mask", "MASK")]),
    "SolidMask": dict(category="mask", display="Solid Mask", output=["MASK"],
                      required=[("value", "FLOAT", 1.0, 0.0, 1.0, 0.01), ("width", "INT", 512, 1, MAX, 1),
                                ("height", "INT", 512, 1, MAX, 1)]),
    "InvertMask": dict(category="mask", display="Invert Mask", output=["MASK"], required=[("mask", "MASK")]),
    "CropMask": dict(category="mask", display="Crop Mask", output=["MASK"],
                     required=[("mask", "MASK"), ("x", "INT", 0, 0, MAX, 1), ("y", "INT", 0, 0, MAX, 1),
                               ("width", "INT", 512, 1, MAX, 1), ("height", "INT", 512, 1, MAX, 1)]),
    "MaskComposite": dict(category="mask", display="Mask Composite", output=["MASK"],
                          required=[("destination", "MASK"), ("source", "MASK"), ("x", "INT", 0, 0, MAX, 1),
                                    ("y", "INT", 0, 0, MAX, 1),
                                    ("operation", ["multiply", "add", "subtract", "and", "or", "xor"])]),
    "FeatherMask": dict(category="mask", display="Feather Mask", output=["MASK"],
                        required=[("mask", "MASK")] + [(e, "INT", 0, 0, MAX, 1)
                                                       for e in ("left", "top", "right", "bottom")]),
    "GrowMask": dict(category="mask", display="Grow Mask", output=["MASK"],
                     required=[("mask", "MASK"), ("expand", "INT", 0, -MAX, MAX, 1),
                               ("tapered_corners", "BOOLEAN", True)]),
    "ThresholdMask": dict(category="mask", display="Threshold Mask", output=["MASK"],
                          required=[("mask", "MASK"), ("value", "FLOAT", 0.5, 0.0, 1.0, 0.01)]),
    "MaskPreview": dict(category="mask", display="Preview Mask", output=[], required=[("mask", "MASK")]),
    # Autogrow 'masks' (template MASK, prefix 'mask', min 2, max 50): one entry, checked below.
    "BatchMasksNode": dict(category="mask", display="Batch Masks", output=["MASK"],
                           required=[("masks", "COMFY_AUTOGROW_V3")]),
}


def test_object_info_matches_comfyui(tmp_folders):
    assert sorted(FACTS) == sorted(cls.__name__ for cls in M.NODES)
    for cls in M.NODES:
        check_entry(cls.schema().object_info(), FACTS[cls.__name__])
    info = M.LoadImageMask.schema().object_info()
    assert info["input"]["required"]["image"][1]["image_upload"] is True
    assert M.MaskPreview.schema().object_info()["output_node"] is True
    assert M.GrowMask.schema().object_info()["input"]["required"]["tapered_corners"][1]["advanced"] is True
    assert M.BatchMasksNode.schema().object_info()["input"]["required"]["masks"][1] == {"template": {
        "input": {"required": {"mask": ["MASK", {}]}}, "prefix": "mask", "min": 2, "max": 50}}


def _png(path, array, mode):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.array(array, dtype=np.uint8), mode).save(path)


def test_load_image_mask_reads_a_channel(tmp_folders):
    folder = tmp_folders.folders.input_dir
    folder.mkdir(parents=True, exist_ok=True)
    _png(folder / "rgba.png", [[[255, 0, 51, 0], [0, 102, 0, 255]]], "RGBA")
    _png(folder / "rgb.png", [[[10, 20, 30], [40, 50, 60]]], "RGB")
    node = M.LoadImageMask()
    (red,) = node.run("rgba.png", "red")
    assert red.shape == (1, 1, 2) and torch.allclose(red, torch.tensor([[[1.0, 0.0]]]))
    (blue,) = node.run("rgba.png", "blue")
    assert torch.allclose(blue, torch.tensor([[[0.2, 0.0]]]))
    (alpha,) = node.run("rgba.png", "alpha")
    assert torch.allclose(alpha, torch.tensor([[[1.0, 0.0]]]))  # 1 - alpha: transparent is masked
    (green,) = node.run("rgb.png", "green")
    assert torch.allclose(green, torch.tensor([[[20 / 255, 50 / 255]]]))
    (no_alpha,) = node.run("rgb.png", "alpha")
    assert torch.equal(no_alpha, torch.zeros(1, 1, 2))
    assert "invalid image file" in M.LoadImageMask.validate("missing.png")
    with pytest.raises(Exception, match="LoadImageMask: input 'image'"):
        node.run("missing.png", "red")


def test_image_mask_conversions():
    image = torch.tensor([[[[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]]]])  # [1, 1, 2, 4]
    assert torch.equal(M.ImageToMask().run(image, "green")[0], torch.tensor([[[0.2, 0.6]]]))
    assert torch.equal(M.ImageToMask().run(image, "alpha")[0], torch.tensor([[[0.4, 0.8]]]))
    with pytest.raises(Exception, match="no alpha channel"):
        M.ImageToMask().run(image[..., :3], "alpha")
    (picture,) = M.MaskToImage().run(torch.tensor([[0.25, 1.0]]))  # a bare [H, W] mask
    assert picture.shape == (1, 1, 2, 3)
    assert torch.equal(picture[0, 0], torch.tensor([[0.25] * 3, [1.0] * 3]))


def test_solid_invert_crop_threshold():
    (solid,) = M.SolidMask().run(0.25, 3, 2)
    assert solid.shape == (1, 2, 3) and torch.all(solid == 0.25)
    assert torch.all(M.InvertMask().run(solid)[0] == 0.75)
    grid = torch.arange(16.0).reshape(4, 4)
    (cut,) = M.CropMask().run(grid, 1, 2, 2, 5)  # clipped at the bottom
    assert torch.equal(cut, torch.tensor([[[9.0, 10.0], [13.0, 14.0]]]))
    (binary,) = M.ThresholdMask().run(torch.tensor([[[0.2, 0.5, 0.7]]]), 0.5)
    assert torch.equal(binary, torch.tensor([[[0.0, 0.0, 1.0]]]))


@pytest.mark.parametrize("operation,inside", [
    ("multiply", 0.5 * 0.75), ("add", 1.0), ("subtract", 0.0),  # 1.25 and -0.25 clamped
    ("and", 0.0), ("or", 1.0), ("xor", 1.0),  # 0.5 rounds to unset, 0.75 to set
])
def test_mask_composite(operation, inside):
    destination = torch.full((1, 3, 3), 0.5)
    (out,) = M.MaskComposite().run(destination, torch.full((2, 2), 0.75), 2, 1, operation)
    expected = torch.full((1, 3, 3), 0.5)
    expected[0, 1:3, 2] = inside  # the 2x2 source at x=2, y=1 is clipped to one column
    assert torch.allclose(out, expected)
    assert torch.all(destination == 0.5)  # the input is left alone


def test_feather_mask_edges():
    (out,) = M.FeatherMask().run(torch.ones(1, 4, 5), 2, 1, 3, 2)
    # left 2: columns x1/2, x2/2. right 3 (counted from -0): column 0 x1/3, column 4 x2/3, column 3 x1.
    cols = torch.tensor([1 / 2 * 1 / 3, 1, 1, 1, 2 / 3])
    # top 1: row 0 x1. bottom 2 (from -0): row 0 x1/2, row 3 x1.
    rows = torch.tensor([1 / 2, 1, 1, 1])
    assert torch.allclose(out[0], rows[:, None] * cols[None, :])


def test_grow_mask_dilates_and_erodes():
    dot = torch.zeros(1, 5, 5)
    dot[0, 2, 2] = 1
    (plus,) = M.GrowMask().run(dot, 1, True)
    assert plus.sum() == 5 and plus[0, 1, 2] == 1 and plus[0, 1, 1] == 0
    (square,) = M.GrowMask().run(dot, 1, False)
    assert square.sum() == 9 and torch.all(square[0, 1:4, 1:4] == 1)
    (diamond,) = M.GrowMask().run(dot, 2, True)
    assert diamond.sum() == 13  # |dy| + |dx| <= 2
    block = torch.zeros(1, 5, 5)
    block[0, 1:4, 1:4] = 1
    (core,) = M.GrowMask().run(block, -1, True)
    assert core.sum() == 1 and core[0, 2, 2] == 1
    (full,) = M.GrowMask().run(torch.ones(1, 3, 3), -2, False)
    assert torch.all(full == 1)  # the border is no hole: it does not eat the mask


def test_batch_masks_resizes_to_the_first():
    first = torch.zeros(1, 2, 2)
    blocks = torch.tensor([[1.0, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])  # a bare [H, W]
    (out,) = M.BatchMasksNode().run(**{"masks.mask0": first, "masks.mask1": torch.ones(2, 2, 2),
                                       "masks.mask2": None, "masks.mask10": blocks})
    assert out.shape == (4, 2, 2)
    assert torch.equal(out[1], torch.ones(2, 2))
    # Bilinear halving samples the middle of each 2x2 block: the block's value.
    assert torch.allclose(out[3], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))


def test_mask_preview_writes_a_grey_picture(tmp_folders):
    import numpy as np
    from PIL import Image

    mask = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    result = M.MaskPreview().run(mask)
    (entry,) = result.ui["images"]
    assert entry["type"] == "temp" and entry["filename"].startswith("ComfyUI_temp_")
    pixels = np.asarray(Image.open(tmp_folders.folders.temp_dir / entry["subfolder"] / entry["filename"]))
    assert pixels.shape == (2, 2, 3) and (pixels[..., 0] == pixels[..., 2]).all()
    assert pixels[..., 1].tolist() == [[0, 255], [255, 0]]


def test_editor_workflow_of_mask_nodes(tmp_path):
    import genloom

    (tmp_path / "input").mkdir()
    _png(tmp_path / "input" / "m.png", [[[255, 0, 0], [0, 0, 0], [255, 0, 0]]] * 2, "RGB")
    engine = genloom.Engine(input_dir=tmp_path / "input", output_dir=tmp_path / "out", temp_dir=tmp_path / "temp",
                            device="cpu")
    capture = capture_node("CaptureMasks")
    engine.registry.register(capture)
    nodes = [
        ui_node(1, "SolidMask", outputs=[("MASK", "MASK", [1])], widgets=[0.25, 4, 3]),
        ui_node(2, "InvertMask", [("mask", "MASK", 1)], [("MASK", "MASK", [2])]),
        ui_node(3, "SolidMask", outputs=[("MASK", "MASK", [3])], widgets=[1.0, 2, 2]),
        ui_node(4, "MaskComposite", [("destination", "MASK", 2), ("source", "MASK", 3)],
                [("MASK", "MASK", [4])], widgets=[1, 1, "subtract"]),
        ui_node(5, "ThresholdMask", [("mask", "MASK", 4)], [("MASK", "MASK", [5, 9])], widgets=[0.5]),
        ui_node(6, "GrowMask", [("mask", "MASK", 5)], [("MASK", "MASK", [6])], widgets=[-1, True]),
        ui_node(7, "MaskToImage", [("mask", "MASK", 6)], [("IMAGE", "IMAGE", [7])]),
        ui_node(8, "CaptureMasks", [("value", "*", 7)]),
        ui_node(9, "LoadImageMask", outputs=[("MASK", "MASK", [8])], widgets=["m.png", "red", "image"]),
        ui_node(10, "BatchMasksNode", [("masks.mask0", "MASK", 9), ("masks.mask1", "MASK", 8),
                                       ("masks.mask2", "MASK", None)], [("MASK", "MASK", [10, 12])]),
        ui_node(11, "CaptureMasks", [("value", "*", 10)]),
        ui_node(12, "MaskPreview", [("mask", "MASK", 11)]),
        ui_node(13, "CropMask", [("mask", "MASK", 12)], [("MASK", "MASK", [11])], widgets=[2, 0, 2, 2]),
    ]
    result = engine.run(ui_workflow(nodes))
    assert result.errors == [] and result.node_errors == {}
    batched, grown = sorted(capture.seen, key=lambda t: t.dim())
    # 0.75 everywhere but the 2x2 hole at (1, 1); thresholded to 1 / 0; the hole grown by one pixel
    # (plus shape; the border counts as set): only the two top corners stay set.
    expected = torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert torch.equal(batched[0], torch.tensor([[1.0, 1, 1, 1], [1, 0, 0, 1], [1, 0, 0, 1]]))
    assert torch.equal(grown[0, ..., 0], expected) and grown.shape == (1, 3, 4, 3)
    assert batched.shape == (2, 3, 4)
    # m.png's red channel (2 x 3) resized to 3 x 4 (bilinear, centre crop): columns 0 and 2 were red.
    assert batched[1].shape == (3, 4) and batched[1].max() == 1.0
    import numpy as np
    from PIL import Image

    first, second = result.outputs["12"]["images"]  # both masks, cropped to x 2..3, y 0..1
    assert (tmp_path / "temp" / second["filename"]).is_file()
    pixels = np.asarray(Image.open(tmp_path / "temp" / first["filename"]))
    assert pixels[..., 0].tolist() == [[255, 255], [0, 255]]
