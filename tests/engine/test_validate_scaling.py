"""Validation costs what the graph's size does: a long cycle is reported once with its path capped,
and many outputs over one long chain do not make node_errors quadratic."""

from __future__ import annotations

import json
import time
import tracemalloc

from genloom.engine.node import Input, Node, Out
from genloom.engine.registry import Registry
from genloom.engine.validate import CYCLE_SHOWN, validate


class Hop(Node):
    output_node = True
    inputs = [Input("x", "INT")]
    outputs = [Out("INT")]

    def run(self, x):
        return (x,)


def registry():
    reg = Registry()
    reg.register(Hop)
    return reg


def ring(n: int) -> dict:
    return {str(i): {"class_type": "Hop", "inputs": {"x": [str((i + 1) % n), 0]}} for i in range(n)}


def test_a_cycle_of_5000_is_reported_once_with_a_capped_path():
    tracemalloc.start()
    start = time.perf_counter()
    v = validate(ring(5000), registry(), ["0"])
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert list(v.node_errors) == ["0"]
    (err,) = v.node_errors["0"]["errors"]
    assert err["type"] == "dependency_cycle" and err["extra_info"]["cycle_length"] == 5000
    shown = err["extra_info"]["cycle"]
    assert len(shown) == CYCLE_SHOWN + 1 and shown[0] == shown[-1] == "0" and "..." in shown
    assert shown[:3] == ["0", "1", "2"] and shown[-2] == "4999"
    assert len(json.dumps({"error": v.error, "node_errors": v.node_errors})) < 4000
    assert peak < 40e6 and elapsed < 10  # was 1.2 GB and a 973 MB answer


def test_short_cycles_show_their_whole_path():
    v = validate(ring(3), registry(), ["1"])
    (err,) = v.node_errors["1"]["errors"]
    assert err["extra_info"]["cycle"] == ["1", "2", "0", "1"]


def test_every_node_an_output_of_a_long_cycle_stays_linear():
    n = 4000
    v = validate(ring(n), registry())  # every Hop is an output node: 4000 failed outputs
    (record,) = v.node_errors.values()
    assert record["dependent_outputs"] == [str(i) for i in range(n)]
    assert len(json.dumps(v.node_errors)) < 20 * n


def test_the_valid_part_of_a_graph_still_runs_beside_a_cycle():
    g = ring(50)
    g["a"] = {"class_type": "Hop", "inputs": {"x": 1}}
    g["b"] = {"class_type": "Hop", "inputs": {"x": ["a", 0]}}
    v = validate(g, registry(), ["b", "7"])
    assert v.ok and v.outputs == ["b"] and list(v.graph) == ["a", "b"]
    assert v.node_errors[next(iter(v.node_errors))]["dependent_outputs"] == ["7"]
