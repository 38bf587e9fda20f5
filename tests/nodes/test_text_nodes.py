"""Text nodes: results on small inputs against values written here, /object_info entries against the
signature facts read from ComfyUI's source (comfy_extras/nodes_string.py, nodes_text.py,
nodes_preview_any.py, nodes_primitive.py), and an editor-format workflow using every one of them."""

import json

import pytest
from comfy_facts import MISSING, check_entry, ui_node, ui_workflow

import genloom
from genloom.engine.errors import NodeInputError
from genloom.engine.folders import Folders
from genloom.nodes import primitives as P
from genloom.nodes import text as T

ABSENT = object()  # ComfyUI declares no such option (no default, range or step)
TEXT = ("STRING", ABSENT)  # a multi-line text widget without a default
CASES = ["UPPERCASE", "lowercase", "Capitalize", "Title Case"]
FLAGS = [("case_insensitive", "BOOLEAN", True), ("multiline", "BOOLEAN", False), ("dotall", "BOOLEAN", False)]

# node: category, display name, outputs (types, names), required / optional rows
# (name, type, default, min, max, step); ABSENT = ComfyUI has none, MISSING = not checked.
FACTS = {
    "StringConcatenate": ("text", "Concatenate Text", ["STRING"], ["STRING"],
                          [("string_a", *TEXT), ("string_b", *TEXT), ("delimiter", "STRING", "")], []),
    "StringSubstring": ("text", "Substring", ["STRING"], ["STRING"],
                        [("string", *TEXT), ("start", "INT", ABSENT, ABSENT, ABSENT, ABSENT),
                         ("end", "INT", ABSENT, ABSENT, ABSENT, ABSENT)], []),
    "StringLength": ("text", "Text Length", ["INT"], ["length"], [("string", *TEXT)], []),
    "CaseConverter": ("text", "Convert Text Case", ["STRING"], ["STRING"],
                      [("string", *TEXT), ("mode", CASES, ABSENT)], []),
    "StringTrim": ("text", "Trim Text", ["STRING"], ["STRING"],
                   [("string", *TEXT), ("mode", ["Both", "Left", "Right"], ABSENT)], []),
    "StringReplace": ("text", "Replace Text", ["STRING"], ["STRING"],
                      [("string", *TEXT), ("find", *TEXT), ("replace", *TEXT)], []),
    "StringContains": ("text", "Contains Text", ["BOOLEAN"], ["contains"],
                       [("string", *TEXT), ("substring", *TEXT), ("case_sensitive", "BOOLEAN", True)], []),
    "StringCompare": ("text", "Compare Text", ["BOOLEAN"], ["BOOLEAN"],
                      [("string_a", *TEXT), ("string_b", *TEXT),
                       ("mode", ["Starts With", "Ends With", "Equal"], ABSENT),
                       ("case_sensitive", "BOOLEAN", True)], []),
    "RegexMatch": ("text", "Match Text", ["BOOLEAN"], ["matches"],
                   [("string", *TEXT), ("regex_pattern", *TEXT), *FLAGS], []),
    "RegexExtract": ("text", "Extract Text", ["STRING"], ["STRING"],
                     [("string", *TEXT), ("regex_pattern", *TEXT),
                      ("mode", ["First Match", "All Matches", "First Group", "All Groups"], ABSENT), *FLAGS,
                      ("group_index", "INT", 1, 0, 100, ABSENT)], []),
    "RegexReplace": ("text", "Replace Text (Regex)", ["STRING"], ["STRING"],
                     [("string", *TEXT), ("regex_pattern", *TEXT), ("replace", *TEXT)],
                     [*FLAGS, ("count", "INT", 0, 0, 100, ABSENT)]),
    "JsonExtractString": ("text", "Extract Text from JSON", ["STRING"], ["STRING"],
                          [("json_string", *TEXT), ("key", "STRING", ABSENT)], []),
    "SaveText": ("text", "Save Text", ["STRING"], ["text"],
                 [("text", "STRING", ABSENT), ("filename_prefix", "STRING", "ComfyUI"),
                  ("format", ["txt", "csv", "md", "json"], "txt")], []),
    "PreviewAny": ("utilities", "Preview as Text", ["STRING"], ["STRING"], [("source", "*", ABSENT)], []),
    "PrimitiveString": ("utilities/primitive", "Text", ["STRING"], ["STRING"], [("value", "STRING", ABSENT)], []),
    "PrimitiveStringMultiline": ("utilities/primitive", "Text (Multiline)", ["STRING"], ["STRING"],
                                 [("value", *TEXT)], []),
}
MULTILINE = {"string", "string_a", "string_b", "find", "replace", "substring", "regex_pattern", "json_string"}
OUTPUT_NODES = {"SaveText", "PreviewAny"}


def check_facts(schema, facts):
    """The /object_info entry against a FACTS row: check_entry for what ComfyUI declares, and no
    default, min, max or step where ComfyUI declares none."""
    category, display, output, names, required, optional = facts
    info = schema.object_info()

    def rows(section):
        return [tuple(MISSING if v is ABSENT else v for v in row) for row in section]

    check_entry(info, {"category": category, "display": display, "output": output,
                       "required": rows(required), "optional": rows(optional)})
    assert info["output_name"] == names
    for section, entries in (("required", required), ("optional", optional)):
        for name, _type, *limits in entries:
            opts = info["input"][section][name][1]
            for key, value in zip(("default", "min", "max", "step"), limits):
                if value is ABSENT:
                    assert key not in opts, (info["name"], name, key)
    return info


@pytest.mark.parametrize("name", sorted(FACTS))
def test_object_info_matches_comfyui(name):
    schema = {**{n.__name__: n for n in T.NODES}, **{n.__name__: n for n in P.NODES}}[name].schema()
    info = check_facts(schema, FACTS[name])
    assert info["output_node"] == (name in OUTPUT_NODES)
    for section in info["input"].values():
        for input_name, declared in section.items():
            if input_name in MULTILINE or (name == "PrimitiveStringMultiline"):
                assert declared[1].get("multiline") is True, (name, input_name)
    if name == "SaveText":  # a socket, never a widget
        assert info["input"]["required"]["text"][1].get("forceInput") is True
    if name in ("StringContains", "StringCompare", "RegexMatch", "RegexExtract", "RegexReplace"):
        assert all(v[1].get("advanced") for k, v in {**info["input"]["required"],
                                                      **info["input"].get("optional", {})}.items()
                   if v[0] == "BOOLEAN" or k in ("group_index", "count"))


def test_string_results():
    assert T.StringConcatenate().run("ab", "cd", ", ") == ("ab, cd",)
    assert T.StringSubstring().run("genloom", 3, -1) == ("loo",)
    assert T.StringSubstring().run("genloom", -4, 100) == ("loom",)
    assert T.StringLength().run("héllo\n") == (6,)
    assert T.StringReplace().run("a-b-c", "-", "+") == ("a+b+c",)
    modes = {m: T.CaseConverter().run("hello wORLD of text", m)[0] for m in CASES}
    assert modes == {"UPPERCASE": "HELLO WORLD OF TEXT", "lowercase": "hello world of text",
                     "Capitalize": "Hello world of text", "Title Case": "Hello World Of Text"}
    assert [T.StringTrim().run("  x \n", m)[0] for m in ("Both", "Left", "Right")] == ["x", "x \n", "  x"]
    assert T.StringContains().run("Hello", "ell", True) == (True,)
    assert T.StringContains().run("Hello", "ELL", True) == (False,)
    assert T.StringContains().run("Hello", "ELL", False) == (True,)
    compare = T.StringCompare()
    assert compare.run("Genloom", "gen", "Starts With", True) == (False,)
    assert compare.run("Genloom", "gen", "Starts With", False) == (True,)
    assert compare.run("Genloom", "loom", "Ends With", True) == (True,)
    assert compare.run("abc", "ABC", "Equal", False) == (True,)
    assert compare.run("abc", "ABC", "Equal", True) == (False,)


def test_regex_results():
    match = T.RegexMatch()
    assert match.run("Size 512x768", r"\d+x\d+", True, False, False) == (True,)
    assert match.run("ABC", "abc", False, False, False) == (False,)
    assert match.run("ABC", "abc", True, False, False) == (True,)
    assert match.run("a\nb", "^b", False, False, False) == (False,)
    assert match.run("a\nb", "^b", False, True, False) == (True,)
    assert match.run("a\nb", "a.b", False, False, True) == (True,)
    assert match.run("x", "(unclosed", True, False, False) == (False,)  # invalid pattern: no match

    extract = T.RegexExtract()
    text = "w=512 h=768 w=64"
    assert extract.run(text, r"w=(\d+)", "First Match", True, False, False, 1) == ("w=512",)
    assert extract.run(text, r"w=(\d+)", "All Matches", True, False, False, 1) == ("512\n64",)
    assert extract.run(text, r"\d+", "All Matches", True, False, False, 1) == ("512\n768\n64",)
    assert extract.run(text, r"(\w)=(\d+)", "First Group", True, False, False, 2) == ("512",)
    assert extract.run(text, r"(\w)=(\d+)", "First Group", True, False, False, 0) == ("w=512",)
    assert extract.run(text, r"(\w)=(\d+)", "First Group", True, False, False, 3) == ("",)
    assert extract.run(text, r"(\w)=(\d+)", "All Groups", True, False, False, 1) == ("w\nh\nw",)
    assert extract.run(text, r"\d+", "All Groups", True, False, False, 0) == ("",)  # no groups
    assert extract.run("ab", r"(x)?b", "First Group", True, False, False, 1) == ("",)  # unmatched group
    assert extract.run(text, "(", "First Match", True, False, False, 1) == ("",)

    replace = T.RegexReplace()
    assert replace.run("a1b22c333", r"\d+", "#") == ("a#b#c#",)
    assert replace.run("a1b22c333", r"\d+", "#", count=2) == ("a#b#c333",)
    assert replace.run("Cat cat", "cat", "dog") == ("dog dog",)  # case-insensitive by default
    assert replace.run("Cat cat", "cat", "dog", case_insensitive=False) == ("Cat dog",)
    assert replace.run("2024-05", r"(\d+)-(\d+)", r"\2/\1") == ("05/2024",)
    with pytest.raises(NodeInputError, match="regex_pattern"):
        replace.run("x", "(", "y")


def test_json_extract():
    run = T.JsonExtractString().run
    reply = 'Sure! Here it is:\n```json\n{"name": "Ada", "age": 36, "tags": ["a"], "none": null}\n```'
    assert run(reply, "name") == ("Ada",)
    assert run(reply, "age") == ("36",)
    assert run(reply, "tags") == ("['a']",)  # str() of the value, as ComfyUI gives it
    assert run(reply, "none") == ("",)
    assert run(reply, "missing") == ("",)
    assert run("{broken {\"k\": 1}", "k") == ("1",)  # the first object that parses
    assert run("no json here", "k") == ("",)


def test_preview_any_text():
    run = T.PreviewAny().run
    assert run("plain").ui == {"text": ["plain"]} and run("plain").outputs == ("plain",)
    assert run(3).outputs == ("3",) and run(2.5).outputs == ("2.5",) and run(True).outputs == ("True",)
    assert run(None).outputs == ("None",)
    assert run({"a": [1, 2]}).outputs == ('{\n    "a": [\n        1,\n        2\n    ]\n}',)

    class Odd:
        def __str__(self):
            return "odd object"

    assert run(Odd()).outputs == ("odd object",)


def test_save_text_writes_numbered_files(tmp_path):
    from genloom.engine import context

    out = tmp_path / "out"
    token = context.use(context.RunContext(folders=Folders(models_dirs=[], output_dir=out)))
    try:
        first = T.SaveText().run("hello", "notes/run", "txt")
        second = T.SaveText().run('{"a": 1}', "notes/run", "json")
        third = T.SaveText().run("again", "notes/run", "txt")
        with pytest.raises(NodeInputError, match="filename_prefix"):
            T.SaveText().run("x", "../escape", "txt")
    finally:
        context.reset(token)
    assert first.outputs == ("hello",)
    assert first.ui == {"text": ["hello"], "files": [{"filename": "run_00001.txt", "subfolder": "notes",
                                                       "type": "output"}]}
    assert second.ui["files"][0]["filename"] == "run_00001.json"
    assert third.ui["files"][0]["filename"] == "run_00002.txt"
    assert (out / "notes" / "run_00001.txt").read_text() == "hello"
    assert (out / "notes" / "run_00001.json").read_text() == '{\n  "a": 1\n}'
    assert (out / "notes" / "run_00002.txt").read_text() == "again"


def _widget_inputs(node: dict, names: set) -> dict:
    """Mark linked widget inputs as the editor does (`widget: {name}` on the input entry)."""
    for entry in node["inputs"]:
        if entry["name"] in names:
            entry["widget"] = {"name": entry["name"]}
    return node


def text_workflow() -> dict:
    """Every text node in one editor file: a cleaned-up prompt flows through trim, replace, case,
    concatenation and the regex nodes into previews and a saved file."""
    S = "STRING"
    w = _widget_inputs
    nodes = [
        ui_node(1, "PrimitiveStringMultiline", outputs=[(S, S, [1])], widgets=["  Hello, World! 2024  "]),
        w(ui_node(2, "StringTrim", [("string", S, 1)], [(S, S, [2, 3, 4, 12, 14, 16, 18])], ["", "Both"]), {"string"}),
        w(ui_node(3, "StringReplace", [("string", S, 2)], [(S, S, [5])], ["", "World", "genloom"]), {"string"}),
        w(ui_node(4, "CaseConverter", [("string", S, 5)], [(S, S, [6, 20])], ["", "UPPERCASE"]), {"string"}),
        w(ui_node(5, "StringConcatenate", [("string_a", S, 6)], [(S, S, [7, 10, 22])], ["", "tail", " | "]),
          {"string_a"}),
        ui_node(6, "PreviewAny", [("source", "*", 7)], [(S, S, [])]),
        w(ui_node(7, "RegexExtract", [("string", S, 3)], [(S, S, [8])],
                  ["", r"(\d+)", "First Group", True, False, False, 1]), {"string"}),
        ui_node(8, "PreviewAny", [("source", "*", 8)], [(S, S, [])]),
        w(ui_node(9, "StringLength", [("string", S, 4)], [("length", "INT", [9])], [""]), {"string"}),
        ui_node(10, "PreviewAny", [("source", "*", 9)], [(S, S, [])]),
        ui_node(11, "SaveText", [("text", S, 10)], [("text", S, [])], ["notes/run", "md"]),
        ui_node(12, "JsonExtractString", [], [(S, S, [11])], ['Answer:\n```json\n{"name": "Ada", "age": 36}\n```',
                                                              "age"]),
        ui_node(13, "PreviewAny", [("source", "*", 11)], [(S, S, [])]),
        w(ui_node(14, "StringContains", [("string", S, 22)], [("contains", "BOOLEAN", [13])],
                  ["", "GENLOOM", True]), {"string"}),
        ui_node(15, "PreviewAny", [("source", "*", 13)], [(S, S, [])]),
        w(ui_node(16, "StringCompare", [("string_a", S, 20)], [("BOOLEAN", "BOOLEAN", [15])],
                  ["", "hello", "Starts With", False]), {"string_a"}),
        ui_node(17, "PreviewAny", [("source", "*", 15)], [(S, S, [])]),
        w(ui_node(18, "RegexMatch", [("string", S, 12)], [("matches", "BOOLEAN", [17])],
                  ["", "^hello", True, False, False]), {"string"}),
        ui_node(19, "PreviewAny", [("source", "*", 17)], [(S, S, [])]),
        w(ui_node(20, "RegexReplace", [("string", S, 14)], [(S, S, [19])], ["", r"\d", "#", True, False, False, 2]),
          {"string"}),
        ui_node(21, "PreviewAny", [("source", "*", 19)], [(S, S, [])]),
        w(ui_node(22, "StringSubstring", [("string", S, 16)], [(S, S, [21])], ["", 7, 12]), {"string"}),
        ui_node(23, "PreviewAny", [("source", "*", 21)], [(S, S, [])]),
        ui_node(24, "PrimitiveString", outputs=[(S, S, [23])], widgets=["one line"]),
        ui_node(25, "PreviewAny", [("source", "*", 23)], [(S, S, [])]),
        w(ui_node(26, "StringLength", [("string", S, 18)], [("length", "INT", [24])], [""]), {"string"}),
        ui_node(27, "PreviewAny", [("source", "*", 24)], [(S, S, [])]),
    ]
    return ui_workflow(nodes)


def test_text_nodes_from_an_editor_workflow(tmp_path):
    engine = genloom.Engine(output_dir=tmp_path, input_dir=tmp_path, device="cpu")
    result = engine.run(json.loads(json.dumps(text_workflow())))
    shown = {node: ui["text"][0] for node, ui in result.outputs.items() if node != "11"}
    assert shown == {
        "6": "HELLO, GENLOOM! 2024 | tail",  # trimmed, replaced, upper-cased, joined
        "8": "2024",  # the first group of (\d+)
        "10": "18",  # len("Hello, World! 2024")
        "13": "36",
        "15": "True",  # "GENLOOM" in the joined text, case-sensitive
        "17": "True",  # "HELLO, ..." starts with "hello", case-insensitive
        "19": "True",  # ^hello, case-insensitive
        "21": "Hello, World! ##24",  # the first two digits replaced
        "23": "World",  # characters 7..11
        "25": "one line",
        "27": "18",
    }
    assert result.outputs["11"] == {"text": ["HELLO, GENLOOM! 2024 | tail"],
                                    "files": [{"filename": "run_00001.md", "subfolder": "notes", "type": "output"}]}
    assert (tmp_path / "notes" / "run_00001.md").read_text() == "HELLO, GENLOOM! 2024 | tail"
