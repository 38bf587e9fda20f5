"""Image nodes that combine pictures, on tiny tensors, checked by arithmetic written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genloom.nodes.image_compose import (BatchImagesNode, ImageBatch, ImageCompositeMasked, ImageFromBatch,
                                         ImageStitch, JoinImageWithAlpha, PorterDuffImageComposite,
                                         RepeatImageBatch, SplitImageWithAlpha)


def _solid(value, b=1, h=2, w=2, c=3):
    return torch.full((b, h, w, c), float(value))


def test_image_batch_resizes_the_second_to_the_first():
    a, b = _solid(0.2, h=4, w=4), _solid(0.7, b=2, h=8, w=6)
    out, = ImageBatch().run(a, b)
    assert out.shape == (3, 4, 4, 3)
    assert torch.equal(out[0], a[0]) and torch.allclose(out[1:], torch.full((2, 4, 4, 3), 0.7))
    # centre crop: a left/right gradient 8 wide cropped to its middle 6 columns, then bilinear to 4
    grad = torch.arange(8, dtype=torch.float32).reshape(1, 1, 8, 1).expand(1, 8, 8, 3)
    out, = ImageBatch().run(_solid(0, h=4, w=3), grad)
    expected = F.interpolate(grad[:, :, 1:7].movedim(-1, 1), size=(4, 3), mode="bilinear").movedim(1, -1)
    assert torch.allclose(out[1:], expected.clamp(0, 1))


def test_batch_images_node_takes_any_number_and_adds_alpha():
    images = {f"images.image{i}": _solid(i / 10) for i in range(3)}
    images["images.image3"] = None
    images["images.image4"] = torch.cat([_solid(0.9), _solid(0.5, c=1)], dim=-1)
    out, = BatchImagesNode().run(**images)
    assert out.shape == (4, 2, 2, 4)
    assert torch.allclose(out[:3, ..., 3], torch.ones(3, 2, 2))  # opaque alpha added to RGB pictures
    assert torch.allclose(out[3, ..., 3], torch.full((2, 2), 0.5))
    assert [round(float(v), 4) for v in out[:, 0, 0, 0]] == [0.0, 0.1, 0.2, 0.9]


def test_from_batch_and_repeat():
    batch = torch.arange(5, dtype=torch.float32).reshape(5, 1, 1, 1).expand(5, 2, 2, 3)
    assert ImageFromBatch().run(batch, 3, 4)[0][:, 0, 0, 0].tolist() == [3.0, 4.0]
    assert ImageFromBatch().run(batch, 99, 1)[0][:, 0, 0, 0].tolist() == [4.0]
    assert RepeatImageBatch().run(batch[:2], 3)[0][:, 0, 0, 0].tolist() == [0, 1, 0, 1, 0, 1]


def test_composite_masked_offset_mask_and_clipping():
    dst = _solid(0.0, h=4, w=5)
    src = _solid(1.0, h=2, w=3)
    out, = ImageCompositeMasked().run(dst, src, x=3, y=1, resize_source=False)
    expected = np.zeros((4, 5))
    expected[1:3, 3:5] = 1.0  # the source's third column falls outside and is dropped
    assert np.array_equal(out[0, ..., 0].numpy(), expected)
    mask = torch.tensor([[0.25, 0.5, 1.0], [0.0, 1.0, 0.75]])
    out, = ImageCompositeMasked().run(dst, src, 0, 0, False, mask)
    expected = np.zeros((4, 5))
    expected[:2, :3] = mask.numpy()  # weight * 1 + (1 - weight) * 0
    assert np.allclose(out[0, ..., 1].numpy(), expected)
    out, = ImageCompositeMasked().run(dst, src, 0, 0, True)
    assert torch.equal(out, torch.ones_like(dst))  # resized to cover the destination


@pytest.mark.parametrize("mode", ["SRC_OVER", "DST_OVER", "MULTIPLY", "SCREEN", "XOR", "CLEAR", "ADD"])
def test_porter_duff_against_the_textbook_formulas(mode):
    s, d = np.float32(0.8), np.float32(0.3)
    sa, da = np.float32(0.6), np.float32(0.5)  # alphas; the node takes masks (1 - alpha)
    ps, pd = s * sa, d * da
    alpha, colour = {
        "SRC_OVER": (sa + (1 - sa) * da, ps + (1 - sa) * pd),
        "DST_OVER": (da + (1 - da) * sa, pd + (1 - da) * ps),
        "MULTIPLY": (sa * da, ps * pd),
        "SCREEN": (sa + da - sa * da, ps + pd - ps * pd),
        "XOR": ((1 - da) * sa + (1 - sa) * da, (1 - da) * ps + (1 - sa) * pd),
        "CLEAR": (0.0, 0.0),
        "ADD": (min(sa + da, 1), min(ps + pd, 1)),
    }[mode]
    image, mask = PorterDuffImageComposite().run(_solid(s), _solid(1 - sa)[..., 0], _solid(d),
                                                 _solid(1 - da)[..., 0], mode)
    expected = np.clip(colour / alpha, 0, 1) if alpha > 1e-5 else 0.0
    assert np.allclose(image.numpy(), expected, atol=1e-6)
    assert np.allclose(mask.numpy(), 1 - alpha, atol=1e-6)


def test_split_and_join_alpha_round_trip():
    rgba = torch.rand(2, 3, 4, 4)
    rgb, mask = SplitImageWithAlpha().run(rgba)
    assert torch.equal(rgb, rgba[..., :3]) and torch.allclose(mask, 1 - rgba[..., 3])
    joined, = JoinImageWithAlpha().run(rgb, mask)
    assert torch.allclose(joined, rgba, atol=1e-6)
    _, opaque = SplitImageWithAlpha().run(rgb)
    assert torch.equal(opaque, torch.zeros(2, 3, 4))
    # one mask for a batch of two, at another size: resized bilinearly, repeated
    small = torch.tensor([[[0.0, 1.0]]])
    joined, = JoinImageWithAlpha().run(rgb, small)
    expected = 1 - F.interpolate(small[:, None], size=(3, 4), mode="bilinear")[:, 0]
    assert torch.allclose(joined[..., 3], expected.expand(2, 3, 4))


def test_stitch_directions_spacing_and_padding():
    a, b = _solid(0.1, h=2, w=3), _solid(0.9, h=2, w=1)
    out, = ImageStitch().run(a, "right", False, 0, "white", b)
    assert out.shape == (1, 2, 4, 3) and torch.equal(out[:, :, 3], b[:, :, 0])
    out, = ImageStitch().run(a, "left", False, 3, "red", b)  # spacing rounded up to 4
    assert out.shape == (1, 2, 1 + 4 + 3, 3)
    assert torch.equal(out[0, 0, 2], torch.tensor([1.0, 0.0, 0.0]))
    tall = _solid(0.9, h=5, w=1)
    out, = ImageStitch().run(a, "right", False, 0, "black", tall)  # a padded 1 above, 2 below with black
    assert out.shape == (1, 5, 4, 3)
    assert out[0, :, 0, 0].tolist() == pytest.approx([0.0, 0.1, 0.1, 0.0, 0.0])
    out, = ImageStitch().run(a, "down", True, 0, "white", _solid(0.5, h=4, w=6))
    assert out.shape == (1, 2 + 2, 3, 3)  # image2 scaled to image1's width, aspect kept
    assert torch.equal(ImageStitch().run(a, "up", True, 0, "white")[0], a)
