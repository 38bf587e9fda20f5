"""Cache keys hash values by type: nothing collides because a repr() was truncated or unordered."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genloom import Engine
from genloom.engine.graph import Link
from genloom.engine.keys import MAX_DEPTH, Unkeyable, node_key, value_digest
from genloom.engine.node import Input, Int, Node, NodeOutput, Out, String


def key(fingerprint=None, **inputs):
    return node_key("N", "1", fingerprint, inputs, {})


def test_arrays_differing_past_the_repr_ellipsis_get_different_keys():
    a = np.zeros(2000)
    b = a.copy()
    b[1000] = 1.0
    assert repr(a) == repr(b)  # the defect: numpy elides the middle of long arrays
    assert key(fingerprint=a) != key(fingerprint=b)
    assert key(fingerprint=a) == key(fingerprint=a.copy())


def test_tensors_key_by_dtype_shape_and_content():
    t = torch.zeros(3000)
    u = t.clone()
    u[1500] = 1
    assert value_digest(t) != value_digest(u)
    assert value_digest(t) == value_digest(t.clone())
    assert value_digest(t) != value_digest(t.double())
    assert value_digest(t) != value_digest(t.reshape(30, 100))
    assert value_digest(torch.zeros(2, dtype=torch.bfloat16)) != value_digest(torch.zeros(2, dtype=torch.float16))


def test_mappings_are_keyed_in_sorted_order_and_types_are_told_apart():
    assert value_digest({"a": 1, "b": np.ones(2)}) == value_digest({"b": np.ones(2), "a": 1})
    assert value_digest({"a": 1}) != value_digest({"a": 1.0}) != value_digest({"a": True})
    assert value_digest([1, 2]) != value_digest((1, 2))
    assert value_digest("1") != value_digest(1)
    assert value_digest(float("nan")) == value_digest(float("nan"))


def test_plain_inputs_take_the_fast_path_and_stay_exact():
    assert key(x=[1, 2, {"k": "v"}]) == key(x=[1, 2, {"k": "v"}])
    assert key(x=0.1) != key(x=0.30000000000000004 - 0.2)
    assert key(x=-0.0) != key(x=0.0)


def test_unreadable_or_too_deep_values_are_unkeyable_never_equal():
    with pytest.raises(Unkeyable):
        key(fingerprint=object())
    deep = []
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(Unkeyable):
        value_digest(deep)


def test_links_enter_by_upstream_key_and_slot():
    class Up:
        def __init__(self, key):
            self.key = key

    nodes = {"a": Up("k1"), "b": Up("k2"), "c": Up(None)}
    assert node_key("N", "1", None, {"x": Link("a", 0)}, nodes) != node_key("N", "1", None, {"x": Link("b", 0)}, nodes)
    assert node_key("N", "1", None, {"x": Link("a", 0)}, nodes) != node_key("N", "1", None, {"x": Link("a", 1)}, nodes)
    assert node_key("N", "1", None, {"x": Link("c", 0)}, nodes) is None


class ArrayStamp(Node):
    """Its fingerprint is a long array: only the element that changes tells two versions apart."""

    inputs = [String("label", "x")]
    outputs = [Out("INT")]
    runs = 0
    stamp = np.zeros(2000)

    @classmethod
    def fingerprint(cls, label):
        return cls.stamp

    def run(self, label):
        ArrayStamp.runs += 1
        return ArrayStamp.runs


class Opaque(Node):
    """A fingerprint the key cannot read: the node must re-run every time."""

    inputs = [String("label", "x")]
    outputs = [Out("INT")]
    runs = 0

    @classmethod
    def fingerprint(cls, label):
        return object()

    def run(self, label):
        Opaque.runs += 1
        return Opaque.runs


class PassTensor(Node):
    """Re-runs every time and expands into a node that receives a tensor constant (only an expansion
    can make one): that node is served when the tensor's content is unchanged."""

    inputs = [Int("scale", 1)]
    outputs = [Out("INT")]

    @classmethod
    def fingerprint(cls, scale):
        return float("nan")

    def run(self, scale):
        tensor = torch.full((2000,), float(scale))
        tensor[1000] = 7.0
        return NodeOutput(["s", 0], expand={"s": {"class_type": "SumTensor", "inputs": {"t": tensor}}})


class SumTensor(Node):
    """Sums a tensor."""

    inputs = [Input("t", "TENSOR")]
    outputs = [Out("INT")]
    runs = 0

    def run(self, t):
        SumTensor.runs += 1
        return int(t.sum())


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
    for cls in (ArrayStamp, Opaque, PassTensor, SumTensor, Show):
        eng.registry.register(cls)
    return eng


def test_a_stale_result_is_never_served_for_a_changed_array_fingerprint(engine):
    graph = {"s": {"class_type": "ArrayStamp", "inputs": {"label": "x"}}, "o": {"class_type": "Show", "inputs": {"value": ["s", 0]}}}
    first = engine.run(graph).outputs["o"]
    assert engine.run(graph).executed == []  # unchanged: served
    ArrayStamp.stamp = ArrayStamp.stamp.copy()
    ArrayStamp.stamp[1000] = 1.0
    result = engine.run(graph)
    assert "s" in result.executed and result.outputs["o"] != first


def test_an_unkeyable_fingerprint_makes_the_node_rerun(engine):
    graph = {"s": {"class_type": "Opaque", "inputs": {"label": "x"}}, "o": {"class_type": "Show", "inputs": {"value": ["s", 0]}}}
    engine.run(graph)
    before = Opaque.runs
    engine.run(graph)
    assert Opaque.runs == before + 1


def test_tensor_constants_from_expansions_are_cached_by_content(engine):
    graph = {"p": {"class_type": "PassTensor", "inputs": {"scale": 1}},
             "o": {"class_type": "Show", "inputs": {"value": ["p", 0]}}}
    assert engine.run(graph).outputs["o"] == {"value": [1999 + 7]}
    runs = SumTensor.runs
    result = engine.run(graph)
    assert "p" in result.executed and "p.s" in result.cached  # same tensor content: served
    assert SumTensor.runs == runs
    graph["p"]["inputs"]["scale"] = 2
    assert engine.run(graph).outputs["o"] == {"value": [2 * 1999 + 7]}
    assert SumTensor.runs == runs + 1
