"""Procedural captioned shapes: the training data of the shipped tiny model and the judge of its pictures.

One coloured shape on a flat background of another colour, drawn supersampled so edges look like a
real (anti-aliased) picture. Everything follows from a seed, so training runs and tests repeat exactly.
The judges read shape colour, background colour and shape class back from pixels alone; they are
validated on the drawn ground truth and then used to score what the model generates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star")

# Far apart in RGB so a blurry or slightly off generated colour still has one clear nearest name.
COLOURS = {
    "red": (220, 30, 35),
    "orange": (245, 135, 20),
    "yellow": (245, 225, 40),
    "green": (35, 165, 55),
    "blue": (35, 70, 225),
    "purple": (135, 45, 175),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOUR_NAMES = tuple(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in COLOUR_NAMES], dtype=np.float32)

SUPERSAMPLE = 4


@dataclass(frozen=True)
class Sample:
    """What a picture shows; its caption and its pixels both derive from it."""

    shape: str
    colour: str
    background: str
    cx: float  # centre and size as fractions of the image side
    cy: float
    size: float

    @property
    def caption(self) -> str:
        return caption(self.shape, self.colour, self.background)


def caption(shape: str, colour: str, background: str) -> str:
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {shape} on a {background} background"


def random_sample(rng: np.random.Generator) -> Sample:
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
    others = [c for c in COLOUR_NAMES if c != colour]
    background = others[rng.integers(len(others))]
    size = float(rng.uniform(0.45, 0.8))
    margin = size / 2 + 0.04
    cx, cy = (float(v) for v in rng.uniform(margin, 1 - margin, size=2))
    return Sample(shape, colour, background, cx, cy, size)


def shape_polygon(shape: str, cx: float, cy: float, size: float) -> list[tuple[float, float]] | None:
    """Outline in the same units as the centre; None for the circle, which is drawn as an ellipse."""
    r = size / 2
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "star":
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * 0.45
            ang = -math.pi / 2 + i * math.pi / 5
            pts.append((cx + rad * math.cos(ang), cy + r * 0.1 + rad * math.sin(ang)))
        return pts
    if shape == "circle":
        return None
    raise ValueError(f"unknown shape {shape!r}")


def draw_mask(shape: str, box: tuple[float, float, float, float], width: int, height: int) -> np.ndarray:
    """A bool mask of `shape` filling `box` (x0, y0, x1, y1 in pixels); the judge's templates."""
    w, h = width * SUPERSAMPLE, height * SUPERSAMPLE
    img = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = (v * SUPERSAMPLE for v in box)
    if shape == "circle":
        d.ellipse([x0, y0, x1, y1], fill=255)
    else:
        pts = shape_polygon(shape, 0.5, 0.5, 1.0)
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        mx0, my0, mx1, my1 = min(xs), min(ys), max(xs), max(ys)
        d.polygon([(x0 + (px - mx0) / (mx1 - mx0) * (x1 - x0), y0 + (py - my0) / (my1 - my0) * (y1 - y0))
                   for px, py in pts], fill=255)
    img = img.resize((width, height), Image.BOX)
    return np.asarray(img) >= 128


def render_shapes(background: str, things, size: int = 64) -> np.ndarray:
    """uint8 [size, size, 3] picture of (shape, colour, cx, cy, size) things, in order, on a flat
    background (centres and sizes as fractions of the side; tools/scenes.py draws with it too)."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), COLOURS[background])
    d = ImageDraw.Draw(img)
    for shape, colour, cx, cy, s in things:
        cx, cy, s = cx * big, cy * big, s * big
        if shape == "circle":
            d.ellipse([cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2], fill=COLOURS[colour])
        else:
            d.polygon(shape_polygon(shape, cx, cy, s), fill=COLOURS[colour])
    return np.asarray(img.resize((size, size), Image.BOX))


def render(sample: Sample, size: int = 64) -> np.ndarray:
    """uint8 [size, size, 3] picture of the sample."""
    return render_shapes(sample.background, [(sample.shape, sample.colour, sample.cx, sample.cy, sample.size)], size)


def dataset(n: int, seed: int, size: int = 64) -> tuple[np.ndarray, list[Sample]]:
    """n pictures (uint8 [n, size, size, 3]) and what each shows; the same for the same seed."""
    rng = np.random.default_rng(seed)
    samples = [random_sample(rng) for _ in range(n)]
    images = np.stack([render(s, size) for s in samples]) if n else np.zeros((0, size, size, 3), np.uint8)
    return images, samples


def prompts(n: int, seed: int) -> list[Sample]:
    """Prompts for adherence checks: a fixed, seeded draw of (shape, colour, background)."""
    rng = np.random.default_rng(seed)
    return [random_sample(rng) for _ in range(n)]


# ---- judges -------------------------------------------------------------------------------------

def _nearest(rgb: np.ndarray, exclude: int | None = None) -> np.ndarray:
    d = ((rgb[..., None, :].astype(np.float32) - _PALETTE) ** 2).sum(-1)
    if exclude is not None:
        d[..., exclude] = np.inf
    return d.argmin(-1)


@dataclass(frozen=True)
class Verdict:
    colour: str | None
    background: str
    shape: str | None


def judge(image: np.ndarray) -> Verdict:
    """Read (shape colour, background colour, shape class) from a uint8 [H, W, 3] picture."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    h, w = img.shape[:2]
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]).astype(np.float32)
    bg = int(_nearest(np.median(border, axis=0)))
    labels = _nearest(img)
    mask = labels != bg
    if mask.sum() < 0.02 * h * w:
        return Verdict(None, COLOUR_NAMES[bg], None)
    colour = int(_nearest(np.median(img[mask].astype(np.float32), axis=0), exclude=bg))
    # Two-way split for the outline: a soft edge between, say, red and yellow passes through orange,
    # and an eight-way nearest colour would cut those pixels out of the shape.
    px = img.astype(np.float32)
    nearer_shape = ((px - _PALETTE[colour]) ** 2).sum(-1) < ((px - _PALETTE[bg]) ** 2).sum(-1)
    return Verdict(COLOUR_NAMES[colour], COLOUR_NAMES[bg], classify(nearer_shape))


def classify(mask: np.ndarray) -> str | None:
    """Shape class of a bool mask: the template, fitted to the mask's extent, that overlaps it best."""
    ys, xs = np.nonzero(mask)
    if len(xs) < 4:
        return None
    # Robust extent: ignore a few stray pixels far from the body of the shape.
    x0, x1 = np.percentile(xs, [0.5, 99.5])
    y0, y1 = np.percentile(ys, [0.5, 99.5])
    box = (float(x0), float(y0), float(x1) + 1, float(y1) + 1)
    h, w = mask.shape
    best, best_iou = None, -1.0
    for shape in SHAPES:
        tpl = draw_mask(shape, box, w, h)
        inter = np.logical_and(tpl, mask).sum()
        union = np.logical_or(tpl, mask).sum()
        iou = inter / max(union, 1)
        if iou > best_iou:
            best, best_iou = shape, iou
    return best


def score(images: list[np.ndarray] | np.ndarray, samples: list[Sample]) -> dict[str, float]:
    """Fractions right for shape colour, background colour and shape class."""
    right = {"colour": 0, "background": 0, "shape": 0}
    for img, s in zip(images, samples):
        v = judge(img)
        right["colour"] += v.colour == s.colour
        right["background"] += v.background == s.background
        right["shape"] += v.shape == s.shape
    n = max(len(samples), 1)
    return {k: v / n for k, v in right.items()}
