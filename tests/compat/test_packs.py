"""The test packs of tests/plugins_fixtures loaded as ComfyUI loads them and run through the engine
and the CLI: services (folder_paths, ProgressBar, model_management, PromptServer), V3-only and V3 in
NODE_CLASS_MAPPINGS, deep relative imports, inputs as ComfyUI passes them, missing requirements."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from conftest import FIXTURES
from genloom.cli import main
from genloom.engine.plugins import module_name_of
from genloom.runtime import Engine


@pytest.fixture
def packs(tmp_path):
    folder = tmp_path / "custom_nodes"
    shutil.copytree(FIXTURES, folder, ignore=shutil.ignore_patterns("__pycache__", "README.md"))
    return folder


@pytest.fixture
def engine(packs, tmp_path):
    return Engine(plugins_dir=packs, device="cpu", input_dir=tmp_path / "in", output_dir=tmp_path / "out",
                  temp_dir=tmp_path / "temp")


def test_packs_load_as_comfyui_loads_them(engine, packs):
    reg = engine.registry
    assert list(reg.packs) == sorted(reg.packs)  # name order, stable
    loaded = {name for name, p in reg.packs.items() if p["error"] is None}
    assert loaded == {"deep_pack", "inputs_pack", "services_pack", "v3_mapped", "v3_pack", "web_pack"}
    assert reg.packs["v3_pack"]["nodes"] == 4 and reg["V3Preview"].is_async
    deep = sys.modules[module_name_of(packs / "deep_pack")]  # named by its folder's path, as ComfyUI does
    assert deep.LOADED == ("A!", "MOD!", "DEEP!")
    assert deep.__spec__.submodule_search_locations == [str(packs / "deep_pack")]
    assert sys.modules[module_name_of(packs / "deep_pack") + ".a.b.node"].DeepJoin is reg["DeepJoin"].factory
    assert reg["ServicesCount"].display_name == "Services: count"
    assert reg["V3Scale"].display_name == "V3: scale" and reg["V3Mapped"].display_name == "V3 mapped"
    assert reg["V3Scale"].python_module == "custom_nodes.v3_pack"
    assert reg.packs["web_pack"]["web_dir"] == str(packs / "web_pack" / "web")
    assert [p for p in reg.problems if p.get("node")] == []
    assert reg["DeepJoin"].factory.RELATIVE_PYTHON_MODULE == "custom_nodes.deep_pack"
    assert reg["V3Scale"].factory.RELATIVE_PYTHON_MODULE == "custom_nodes.v3_pack"
    import folder_paths

    assert folder_paths.get_folder_paths("custom_nodes") == [str(packs)]
    assert "deep_pack/helpers.py" in folder_paths.get_filename_list("custom_nodes")


def test_v3_schemas_compile_to_comfyuis_object_info(engine):
    info = engine.registry.object_info()
    scale = info["V3Scale"]
    assert scale["input"]["required"]["factor"] == ["INT", {"default": 2, "min": 1, "max": 8, "display": "slider"}]
    assert scale["input"]["required"]["value"] == ["FLOAT", {"default": 1.5, "min": -10.0, "max": 10.0}]
    assert scale["input"]["hidden"] == {"unique_id": "UNIQUE_ID", "prompt": "PROMPT",
                                        "extra_pnginfo": "EXTRA_PNGINFO"}  # output nodes get both
    assert scale["output"] == ["FLOAT"] and scale["output_name"] == ["scaled"] and scale["output_node"]
    assert scale["category"] == "tests/v3" and scale["description"].startswith("Multiplies")
    pick = info["V3Pick"]
    mode = pick["input"]["required"]["mode"]  # one entry, as ComfyUI lists a DynamicCombo
    assert mode[0] == "COMFY_DYNAMICCOMBO_V3" and [o["key"] for o in mode[1]["options"]] == ["add", "repeat"]
    assert list(mode[1]["options"][1]["inputs"]["required"]) == ["text", "times"]
    assert set(pick["input"]["optional"]) == {"thing"}
    assert pick["input"]["optional"]["thing"][0] == "*" and pick["output"] == ["STRING", "*"]
    assert info["V3Switch"]["input"]["optional"]["a"][1]["lazy"] is True
    assert "NoFunction" in info  # listed, as ComfyUI lists a class without FUNCTION


def _run(engine, graph):
    events = []
    result = engine.run(graph, on_event=lambda e, d: events.append((e, d)))
    return result, events


def test_services_pack_runs(engine, tmp_path):
    graph = {"1": {"class_type": "ServicesCount",
                   "inputs": {"ckpt_name": "genloom-tiny.safetensors", "steps": 3, "prefix": "svc/count"}}}
    result, events = _run(engine, graph)
    assert result.outputs["1"] == {"text": ["count_00001_.txt"]}
    written = tmp_path / "out" / "svc" / "count_00001_.txt"
    assert written.read_text() == "genloom-tiny.safetensors 3 cpu"
    assert [(d["value"], d["max"]) for e, d in events if e == "progress"] == [(1, 3), (2, 3), (3, 3)]
    assert ("services_pack.counted", {"node": "1", "steps": 3, "file": "count_00001_.txt", "running": "1"}) in events
    assert ("progress_text", {"text": "counted 3", "node": "1"}) in events  # no editor: the run's events
    graph["1"]["inputs"]["ckpt_name"] = "not-there.safetensors"  # the COMBO lists the real folder
    assert engine.validate(graph).node_errors["1"]["errors"][0]["type"] == "value_not_in_list"


def test_v3_nodes_run(engine):
    graph = {
        "3": {"class_type": "V3Scale", "inputs": {"value": 1.5, "factor": 3}},
        "5": {"class_type": "V3Scale", "inputs": {"value": 2.0, "factor": 2}},
        "4": {"class_type": "V3Switch", "inputs": {"first": False, "a": ["3", 0], "b": ["5", 0]}},
        "2": {"class_type": "DeepJoin", "inputs": {"text": "hey"}},
        "6": {"class_type": "V3Pick", "inputs": {"mode": "repeat", "mode.text": "xy", "mode.times": 3,
                                                 "thing": ["2", 0]}},
        "7": {"class_type": "V3Pick", "inputs": {"mode": "add", "mode.amount": 5}},
        "9": {"class_type": "V3Mapped", "inputs": {"text": "abc"}},
        "10": {"class_type": "PreviewAny", "inputs": {"source": ["4", 0]}},
        "11": {"class_type": "PreviewAny", "inputs": {"source": ["6", 0]}},
        "12": {"class_type": "PreviewAny", "inputs": {"source": ["6", 1]}},
        "13": {"class_type": "PreviewAny", "inputs": {"source": ["7", 0]}},
        "14": {"class_type": "PreviewAny", "inputs": {"source": ["9", 0]}},
    }
    result, _ = _run(engine, graph)
    out = result.outputs
    assert out["3"] == {"text": ["3:4.5"]} and out["5"] == {"text": ["5:4.0"]}  # hidden unique_id, ui
    assert out["10"] == {"text": ["4.0"]}  # the lazy switch took b = 2.0 * 2
    assert out["11"] == {"text": ["xyxyxy"]} and out["13"] == {"text": ["15"]}
    assert out["12"] == {"text": ["MOD! HEY! DEEP!"]} and out["14"] == {"text": ["ABC"]}
    again, _ = _run(engine, graph)
    assert set(again.executed) == set()  # fingerprint_inputs unchanged: all from the cache
    bad = engine.validate({"1": {"class_type": "V3Scale", "inputs": {"value": 1.0, "factor": 7}}})
    assert "factor 7 is unlucky" in bad.node_errors["1"]["errors"][0]["details"]


def test_an_async_v3_output_node_previews(engine, tmp_path):
    from PIL import Image

    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 4, "batch_size": 2,
                                                          "color": 0xFF0000}},
             "2": {"class_type": "V3Preview", "inputs": {"images": ["1", 0]}}}
    result, _ = _run(engine, graph)
    shown = result.outputs["2"]
    assert shown["animated"] == [False] and len(shown["images"]) == 2
    first = shown["images"][0]
    assert first["type"] == "temp"
    with Image.open(tmp_path / "temp" / first["subfolder"] / first["filename"]) as picture:
        assert picture.size == (8, 4) and picture.getpixel((0, 0))[:3] == (255, 0, 0)


def test_lazy_v3_switch_skips_the_branch_it_does_not_need(engine):
    graph = {"3": {"class_type": "V3Scale", "inputs": {"value": 1.0, "factor": 2}},
             "5": {"class_type": "V3Scale", "inputs": {"value": 3.0, "factor": 2}},
             "4": {"class_type": "V3Switch", "inputs": {"first": True, "a": ["3", 0], "b": ["5", 0]}},
             "10": {"class_type": "PreviewAny", "inputs": {"source": ["4", 0]}}}
    result, _ = _run(engine, graph)
    assert result.outputs["10"] == {"text": ["2.0"]}


def test_inputs_as_comfyui_passes_them(engine):
    graph = {"1": {"class_type": "HalfReturn", "inputs": {"value": 9}},
             "2": {"class_type": "JoinAll", "inputs": {"sep": ";", "zeta": ["1", 0], "alpha": 5}},
             "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}}
    result, _ = _run(engine, graph)
    assert result.outputs["3"] == {"text": ["alpha=5;zeta=4"]}  # undeclared inputs passed through
    graph["4"] = {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}}  # the value never returned
    result, _ = _run(engine, graph)
    assert result.outputs["3"] == {"text": ["alpha=5;zeta=4"]} and "4" not in result.outputs
    assert "HalfReturn returned 1 value(s) but declares 2" in json.dumps(result.errors)
    from genloom.engine.errors import ExecutionError

    with pytest.raises(ExecutionError, match="NoFunction cannot run: its class defines no FUNCTION"):
        engine.run({"1": {"class_type": "NoFunction", "inputs": {"value": 1}},
                    "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}})


def test_plugins_check_prints_what_to_install(packs, capsys):
    assert main(["plugins", "check", str(packs)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "ok      deep_pack: 1 node(s)" in out and "ok      v3_pack: 4 node(s)" in out
    assert f"ok      web_pack: 1 node(s), web extension {packs / 'web_pack' / 'web'}" in out
    assert "FAILED  missing_req_pack: ModuleNotFoundError: No module named 'genloom_fixture_absent_mod'" in out
    assert ("        missing module 'genloom_fixture_absent_mod': the pack requires "
            "'genloom-fixture-absent-mod>=1.2' (requirements.txt)") in out
    assert ("        missing module 'cv2': the pack requires 'opencv-python-headless>=4.8' "
            "(pyproject.toml)") in out
    assert "6 of 8 pack(s) loaded" in out
    assert out[-1] == "  pip install 'opencv-python-headless>=4.8' 'genloom-fixture-absent-mod>=1.2'"


def test_plugins_check_of_a_healthy_folder(packs, capsys):
    for broken in ("missing_req_pack", "missing_cv2_pack"):
        shutil.rmtree(packs / broken)
    assert main(["plugins", "check", str(packs)]) == 0
    out = capsys.readouterr().out
    assert "6 of 6 pack(s) loaded" in out and "pip install" not in out


def test_packs_run_through_the_cli(packs, tmp_path, capsys):
    graph = {"1": {"class_type": "ServicesCount",
                   "inputs": {"ckpt_name": "genloom-tiny.safetensors", "steps": 2, "prefix": "cli"}},
             "2": {"class_type": "V3Scale", "inputs": {"value": 0.5, "factor": 4}},
             "3": {"class_type": "V3Mapped", "inputs": {"text": "cli"}},
             "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
             "5": {"class_type": "DeepJoin", "inputs": {"text": "cli"}},
             "6": {"class_type": "JoinAll", "inputs": {"sep": "+", "deep": ["5", 0], "web": ["7", 0]}},
             "7": {"class_type": "WebPackNode", "inputs": {}},
             "8": {"class_type": "PreviewAny", "inputs": {"source": ["6", 0]}}}
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(graph))
    code = main(["run", str(wf), "--plugins-dir", str(packs), "--output-dir", str(tmp_path / "cli_out"),
                 "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "node 1 text: cli_00001_.txt" in captured.out
    assert "node 2 text: 2:2.0" in captured.out and "node 4 text: CLI" in captured.out
    assert "node 8 text: deep=MOD! CLI! DEEP!+web=web" in captured.out
    assert ("warning: node pack missing_req_pack: ModuleNotFoundError: No module named "
            "'genloom_fixture_absent_mod' (the pack requires 'genloom-fixture-absent-mod>=1.2'; "
            "see genloom plugins check)") in captured.err
    assert (tmp_path / "cli_out" / "cli_00001_.txt").read_text() == "genloom-tiny.safetensors 2 cpu"


def test_plugins_check_needs_a_folder(tmp_path, capsys):
    assert main(["plugins", "check", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
