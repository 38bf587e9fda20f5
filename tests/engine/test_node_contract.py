"""The node contract, checked by machines: signatures at registration, errors that name node and input,
expanded nodes validated like submitted ones."""

from __future__ import annotations

import pytest

from genloom import Engine, ExecutionError
from genloom.engine.errors import GenloomError, NodeDefinitionError, NodeInputError
from genloom.engine.node import Input, Int, Node, NodeOutput, Out, String
from genloom.engine.registry import Registry


class Misspelt(Node):
    """Declares `width` but its run() takes `widht`."""

    inputs = [Int("width", 8), Int("height", 8)]
    outputs = [Out("INT")]

    def run(self, widht, height):
        return widht * height


class TakesAll(Node):
    """**kwargs accepts anything."""

    inputs = [Int("width", 8)]
    outputs = [Out("INT")]

    def run(self, **inputs):
        return inputs["width"]


class V1Misspelt:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {})}, "optional": {"extra": ("INT", {})}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "go"

    def go(self, txet):
        return (txet,)


class V1Optional:
    """Optional inputs a V1 function leaves to **kwargs or omits are accepted (packs in the wild do it)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {})}, "optional": {"extra": ("INT", {})}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "go"

    def go(self, text):
        return (text,)


def test_a_misspelt_parameter_is_refused_at_registration():
    reg = Registry()
    with pytest.raises(NodeDefinitionError, match=r"Misspelt: run\(\) does not accept the declared input\(s\) width"):
        reg.register(Misspelt)
    assert "Misspelt" not in reg
    reg.register(TakesAll)
    with pytest.raises(NodeDefinitionError, match="V1Misspelt: go.*text"):
        reg.register(V1Misspelt, name="V1Misspelt")
    reg.register(V1Optional, name="V1Optional")


def test_a_pack_with_a_bad_node_is_reported_and_the_rest_load():
    import types

    pack = types.ModuleType("pack")
    pack.NODES = [Misspelt, TakesAll]
    reg = Registry()
    assert reg.register_module(pack, source="pack") == 1
    assert "TakesAll" in reg and reg.problems[0]["node"] == "Misspelt"
    assert "widht" in reg.problems[0]["message"]


class NeedsPositive(Node):
    """Raises NodeInputError naming only its input."""

    inputs = [Int("value", 1, min=-10, max=10)]
    outputs = [Out("INT")]

    def run(self, value):
        if value <= 0:
            raise NodeInputError("value", f"must be positive, got {value}")
        return value


def test_node_input_errors_name_class_and_input_when_called_directly():
    with pytest.raises(NodeInputError) as info:
        NeedsPositive().run(value=-1)
    assert str(info.value) == "NeedsPositive: input 'value': must be positive, got -1"
    assert info.value.input_name == "value" and info.value.class_type == "NeedsPositive"
    assert isinstance(info.value, GenloomError) and isinstance(info.value, ValueError)


class Bad(Node):
    """Expands into a subgraph that is wrong in the way `mode` says."""

    inputs = [String("mode", "type")]
    outputs = [Out("INT")]

    def run(self, mode):
        if mode == "type":  # a STRING output linked into an INT input
            graph = {"s": {"class_type": "Text", "inputs": {}},
                     "p": {"class_type": "NeedsPositive", "inputs": {"value": ["s", 0]}}}
        elif mode == "range":
            graph = {"p": {"class_type": "NeedsPositive", "inputs": {"value": 99}}}
        elif mode == "missing":
            graph = {"p": {"class_type": "Add2", "inputs": {"a": 1}}}
        else:  # a valid one, with an INT given as a string the way JSON workflows do
            graph = {"p": {"class_type": "NeedsPositive", "inputs": {"value": "3"}}}
        return NodeOutput(["p", 0], expand=graph)


class Text(Node):
    """A string."""

    inputs = []
    outputs = [Out("STRING")]

    def run(self):
        return "x"


class Add2(Node):
    """a + b, both required links."""

    inputs = [Input("a", "INT"), Input("b", "INT")]
    outputs = [Out("INT")]

    def run(self, a, b):
        return a + b


class Show(Node):
    """Shows a value."""

    output_node = True
    inputs = [Input("value", "*")]
    outputs = []

    def run(self, value):
        return NodeOutput(ui={"value": [value]})


@pytest.fixture()
def engine(tmp_path):
    eng = Engine(load_builtins=False, output_dir=tmp_path)
    for cls in (NeedsPositive, Bad, Text, Add2, Show):
        eng.registry.register(cls)
    return eng


def test_the_executor_fills_node_id_class_and_input_name(engine):
    graph = {"7": {"class_type": "NeedsPositive", "inputs": {"value": -3}},
             "o": {"class_type": "Show", "inputs": {"value": ["7", 0]}}}
    events = []
    with pytest.raises(ExecutionError) as info:
        engine.run(graph, on_event=lambda t, d: events.append((t, d)))
    payload = info.value.payload
    assert payload["node_id"] == "7" and payload["node_type"] == "NeedsPositive"
    assert payload["input_name"] == "value" and payload["exception_type"] == "NodeInputError"
    assert payload["exception_message"] == "NeedsPositive: input 'value': must be positive, got -3"
    cause = info.value.__cause__
    assert cause.node_id == "7"
    assert [d for t, d in events if t == "execution_error"][0] == payload


@pytest.mark.parametrize("mode, words", [("type", "Return type mismatch"), ("range", "bigger than max"),
                                         ("missing", "Required input is missing")])
def test_expanded_nodes_are_validated_like_submitted_ones(engine, mode, words):
    graph = {"b": {"class_type": "Bad", "inputs": {"mode": mode}}, "o": {"class_type": "Show", "inputs": {"value": ["b", 0]}}}
    with pytest.raises(ExecutionError) as info:
        engine.run(graph)
    payload = info.value.payload
    assert payload["node_id"] == "b" and payload["exception_type"] == "ExpansionError"
    assert words in payload["exception_message"] and "expansion node 'p'" in payload["exception_message"]


def test_valid_expansions_get_their_constants_coerced_as_validation_does(engine):
    graph = {"b": {"class_type": "Bad", "inputs": {"mode": "ok"}}, "o": {"class_type": "Show", "inputs": {"value": ["b", 0]}}}
    assert engine.run(graph).outputs["o"] == {"value": [3]}
