"""V3 dynamic inputs (tests/plugins_fixtures/extra_packs/v3_dynamic_pack): io.DynamicCombo and
io.Autogrow compile to genloom's own DynamicCombo / Autogrow (engine/node.py), listed in /object_info
as ComfyUI lists them (one COMFY_DYNAMICCOMBO_V3 / COMFY_AUTOGROW_V3 entry) and run through the
engine, the CLI and the server with `execute` receiving ComfyUI's dicts."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from conftest import FIXTURES
from genloom.runtime import Engine


@pytest.fixture(scope="module")
def packs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("v3_dynamic") / "custom_nodes"
    shutil.copytree(FIXTURES / "extra_packs" / "v3_dynamic_pack", folder / "v3_dynamic_pack",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return folder


@pytest.fixture(scope="module")
def engine(packs, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return Engine(plugins_dir=packs, device="cpu", output_dir=out, temp_dir=out / "temp", input_dir=out / "in")


# ComfyUI's /object_info entries for these declarations (comfy_api latest _io.py: DynamicCombo's
# options as {"key", "inputs": V1 input dict}; Autogrow's template as {"input": V1 input dict,
# "prefix", "min", "max"} or {"input", "names", "min"}; a grown slot is always a socket).
OP = ["COMFY_DYNAMICCOMBO_V3", {"options": [
    {"key": "add", "inputs": {"required": {"amount": ["INT", {"default": 1, "min": 0, "max": 10}]}}},
    {"key": "affine", "inputs": {"required": {"factor": ["INT", {"default": 2, "min": 0, "max": 10}],
                                              "offset": ["INT", {"default": 0, "min": -10, "max": 10}]}}},
    {"key": "square", "inputs": {"required": {}}}], "tooltip": "What to do with base."}]
VALUES = ["COMFY_AUTOGROW_V3", {"template": {"input": {"required": {"value": ["INT", {"forceInput": True}]}},
                                             "prefix": "value", "min": 1, "max": 4}}]
NAMED = ["COMFY_AUTOGROW_V3", {"template": {
    "input": {"required": {}, "optional": {"n": ["INT", {"forceInput": True}]}}, "names": ["x", "y"], "min": 0}}]


def graph(name="sum") -> dict:
    return {
        "1": {"class_type": "DynArith", "inputs": {"base": 3, "op": "affine", "op.factor": 5, "op.offset": -1}},
        "2": {"class_type": "DynArith", "inputs": {"base": 3, "op": "square"}},
        "5": {"class_type": "DynArith", "inputs": {"base": 3, "op": "add", "op.amount": 4}},
        "3": {"class_type": "GrowSum", "inputs": {"values.value0": ["1", 0], "values.value2": ["2", 0],
                                                  "named.y": ["5", 0]}},
        "4": {"class_type": "WriteText", "inputs": {"text": ["3", 0], "name": name}},
    }


# 3 * 5 - 1 = 14 and 3 * 3 = 9 in the grown slots value0 and value2, 3 + 4 = 7 in the named slot y
WANT = "value0+value2|y=30"


def test_object_info_shows_the_dynamic_inputs_as_comfyui(engine):
    info = engine.registry.object_info()
    assert info["DynArith"]["input"] == {"required": {"base": ["INT", {"default": 4, "min": 0, "max": 100}],
                                                      "op": OP}}
    assert info["GrowSum"]["input"] == {"required": {"values": VALUES, "named": NAMED}}
    assert info["GrowSum"]["input_order"] == {"required": ["values", "named"]}
    schema = engine.registry["GrowSum"]
    assert [s.name for s in schema.inputs if s.section == "required"] == ["values.value0"]
    assert {s.group for s in schema.inputs} == {"values", "named"}


def test_dynamic_inputs_run_and_validate(engine, tmp_path):
    result = engine.run(graph())
    assert not result.errors and result.outputs["4"] == {"text": [WANT]}
    missing = graph()
    del missing["3"]["inputs"]["values.value0"]  # the first `min` prefix slots are required
    errors = engine.validate(missing).node_errors["3"]["errors"]
    assert errors and "values.value0" in json.dumps(errors)
    wrong = graph()
    wrong["1"]["inputs"]["op.factor"] = 11  # an option's input keeps its own range
    assert "op.factor" in json.dumps(engine.validate(wrong).node_errors["1"]["errors"])


def test_dynamic_inputs_through_the_cli(packs, tmp_path, capsys):
    from genloom.cli import main

    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(graph("cli")))
    code = main(["run", str(wf), "--plugins-dir", str(packs), "--output-dir", str(tmp_path / "o"),
                 "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "o" / "cli.txt").read_text() == WANT


def test_dynamic_inputs_through_the_server(packs, tmp_path):
    sys.path.insert(0, str(FIXTURES.parent / "server"))
    from server_support import InProcessServer

    srv = InProcessServer(tmp_path / "data", packs)
    try:
        status, info = srv.http.get("/object_info/DynArith")
        assert status == 200 and info["DynArith"]["input"]["required"]["op"] == OP
        assert srv.http.get("/object_info/GrowSum")[1]["GrowSum"]["input"]["required"]["values"] == VALUES
        prompt_id = srv.http.submit(graph("server"))
        entry = srv.http.wait_history(prompt_id, timeout=60)
        assert entry["status"]["status_str"] == "success", entry["status"]
        assert entry["outputs"]["4"] == {"text": [WANT]}
    finally:
        srv.stop()


def test_a_v3_class_is_keyed_by_its_mapping_key(tmp_path):
    """ComfyUI keys a V3 class in NODE_CLASS_MAPPINGS by the mapping's key (prompts name it so) and
    shows its schema's display name, not NODE_DISPLAY_NAME_MAPPINGS'."""
    folder = tmp_path / "custom_nodes"
    folder.mkdir()
    (folder / "keyed_pack.py").write_text(
        "from comfy_api.latest import io\n\n"
        "class Twice(io.ComfyNode):\n"
        "    @classmethod\n"
        "    def define_schema(cls):\n"
        "        return io.Schema(node_id='TwiceV3', display_name='Twice (schema)', category='tests/v3',\n"
        "                         inputs=[io.Int.Input('n', default=2)], outputs=[io.Int.Output()])\n\n"
        "    @classmethod\n"
        "    def execute(cls, n):\n"
        "        return io.NodeOutput(2 * n)\n\n"
        "NODE_CLASS_MAPPINGS = {'KeyedTwice': Twice}\n"
        "NODE_DISPLAY_NAME_MAPPINGS = {'KeyedTwice': 'Twice (mapping)'}\n")
    out = tmp_path / "out"
    engine = Engine(plugins_dir=folder, device="cpu", output_dir=out, temp_dir=out / "temp", input_dir=out / "in")
    info = engine.registry.object_info()
    assert "KeyedTwice" in info and "TwiceV3" not in info, engine.registry.problems
    assert info["KeyedTwice"]["display_name"] == "Twice (schema)"
    result = engine.run({"1": {"class_type": "KeyedTwice", "inputs": {"n": 21}},
                         "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}})
    assert not result.errors, result.errors
    assert "42" in json.dumps(result.outputs["2"])
