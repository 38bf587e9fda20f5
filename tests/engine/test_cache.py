"""Cache policies, size estimates and the guard against cached values edited in place."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genloom import Engine
from genloom.engine.cache import BudgetCache, Cache, LRUCache, NoCache, estimate_size, make_cache, parse_size
from genloom.engine.node import Input, Int, Node, NodeOutput, Out

torch.set_num_threads(1)


def test_specs():
    assert type(make_cache("default")) is Cache
    assert type(make_cache("none")) is NoCache
    lru = make_cache("lru:3")
    assert isinstance(lru, LRUCache) and lru.size == 3
    ram = make_cache("ram:2GB")
    assert isinstance(ram, BudgetCache) and ram.ram_budget == 2 * 1024 ** 3 and ram.vram_budget is None
    both = make_cache("ram:4GB,vram:512MB")
    assert both.ram_budget == 4 * 1024 ** 3 and both.vram_budget == 512 * 1024 ** 2
    assert make_cache("ram:1000").ram_budget == 1000
    assert parse_size("1.5k") == 1536
    for bad in ("lru:x", "lru:0", "ram:lots", "ram:2GB,ram:1GB", "vram:1GB", "fast", "ram:2XB"):
        with pytest.raises(ValueError):
            make_cache(bad)


def test_lru_keeps_most_recently_used():
    cache = LRUCache(2)
    cache.put("a", [[1]])
    cache.put("b", [[2]])
    assert cache.get("a").outputs == [[1]]  # a is now the most recent
    cache.put("c", [[3]])
    assert "b" not in cache and "a" in cache and "c" in cache
    cache.end_run({"c"})  # LRU ignores what the last workflow used
    assert len(cache) == 2


def test_default_policy_keeps_what_the_last_workflow_used():
    cache = Cache()
    for key in "abc":
        cache.put(key, [[key]])
    cache.end_run({"a", "c"})
    assert sorted(cache.entries) == ["a", "c"]


def test_byte_budget_evicts_oldest_and_refuses_oversized():
    cache = BudgetCache(ram=10_000)
    cache.put("a", [[np.zeros(4000, np.uint8)]])
    cache.put("b", [[np.zeros(4000, np.uint8)]])
    assert len(cache) == 2 and 8000 <= cache.ram < 10_000
    cache.put("c", [[np.zeros(4000, np.uint8)]])
    assert "a" not in cache and "b" in cache and "c" in cache
    cache.put("huge", [[np.zeros(20_000, np.uint8)]])
    assert "huge" not in cache and len(cache) == 2
    cache.clear()
    assert cache.ram == 0 and len(cache) == 0


def test_size_estimates():
    t = torch.zeros(10, 10)  # 400 bytes
    assert estimate_size(t) == (400, 0)
    assert estimate_size([t, t, {"again": t}])[0] < 400 + 400  # shared tensors count once
    assert estimate_size(np.zeros(100, np.float64))[0] == 800
    assert estimate_size(b"x" * 1000)[0] == 1000
    module = torch.nn.Linear(10, 10)  # 110 float32 parameters

    class Holder:
        def __init__(self):
            self.model = module

    assert estimate_size(Holder())[0] >= 440
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    assert estimate_size([[latent]])[0] >= 4 * 64 * 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_vram_budget_counts_gpu_tensors():
    cache = BudgetCache(ram=10 ** 9, vram=5000)
    cache.put("gpu", [[torch.zeros(1000, device="cuda")]])  # 4000 bytes
    assert cache.vram == 4000 and cache.ram < 1000
    cache.put("gpu2", [[torch.zeros(1000, device="cuda")]])
    assert "gpu" not in cache and cache.vram == 4000


class MakeTensor(Node):
    """A tensor of ones."""

    inputs = [Int("size", 4), Int("kb", 0)]
    outputs = [Out("TENSOR")]
    runs = 0

    def run(self, size, kb):
        MakeTensor.runs += 1
        return torch.ones(max(size, kb * 256))


class AddInPlace(Node):
    """Badly behaved: adds to its input in place."""

    inputs = [Input("x", "TENSOR"), Int("amount", 1)]
    outputs = [Out("FLOAT")]

    def run(self, x, amount):
        x.add_(amount)
        return float(x.sum())


class Total(Node):
    """Shows a float."""

    output_node = True
    inputs = [Input("value", "*")]
    outputs = []

    def run(self, value):
        return NodeOutput(ui={"value": [float(value) if not torch.is_tensor(value) else float(value.sum())]})


class Peek(Total):
    """Shows a float too (another node type, so it does not share Total's cache entries)."""


def engine_with(cache: str) -> Engine:
    engine = Engine(load_builtins=False, cache=cache)
    for cls in (MakeTensor, AddInPlace, Total, Peek):
        engine.registry.register(cls)
    return engine


def test_mutated_entry_is_dropped_not_served():
    engine = engine_with("default")
    graph = {"t": {"class_type": "MakeTensor", "inputs": {"size": 4, "kb": 0}},
             "m": {"class_type": "AddInPlace", "inputs": {"x": ["t", 0], "amount": 1}},
             "o": {"class_type": "Total", "inputs": {"value": ["m", 0]}}}
    first = engine.run(graph)
    assert first.outputs["o"] == {"value": [8.0]}
    graph["m"]["inputs"]["amount"] = 2  # m re-runs and needs t's tensor again
    second = engine.run(graph)
    # t's cached tensor was edited in place by m: it is recomputed, never served.
    assert "t" in second.executed
    assert second.outputs["o"] == {"value": [12.0]}


def test_policies_through_the_engine():
    graph = {"t": {"class_type": "MakeTensor", "inputs": {"size": 4, "kb": 0}},
             "o": {"class_type": "Total", "inputs": {"value": ["t", 0]}}}
    none = engine_with("none")
    none.run(graph)
    assert sorted(none.run(graph).executed) == ["o", "t"] and len(none.cache) == 0
    # A byte budget keeps what fits: a 400 KB tensor under a 300 KB budget is never kept.
    small = engine_with("ram:300KB")
    big = {"t": {"class_type": "MakeTensor", "inputs": {"size": 4, "kb": 400}},
           "o": {"class_type": "Total", "inputs": {"value": ["t", 0]}}}
    small.run(big)
    assert len(small.cache) == 1 and small.cache.ram < 10 * 1024  # only the output node's entry
    big["o2"] = {"class_type": "Peek", "inputs": {"value": ["t", 0]}}
    assert sorted(small.run(big).executed) == ["o2", "t"]
    lru = engine_with("lru:10")
    lru.run(graph)
    other = {"t": {"class_type": "MakeTensor", "inputs": {"size": 5, "kb": 0}},
             "o": {"class_type": "Total", "inputs": {"value": ["t", 0]}}}
    lru.run(other)
    assert lru.run(graph).executed == []  # LRU keeps the first workflow across a different one
    default = engine_with("default")
    default.run(graph)
    default.run(other)
    assert sorted(default.run(graph).executed) == ["o", "t"]  # default only keeps the last workflow
