"""ComfyUI V1 node classes run unchanged: list flags, IS_CHANGED, NOT_IDEMPOTENT, lazy, async, expand."""

from __future__ import annotations

import textwrap
import time
import types

import pytest

from genloom import Engine

PACK = textwrap.dedent('''
    import asyncio


    class V1Const:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": ("INT", {"default": 0, "min": -100, "max": 100})}}
        RETURN_TYPES = ("INT",)
        FUNCTION = "make"
        CATEGORY = "test"

        def make(self, value):
            return (value,)


    class V1Spread:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"count": ("INT", {"default": 3})}}
        RETURN_TYPES = ("INT",)
        OUTPUT_IS_LIST = (True,)
        FUNCTION = "spread"

        def spread(self, count):
            return (list(range(1, count + 1)),)


    class V1Double:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": ("INT",)}}
        RETURN_TYPES = ("INT",)
        FUNCTION = "double"

        def double(self, value):
            return [value * 2]  # V1 nodes may return a list


    class V1Sum:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"values": ("INT",), "offset": ("INT", {"default": 0})}}
        RETURN_TYPES = ("INT",)
        INPUT_IS_LIST = True
        FUNCTION = "total"

        def total(self, values, offset):
            return (sum(values) + offset[0],)


    class V1Save:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": ("INT",)},
                    "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"}}
        RETURN_TYPES = ()
        OUTPUT_NODE = True
        FUNCTION = "save"

        def save(self, value, prompt=None, extra_pnginfo=None, unique_id=None):
            return {"ui": {"values": [value], "who": [unique_id], "classes": [prompt[unique_id]["class_type"]],
                           "png": [extra_pnginfo]}}


    class V1File:
        """Re-reads a file when its content changes."""
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"path": ("STRING", {"default": ""}), "other": ("INT", {"default": 0})}}
        RETURN_TYPES = ("INT",)
        FUNCTION = "read"

        @classmethod
        def IS_CHANGED(cls, path):  # takes only `path`: `other` must not be passed
            with open(path) as fh:
                return fh.read()

        def read(self, path, other):
            with open(path) as fh:
                return (int(fh.read()) + other,)


    class V1Always:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": ("INT", {"default": 1})}}
        RETURN_TYPES = ("INT",)
        FUNCTION = "go"

        @classmethod
        def IS_CHANGED(cls, **kwargs):
            return float("NaN")

        def go(self, value):
            return (value,)


    class V1Random:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": ("INT", {"default": 1})}}
        RETURN_TYPES = ("INT",)
        NOT_IDEMPOTENT = True
        FUNCTION = "go"

        def go(self, value):
            return (value,)


    class V1Switch:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"use_a": ("BOOLEAN", {"default": True}),
                                 "a": ("INT", {"lazy": True, "forceInput": True}),
                                 "b": ("INT", {"lazy": True, "forceInput": True})}}
        RETURN_TYPES = ("INT",)
        FUNCTION = "pick"

        def check_lazy_status(self, use_a, a=None, b=None):
            if use_a and a is None:
                return ["a"]
            if not use_a and b is None:
                return ["b"]
            return []

        def pick(self, use_a, a=None, b=None):
            return (a if use_a else b,)


    class V1Wait:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": ("INT",), "ms": ("INT", {"default": 300})}}
        RETURN_TYPES = ("INT",)
        FUNCTION = "wait"

        async def wait(self, value, ms):
            await asyncio.sleep(ms / 1000)
            return (value,)


    class V1Triple:
        """Expands into two V1Double-like additions: value * 3 = value + value * 2."""
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": ("INT",)}}
        RETURN_TYPES = ("INT",)
        FUNCTION = "expand"

        def expand(self, value):
            graph = {"c": {"class_type": "V1Const", "inputs": {"value": value}},
                     "d": {"class_type": "V1Double", "inputs": {"value": ["c", 0]}},
                     "s": {"class_type": "V1Sum", "inputs": {"values": ["d", 0], "offset": value}}}
            return {"result": (["s", 0],), "expand": graph}


    NODE_CLASS_MAPPINGS = {cls.__name__: cls for cls in (V1Const, V1Spread, V1Double, V1Sum, V1Save, V1File,
                                                           V1Always, V1Random, V1Switch, V1Wait, V1Triple)}
    NODE_DISPLAY_NAME_MAPPINGS = {"V1Const": "Constant (V1)"}
''')


@pytest.fixture()
def engine(tmp_path):
    plugins = tmp_path / "custom_nodes"
    plugins.mkdir()
    (plugins / "v1pack.py").write_text(PACK)
    eng = Engine(plugins_dir=plugins, load_builtins=False)
    assert not eng.registry.problems, eng.registry.problems
    return eng


def n(class_type, **inputs):
    return {"class_type": class_type, "inputs": inputs}


def save(source):
    return n("V1Save", value=[source, 0])


def test_list_flags(engine):
    graph = {"s": n("V1Spread", count=3), "d": n("V1Double", value=["s", 0]), "out": save("d"),
             "t": n("V1Sum", values=["d", 0], offset=100), "out2": save("t")}
    result = engine.run(graph)
    assert result.outputs["out"]["values"] == [2, 4, 6]  # V1Double called once per item, V1Save too
    assert result.outputs["out"]["who"] == ["out", "out", "out"]
    assert result.outputs["out2"]["values"] == [112]


def test_hidden_inputs_and_ui_dict(engine):
    graph = {"1": n("V1Const", value=5), "9": save("1"), "10": save("1")}
    result = engine.run(graph, extra_data={"extra_pnginfo": {"workflow": {"id": "w"}}})
    assert result.outputs["9"] == {"values": [5], "who": ["9"], "classes": ["V1Save"],
                                   "png": [{"workflow": {"id": "w"}}]}
    # Nodes told their UNIQUE_ID are keyed by it: the identical node 10 is not served node 9's result.
    assert result.outputs["10"]["who"] == ["10"]
    assert engine.registry["V1Const"].display_name == "Constant (V1)"


def test_is_changed_gets_only_the_inputs_it_accepts(engine, tmp_path):
    data = tmp_path / "number.txt"
    data.write_text("7")
    graph = {"f": n("V1File", path=str(data), other=1), "out": save("f")}
    assert engine.run(graph).outputs["out"]["values"] == [8]
    assert engine.run(graph).executed == []  # IS_CHANGED(path=...) answered the same: cached
    data.write_text("9")
    result = engine.run(graph)
    assert sorted(result.executed) == ["f", "out"] and result.outputs["out"]["values"] == [10]


def test_nan_always_reruns_and_not_idempotent_is_keyed_by_id(engine):
    graph = {"x": n("V1Always", value=3), "out": save("x")}
    engine.run(graph)
    assert sorted(engine.run(graph).executed) == ["out", "x"]
    # ComfyUI: NOT_IDEMPOTENT puts the node id in the cache key: a resubmission is served from cache,
    # an identical twin under another id runs on its own.
    graph = {"x": n("V1Random", value=3), "out": save("x")}
    engine.run(graph)
    assert engine.run(graph).executed == []
    graph["y"], graph["out2"] = n("V1Random", value=3), save("y")
    assert sorted(engine.run(graph).executed) == ["out2", "y"]


def test_check_lazy_status(engine):
    graph = {"a": n("V1Const", value=1), "b": n("V1Const", value=2),
             "sw": n("V1Switch", use_a=False, a=["a", 0], b=["b", 0]), "out": save("sw")}
    result = engine.run(graph)
    assert result.outputs["out"]["values"] == [2]
    assert "a" not in result.executed
    graph["a"]["inputs"]["value"] = 50  # the branch not taken: nothing to redo
    assert engine.run(graph).executed == []


def test_async_function_runs_concurrently(engine):
    graph = {"c": n("V1Const", value=4), "w1": n("V1Wait", value=["c", 0], ms=500),
             "w2": n("V1Wait", value=["c", 0], ms=501), "o1": save("w1"), "o2": save("w2")}
    start = time.perf_counter()
    result = engine.run(graph)
    assert time.perf_counter() - start < 0.9  # one after the other would take 1 s
    assert result.outputs["o1"]["values"] == [4] and result.outputs["o2"]["values"] == [4]


def test_expand_from_a_v1_dict(engine):
    graph = {"c": n("V1Const", value=5), "t": n("V1Triple", value=["c", 0]), "out": save("t")}
    result = engine.run(graph)
    assert result.outputs["out"]["values"] == [15]
    assert {"t.d", "t.s"} <= set(result.executed)
    assert "t.c" in result.cached  # the same V1Const(5) as node c: one computation serves both


def test_register_module_works_too():
    module = types.ModuleType("v1_inline")
    exec(PACK, module.__dict__)
    engine = Engine(load_builtins=False)
    assert engine.registry.register_module(module, source="inline") == 11
    graph = {"s": n("V1Spread", count=2), "t": n("V1Sum", values=["s", 0], offset=0), "out": save("t")}
    assert engine.run(graph).outputs["out"]["values"] == [3]
