"""Property-based fuzzing (hypothesis) of workflow validation over every registered node: any graph
gets a Validation, never an escaping exception; NaN and infinities are refused for FLOAT inputs."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genloom.engine.errors import WorkflowError
from genloom.engine.validate import validate


@pytest.fixture(scope="module")
def registry():
    from genloom.runtime import build_registry

    return build_registry(entry_points_too=False)


ids = st.sampled_from(["1", "2", "3", "4"])
scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4),
                                                                                          inner, max_size=3),
                      max_leaves=8)
links = st.tuples(ids | st.text(max_size=3), st.integers(min_value=-2, max_value=5) | st.text(max_size=2)).map(list)


def _strict(value):
    def refuse(name):
        raise AssertionError(f"not strict JSON: {name}")
    json.loads(json.dumps(value, default=str), parse_constant=refuse)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_validation_never_raises(registry, data):
    names = sorted(registry.nodes)
    input_names = {n: [s.name for s in registry[n].inputs] or ["x"] for n in names}

    def node(class_type):
        return st.fixed_dictionaries({"class_type": st.just(class_type),
                                      "inputs": st.dictionaries(st.sampled_from(input_names[class_type]),
                                                                links | values, max_size=6)})

    graph = data.draw(st.dictionaries(ids, st.sampled_from(names).flatmap(node) | values, max_size=4))
    outputs = data.draw(st.none() | st.lists(ids, max_size=3))
    try:
        result = validate(graph, registry, outputs)
    except WorkflowError as exc:
        _strict(exc.error)
        return
    assert set(result.outputs) <= set(graph)
    for record in result.node_errors.values():
        assert all(error["type"] and error["message"] for error in record["errors"])
    if result.error is not None:
        assert result.error["type"] and not result.outputs


def test_nan_and_infinity_are_refused_for_float_inputs(registry):
    for value in (float("nan"), float("inf"), "-inf", "nan"):
        graph = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
                 "2": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["1", 0],
                                                                   "upscale_method": "nearest-exact",
                                                                   "scale_by": value}}}
        result = validate(graph, registry, ["2"])
        errors = result.node_errors["2"]["errors"]
        assert [e["extra_info"]["input_name"] for e in errors] == ["scale_by"]
        assert errors[0]["extra_info"]["received_value"] is None
        _strict(result.node_errors)
