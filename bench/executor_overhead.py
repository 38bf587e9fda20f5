"""Engine overhead per node on graphs of trivial nodes: cold run, cached re-run, one leaf changed.

    .venv/bin/python bench/executor_overhead.py [--reps 5] [--quick]

Prints one table. "load+val" is reading and validating the workflow (part of every run); "run" is the
whole `engine.run` (load and validation included). Times are the best of --reps runs in CPU time, so
other processes on a shared machine disturb them little; the executor's share is run minus load+val.
"""

from __future__ import annotations

import argparse
import gc
import time

from genloom import Engine
from genloom.engine.node import Int, Input, Node, NodeOutput, Out
from genloom.engine.validate import validate
from genloom.engine.workflow import load_workflow


class BenchConst(Node):
    """A number."""

    inputs = [Int("value", 0)]
    outputs = [Out("INT")]

    def run(self, value):
        return value


class BenchAdd(Node):
    """The sum of two numbers."""

    inputs = [Input("a", "INT"), Int("b", 0)]
    outputs = [Out("INT")]

    def run(self, a, b):
        return a + b


class BenchSum(Node):
    """The sum of two linked numbers."""

    inputs = [Input("a", "INT"), Input("b", "INT")]
    outputs = [Out("INT")]

    def run(self, a, b):
        return a + b


class BenchShow(Node):
    """Shows a number (the output node)."""

    output_node = True
    inputs = [Input("value", "INT")]
    outputs = []

    def run(self, value):
        return NodeOutput(ui={"value": [value]})


def chain(n: int) -> tuple[dict, str]:
    graph = {"0": {"class_type": "BenchConst", "inputs": {"value": 1}}}
    for i in range(1, n - 1):
        graph[str(i)] = {"class_type": "BenchAdd", "inputs": {"a": [str(i - 1), 0], "b": 1}}
    graph["out"] = {"class_type": "BenchShow", "inputs": {"value": [str(n - 2), 0]}}
    return graph, "0"


def tree(leaves: int) -> tuple[dict, str]:
    graph = {f"l{i}": {"class_type": "BenchConst", "inputs": {"value": i}} for i in range(leaves)}
    level, depth = [f"l{i}" for i in range(leaves)], 0
    while len(level) > 1:
        depth += 1
        nxt = []
        for j in range(0, len(level), 2):
            node_id = f"s{depth}_{j // 2}"
            graph[node_id] = {"class_type": "BenchSum", "inputs": {"a": [level[j], 0], "b": [level[j + 1], 0]}}
            nxt.append(node_id)
        level = nxt
    graph["out"] = {"class_type": "BenchShow", "inputs": {"value": [level[0], 0]}}
    return graph, "l0"


def lattice(side: int) -> tuple[dict, str]:
    """A grid where each cell sums its left and upper neighbours: every result is shared."""
    graph = {}
    for i in range(side):
        for j in range(side):
            node_id = f"{i}_{j}"
            if i == 0 and j == 0:
                graph[node_id] = {"class_type": "BenchConst", "inputs": {"value": 1}}
            elif i == 0 or j == 0:
                prev = f"{i}_{j - 1}" if i == 0 else f"{i - 1}_{j}"
                graph[node_id] = {"class_type": "BenchAdd", "inputs": {"a": [prev, 0], "b": 0}}
            else:
                graph[node_id] = {"class_type": "BenchSum",
                                  "inputs": {"a": [f"{i - 1}_{j}", 0], "b": [f"{i}_{j - 1}", 0]}}
    graph["out"] = {"class_type": "BenchShow", "inputs": {"value": [f"{side - 1}_{side - 1}", 0]}}
    return graph, "0_0"


def best(fn, reps: int, setup=None) -> float:
    times = []
    for _ in range(reps):
        if setup is not None:
            setup()
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def measure(engine: Engine, name: str, graph: dict, leaf: str, reps: int) -> list[tuple]:
    n = len(graph)
    rows = []
    def load_and_validate():
        gc.disable()  # as inside engine.run
        try:
            validate(load_workflow(graph, engine.registry).graph, engine.registry)
        finally:
            gc.enable()

    load_val = best(load_and_validate, reps)

    t_cold = best(lambda: engine.run(graph), reps, setup=engine.free)
    engine.free()
    executed_cold = len(engine.run(graph).executed)
    t_cached = best(lambda: engine.run(graph), reps)
    executed_cached = len(engine.run(graph).executed)

    changed = [0]

    def change_leaf():
        changed[0] += 1
        graph[leaf]["inputs"]["value"] = 1000 + changed[0]
        return engine.run(graph)

    t_leaf = best(change_leaf, reps)
    executed_leaf = len(change_leaf().executed)
    for phase, total, executed in (("cold", t_cold, executed_cold), ("cached", t_cached, executed_cached),
                                   ("leaf changed", t_leaf, executed_leaf)):
        rows.append((name, n, phase, total * 1e3, total * 1e6 / n, load_val * 1e6 / n,
                     (total - load_val) * 1e6 / n, executed))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="skip the 10,000-node chain")
    args = parser.parse_args()
    engine = Engine(load_builtins=False, cache="default")
    for cls in (BenchConst, BenchAdd, BenchSum, BenchShow):
        engine.registry.register(cls)
    cases = [("chain", *chain(100)), ("chain", *chain(1000))]
    if not args.quick:
        cases.append(("chain", *chain(10000)))
    cases += [("fan-in tree", *tree(512)), ("lattice 32x32", *lattice(32))]
    header = ("graph", "nodes", "phase", "run ms", "us/node", "load+val us/node", "executor us/node", "executed")
    print(f"{header[0]:<14}{header[1]:>7}  {header[2]:<13}{header[3]:>9}{header[4]:>9}{header[5]:>18}"
          f"{header[6]:>18}{header[7]:>10}")
    for name, graph, leaf in cases:
        for row in measure(engine, name, graph, leaf, args.reps):
            print(f"{row[0]:<14}{row[1]:>7}  {row[2]:<13}{row[3]:>9.2f}{row[4]:>9.2f}{row[5]:>18.2f}"
                  f"{row[6]:>18.2f}{row[7]:>10}")


if __name__ == "__main__":
    main()
