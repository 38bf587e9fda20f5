"""The core latent nodes: /object_info against ComfyUI's signatures, results on small latents checked
by hand arithmetic (batch_index and noise_mask carried as ComfyUI does), and an editor-format run."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from comfy_facts import MAX, capture_node, check_entry, ui_node, ui_workflow  # noqa: E402

from genloom.nodes import latent_ops as L  # noqa: E402

_PAIR = [("samples1", "LATENT"), ("samples2", "LATENT")]
# Read from ComfyUI's nodes.py (V1 classes), comfy_extras/nodes_mask.py, nodes_latent.py and
# nodes_post_processing.py (V3 schemas): (name, type, default, min, max, step) in input order; outputs.
FACTS = {
    "LatentComposite": dict(category="latent", display="Latent Composite", output=["LATENT"],
                            required=[("samples_to", "LATENT"), ("samples_from", "LATENT"),
                                      ("x", "INT", 0, 0, MAX, 8), ("y", "INT", 0, 0, MAX, 8),
                                      ("feather", "INT", 0, 0, MAX, 8)]),
    "LatentCompositeMasked": dict(category="latent", display="Latent Composite Masked", output=["LATENT"],
                                  required=[("destination", "LATENT"), ("source", "LATENT"),
                                            ("x", "INT", 0, 0, MAX, 8), ("y", "INT", 0, 0, MAX, 8),
                                            ("resize_source", "BOOLEAN", False)],
                                  optional=[("mask", "MASK")]),
    "LatentBlend": dict(category="_for_testing", display="Latent Blend", output=["LATENT"],
                        required=_PAIR + [("blend_factor", "FLOAT", 0.5, 0, 1, 0.01)]),
    "LatentAdd": dict(category="latent/advanced", display="LatentAdd", output=["LATENT"], required=_PAIR),
    "LatentSubtract": dict(category="latent/advanced", display="LatentSubtract", output=["LATENT"],
                           required=_PAIR),
    "LatentMultiply": dict(category="latent/advanced", display="LatentMultiply", output=["LATENT"],
                           required=[("samples", "LATENT"), ("multiplier", "FLOAT", 1.0, -10.0, 10.0, 0.01)]),
    "LatentInterpolate": dict(category="latent/advanced", display="LatentInterpolate", output=["LATENT"],
                              required=_PAIR + [("ratio", "FLOAT", 1.0, 0.0, 1.0, 0.01)]),
    "LatentFromBatch": dict(category="latent/batch", display="Latent From Batch", output=["LATENT"],
                            required=[("samples", "LATENT"), ("batch_index", "INT", 0, 0, 63),
                                      ("length", "INT", 1, 1, 64)]),
    "RepeatLatentBatch": dict(category="latent/batch", display="Repeat Latent Batch", output=["LATENT"],
                              required=[("samples", "LATENT"), ("amount", "INT", 1, 1, 64)]),
    "LatentBatch": dict(category="latent/batch", display="LatentBatch", output=["LATENT"], required=_PAIR),
    # Autogrow 'latents' (template LATENT, prefix 'latent', min 2, max 50): one entry.
    "BatchLatentsNode": dict(category="latent", display="Batch Latents", output=["LATENT"],
                             required=[("latents", "COMFY_AUTOGROW_V3")]),
    "LatentRotate": dict(category="latent/transform", display="Rotate Latent", output=["LATENT"],
                         required=[("samples", "LATENT"),
                                   ("rotation", ["none", "90 degrees", "180 degrees", "270 degrees"])]),
    "LatentFlip": dict(category="latent/transform", display="Flip Latent", output=["LATENT"],
                       required=[("samples", "LATENT"),
                                 ("flip_method", ["x-axis: vertically", "y-axis: horizontally"])]),
    "LatentCrop": dict(category="latent/transform", display="Crop Latent", output=["LATENT"],
                       required=[("samples", "LATENT"), ("width", "INT", 512, 64, MAX, 8),
                                 ("height", "INT", 512, 64, MAX, 8), ("x", "INT", 0, 0, MAX, 8),
                                 ("y", "INT", 0, 0, MAX, 8)]),
    "LatentBatchSeedBehavior": dict(category="latent/advanced", display="LatentBatchSeedBehavior",
                                    output=["LATENT"],
                                    required=[("samples", "LATENT"), ("seed_behavior", ["random", "fixed"], "fixed")]),
}


def test_object_info_matches_comfyui():
    assert sorted(FACTS) == sorted(cls.__name__ for cls in L.NODES)
    for cls in L.NODES:
        check_entry(cls.schema().object_info(), FACTS[cls.__name__])
    assert L.BatchLatentsNode.schema().object_info()["input"]["required"]["latents"][1] == {"template": {
        "input": {"required": {"latent": ["LATENT", {}]}}, "prefix": "latent", "min": 2, "max": 50}}


def lat(values, **extra):
    return {"samples": torch.as_tensor(values, dtype=torch.float32), **extra}


def test_composite_pastes_and_clips():
    (out,) = L.LatentComposite().run(lat(torch.zeros(1, 1, 4, 4)), lat(torch.ones(1, 1, 2, 3)), 16, 8, 0)
    expected = torch.zeros(1, 1, 4, 4)
    expected[..., 1:3, 2:4] = 1  # at cell (2, 1); the third column falls outside
    assert torch.equal(out["samples"], expected)


def test_composite_feathers_inner_edges():
    (out,) = L.LatentComposite().run(lat(torch.zeros(1, 1, 6, 6)), lat(torch.ones(1, 1, 4, 4)), 8, 8, 16)
    ramp = torch.tensor([0.5, 1, 1, 0.5])  # two cells of feather: 1/2 then 2/2 from each inner edge
    expected = torch.zeros(1, 1, 6, 6)
    expected[0, 0, 1:5, 1:5] = ramp[:, None] * ramp[None, :]
    assert torch.allclose(out["samples"], expected)
    (edge,) = L.LatentComposite().run(lat(torch.zeros(1, 1, 4, 4)), lat(torch.ones(1, 1, 4, 4)), 0, 0, 16)
    assert torch.equal(edge["samples"], torch.ones(1, 1, 4, 4))  # edges on the border do not fade


def test_composite_masked():
    dest = lat(torch.zeros(2, 2, 4, 4), batch_index=[3, 4])
    mask = torch.tensor([[1.0, 0.0], [0.5, 1.0]])
    (out,) = L.LatentCompositeMasked().run(dest, lat(torch.full((1, 2, 2, 2), 2.0)), 8, 0, False, mask)
    expected = torch.zeros(2, 2, 4, 4)
    expected[..., 0:2, 1:3] = 2 * mask  # source repeated to the batch; mask over both channels
    assert torch.equal(out["samples"], expected) and out["batch_index"] == [3, 4]
    (clipped,) = L.LatentCompositeMasked().run(dest, lat(torch.full((1, 1, 2, 2), 2.0)), 24, 0, False)
    assert clipped["samples"][..., 0:2, 3].eq(2).all() and clipped["samples"][..., :, :3].eq(0).all()
    (stretched,) = L.LatentCompositeMasked().run(dest, lat(torch.full((1, 2, 1, 1), 3.0)), 0, 0, True)
    assert torch.equal(stretched["samples"], torch.full((2, 2, 4, 4), 3.0))
    assert torch.equal(dest["samples"], torch.zeros(2, 2, 4, 4))  # the input is left alone


def test_blend_add_subtract_multiply():
    s1 = lat([[[[1.0, 2.0], [3.0, 4.0]]]] * 2, noise_mask=torch.ones(1, 1, 2, 2))
    (blended,) = L.LatentBlend().run(lat(torch.full((1, 1, 2, 2), 2.0)), lat(torch.full((1, 1, 2, 2), 4.0)), 0.25)
    assert torch.allclose(blended["samples"], torch.full((1, 1, 2, 2), 0.25 * 2 + 0.75 * 4))
    (added,) = L.LatentAdd().run(s1, lat(torch.full((1, 1, 2, 2), 10.0)))  # repeated to batch 2
    assert torch.equal(added["samples"], s1["samples"] + 10) and "noise_mask" in added
    (less,) = L.LatentSubtract().run(s1, lat(torch.full((1, 1, 1, 1), 5.0)))  # resized to 2x2
    assert torch.allclose(less["samples"], s1["samples"] - 5)
    (scaled,) = L.LatentMultiply().run(s1, -2.0)
    assert torch.equal(scaled["samples"][0, 0], torch.tensor([[-2.0, -4.0], [-6.0, -8.0]]))


def test_interpolate_blends_directions_and_lengths():
    s1 = lat([[[[3.0, 3.0]], [[4.0, 4.0]]]])  # two pixels, each the vector (3, 4): length 5
    s2 = lat([[[[0.0, 0.0]], [[2.0, 0.0]]]])  # (0, 2) of length 2, and a zero vector
    (out,) = L.LatentInterpolate().run(s1, s2, 0.5)
    # Pixel 0: units (0.6, 0.8) and (0, 1) mix to (0.3, 0.9); length (5 + 2) / 2 = 3.5.
    norm = (0.3 ** 2 + 0.9 ** 2) ** 0.5
    assert torch.allclose(out["samples"][0, :, 0, 0], torch.tensor([0.3, 0.9]) / norm * 3.5)
    # Pixel 1: the zero vector has no direction; length (5 + 0) / 2.
    assert torch.allclose(out["samples"][0, :, 0, 1], torch.tensor([0.6, 0.8]) * 2.5)


def test_from_batch_keeps_masks_and_indices():
    samples = torch.arange(4.0).reshape(4, 1, 1, 1)
    masks = torch.tensor([10.0, 20.0]).reshape(2, 1, 1, 1)
    (out,) = L.LatentFromBatch().run(lat(samples, noise_mask=masks), 1, 5)  # clipped to 3 entries
    assert out["samples"].flatten().tolist() == [1, 2, 3]
    assert out["noise_mask"].flatten().tolist() == [20, 10, 20]  # masks cycle over the batch
    assert out["batch_index"] == [1, 2, 3]
    (again,) = L.LatentFromBatch().run(lat(samples, batch_index=[7, 8, 9, 10], noise_mask=masks[:1]), 9, 1)
    assert again["samples"].flatten().tolist() == [3] and again["batch_index"] == [10]
    assert again["noise_mask"].flatten().tolist() == [10]  # one mask for all is kept


def test_repeat_continues_batch_indices():
    (out,) = L.RepeatLatentBatch().run(lat(torch.arange(2.0).reshape(2, 1, 1, 1), batch_index=[5, 7],
                                           noise_mask=torch.tensor([1.0, 2.0]).reshape(2, 1, 1, 1)), 3)
    assert out["samples"].flatten().tolist() == [0, 1, 0, 1, 0, 1]
    assert out["batch_index"] == [5, 7, 8, 10, 11, 13]  # offset = 7 - 5 + 1
    assert out["noise_mask"].flatten().tolist() == [1, 2, 1, 2, 1, 2]
    (plain,) = L.RepeatLatentBatch().run(lat(torch.zeros(1, 1, 1, 1), noise_mask=torch.ones(1, 1, 1, 1)), 2)
    assert "batch_index" not in plain and plain["noise_mask"].shape[0] == 1


def test_batches_concatenate_indices_and_resize():
    first = lat(torch.zeros(2, 1, 2, 2), noise_mask=torch.ones(1, 1, 2, 2))
    blocks = torch.tensor([[1.0, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]).reshape(1, 1, 4, 4)
    (pair,) = L.LatentBatch().run(first, lat(blocks, batch_index=[7]))
    assert pair["samples"].shape == (3, 1, 2, 2) and pair["batch_index"] == [0, 1, 7]
    assert torch.allclose(pair["samples"][2, 0], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))  # block centres
    assert "noise_mask" in pair
    (many,) = L.BatchLatentsNode().run(**{"latents.latent0": first, "latents.latent1": lat(torch.ones(1, 1, 2, 2)),
                                          "latents.latent2": None, "latents.latent11": lat(blocks, batch_index=[4])})
    assert many["batch_index"] == [0, 1, 0, 4] and many["samples"][2].eq(1).all()


GRID = [[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]]


@pytest.mark.parametrize("rotation,expected", [
    ("none", [[1, 2, 3], [4, 5, 6]]), ("90 degrees", [[4, 1], [5, 2], [6, 3]]),  # clockwise
    ("180 degrees", [[6, 5, 4], [3, 2, 1]]), ("270 degrees", [[3, 6], [2, 5], [1, 4]]),
])
def test_rotate(rotation, expected):
    assert L.LatentRotate().run(lat(GRID), rotation)[0]["samples"][0, 0].tolist() == expected


def test_flip_and_crop():
    assert L.LatentFlip().run(lat(GRID), "x-axis: vertically")[0]["samples"][0, 0].tolist() == [[4, 5, 6], [1, 2, 3]]
    assert L.LatentFlip().run(lat(GRID), "y-axis: horizontally")[0]["samples"][0, 0].tolist() == [[3, 2, 1], [6, 5, 4]]
    grid = torch.arange(120.0).reshape(1, 1, 10, 12)
    (cut,) = L.LatentCrop().run(lat(grid), 32, 16, 16, 8)  # 4 x 2 cells at cell (2, 1)
    assert torch.equal(cut["samples"], grid[..., 1:3, 2:6])
    (far,) = L.LatentCrop().run(lat(grid), 64, 64, 80, 0)  # corner kept 8 cells inside: x = 12 - 8
    assert torch.equal(far["samples"], grid[..., 0:8, 4:12])


def test_seed_behavior():
    (fixed,) = L.LatentBatchSeedBehavior().run(lat(torch.zeros(3, 1, 1, 1)), "fixed")
    assert fixed["batch_index"] == [0, 0, 0]
    (kept,) = L.LatentBatchSeedBehavior().run(lat(torch.zeros(3, 1, 1, 1), batch_index=[4, 5, 6]), "fixed")
    assert kept["batch_index"] == [4, 4, 4]
    (free,) = L.LatentBatchSeedBehavior().run(lat(torch.zeros(3, 1, 1, 1), batch_index=[4, 5, 6]), "random")
    assert "batch_index" not in free


def test_editor_workflow_of_latent_nodes(tmp_path):
    import genloom
    from genloom.engine.node import Float, Node, Out

    class ConstLatentForTest(Node):
        inputs = [Float("value", 1.0)]
        outputs = [Out("LATENT")]

        def run(self, value):
            return ({"samples": torch.full((1, 4, 2, 2), value)},)

    engine = genloom.Engine(output_dir=tmp_path / "out", temp_dir=tmp_path / "temp", device="cpu")
    capture = capture_node("CaptureLatents")
    engine.registry.register(capture)
    engine.registry.register(ConstLatentForTest)
    nodes = [
        ui_node(1, "EmptyLatentImage", outputs=[("LATENT", "LATENT", [1, 9, 11])], widgets=[32, 32, 1]),
        ui_node(2, "ConstLatentForTest", outputs=[("LATENT", "LATENT", [2, 12])], widgets=[2.0]),
        ui_node(3, "LatentComposite", [("samples_to", "LATENT", 1), ("samples_from", "LATENT", 2)],
                [("LATENT", "LATENT", [3])], widgets=[0, 8, 0]),
        ui_node(4, "LatentMultiply", [("samples", "LATENT", 3)], [("LATENT", "LATENT", [4])], widgets=[1.5]),
        ui_node(5, "LatentFlip", [("samples", "LATENT", 4)], [("LATENT", "LATENT", [5])],
                widgets=["y-axis: horizontally"]),
        ui_node(6, "RepeatLatentBatch", [("samples", "LATENT", 5)], [("LATENT", "LATENT", [6])], widgets=[2]),
        ui_node(7, "LatentBatchSeedBehavior", [("samples", "LATENT", 6)], [("LATENT", "LATENT", [7])],
                widgets=["fixed"]),
        ui_node(8, "BatchLatentsNode", [("latents.latent0", "LATENT", 7), ("latents.latent1", "LATENT", 9),
                                        ("latents.latent2", "LATENT", None)], [("LATENT", "LATENT", [8])]),
        ui_node(9, "LatentFromBatch", [("samples", "LATENT", 8)], [("LATENT", "LATENT", [10])], widgets=[1, 2]),
        ui_node(10, "CaptureLatents", [("value", "*", 10)]),
        ui_node(11, "SolidMask", outputs=[("MASK", "MASK", [13])], widgets=[0.5, 8, 8]),
        ui_node(12, "LatentCompositeMasked", [("destination", "LATENT", 11), ("source", "LATENT", 12),
                                              ("mask", "MASK", 13)], [("LATENT", "LATENT", [14])],
                widgets=[0, 0, True]),
        ui_node(13, "LatentRotate", [("samples", "LATENT", 14)], [("LATENT", "LATENT", [15])],
                widgets=["90 degrees"]),
        ui_node(14, "CaptureLatents", [("value", "*", 15)]),
    ]
    result = engine.run(ui_workflow(nodes))
    assert result.errors == [] and result.node_errors == {}
    picked, masked = sorted(capture.seen, key=lambda v: v["samples"].shape[0], reverse=True)
    # Zeros with a 2x2 block of 2 at cell (0, 1), times 1.5, mirrored left to right: columns 2..3.
    block = torch.zeros(4, 4)
    block[1:3, 2:4] = 3.0
    # [block, block] (fixed seeds: indices 0, 0) + the empty latent (index 0), entries 1..2 taken.
    assert picked["samples"].shape == (2, 4, 4, 4) and picked["batch_index"] == [0, 0]
    assert torch.equal(picked["samples"][0], block.expand(4, 4, 4))
    assert torch.equal(picked["samples"][1], torch.zeros(4, 4, 4))
    # The 2x2 source stretched over the 4x4 destination at half strength, then rotated: 1 everywhere.
    assert torch.equal(masked["samples"], torch.ones(1, 4, 4, 4))
