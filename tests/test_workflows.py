"""Every example in workflows/ runs on the shipped model and makes what it says it makes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
# Examples for models genloom does not ship (users download them): each runs on tiny stand-ins
# saved under the same file names, in the test module named here.
ELSEWHERE = {"flux_dev_txt2img": "tests/nodes/test_flux_nodes.py",
             "flux_schnell_txt2img": "tests/nodes/test_flux_nodes.py",
             "sd35_txt2img": "tests/nodes/test_loaders_split.py",
             "wan_t2v": "tests/diffusion/test_wan.py", "wan_i2v": "tests/diffusion/test_wan.py",
             "qwen_image_txt2img": "tests/nodes/test_llm_workflows.py",
             "qwen_image_edit": "tests/diffusion/test_qwen_image_edit.py",
             "z_image_turbo_txt2img": "tests/nodes/test_llm_workflows.py",
             "z_image_prompt_expansion": "tests/nodes/test_llm_workflows.py",
             "flux2_txt2img": "tests/diffusion/test_flux2.py", "flux2_edit": "tests/diffusion/test_flux2_edit_lora.py",
             "inpaint": "tests/test_inpaint_equality.py", "sdxl_refiner": "tests/test_refiner_equality.py"}
WORKFLOWS = sorted(p for p in (REPO / "workflows").glob("*.json") if p.stem not in ELSEWHERE)
INPUTS = REPO / "workflows" / "input"
sys.path.insert(0, str(REPO / "tools"))

# name -> (number of pictures, their side in pixels)
EXPECTED = {
    "txt2img": (1, 32),
    "img2img": (1, 32),
    "restyle": (1, 32),
    "hires_fix": (1, 64),
    "upscale": (1, 128),
    "style_transfer": (1, 64),
    "batch": (8, 32),
    "controlnet_canny": (1, 32),
    "flux_txt2img": (1, 64),
}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    import torch

    import genloom

    import control_tiny
    from genloom.engine.folders import default_models_dirs

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("out")
    extra = tmp_path_factory.mktemp("models")  # genloom ships no ControlNet: controlnet_canny's is made here
    control_tiny.write_example_controlnet(extra)
    # One engine for all: the checkpoint loads once and stays cached across the examples.
    return genloom.Engine(models_dirs=[extra, *default_models_dirs()], input_dir=INPUTS, output_dir=out,
                          temp_dir=out / "temp", device="cpu", cache="lru:64")


def _pictures(engine, result) -> list[np.ndarray]:
    pics = []
    for ui in result.outputs.values():
        for entry in ui.get("images", []):
            path = Path(engine.folders.output_dir) / entry["subfolder"] / entry["filename"]
            pics.append(np.asarray(Image.open(path).convert("RGB")))
    return pics


def test_every_workflow_is_covered():
    assert {p.stem for p in (REPO / "workflows").glob("*.json")} == set(EXPECTED) | set(ELSEWHERE)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_example_runs(engine, path):
    result = engine.run(path)
    count, side = EXPECTED[path.stem]
    pictures = _pictures(engine, result)
    assert len(pictures) == count
    for pic in pictures:
        assert pic.shape == (side, side, 3)
        assert pic.std() > 10, "a flat picture: the model drew nothing"


def test_txt2img_draws_the_prompt(engine):
    import shapes

    result = engine.run(REPO / "workflows" / "txt2img.json")
    verdict = shapes.judge(_pictures(engine, result)[0])
    assert (verdict.colour, verdict.background) == ("red", "blue")


def test_batch_follows_both_prompts(engine):
    import shapes

    result = engine.run(REPO / "workflows" / "batch.json")
    by_node = {node: ui["images"] for node, ui in result.outputs.items()}
    graph = json.loads((REPO / "workflows" / "batch.json").read_text())["graph"]
    for node, images in by_node.items():
        want = "red" if "circle" in graph[node]["inputs"]["filename_prefix"] else "green"
        colours = [shapes.judge(np.asarray(Image.open(Path(engine.folders.output_dir) / e["filename"])
                                           .convert("RGB"))).colour for e in images]
        assert colours.count(want) >= 3, colours
        assert len({e["filename"] for e in images}) == 4


def test_hires_fix_keeps_the_prompt_at_twice_the_size(engine):
    import shapes

    result = engine.run(REPO / "workflows" / "hires_fix.json")
    verdict = shapes.judge(_pictures(engine, result)[0])
    assert (verdict.colour, verdict.background) == ("blue", "yellow")


def test_readme_main_command(tmp_path):
    """The README's first command, as a user types it: exit 0 and a picture where it says."""
    proc = subprocess.run([sys.executable, "-m", "genloom.cli", "run", str(REPO / "workflows" / "txt2img.json"),
                           "--output-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    written = list(tmp_path.glob("txt2img_*.png"))
    assert len(written) == 1 and str(written[0]) in proc.stdout
