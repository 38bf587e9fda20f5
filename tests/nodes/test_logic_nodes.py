"""Number, logic and list nodes: results on small inputs against values written here, /object_info
entries against the signature facts read from ComfyUI's source (comfy_extras/nodes_primitive.py,
nodes_logic.py, nodes_math.py, nodes_number_convert.py, nodes_resolution.py, nodes_toolkit.py), and an
editor-format workflow using every one of them, where the lazy switch's other branch never runs."""

import json
import string
import sys

import pytest
from comfy_facts import ui_node, ui_workflow
from test_text_nodes import ABSENT, check_facts

import genloom
from genloom.engine.errors import ExecutionError, NodeInputError
from genloom.nodes import logic as L
from genloom.nodes import primitives as P

BIG = sys.maxsize  # 9223372036854775807
NUMERIC = "FLOAT,INT,BOOLEAN"
RATIOS = ["1:1 (Square)", "3:2 (Photo)", "4:3 (Standard)", "16:9 (Widescreen)", "21:9 (Ultrawide)",
          "2:3 (Portrait Photo)", "3:4 (Portrait Standard)", "9:16 (Portrait Widescreen)"]
# Autogrow inputs: one COMFY_AUTOGROW_V3 entry each, its template as ComfyUI declares it (AUTOGROW).
GROWN = "COMFY_AUTOGROW_V3"
AUTOGROW = {
    "ComfyMathExpression": ("values", {"template": {"input": {"required": {}, "optional": {"value": [NUMERIC, {}]}},
                                                    "names": list(string.ascii_lowercase), "min": 1}}),
    "ComfyAndNode": ("values", {"template": {"input": {"required": {"value": ["*", {}]}}, "prefix": "value",
                                             "min": 1, "max": 10}}),
    "ComfyOrNode": ("values", {"template": {"input": {"required": {"value": ["*", {}]}}, "prefix": "value",
                                            "min": 1, "max": 10}}),
    "CreateList": ("inputs", {"template": {"input": {"required": {"input": ["*", {}]}}, "prefix": "input",
                                           "min": 1, "max": 10}}),
}

# node: category, display name, outputs (types, names), required / optional rows
# (name, type, default, min, max, step); ABSENT = ComfyUI declares none.
FACTS = {
    "PrimitiveInt": ("utilities/primitive", "Int", ["INT"], ["INT"],
                     [("value", "INT", ABSENT, -BIG, BIG, ABSENT)], []),
    "PrimitiveFloat": ("utilities/primitive", "Float", ["FLOAT"], ["FLOAT"],
                       [("value", "FLOAT", ABSENT, -BIG, BIG, 0.1)], []),
    "PrimitiveBoolean": ("utilities/primitive", "Boolean", ["BOOLEAN"], ["BOOLEAN"],
                         [("value", "BOOLEAN", ABSENT)], []),
    "ComfyMathExpression": ("utilities", "Math Expression", ["FLOAT", "INT", "BOOLEAN"], ["FLOAT", "INT", "BOOL"],
                            [("expression", "STRING", "a + b"), ("values", GROWN, ABSENT)], []),
    "ComfySwitchNode": ("utilities/logic", "If/Else Switch", ["*"], ["output"], [("switch", "BOOLEAN", ABSENT)],
                        [("on_false", "*", ABSENT), ("on_true", "*", ABSENT)]),
    "ComfyNotNode": ("utilities/logic", "Not", ["BOOLEAN"], ["BOOLEAN"], [("value", "*", ABSENT)], []),
    "ComfyAndNode": ("utilities/logic", "And", ["BOOLEAN"], ["BOOLEAN"], [("values", GROWN, ABSENT)], []),
    "ComfyOrNode": ("utilities/logic", "Or", ["BOOLEAN"], ["BOOLEAN"], [("values", GROWN, ABSENT)], []),
    "ComfyNumberConvert": ("math", "Number Convert", ["FLOAT", "INT"], ["FLOAT", "INT"],
                           [("value", "INT,FLOAT,STRING,BOOLEAN", ABSENT)], []),
    "CustomCombo": ("utilities", "Custom Combo", ["STRING", "INT"], ["STRING", "INDEX"], [("choice", [], ABSENT)],
                    [("index", "INT", ABSENT)]),
    "ResolutionSelector": ("utilities", "Resolution Selector", ["INT", "INT"], ["width", "height"],
                           [("aspect_ratio", RATIOS, "1:1 (Square)"), ("megapixels", "FLOAT", 1.0, 0.1, 16.0, 0.1),
                            ("multiple", "INT", 8, 8, 128, 4), ("minimum", "INT", 256, 32, 4096, 32)], []),
    "CreateList": ("utilities", "Create List", ["*"], ["list"], [("inputs", GROWN, ABSENT)], []),
    "GetItemFromList": ("utilities", "Get Item From List", ["*"], ["*"],
                        [("list", "*", ABSENT), ("index", "INT", 0, ABSENT, ABSENT, ABSENT)], []),
}


@pytest.mark.parametrize("name", sorted(FACTS))
def test_object_info_matches_comfyui(name):
    schema = {n.__name__: n for n in [*L.NODES, *P.NODES]}[name].schema()
    info = check_facts(schema, FACTS[name])
    assert info["is_input_list"] == (name in ("CreateList", "GetItemFromList"))
    assert info["output_is_list"] == [name == "CreateList"] * len(info["output"])
    if name == "PrimitiveInt":
        assert info["input"]["required"]["value"][1]["control_after_generate"] == "fixed"
    if name == "PrimitiveFloat":
        assert info["input"]["required"]["value"][1]["round"] == 0.0001
    if name == "ComfySwitchNode":
        assert all(info["input"]["optional"][n][1]["lazy"] for n in ("on_false", "on_true"))
    if name == "ComfyMathExpression":
        assert info["input"]["required"]["expression"][1]["multiline"] is True
    if name in AUTOGROW:
        group, options = AUTOGROW[name]
        assert info["input"]["required"][group] == [GROWN, options]
    if name == "ResolutionSelector":
        assert all(info["input"]["required"][n][1]["advanced"] for n in ("multiple", "minimum"))


def test_primitives_pass_their_value():
    assert P.PrimitiveInt().run(-3) == (-3,)
    assert P.PrimitiveFloat().run(2.5) == (2.5,)
    assert P.PrimitiveString().run("x") == ("x",)
    assert P.PrimitiveStringMultiline().run("a\nb") == ("a\nb",)
    assert P.PrimitiveBoolean().run(True) == (True,)


def test_math_expression():
    run = L.ComfyMathExpression().run
    assert run("a * b + 1", **{"values.a": 6, "values.b": 2.5}) == (16.0, 16, True)
    assert run("sum(values) / 4", **{"values.a": 1, "values.b": 2, "values.c": 3}) == (1.5, 1, True)
    assert run("a - 10", **{"values.a": 3}) == (-7.0, -7, True)
    assert run("c", **{"values.a": 0, "values.c": False}) == (0.0, 0, False)  # b missing: a gap is fine
    assert run("2 * 21") == (42.0, 42, True)  # no inputs at all
    for bad, why in (("a / 0", "division by zero"), ("b + 1", "unknown name"), ("a.real", "Attribute"),
                     ("2 ** 99999", "exceeds")):
        with pytest.raises(NodeInputError, match=why) as caught:
            run(bad, **{"values.a": 1})
        assert str(caught.value).startswith("ComfyMathExpression: input 'expression'")


def test_switch_and_gates():
    switch = L.ComfySwitchNode()
    # Unevaluated lazy inputs arrive as None: ask for the chosen one only.
    assert switch.check_lazy(True, None, None) == ["on_true"]
    assert switch.check_lazy(False, None, None) == ["on_false"]
    assert switch.check_lazy(True, None, 5) == []
    assert switch.run(True, "no", "yes") == ("yes",) and switch.run(False, "no", "yes") == ("no",)
    assert switch.run(True, on_false="no") == (None,)  # the chosen input is not connected
    assert L.ComfyNotNode().run(0) == (True,) and L.ComfyNotNode().run([1]) == (False,)
    assert L.ComfyNotNode().run("") == (True,)
    assert L.ComfyAndNode().run(**{"values.value0": 1, "values.value1": "x"}) == (True,)
    assert L.ComfyAndNode().run(**{"values.value0": 1, "values.value3": []}) == (False,)
    assert L.ComfyOrNode().run(**{"values.value0": 0, "values.value1": None}) == (False,)
    assert L.ComfyOrNode().run(**{"values.value0": 0, "values.value9": 2.0}) == (True,)


def test_number_convert_combo_resolution_and_lists():
    convert = L.ComfyNumberConvert().run
    assert convert(" 3.75 ") == (3.75, 3) and convert(True) == (1.0, 1) and convert(-4) == (-4.0, -4)
    with pytest.raises(NodeInputError, match="value"):
        convert("three")
    assert L.CustomCombo().run("beta", 1) == ("beta", 1)
    assert L.CustomCombo().run("beta") == ("beta", 0)
    assert L.CustomCombo.validate(choice="anything the user typed") is True
    assert L.ResolutionSelector().run("4:3 (Standard)", 1.0) == (1184, 888)  # 1182.4 -> 1184, 886.8 -> 888
    assert L.ResolutionSelector().run("1:1 (Square)", 0.1, 8, 512) == (512, 512)  # 328 < 512: raised
    assert L.CreateList().run(**{"inputs.input0": [1, 2], "inputs.input2": ["c"]}) == ([1, 2, "c"],)
    assert L.GetItemFromList().run(["a", "b", "c"], [1]) == ("b",)
    assert L.GetItemFromList().run(["a", "b", "c"], [-1]) == ("c",)
    with pytest.raises(NodeInputError, match="out of range"):
        L.GetItemFromList().run(["a"], [3])


def logic_workflow(switch_on: bool = True) -> dict:
    """Every number/logic/list node in one editor file. The switch's on_false branch divides by zero:
    had it run, the prompt would fail."""
    F, I, B, S = "FLOAT", "INT", "BOOLEAN", "STRING"

    def preview(id_, link):
        return ui_node(id_, "PreviewAny", [("source", "*", link)], [(S, S, [])])

    nodes = [
        ui_node(1, "PrimitiveInt", outputs=[(I, I, [1, 3, 12, 14])], widgets=[6, "fixed"]),
        ui_node(2, "PrimitiveFloat", outputs=[(F, F, [2])], widgets=[2.5]),
        ui_node(3, "PrimitiveBoolean", outputs=[(B, B, [4, 8, 10])], widgets=[switch_on]),
        ui_node(4, "ComfyMathExpression", [("values.a", NUMERIC, 1), ("values.b", NUMERIC, 2)],
                [(F, F, [5]), (I, I, [15]), (B, "BOOL", [9])], widgets=["a * b + 1"]),
        ui_node(5, "ComfyMathExpression", [("values.a", NUMERIC, 3)], [(F, F, [6]), (I, I, []), (B, "BOOL", [])],
                widgets=["a / 0"]),  # the branch that must never run
        ui_node(6, "ComfySwitchNode", [("switch", B, 4), ("on_false", "*", 6), ("on_true", "*", 5)],
                [("output", "*", [7])], widgets=[True]),
        preview(7, 7),
        ui_node(8, "ComfyAndNode", [("values.value0", "*", 8), ("values.value1", "*", 9)], [(B, B, [11])]),
        preview(9, 11),
        ui_node(10, "ComfyNotNode", [("value", "*", 10)], [(B, B, [13])]),
        ui_node(11, "ComfyOrNode", [("values.value0", "*", 13), ("values.value1", "*", 12)], [(B, B, [16])]),
        preview(12, 16),
        ui_node(13, "PrimitiveString", outputs=[(S, S, [17])], widgets=["3.75"]),
        ui_node(14, "ComfyNumberConvert", [("value", "INT,FLOAT,STRING,BOOLEAN", 17)], [(F, F, [18]), (I, I, [19])]),
        preview(15, 18),
        preview(16, 19),
        ui_node(17, "ResolutionSelector", [], [("width", I, [20]), ("height", I, [21])],
                widgets=["16:9 (Widescreen)", 1.0, 8, 256]),
        preview(18, 21),
        ui_node(19, "CreateList", [("inputs.input0", "*", 14), ("inputs.input1", "*", 15), ("inputs.input2", "*", 20)],
                [("list", "*", [22, 23])]),
        ui_node(20, "GetItemFromList", [("list", "*", 22)], [("*", "*", [24])], widgets=[2]),
        preview(21, 24),
        preview(22, 23),  # a list output: the preview runs once per item
        ui_node(23, "CustomCombo", [], [(S, S, [25]), (I, "INDEX", [])], widgets=["beta", 1, "alpha", "beta", ""]),
        preview(24, 25),
        ui_node(25, "ComfyNotNode", [("value", "*", 26)], [(B, B, [27])]),
        preview(26, 27),
        ui_node(27, "ComfyMathExpression", [("values.a", NUMERIC, 12)], [(F, F, []), (I, I, [26]), (B, "BOOL", [])],
                widgets=["a - 6"]),
    ]
    return ui_workflow(nodes)


def test_logic_nodes_from_an_editor_workflow(tmp_path):
    engine = genloom.Engine(output_dir=tmp_path, input_dir=tmp_path, device="cpu")
    result = engine.run(json.loads(json.dumps(logic_workflow())))
    shown = {node: ui["text"] for node, ui in result.outputs.items()}
    assert shown == {
        "7": ["16.0"],  # the switch took on_true: 6 * 2.5 + 1
        "9": ["True"],  # True and bool(16.0)
        "12": ["True"],  # (not True) or 6
        "15": ["3.75"], "16": ["3"],  # "3.75" as FLOAT and INT
        "18": ["768"],  # 16:9 at 1 MP: 1368 x 768
        "21": ["1368"],  # [6, 16, 1368][2]
        "22": ["6", "16", "1368"],  # one preview per list item
        "24": ["beta"],
        "26": ["True"],  # not (6 - 6)
    }
    assert "5" not in result.executed  # the unchosen branch never ran
    assert "4" in result.executed


def test_switch_off_runs_only_the_other_branch(tmp_path):
    engine = genloom.Engine(output_dir=tmp_path, input_dir=tmp_path, device="cpu")
    with pytest.raises(ExecutionError) as caught:  # now the dividing branch is chosen, and it fails
        engine.run(json.loads(json.dumps(logic_workflow(switch_on=False))), outputs=["7"])
    assert caught.value.payload["node_id"] == "5"
    assert "division by zero" in caught.value.payload["exception_message"]
    graph = {"b": {"class_type": "PrimitiveBoolean", "inputs": {"value": False}},
             "t": {"class_type": "ComfyMathExpression", "inputs": {"expression": "1 / 0"}},
             "f": {"class_type": "PrimitiveString", "inputs": {"value": "fallback"}},
             "s": {"class_type": "ComfySwitchNode", "inputs": {"switch": ["b", 0], "on_true": ["t", 0],
                                                                  "on_false": ["f", 0]}},
             "p": {"class_type": "PreviewAny", "inputs": {"source": ["s", 0]}}}
    result = engine.run(graph)
    assert result.outputs["p"] == {"text": ["fallback"]} and "t" not in result.executed


def test_custom_combo_index_from_an_api_prompt(tmp_path):
    """The editor sends CustomCombo's hidden index widget and its option widgets in the prompt."""
    engine = genloom.Engine(output_dir=tmp_path, input_dir=tmp_path, device="cpu")
    graph = {"c": {"class_type": "CustomCombo", "inputs": {"choice": "beta", "index": 1, "option1": "alpha",
                                                           "option2": "beta"}},
             "p": {"class_type": "PreviewAny", "inputs": {"source": ["c", 1]}}}
    assert engine.run(graph).outputs["p"] == {"text": ["1"]}
