"""A walk over every built-in node: its /object_info entry round-trips, its run() takes what it
declares, the packs import without torch, and nodes that take a seed give the same result for the
same seed (and a different one for another seed)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from genloom.engine.registry import check_signature
from genloom.runtime import build_registry

REPO = Path(__file__).resolve().parent.parent
REGISTRY = build_registry(entry_points_too=False)
NAMES = sorted(REGISTRY.nodes)
INFO_KEYS = {"input", "input_order", "output", "output_is_list", "output_name", "name", "display_name",
             "description", "python_module", "category", "output_node"}


def test_every_builtin_pack_registers_cleanly():
    assert REGISTRY.problems == []
    assert len(NAMES) > 20


@pytest.mark.parametrize("name", NAMES)
def test_object_info_round_trip_and_signature(name):
    schema = REGISTRY[name]
    info = schema.object_info()
    assert INFO_KEYS <= set(info) and info["name"] == name
    assert json.loads(json.dumps(info)) == info  # strict JSON: what the editor receives is what we hold
    for section in ("required", "optional"):  # each section in declaration order
        declared = [name for where, name, _entry in schema.exported_inputs() if where == section]
        assert info["input_order"].get(section, []) == declared
    assert len(info["output"]) == len(info["output_is_list"]) == len(info["output_name"]) == len(schema.outputs)
    check_signature(schema)  # raises when run() cannot take the declared inputs


def test_packs_import_and_export_without_torch():
    code = textwrap.dedent("""
        import json, sys
        from genloom.runtime import build_registry
        registry = build_registry(entry_points_too=False)
        info = registry.object_info()
        print(json.dumps({"torch": "torch" in sys.modules, "nodes": len(info), "problems": registry.problems}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"torch": False, "nodes": len(NAMES), "problems": []}


def _seed_inputs(schema) -> list[str]:
    return [s.name for s in schema.inputs if s.type == "INT" and (s.extra.get("control_after_generate")
                                                                  or s.name in ("seed", "noise_seed"))]


SEEDED = [name for name in NAMES if _seed_inputs(REGISTRY[name])]


def _base(seed_node: dict) -> dict:
    """A graph on the shipped model that feeds `seed_node` (id "s") and captures its first output."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "genloom-tiny.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle on a blue background", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "i1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "i2": {"class_type": "LoadImage", "inputs": {"image": "style.png"}},
        "ks": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler_ancestral"}},
        "bs": {"class_type": "BasicScheduler", "inputs": {"model": ["4", 0], "scheduler": "normal", "steps": 4,
                                                          "denoise": 1.0}},
        "s": seed_node,
        "c": {"class_type": "CaptureForTest", "inputs": {"value": ["s", 0]}},
    }


SAMPLING = {"model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0], "steps": 4,
            "cfg": 3.5, "sampler_name": "euler_ancestral", "scheduler": "normal"}
RECIPES = {  # seeded node -> its inputs in a graph built by _base; a new seeded node must add one
    "KSampler": {**SAMPLING, "denoise": 1.0},
    "KSamplerAdvanced": {**SAMPLING, "add_noise": "enable", "start_at_step": 0, "end_at_step": 10000,
                         "return_with_leftover_noise": "disable"},
    "NeuralStyleTransfer": {"content": ["i1", 0], "style": ["i2", 0], "iterations": 2, "content_weight": 1.0,
                            "style_weight": 10.0, "learning_rate": 0.05},
    "PrimitiveInt": {},  # its value is the seed (control_after_generate): the same value passes through
    "ImageAddNoise": {"image": ["i1", 0], "strength": 0.5},
    "RandomNoise": {},  # a NOISE object: equal for equal seeds
    "SamplerCustom": {"model": ["4", 0], "add_noise": True, "cfg": 3.5, "positive": ["6", 0],
                      "negative": ["7", 0], "sampler": ["ks", 0], "sigmas": ["bs", 0], "latent_image": ["5", 0]},
}


def test_every_seeded_node_has_a_recipe():
    assert sorted(SEEDED) == sorted(RECIPES)


@pytest.fixture(scope="module")
def capture_engine(tmp_path_factory):
    import torch

    import genloom
    from genloom.engine.node import Input, Node, NodeOutput

    class CaptureForTest(Node):
        """Hands its input back to the test."""

        output_node = True
        inputs = [Input("value", "*")]
        outputs = []
        seen: list = []

        def run(self, value):
            CaptureForTest.seen.append(value)
            return NodeOutput(ui={"n": [len(CaptureForTest.seen)]})

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("out")
    engine = genloom.Engine(input_dir=REPO / "workflows" / "input", output_dir=out, device="cpu", cache="lru:64")
    engine.registry.register(CaptureForTest)
    return engine, CaptureForTest


@pytest.mark.parametrize("name", SEEDED)
def test_same_seed_same_output(capture_engine, name):
    import torch

    engine, capture = capture_engine
    seed_input = _seed_inputs(REGISTRY[name])[0]

    def result(seed: int):
        graph = _base({"class_type": name, "inputs": dict(RECIPES[name], **{seed_input: seed})})
        capture.seen.clear()
        engine.free()  # the seeded node itself must run again
        engine.run(graph)
        value = capture.seen[-1]
        return value["samples"] if isinstance(value, dict) else value

    first, again, other = result(7), result(7), result(8)
    same = torch.equal if isinstance(first, torch.Tensor) else (lambda a, b: a == b)
    assert same(first, again)
    assert not same(first, other)
