"""`genloom run --ray local --workers 2`: a sweep of 16 seeds on the shipped model gives 16 distinct
images, each the one a single-process run of that seed gives; a folder of inputs travels to the
workers as bytes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[2]
TXT2IMG = ROOT / "workflows" / "txt2img.json"


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _written(printed: str) -> dict[str, Path]:
    """label -> file, from the CLI's '[label]' and 'wrote PATH' lines."""
    out, label = {}, None
    for line in printed.splitlines():
        if line.startswith("["):
            label = line.strip("[]")
        m = re.match(r"wrote (\S+)", line)
        if m:
            out[label] = Path(m.group(1))
    return out


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_a_sweep_of_16_seeds_gives_16_distinct_correct_images(tmp_path, capsys):
    from genloom import cli
    from genloom.runtime import Engine

    out = tmp_path / "out"
    seeds = list(range(100, 116))
    rc = cli.main(["run", str(TXT2IMG), "--ray", "local", "--workers", "2", "--cpus-per-worker", "0.5",
                   "--device", "cpu", "--output-dir", str(out), "--sweep", "3.seed=" + ",".join(map(str, seeds))])
    assert rc == 0
    files = _written(capsys.readouterr().out)
    assert sorted(files) == sorted(f"3.seed={s}" for s in seeds)
    assert all(p.parent == out and p.is_file() for p in files.values())
    images = {label: _pixels(p) for label, p in files.items()}
    flat = [img.tobytes() for img in images.values()]
    assert len(set(flat)) == 16  # distinct images

    engine = Engine(device="cpu", output_dir=tmp_path / "local")
    workflow = engine.load(str(TXT2IMG))
    for seed in (seeds[0], seeds[-1]):  # the same pictures a single process makes for these seeds
        graph = {k: {**v, "inputs": dict(v["inputs"])} for k, v in workflow.graph.items()}
        graph["3"]["inputs"]["seed"] = seed
        result = engine.run(graph)
        name = result.outputs["9"]["images"][0]["filename"]
        here = _pixels(tmp_path / "local" / name)
        assert np.abs(here - images[f"3.seed={seed}"]).max() <= 1


def test_an_inputs_folder_travels_to_the_workers(tmp_path, capsys):
    from genloom import cli

    folder = tmp_path / "pictures"
    folder.mkdir()
    colours = [(200, 10, 10), (10, 200, 10), (10, 10, 200), (90, 90, 90)]
    for i, colour in enumerate(colours):
        Image.new("RGB", (8, 8), colour).save(folder / f"p{i}.png")
    graph = tmp_path / "copy.json"
    graph.write_text('{"1": {"class_type": "LoadImage", "inputs": {"image": "p0.png"}},'
                     ' "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "c"}}}')
    rc = cli.main(["run", str(graph), "--ray", "local", "--workers", "2", "--cpus-per-worker", "0.5",
                   "--output-dir", str(tmp_path / "out"), "--inputs", str(folder), "--bind", "1.image"])
    assert rc == 0
    files = _written(capsys.readouterr().out)
    got = [tuple(_pixels(files[f"1.image=p{i}.png"])[3, 3]) for i in range(4)]
    assert got == colours and len({p.name for p in files.values()}) == 4
