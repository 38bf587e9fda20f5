"""Single-picture image nodes on tiny tensors, checked by arithmetic, numpy or PIL written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from genloom.nodes.image_edit import (EmptyImage, GetImageSize, ImageAddNoise, ImageBlend, ImageBlur,
                                      ImageColorToMask, ImageCrop, ImageFlip, ImageInvert, ImageQuantize,
                                      ImageRotate, ImageSharpen)


def _ramp(b=1, h=4, w=5, c=3):
    return torch.arange(b * h * w * c, dtype=torch.float32).reshape(b, h, w, c) / (b * h * w * c)


def test_invert():
    image = _ramp()
    assert torch.equal(ImageInvert().run(image)[0], 1.0 - image)


def test_crop_clips_region_and_origin():
    image = _ramp(h=6, w=7)
    out, = ImageCrop().run(image, width=3, height=2, x=1, y=4)
    assert torch.equal(out, image[:, 4:6, 1:4])
    out, = ImageCrop().run(image, width=5, height=5, x=50, y=50)  # origin pulled to the last pixel
    assert torch.equal(out, image[:, 5:6, 6:7])


def test_flip_and_rotate_match_numpy():
    image = _ramp(h=2, w=3)
    a = image.numpy()
    assert np.array_equal(ImageFlip().run(image, "x-axis: vertically")[0].numpy(), a[:, ::-1])
    assert np.array_equal(ImageFlip().run(image, "y-axis: horizontally")[0].numpy(), a[:, :, ::-1])
    # clockwise: numpy's rot90 turns counter-clockwise, so k = -1 per quarter
    for k, name in enumerate(["none", "90 degrees", "180 degrees", "270 degrees"]):
        expected = np.rot90(a, k=-k, axes=(1, 2))
        assert np.array_equal(ImageRotate().run(image, name)[0].numpy(), expected)
    # 90 degrees clockwise: the top-left pixel goes to the top-right
    turned = ImageRotate().run(image, "90 degrees")[0]
    assert turned.shape == (1, 3, 2, 3) and torch.equal(turned[0, 0, 1], image[0, 0, 0])


@pytest.mark.parametrize("mode, formula", [
    ("normal", lambda a, b: b), ("multiply", lambda a, b: a * b), ("screen", lambda a, b: 1 - (1 - a) * (1 - b)),
    ("overlay", lambda a, b: np.where(a <= 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b))),
    ("soft_light", lambda a, b: np.where(
        b <= 0.5, a - (1 - 2 * b) * a * (1 - a),
        a + (2 * b - 1) * (np.where(a <= 0.25, ((16 * a - 12) * a + 4) * a, np.sqrt(a)) - a))),
    ("difference", lambda a, b: a - b)])
def test_blend_modes(mode, formula):
    a = np.array([[[[0.1, 0.2, 0.9]]]], np.float32)
    b = np.array([[[[0.6, 0.3, 0.4]]]], np.float32)
    out, = ImageBlend().run(torch.from_numpy(a), torch.from_numpy(b), 0.25, mode)
    expected = np.clip(a * 0.75 + formula(a, b) * 0.25, 0, 1)
    assert np.allclose(out.numpy(), expected, atol=1e-6)


def _kernel(size, sigma):
    """The Gaussian on a -1..1 grid, as ComfyUI samples it, written out in numpy."""
    axis = np.linspace(-1, 1, size)
    k = np.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * sigma ** 2))
    return k / k.sum()


def _convolve_reflect(channel, kernel):
    r = kernel.shape[0] // 2
    padded = np.pad(channel, r, mode="reflect")
    out = np.zeros_like(channel)
    for y in range(channel.shape[0]):
        for x in range(channel.shape[1]):
            out[y, x] = (padded[y:y + 2 * r + 1, x:x + 2 * r + 1] * kernel).sum()
    return out


def test_blur_is_reflect_padded_gaussian():
    rng = np.random.default_rng(1)
    a = rng.random((1, 5, 6, 3), dtype=np.float32)
    out, = ImageBlur().run(torch.from_numpy(a), blur_radius=2, sigma=0.7)
    k = _kernel(5, 0.7)
    expected = np.stack([_convolve_reflect(a[0, ..., c], k) for c in range(3)], -1)
    assert np.allclose(out[0].numpy(), expected, atol=1e-5)


def test_sharpen_kernel_sums_to_one_and_matches():
    rng = np.random.default_rng(2)
    a = rng.random((1, 5, 5, 3), dtype=np.float32)
    out, = ImageSharpen().run(torch.from_numpy(a), sharpen_radius=1, sigma=1.0, alpha=0.5)
    k = _kernel(3, 1.0) * -5.0
    k[1, 1] += 1.0 - k.sum()
    assert math.isclose(k.sum(), 1.0, abs_tol=1e-9)
    expected = np.clip(np.stack([_convolve_reflect(a[0, ..., c], k) for c in range(3)], -1), 0, 1)
    assert np.allclose(out[0].numpy(), expected, atol=1e-5)
    flat = torch.full((1, 4, 4, 3), 0.3)
    assert torch.allclose(ImageSharpen().run(flat, 1, 1.0, 2.0)[0], flat, atol=1e-6)  # flat stays flat


def test_quantize_against_pil():
    rng = np.random.default_rng(3)
    a = rng.random((1, 6, 6, 3), dtype=np.float32)
    out, = ImageQuantize().run(torch.from_numpy(a), colors=4, dither="none")
    picture = Image.fromarray((a[0] * 255).astype(np.uint8))  # truncation, as ComfyUI does
    expected = picture.quantize(palette=picture.quantize(colors=4), dither=Image.Dither.NONE).convert("RGB")
    assert np.array_equal((out[0].numpy() * 255).round().astype(np.uint8), np.asarray(expected))
    assert len({tuple(p) for p in out[0].reshape(-1, 3).tolist()}) <= 4
    for dither in ("floyd-steinberg", "bayer-2", "bayer-4"):
        dithered, = ImageQuantize().run(torch.from_numpy(a), 2, dither)
        assert len({tuple(p) for p in dithered[0].reshape(-1, 3).tolist()}) <= 2


def test_bayer_matrix_is_the_ordered_dither_matrix():
    from genloom.diffusion.image_ops import bayer_matrix

    # the classic 2x2 Bayer matrix [[0, 2], [3, 1]] / 4, centred: (m + 0.5) / 4 - 0.5
    expected = (np.array([[0, 2], [3, 1]]) + 0.5) / 4 - 0.5
    assert np.allclose(bayer_matrix(2), expected)
    assert sorted(((bayer_matrix(4) + 0.5) * 16 - 0.5).round().astype(int).ravel()) == list(range(16))


def test_add_noise_is_torch_randn_from_the_seed():
    image = torch.full((1, 3, 3, 3), 0.5)
    out, = ImageAddNoise().run(image, seed=42, strength=0.1)
    torch.manual_seed(42)
    expected = torch.clip(image + 0.1 * torch.randn(image.size()), 0, 1)
    assert torch.equal(out, expected)
    assert not torch.equal(out, ImageAddNoise().run(image, 43, 0.1)[0])


def test_empty_image_and_color_to_mask():
    image, = EmptyImage().run(3, 2, 2, 0xFF8000)
    assert image.shape == (2, 2, 3, 3)
    assert torch.allclose(image[1, 1, 2], torch.tensor([1.0, 128 / 255, 0.0]))
    image[0, 0, 0] = torch.tensor([0.0, 0.0, 1.0])
    mask, = ImageColorToMask().run(image, 0xFF8000)
    assert mask.shape == (2, 2, 3) and mask.sum() == 11 and mask[0, 0, 0] == 0
    assert ImageColorToMask().run(image, 0x0000FF)[0].sum() == 1


def test_get_image_size():
    assert GetImageSize().run(torch.zeros(3, 5, 7, 3)) == (7, 5, 3)
