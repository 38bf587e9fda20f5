"""Writes the template thumbnails: workflows/thumbnails/{name}.webp for each example workflow that runs on
the shipped models (its model files are in models/, its pictures in workflows/input/).

    python tools/make_thumbnails.py [--check]

A thumbnail is the workflow's picture (a batch: its pictures in rows of four), enlarged by whole
pixels (nearest neighbour) to about 256 px, as lossless WEBP (a few KB). The server lists exactly these workflows as the editor's
templates; tests/test_thumbnails.py runs each again and compares it with its thumbnail. `--check`
compares instead of writing and exits 1 when one is stale.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / "workflows"
THUMBNAILS = WORKFLOWS / "thumbnails"
SIDE = 256
TOLERANCE = 3.0  # mean absolute difference (0-255) a rerun may show: other CPUs round differently


def make_engine(output_dir: Path):
    import genloom

    return genloom.Engine(input_dir=WORKFLOWS / "input", output_dir=output_dir, temp_dir=output_dir / "temp",
                          device="cpu", cache="lru:64")


def runnable(engine) -> list[Path]:
    """The example workflows that validate against the shipped models and example pictures."""
    found = []
    for path in sorted(WORKFLOWS.glob("*.json")):
        result = engine.validate(path)
        if result.error is None and not result.node_errors:
            found.append(path)
    return found


def pictures(engine, path: Path) -> list:
    """The pictures the workflow saves, in output order, as PIL images."""
    from PIL import Image

    result = engine.run(path)
    found = [Image.open(Path(engine.folders.output_dir) / entry["subfolder"] / entry["filename"]).convert("RGB")
             for ui in result.outputs.values() for entry in ui.get("images", [])]
    if not found:
        raise RuntimeError(f"{path.name} saved no picture")
    return found


def thumbnail(shots: list):
    """The pictures side by side in rows of four (a batch), or the first when their sizes differ,
    enlarged by a whole factor to at most SIDE px."""
    from PIL import Image

    if any(p.size != shots[0].size for p in shots):
        shots = shots[:1]
    width, height = shots[0].size
    columns = min(4, len(shots))
    rows = -(-len(shots) // columns)
    sheet = Image.new("RGB", (width * columns, height * rows))
    for i, shot in enumerate(shots):
        sheet.paste(shot, ((i % columns) * width, (i // columns) * height))
    factor = max(1, SIDE // max(sheet.size))
    return sheet.resize((sheet.width * factor, sheet.height * factor), Image.NEAREST)


def difference(a, b) -> float:
    """Mean absolute difference of two pictures of one size, in 0-255 units (inf when sizes differ)."""
    import numpy as np

    if a.size != b.size:
        return float("inf")
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b.convert("RGB"), dtype=np.int16)).mean())


def main(argv=None) -> int:
    import torch
    from PIL import Image

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed thumbnails")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    stale = 0
    with tempfile.TemporaryDirectory() as out:
        engine = make_engine(Path(out))
        paths = runnable(engine)
        THUMBNAILS.mkdir(exist_ok=True)
        for path in paths:
            picture = thumbnail(pictures(engine, path))
            target = THUMBNAILS / f"{path.stem}.webp"
            if args.check:
                diff = difference(picture, Image.open(target)) if target.is_file() else float("inf")
                stale += diff > TOLERANCE
                print(f"{path.stem}: difference {diff:.2f}")
                continue
            picture.save(target, "WEBP", lossless=True, quality=100, method=6)
            print(f"{target.relative_to(REPO)}: {picture.width}x{picture.height}, {target.stat().st_size} bytes")
        if not args.check:
            for old in THUMBNAILS.glob("*.webp"):
                if old.stem not in {p.stem for p in paths}:
                    old.unlink()
                    print(f"removed {old.relative_to(REPO)} (no longer runs on the shipped models)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
