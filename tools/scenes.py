"""Procedural captioned scenes that need a prompt understood compositionally, and a pixel judge.

The training data and the checker of genloom-flow (tools/train_flow_model.py,
tools/check_flow_adherence.py). A scene is a flat background with one object ("a small green
triangle on a white background"), several of one kind ("three yellow stars on a black background") or
two related ones ("a red circle left of a blue square on a white background"). Shapes and colours are
those of tools/shapes.py, drawn supersampled as it draws them. Everything follows from a seed.

Held-out prompts: a caption whose CRC-32 is divisible by HOLD_OUT is never drawn for training
(`training_scene` rejects it) and only such captions are drawn for checking (`held_out_prompts`), so
every checked prompt is one the model never saw, as a whole sentence.

The judge reads the background (border median), the objects (connected regions of one palette colour,
thin anti-aliased seams removed), their class (shapes.classify), centre and extent from pixels alone;
on rendered ground truth it is right every time (tests/test_flow_model.py).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import shapes

KINDS = ("single", "count", "pair")
NUMBERS = {2: "two", 3: "three", 4: "four"}
RELATIONS = ("left of", "right of", "above", "below")
SIZE_RANGES = {"small": (0.2, 0.27), "": (0.3, 0.38), "big": (0.46, 0.58)}  # fraction of the picture side
COUNT_SIZE, PAIR_SIZE = (0.2, 0.26), (0.26, 0.34)
HOLD_OUT = 8
SMALL_BELOW, BIG_ABOVE = 0.29, 0.4  # judged extent (fraction of the side) that reads as small / big


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    cx: float  # centre and size as fractions of the picture side
    cy: float
    size: float


@dataclass(frozen=True)
class Scene:
    """What a picture shows and how its caption says it; pixels and caption both derive from it."""

    kind: str  # single | count | pair
    background: str
    things: tuple[Thing, ...]
    size_word: str = ""  # single: "", "small" or "big"
    relation: str = ""  # pair: one of RELATIONS, things[0] relation things[1]

    @property
    def caption(self) -> str:
        first = self.things[0]
        tail = f" on a {self.background} background"
        if self.kind == "count":
            return f"{NUMBERS[len(self.things)]} {first.colour} {first.shape}s{tail}"
        if self.kind == "pair":
            second = self.things[1]
            return f"{_article(first.colour)} {first.colour} {first.shape} {self.relation} " \
                   f"{_article(second.colour)} {second.colour} {second.shape}{tail}"
        words = " ".join(w for w in (self.size_word, first.colour, first.shape) if w)
        return f"{_article(words)} {words}{tail}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def is_held_out(caption: str) -> bool:
    return zlib.crc32(caption.encode()) % HOLD_OUT == 0


# ---- drawing scenes -----------------------------------------------------------------------------

def _place(rng: np.random.Generator, sizes: list[float], placed: list[Thing] | None = None,
           tries: int = 200) -> list[tuple[float, float]] | None:
    """Centres for objects of these sizes, inside the picture and apart (gap >= 0.06 of the side)."""
    centres: list[tuple[float, float, float]] = [(t.cx, t.cy, t.size) for t in placed or []]
    out = []
    for size in sizes:
        margin = size / 2 + 0.04
        for _ in range(tries):
            cx, cy = (float(v) for v in rng.uniform(margin, 1 - margin, size=2))
            if all(max(abs(cx - x), abs(cy - y)) > (size + s) / 2 + 0.06 for x, y, s in centres):
                break
        else:
            return None
        centres.append((cx, cy, size))
        out.append((cx, cy))
    return out


def _colours(rng: np.random.Generator, n: int) -> list[str]:
    return [shapes.COLOUR_NAMES[i] for i in rng.permutation(len(shapes.COLOUR_NAMES))[:n]]


def random_scene(rng: np.random.Generator, kind: str | None = None) -> Scene:
    kind = kind or KINDS[rng.choice(len(KINDS), p=(0.4, 0.25, 0.35))]
    pick = lambda: shapes.SHAPES[rng.integers(len(shapes.SHAPES))]  # noqa: E731
    if kind == "single":
        colour, background = _colours(rng, 2)
        size_word = ("", "small", "big")[rng.integers(3)]
        size = float(rng.uniform(*SIZE_RANGES[size_word]))
        (cx, cy), = _place(rng, [size])
        return Scene(kind, background, (Thing(pick(), colour, cx, cy, size),), size_word=size_word)
    if kind == "count":
        colour, background = _colours(rng, 2)
        shape, n = pick(), int(rng.integers(2, 5))
        while True:
            sizes = [float(rng.uniform(*COUNT_SIZE)) for _ in range(n)]
            centres = _place(rng, sizes)
            if centres:
                break
        return Scene(kind, background, tuple(Thing(shape, colour, x, y, s) for (x, y), s in zip(centres, sizes)))
    c1, c2, background = _colours(rng, 3)
    relation = RELATIONS[rng.integers(len(RELATIONS))]
    s1, s2 = (float(v) for v in rng.uniform(*PAIR_SIZE, size=2))
    while True:  # the first object clearly on the named side of the second (>= 0.3 of the side apart)
        a, b = (float(v) for v in rng.uniform(0.04 + max(s1, s2) / 2, 0.96 - max(s1, s2) / 2, size=2))
        lo, hi = sorted((a, b))
        if hi - lo >= 0.3:
            break
    first, second = (lo, hi) if relation in ("left of", "above") else (hi, lo)
    o1, o2 = (float(v) for v in rng.uniform(0.04 + max(s1, s2) / 2, 0.96 - max(s1, s2) / 2, size=2))
    if relation in ("left of", "right of"):
        t1, t2 = Thing(pick(), c1, first, o1, s1), Thing(pick(), c2, second, o2, s2)
    else:
        t1, t2 = Thing(pick(), c1, o1, first, s1), Thing(pick(), c2, o2, second, s2)
    return Scene(kind, background, (t1, t2), relation=relation)


def training_scene(rng: np.random.Generator) -> Scene:
    """A random scene whose caption is not held out."""
    while True:
        scene = random_scene(rng)
        if not is_held_out(scene.caption):
            return scene


def held_out_prompts(n_per_kind: int, seed: int) -> list[Scene]:
    """n_per_kind held-out scenes of each kind, distinct captions, in a fixed seeded order."""
    rng = np.random.default_rng(seed)
    out = []
    for kind in KINDS:
        seen: set[str] = set()
        while len(seen) < n_per_kind:
            scene = random_scene(rng, kind)
            if is_held_out(scene.caption) and scene.caption not in seen:
                seen.add(scene.caption)
                out.append(scene)
    return out


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """uint8 [size, size, 3] picture of the scene."""
    return shapes.render_shapes(scene.background, [(t.shape, t.colour, t.cx, t.cy, t.size) for t in scene.things], size)


def dataset(n: int, seed: int, size: int = 64) -> tuple[np.ndarray, list[Scene]]:
    """n training pictures (uint8 [n, size, size, 3]) and their scenes; the same for the same seed."""
    rng = np.random.default_rng(seed)
    scenes = [training_scene(rng) for _ in range(n)]
    images = np.stack([render(s, size) for s in scenes]) if n else np.zeros((0, size, size, 3), np.uint8)
    return images, scenes


# ---- the judge ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Blob:
    colour: str
    shape: str | None
    cx: float  # centroid and extent (largest side of the bounding box) as fractions of the side
    cy: float
    extent: float


def detect(image: np.ndarray) -> tuple[str, list[Blob]]:
    """(background colour, objects) read from a uint8 [H, W, 3] picture."""
    from scipy import ndimage

    img = np.asarray(image)
    h, w = img.shape[:2]
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]).astype(np.float32)
    bg = int(shapes._nearest(np.median(border, axis=0)))
    labels = shapes._nearest(img)
    px = img.astype(np.float32)
    blobs = []
    min_area = 0.008 * h * w
    for c in range(len(shapes.COLOUR_NAMES)):
        if c == bg:
            continue
        # Opening drops the one-pixel seams an anti-aliased edge paints in an in-between colour.
        mask = ndimage.binary_opening(labels == c, structure=np.ones((2, 2), bool))
        regions, count = ndimage.label(mask)
        nearer = ((px - shapes._PALETTE[c]) ** 2).sum(-1) < ((px - shapes._PALETTE[bg]) ** 2).sum(-1)
        for r in range(1, count + 1):
            region = regions == r
            if region.sum() < min_area:
                continue
            # The shape's own outline: its region grown by 2 pixels, split two-way against the background.
            grown = ndimage.binary_dilation(region, iterations=2) & nearer
            ys, xs = np.nonzero(grown)
            extent = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) / w
            blobs.append(Blob(shapes.COLOUR_NAMES[c], shapes.classify(grown), float(xs.mean() / w),
                              float(ys.mean() / h), float(extent)))
    return shapes.COLOUR_NAMES[bg], blobs


def _related(a: Blob, b: Blob, relation: str) -> bool:
    return {"left of": a.cx < b.cx, "right of": a.cx > b.cx, "above": a.cy < b.cy, "below": a.cy > b.cy}[relation]


def judge(image: np.ndarray, scene: Scene) -> dict[str, bool]:
    """Which of the scene's categories the picture gets right (GenEval-style, one verdict each).

    single: one object of the asked class (and its colour: `colours`, its size word: `size`);
    count: exactly n objects of the asked colour (`counting`); pair: both objects, each of its colour
    and class (`two_objects`), and the first on the asked side of the second (`position`);
    every scene: `background`.
    """
    background, blobs = detect(image)
    out = {"background": background == scene.background}
    if scene.kind == "single":
        t = scene.things[0]
        same = [b for b in blobs if b.shape == t.shape]
        out["single_object"] = len(blobs) == 1 and len(same) == 1
        out["colours"] = len(blobs) == 1 and blobs[0].colour == t.colour
        if scene.size_word:
            e = blobs[0].extent if len(blobs) == 1 else None
            out["size"] = e is not None and (e < SMALL_BELOW if scene.size_word == "small" else e > BIG_ABOVE)
    elif scene.kind == "count":
        t = scene.things[0]
        out["counting"] = sum(b.colour == t.colour for b in blobs) == len(scene.things)
    else:
        t1, t2 = scene.things
        b1 = [b for b in blobs if b.colour == t1.colour]
        b2 = [b for b in blobs if b.colour == t2.colour]
        found = len(b1) == 1 and len(b2) == 1
        out["two_objects"] = found and b1[0].shape == t1.shape and b2[0].shape == t2.shape
        out["position"] = found and _related(b1[0], b2[0], scene.relation)
    return out


CATEGORIES = ("single_object", "colours", "background", "size", "two_objects", "counting", "position")


def score(images, scenes: list[Scene]) -> dict[str, float]:
    """Fraction right per category (only over the scenes the category applies to)."""
    right: dict[str, list[bool]] = {c: [] for c in CATEGORIES}
    for img, scene in zip(images, scenes):
        for cat, ok in judge(img, scene).items():
            right[cat].append(bool(ok))
    return {c: float(np.mean(v)) for c, v in right.items() if v}
