"""ComfyUI's ColorTransfer (image_target, image_ref, method, source_stats, strength) against the
statistics it promises, checked with arithmetic in the test; genloom's own variant keeps its name."""

from __future__ import annotations

import torch

from genloom.diffusion.styling.color import srgb_to_lab
from genloom.diffusion.styling.color_match import mkl_matrix
from genloom.nodes.style_transfer import ColorTransfer


def smooth(seed: int, shape=(1, 8, 8, 3), centre=0.5, spread=0.1):
    """In-gamut pictures (no clamping), so the statistics are exact."""
    g = torch.Generator().manual_seed(seed)
    return (centre + spread * (torch.rand(shape, generator=g) - 0.5)).float()


def lab_stats(image):
    lab = srgb_to_lab(image.double()).reshape(-1, 3)
    return lab.mean(0), lab.std(0, unbiased=False), torch.cov(lab.T, correction=0)


def test_signature_matches_comfyui():
    info = ColorTransfer.schema().object_info()
    assert info["input_order"] == {"required": ["image_target", "method", "source_stats", "strength"],
                                   "optional": ["image_ref"]}
    assert info["input"]["required"]["method"][0] == ["reinhard_lab", "mkl_lab", "histogram"]
    # a DynamicCombo: target_frame brings target_index (INT 0, 0..10000)
    kind, stats = info["input"]["required"]["source_stats"]
    assert kind == "COMFY_DYNAMICCOMBO_V3"
    assert [(o["key"], list(o["inputs"]["required"])) for o in stats["options"]] == [
        ("per_frame", []), ("uniform", []), ("target_frame", ["target_index"])]
    index = stats["options"][2]["inputs"]["required"]["target_index"]
    assert index[0] == "INT" and (index[1]["default"], index[1]["min"], index[1]["max"]) == (0, 0, 10000)
    options = info["input"]["required"]["strength"][1]
    assert {k: options[k] for k in ("default", "min", "max", "step")} == {"default": 1.0, "min": 0.0, "max": 10.0,
                                                                          "step": 0.01}
    assert info["output"] == ["IMAGE"] and info["output_name"] == ["image"] and info["category"] == "image/postprocessing"


def test_reinhard_gives_the_reference_lab_mean_and_std():
    target, ref = smooth(1), smooth(2, centre=0.45, spread=0.2)
    (out,) = ColorTransfer().run(image_target=target, image_ref=ref, method="reinhard_lab",
                                 source_stats="per_frame", strength=1.0)
    got, want = lab_stats(out), lab_stats(ref)
    assert torch.allclose(got[0], want[0], atol=2e-3) and torch.allclose(got[1], want[1], atol=2e-3)


def test_mkl_gives_the_reference_covariance_with_a_symmetric_map():
    target, ref = smooth(3), smooth(4, centre=0.4, spread=0.25)
    (out,) = ColorTransfer().run(image_target=target, image_ref=ref, method="mkl_lab",
                                 source_stats="per_frame", strength=1.0)
    got, want = lab_stats(out), lab_stats(ref)
    assert torch.allclose(got[0], want[0], atol=3e-3)
    assert torch.allclose(got[2], want[2], atol=2e-2 * want[2].abs().max())
    cs = torch.tensor([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 2.0]], dtype=torch.float64)
    cr = torch.tensor([[2.0, -0.3, 0.1], [-0.3, 5.0, 0.0], [0.1, 0.0, 1.0]], dtype=torch.float64)
    t = mkl_matrix(cs, cr)
    assert torch.allclose(t, t.T, atol=1e-10) and torch.allclose(t @ cs @ t.T, cr, atol=1e-9)


def test_histogram_maps_bins_through_the_cumulative_histograms():
    target = torch.zeros(1, 2, 2, 3)
    target[0, 1] = 1.0  # half the pixels at 0, half at 1
    ref = torch.full((1, 2, 2, 3), 0.25)
    ref[0, 1] = 0.75  # half at bin 63, half at bin 191
    (out,) = ColorTransfer().run(image_target=target, image_ref=ref, method="histogram",
                                 source_stats="per_frame", strength=1.0)
    assert torch.allclose(out[0, 0], torch.full((2, 3), 63 / 255))
    assert torch.allclose(out[0, 1], torch.full((2, 3), 191 / 255))
    (half,) = ColorTransfer().run(image_target=target, image_ref=ref, method="histogram",
                                  source_stats="per_frame", strength=0.5)
    assert torch.allclose(half[0, 0], torch.full((2, 3), 0.5 * 63 / 255))


def test_uniform_stats_keep_the_differences_between_frames():
    base = smooth(5, shape=(1, 8, 8, 3))
    target = torch.cat([base, base * 0.8])  # the second frame darker
    ref = smooth(6, centre=0.5, spread=0.3)
    (out,) = ColorTransfer().run(image_target=target, image_ref=ref, method="reinhard_lab",
                                 source_stats="uniform", strength=1.0)
    src_l = srgb_to_lab(target.double())[..., 0]
    out_l = srgb_to_lab(out.double())[..., 0]
    ratio = (out_l[1] - out_l[0]) / (src_l[1] - src_l[0])
    assert torch.allclose(ratio, ratio.mean().expand_as(ratio), atol=1e-3)  # one scale for all pixels
    (per_frame,) = ColorTransfer().run(image_target=target, image_ref=ref, method="reinhard_lab",
                                       source_stats="per_frame", strength=1.0)
    assert torch.allclose(lab_stats(per_frame[1:])[0], lab_stats(ref)[0], atol=2e-3)  # each frame matched
    (chosen,) = ColorTransfer().run(image_target=target, image_ref=ref, method="reinhard_lab",
                                    source_stats="target_frame", strength=1.0,
                                    **{"source_stats.target_index": 1})
    assert torch.allclose(lab_stats(chosen[1:])[0], lab_stats(ref)[0], atol=2e-3)  # frame 1 is the baseline


def test_no_reference_or_zero_strength_leaves_the_image():
    target = smooth(7)
    for kwargs in ({"image_ref": None, "strength": 1.0}, {"image_ref": smooth(8), "strength": 0.0}):
        (out,) = ColorTransfer().run(image_target=target, method="mkl_lab", source_stats="per_frame", **kwargs)
        assert torch.equal(out, target)


def test_from_an_editor_workflow(tmp_path):
    from pathlib import Path

    import genloom
    from genloom.engine.node import Input, Node, NodeOutput

    seen = []

    class Keep(Node):
        """Hands the image to the test."""

        output_node = True
        inputs = [Input("images", "IMAGE")]
        outputs = []

        def run(self, images):
            seen.append(images)
            return NodeOutput(ui={})

    inputs = Path(__file__).resolve().parents[2] / "workflows" / "input"
    engine = genloom.Engine(input_dir=inputs, output_dir=tmp_path, device="cpu")
    engine.registry.register(Keep)

    def node(id_, type_, ins, outs, widgets):
        return {"id": id_, "type": type_, "mode": 0, "inputs": ins, "outputs": outs, "widgets_values": widgets}

    wf = {"version": 0.4, "links": [[1, 1, 0, 3, 0, "IMAGE"], [2, 2, 0, 3, 1, "IMAGE"], [3, 3, 0, 4, 0, "IMAGE"]],
          "nodes": [
              node(1, "LoadImage", [], [{"name": "IMAGE", "type": "IMAGE", "links": [1]}], ["example.png", "image"]),
              node(2, "LoadImage", [], [{"name": "IMAGE", "type": "IMAGE", "links": [2]}], ["style.png", "image"]),
              node(3, "ColorTransfer", [{"name": "image_target", "type": "IMAGE", "link": 1},
                                        {"name": "image_ref", "type": "IMAGE", "link": 2}],
                   [{"name": "image", "type": "IMAGE", "links": [3]}], ["reinhard_lab", "uniform", 1.0]),
              node(4, "Keep", [{"name": "images", "type": "IMAGE", "link": 3}], [], []),
          ]}
    engine.run(wf)
    from PIL import Image
    import numpy as np

    ref = torch.from_numpy(np.asarray(Image.open(inputs / "style.png").convert("RGB"), dtype=np.float32) / 255)
    def colour(image):  # mean Lab (L, a, b)
        return srgb_to_lab(image.double()).reshape(-1, 3).mean(0)

    before = torch.from_numpy(np.asarray(Image.open(inputs / "example.png").convert("RGB"), dtype=np.float32) / 255)
    got, want, was = colour(seen[0]), colour(ref), colour(before)
    # moved to the reference's colours (up to gamut clamping), from far away
    assert float((got - want).norm()) < 0.25 * float((was - want).norm())
