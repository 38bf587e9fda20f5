"""The shapes dataset is the ground truth for training and for judging: it must repeat and its judges must be right."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import shapes  # noqa: E402


def test_same_seed_same_pictures_and_captions():
    a, sa = shapes.dataset(40, seed=7)
    b, sb = shapes.dataset(40, seed=7)
    c, _ = shapes.dataset(40, seed=8)
    assert a.shape == (40, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and [s.caption for s in sa] == [s.caption for s in sb]
    assert not np.array_equal(a, c)


def test_captions_cover_the_grammar_and_never_repeat_a_colour():
    _, samples = shapes.dataset(400, seed=1)
    assert {s.shape for s in samples} == set(shapes.SHAPES)
    assert {s.colour for s in samples} == set(shapes.COLOUR_NAMES)
    assert all(s.colour != s.background for s in samples)
    assert samples[0].caption == f"{'an' if samples[0].colour == 'orange' else 'a'} {samples[0].colour} " \
                                 f"{samples[0].shape} on a {samples[0].background} background"


def test_pixels_show_the_caption():
    images, samples = shapes.dataset(30, seed=3)
    for img, s in zip(images, samples):
        corner = img[0, 0].astype(int)
        assert np.abs(corner - shapes.COLOURS[s.background]).max() <= 1
        centre_box = img[int(s.cy * 64) - 1:int(s.cy * 64) + 2, int(s.cx * 64) - 1:int(s.cx * 64) + 2]
        assert (np.abs(centre_box.astype(int) - shapes.COLOURS[s.colour]).max(-1) <= 1).any()


def test_judges_read_the_ground_truth():
    images, samples = shapes.dataset(300, seed=11)
    acc = shapes.score(images, samples)
    assert acc["colour"] == 1.0 and acc["background"] == 1.0
    assert acc["shape"] >= 0.99


def test_judges_survive_blur_and_noise():
    """Generated pictures are softer than the drawn ones; the judge must not depend on crisp edges."""
    from PIL import Image, ImageFilter

    images, samples = shapes.dataset(120, seed=5)
    rng = np.random.default_rng(0)
    soft = []
    for img in images:
        blurred = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(1.0))).astype(np.float32)
        soft.append(np.clip(blurred + rng.normal(0, 12, blurred.shape), 0, 255).astype(np.uint8))
    acc = shapes.score(soft, samples)
    assert acc["colour"] >= 0.98 and acc["background"] >= 0.98 and acc["shape"] >= 0.95


@pytest.mark.parametrize("wrong", ["colour", "background", "shape"])
def test_judges_notice_a_wrong_picture(wrong):
    images, samples = shapes.dataset(60, seed=9)
    changed = []
    for s in samples:
        if wrong == "shape":
            other = shapes.SHAPES[(shapes.SHAPES.index(s.shape) + 1) % len(shapes.SHAPES)]
            changed.append(shapes.Sample(other, s.colour, s.background, s.cx, s.cy, s.size))
        else:
            taken = {s.colour, s.background}
            other = next(c for c in shapes.COLOUR_NAMES if c not in taken)
            changed.append(shapes.Sample(s.shape, other if wrong == "colour" else s.colour,
                                         other if wrong == "background" else s.background, s.cx, s.cy, s.size))
    assert shapes.score(images, changed)[wrong] <= 0.05


def test_a_blank_picture_has_no_shape():
    verdict = shapes.judge(np.full((64, 64, 3), shapes.COLOURS["blue"], np.uint8))
    assert verdict.background == "blue" and verdict.colour is None and verdict.shape is None
