"""Loading node packs from a plugins folder and from installed entry points."""

import textwrap

import pytest

from genloom.engine.plugins import load_entry_points, load_folder
from genloom.runtime import build_registry
from genloom.engine.registry import Registry


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def call(schema, **inputs):
    """Run a node's function the way the executor does: an instance, then its FUNCTION."""
    return getattr(schema.factory(), schema.function)(**inputs)


@pytest.fixture
def plugins(tmp_path):
    root = tmp_path / "plugins"
    write(root / "native_pack.py", '''
        from genloom.engine.node import Int, Node, Out

        class Doubler(Node):
            """Doubles an integer."""
            category = "math"
            inputs = [Int("value", 1)]
            outputs = [Out("INT")]

            def run(self, value):
                return (value * 2,)

        from genloom.nodes.primitives import PrimitiveInt  # re-exported: must not be taken over

        NODES = [Doubler, PrimitiveInt]
    ''')
    write(root / "v1_pack" / "__init__.py", '''
        from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
        WEB_DIRECTORY = "./js"
    ''')
    write(root / "v1_pack" / "nodes.py", '''
        class TextRepeat:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"text": ("STRING", {"default": "hi"}),
                                     "times": ("INT", {"default": 2, "min": 1, "max": 10})}}
            RETURN_TYPES = ("STRING",)
            FUNCTION = "repeat"
            CATEGORY = "text"

            def repeat(self, text, times):
                return (text * times,)

        NODE_CLASS_MAPPINGS = {"TextRepeat (v1)": TextRepeat}
        NODE_DISPLAY_NAME_MAPPINGS = {"TextRepeat (v1)": "Repeat Text"}
    ''')
    write(root / "broken_pack.py", '''
        import genloom_no_such_dependency  # the pack's requirement is not installed
    ''')
    write(root / "exits_pack.py", '''
        import sys
        sys.exit("this pack refuses to load")
    ''')
    write(root / "override_pack.py", '''
        class PrimitiveInt:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {}}
            RETURN_TYPES = ("INT",)
            FUNCTION = "go"

            def go(self):
                return (666,)

        class StillFine:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {}}
            RETURN_TYPES = ("INT",)
            FUNCTION = "go"

            def go(self):
                return (1,)

        NODE_CLASS_MAPPINGS = {"PrimitiveInt": PrimitiveInt, "StillFine": StillFine}
    ''')
    write(root / "old_pack.py.disabled", "raise RuntimeError('never imported')\n")
    write(root / "folder_pack.disabled" / "__init__.py", "raise RuntimeError('never imported')\n")
    write(root / "notes.txt", "not a pack\n")
    (root / "folder_without_init").mkdir()
    return root


def test_plugins_folder(plugins):
    reg = build_registry(plugins, entry_points_too=False)
    doubler = reg["Doubler"]
    assert doubler.source == "native_pack" and doubler.category == "math"
    assert call(doubler, value=21) == (42,)
    v1 = reg["TextRepeat (v1)"]
    assert v1.is_v1 and v1.display_name == "Repeat Text" and v1.source == "v1_pack"
    assert v1.python_module == "custom_nodes.v1_pack" and doubler.python_module == "custom_nodes.native_pack"
    assert call(v1, text="ab", times=3) == ("ababab",)
    assert reg["StillFine"].source == "override_pack"

    problems = {p["source"]: p for p in reg.problems}
    assert set(problems) == {"broken_pack", "exits_pack", "override_pack"}
    assert "ModuleNotFoundError" in problems["broken_pack"]["message"]
    assert "genloom_no_such_dependency" in problems["broken_pack"]["message"]
    assert "this pack refuses to load" in problems["exits_pack"]["message"]
    assert problems["override_pack"]["node"] == "PrimitiveInt"
    assert "already defined (built-in)" in problems["override_pack"]["message"]
    builtin = reg["PrimitiveInt"]
    assert builtin.source == "builtin" and not builtin.is_v1


def test_missing_folder_is_reported(tmp_path):
    reg = Registry()
    assert load_folder(reg, tmp_path / "nope") == []
    assert reg.problems[0]["message"] == "plugins folder does not exist"


def test_entry_points_from_an_installed_distribution(tmp_path, monkeypatch):
    site = tmp_path / "site"
    dist = site / "genloom_demo_pack-0.1.dist-info"
    write(dist / "METADATA", "Metadata-Version: 2.1\nName: genloom-demo-pack\nVersion: 0.1\n")
    write(dist / "entry_points.txt", textwrap.dedent('''
        [genloom.nodes]
        demo = genloom_demo_pack_mod
        mapped = genloom_demo_pack_mod:mappings
        single = genloom_demo_pack_mod:Squarer
        missing = genloom_demo_pack_not_there
        [console_scripts]
        unrelated = genloom_demo_pack_mod:main
    '''))
    write(site / "genloom_demo_pack_mod.py", '''
        from genloom.engine.node import Int, Node, Out

        class Negate(Node):
            inputs = [Int("value", 1)]
            outputs = [Out("INT")]

            def run(self, value):
                return -value

        class Squarer(Node):
            inputs = [Int("value", 1)]
            outputs = [Out("INT")]

            def run(self, value):
                return value * value

        class V1Half:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"value": ("FLOAT", {"default": 1.0})}}
            RETURN_TYPES = ("FLOAT",)
            FUNCTION = "half"

            def half(self, value):
                return (value / 2,)

        NODES = [Negate]

        def mappings():
            return {"Half": V1Half}
    ''')
    monkeypatch.syspath_prepend(str(site))
    reg = Registry()
    load_entry_points(reg)
    assert reg["Negate"].source == "entry point demo" and call(reg["Negate"], value=3) == -3
    assert reg["Half"].source == "entry point mapped" and call(reg["Half"], value=3.0) == (1.5,)
    assert reg["Squarer"].source == "entry point single"
    (problem,) = reg.problems
    assert problem["source"] == "entry point missing" and "genloom_demo_pack_not_there" in problem["message"]
