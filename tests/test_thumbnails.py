"""The template thumbnails (workflows/thumbnails/) are what the workflows give now: each example that
runs on the shipped models has one, and running it again gives the same picture within a tolerance,
so a changed model or workflow cannot leave a stale thumbnail behind (tools/make_thumbnails.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
THUMBNAILS = sorted((REPO / "workflows" / "thumbnails").glob("*.webp"))


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    import torch

    import make_thumbnails

    torch.set_num_threads(2)
    return make_thumbnails.make_engine(tmp_path_factory.mktemp("thumbs"))


def test_each_example_on_the_shipped_models_has_a_thumbnail(engine):
    import make_thumbnails

    runnable = {p.stem for p in make_thumbnails.runnable(engine)}
    assert {"txt2img", "img2img", "hires_fix", "upscale", "batch"} <= runnable
    assert "controlnet_canny" not in runnable, "its ControlNet is not shipped"
    assert {p.stem for p in THUMBNAILS} == runnable


@pytest.mark.parametrize("path", THUMBNAILS, ids=lambda p: p.stem)
def test_thumbnail_is_what_the_workflow_gives(engine, path):
    import numpy as np
    from PIL import Image

    import make_thumbnails

    stored = Image.open(path)
    assert stored.format == "WEBP" and path.stat().st_size < 64 * 1024
    shots = make_thumbnails.pictures(engine, REPO / "workflows" / f"{path.stem}.json")
    side = shots[0].width
    factor = stored.width // (side * min(4, len(shots)))
    assert factor >= 1 and stored.width <= make_thumbnails.SIDE
    # each picture against its cell of the stored sheet, shrunk back by the whole-pixel factor
    cells = np.asarray(stored.convert("RGB"))[::factor, ::factor].astype(np.int16)
    for i, shot in enumerate(shots):
        row, column = divmod(i, 4)
        cell = cells[row * side:(row + 1) * side, column * side:(column + 1) * side]
        diff = np.abs(cell - np.asarray(shot, dtype=np.int16)).mean()
        assert diff <= make_thumbnails.TOLERANCE, f"{path.name} is stale: rerun tools/make_thumbnails.py"
