"""The executor and the public Engine API, exercised with small native nodes."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import pytest

from genloom import Engine, ExecutionError, Interrupted, RunResult, WorkflowError
from genloom.engine import context
from genloom.engine.node import Blocker, Boolean, Hidden, Input, Int, Node, NodeOutput, Out, String


class Const(Node):
    """A number."""

    inputs = [Int("value", 0)]
    outputs = [Out("INT")]

    def run(self, value):
        return value


class Add(Node):
    """a + b."""

    inputs = [Input("a", "INT"), Int("b", 0)]
    outputs = [Out("INT")]

    def run(self, a, b):
        return (a + b,)


class Show(Node):
    """Shows a value."""

    output_node = True
    inputs = [Input("value", "*")]
    outputs = []

    def run(self, value):
        return NodeOutput(ui={"value": [value]})


class Fail(Node):
    """Raises when told to."""

    inputs = [Input("value", "INT"), Boolean("fail", True)]
    outputs = [Out("INT")]

    def run(self, value, fail):
        if fail:
            raise RuntimeError(f"failing on {value}")
        return value


class Switch(Node):
    """Picks one of two lazily evaluated inputs."""

    inputs = [Boolean("first", True), Input("a", "INT", lazy=True), Input("b", "INT", lazy=True)]
    outputs = [Out("INT")]
    asked: list = []

    def check_lazy(self, first, a, b):
        Switch.asked.append((first, a, b))
        return ["a"] if first else ["b"]

    def run(self, first, a, b):
        return a if first else b


class Steps(Node):
    """Reports progress for `steps` steps; remembers what the context said."""

    inputs = [Input("value", "INT"), Int("steps", 3), Int("delay_ms", 0, optional=True)]
    outputs = [Out("INT")]
    seen: list = []

    def run(self, value, steps, delay_ms):
        ctx = context.current()
        Steps.seen.append((ctx.node_id, ctx.prompt_id, dict(ctx.options)))
        for i in range(steps):
            time.sleep(delay_ms / 1000)
            ctx.progress(i + 1, steps, preview="img" if i == 0 else None)
        return value


class Sleep(Node):
    """Sleeps asynchronously, then passes its value on."""

    inputs = [Input("value", "INT"), Int("ms", 300)]
    outputs = [Out("INT")]

    async def run(self, value, ms):
        await asyncio.sleep(ms / 1000)
        assert context.current().node_id is not None
        return value


class Pair(Node):
    """Two INT inputs: shows list mapping."""

    inputs = [Input("a", "INT"), Input("b", "INT")]
    outputs = [Out("INT")]

    def run(self, a, b):
        return a * 10 + b


class Spread(Node):
    """Emits a list of numbers (an is_list output)."""

    inputs = [Int("count", 3)]
    outputs = [Out("INT", is_list=True)]

    def run(self, count):
        return (list(range(1, count + 1)),)


class Gather(Node):
    """Takes whole lists."""

    input_is_list = True
    inputs = [Input("values", "INT"), Int("scale", 1)]
    outputs = [Out("INT")]

    def run(self, values, scale):
        assert isinstance(scale, list) and len(scale) == 1
        return sum(values) * scale[0]


class Gate(Node):
    """Blocks its consumers when closed (with a message when given)."""

    inputs = [Input("value", "INT"), Boolean("open", False), String("message", "")]
    outputs = [Out("INT")]

    def run(self, value, open, message):
        return value if open else Blocker(message or None)


class Loop(Node):
    """Sums i..n by expanding into an Add and another Loop (the way loops are built)."""

    inputs = [Input("total", "INT"), Int("i", 1), Int("n", 10)]
    outputs = [Out("INT")]

    def run(self, total, i, n):
        if i > n:
            return total
        graph = {
            "add": {"class_type": "Add", "inputs": {"a": total, "b": i}},
            "next": {"class_type": "Loop", "inputs": {"total": ["add", 0], "i": i + 1, "n": n}},
        }
        return NodeOutput(["next", 0], expand=graph)


class AddFrom(Node):
    """Expands into an Add reading an existing node of the graph by id."""

    inputs = [Input("value", "INT"), String("source", "1")]
    outputs = [Out("INT")]

    def run(self, value, source):
        return NodeOutput(["x", 0], expand={"x": {"class_type": "Add", "inputs": {"a": [source, 0], "b": value}}})


class Hiddens(Node):
    """Reports its hidden inputs."""

    output_node = True
    inputs = [Int("value", 0), Hidden("prompt", "PROMPT"), Hidden("extra_pnginfo", "EXTRA_PNGINFO"),
              Hidden("unique_id", "UNIQUE_ID"), Hidden("dynprompt", "DYNPROMPT")]
    outputs = []

    def run(self, value, prompt, extra_pnginfo, unique_id, dynprompt):
        return NodeOutput(ui={"classes": [prompt[unique_id]["class_type"]], "png": [extra_pnginfo],
                              "id": [unique_id], "dyn": [dynprompt.get_node(unique_id)["class_type"]]})


class Stamp(Node):
    """Re-runs when its fingerprint changes; `mode` picks the fingerprint's behaviour."""

    inputs = [String("mode", "same")]
    outputs = [Out("INT")]
    runs = 0
    token = 0

    @classmethod
    def fingerprint(cls, mode):
        if mode == "nan":
            return math.nan
        if mode == "raise":
            raise OSError("cannot tell")
        return cls.token

    def run(self, mode):
        Stamp.runs += 1
        return Stamp.runs


class Dice(Node):
    """Not idempotent: never merged with an identical twin (its id joins its key), as in ComfyUI."""

    not_idempotent = True
    inputs = [Int("sides", 6)]
    outputs = [Out("INT")]

    def run(self, sides):
        return sides


class Roll(Node):
    """Expands into a node that asks to always re-run (fingerprint NaN): the expansion, and what
    follows, must always re-run."""

    inputs = [Int("sides", 6)]
    outputs = [Out("INT")]

    def run(self, sides):
        return NodeOutput(["d", 0], expand={"d": {"class_type": "Stamp", "inputs": {"mode": "nan"}}})


class Double(Node):
    """Expands into an Add of the value with itself (once per list item)."""

    inputs = [Input("value", "INT")]
    outputs = [Out("INT")]

    def run(self, value):
        return NodeOutput(["x", 0], expand={"x": {"class_type": "Add", "inputs": {"a": value, "b": value}}})


class EvenOnly(Node):
    """Blocks odd numbers."""

    inputs = [Input("value", "INT")]
    outputs = [Out("INT")]

    def run(self, value):
        return value if value % 2 == 0 else Blocker()


NODES = [Double, EvenOnly, Roll, Const, Add, Show, Fail, Switch, Steps, Sleep, Pair, Spread, Gather, Gate, Loop, AddFrom, Hiddens,
         Stamp, Dice]


@pytest.fixture()
def engine(tmp_path):
    eng = Engine(load_builtins=False, output_dir=tmp_path / "out", cache="default")
    for cls in NODES:
        eng.registry.register(cls)
    return eng


def n(class_type, **inputs):
    return {"class_type": class_type, "inputs": inputs}


def chain(length: int) -> dict:
    graph = {"0": n("Const", value=1)}
    for i in range(1, length):
        graph[str(i)] = n("Add", a=[str(i - 1), 0], b=1)
    graph["out"] = n("Show", value=[str(length - 1), 0])
    return graph


def events_of(engine, graph, **kw):
    events = []
    result = engine.run(graph, on_event=lambda t, d: events.append((t, d)), **kw)
    return result, events


def test_run_events_and_result_shapes(engine):
    graph = {"1": n("Const", value=2), "2": n("Add", a=["1", 0], b=3), "3": n("Show", value=["2", 0])}
    result, events = events_of(engine, graph, prompt_id="p1", extra_data={"extra_pnginfo": {}})
    assert isinstance(result, RunResult)
    assert result.prompt_id == "p1"
    assert result.outputs == {"3": {"value": [5]}}
    assert sorted(result.executed) == ["1", "2", "3"] and result.cached == []
    types = [t for t, _ in events]
    assert types[:2] == ["execution_start", "execution_cached"]
    assert types[-2:] == ["execution_success", "executing"]
    assert events[-1][1] == {"node": None, "display_node": None, "prompt_id": "p1"}
    executing = [d["node"] for t, d in events if t == "executing" and d["node"]]
    assert executing.index("1") < executing.index("2") < executing.index("3")
    executed = [d for t, d in events if t == "executed"]
    assert executed == [{"node": "3", "display_node": "3", "output": {"value": [5]}, "prompt_id": "p1"}]
    assert all(isinstance(d["timestamp"], int) for t, d in events if t.startswith("execution_"))


def test_cached_rerun_and_changed_constant(engine):
    graph = chain(20)
    engine.run(graph)
    result, events = events_of(engine, graph)
    assert result.executed == []
    assert set(result.cached) == set(graph)
    cached_event = [d for t, d in events if t == "execution_cached"][0]
    assert set(cached_event["nodes"]) == set(graph)
    # A cached output node still reports its stored UI payload.
    assert [d["output"] for t, d in events if t == "executed"] == [{"value": [20]}]
    assert not [d for t, d in events if t == "executing" and d["node"]]
    graph["15"]["inputs"]["b"] = 2
    result = engine.run(graph)
    assert sorted(result.executed) == sorted(["15", "16", "17", "18", "19", "out"])
    assert result.outputs["out"] == {"value": [21]}


def test_partial_execution_runs_only_ancestors(engine):
    graph = {"1": n("Const", value=1), "2": n("Show", value=["1", 0]),
             "3": n("Const", value=5), "4": n("Show", value=["3", 0])}
    result = engine.run(graph, outputs=["4"])
    assert sorted(result.executed) == ["3", "4"]
    assert list(result.outputs) == ["4"]


def test_ten_thousand_node_chain(engine):
    graph = chain(10_000)
    result = engine.run(graph)
    assert result.outputs["out"] == {"value": [10_000]}
    assert len(result.executed) == 10_001
    assert engine.run(graph).executed == []


def test_lazy_inputs_only_evaluate_what_is_asked(engine):
    Switch.asked.clear()
    graph = {"a": n("Const", value=1), "b": n("Const", value=2), "pick": n("Switch", first=True, a=["a", 0], b=["b", 0]),
             "out": n("Show", value=["pick", 0])}
    result = engine.run(graph)
    assert result.outputs["out"] == {"value": [1]}
    assert "b" not in result.executed
    assert Switch.asked == [(True, None, None), (True, 1, None)]
    # The unconsumed branch is not part of the key: changing it re-runs nothing.
    graph["b"]["inputs"]["value"] = 7
    result = engine.run(graph)
    assert result.executed == []
    # The consumed branch is.
    graph["a"]["inputs"]["value"] = 3
    result = engine.run(graph)
    assert sorted(result.executed) == ["a", "out", "pick"]
    assert result.outputs["out"] == {"value": [3]}
    graph["pick"]["inputs"]["first"] = False
    result = engine.run(graph)
    assert result.outputs["out"] == {"value": [7]}
    assert "b" in result.executed and "a" not in result.executed


def test_list_mapping_and_whole_lists(engine):
    graph = {"s": n("Spread", count=3), "t": n("Spread", count=2),
             "p": n("Pair", a=["s", 0], b=["t", 0]), "show": n("Show", value=["p", 0]),
             "g": n("Gather", values=["s", 0], scale=2), "show2": n("Show", value=["g", 0])}
    result = engine.run(graph)
    # Called once per index of the longest list; the shorter list repeats its last item.
    assert result.outputs["show"] == {"value": [11, 22, 32]}
    assert result.outputs["show2"] == {"value": [12]}


def test_async_nodes_run_concurrently(engine):
    graph = {"1": n("Const", value=1), "a": n("Sleep", value=["1", 0], ms=500), "b": n("Sleep", value=["1", 0], ms=500),
             "sa": n("Show", value=["a", 0]), "sb": n("Show", value=["b", 0])}
    start = time.perf_counter()
    result = engine.run(graph)
    elapsed = time.perf_counter() - start
    assert result.outputs == {"sa": {"value": [1]}, "sb": {"value": [1]}}
    assert elapsed < 0.9, elapsed  # one after the other would take 1 s


def test_run_async(engine):
    graph = {"1": n("Const", value=4), "2": n("Sleep", value=["1", 0], ms=10), "3": n("Show", value=["2", 0])}
    result = asyncio.run(engine.run_async(graph))
    assert result.outputs["3"] == {"value": [4]}


def test_blockers(engine):
    graph = {"1": n("Const", value=1), "g": n("Gate", value=["1", 0], open=False, message=""),
             "a": n("Add", a=["g", 0], b=1), "out": n("Show", value=["a", 0]),
             "other": n("Show", value=["1", 0])}
    result, events = events_of(engine, graph)
    assert "a" not in result.executed and "out" not in result.executed
    assert list(result.outputs) == ["other"]
    assert not [e for e in events if e[0] == "execution_error"]
    graph["g"]["inputs"]["message"] = "closed for the night"
    result, events = events_of(engine, graph)
    errors = [d for t, d in events if t == "execution_error"]
    assert len(errors) == 1 and errors[0]["node_id"] == "a" and errors[0]["node_type"] == "Add"
    assert "closed for the night" in errors[0]["exception_message"]
    assert result.errors == errors
    assert list(result.outputs) == ["other"]
    graph["g"]["inputs"]["open"] = True
    assert engine.run(graph).outputs["out"] == {"value": [2]}


def test_loop_by_recursive_expansion(engine):
    graph = {"0": n("Const", value=0), "5": n("Loop", total=["0", 0], i=1, n=10), "out": n("Show", value=["5", 0])}
    result = engine.run(graph)
    assert result.outputs["out"] == {"value": [55]}
    assert "5.add" in result.executed and "5.next" in result.executed and "5.next.next.add" in result.executed
    assert engine.run(graph).executed == []
    # Re-running the loop with a larger bound reuses every expanded node whose inputs did not change.
    graph["5"]["inputs"]["n"] = 11
    result = engine.run(graph)
    assert result.outputs["out"] == {"value": [66]}
    assert "5.add" in result.cached


def test_expansion_links_to_existing_nodes(engine):
    graph = {"1": n("Const", value=100), "2": n("Const", value=5), "e": n("AddFrom", value=["2", 0], source="1"),
             "out": n("Show", value=["e", 0])}
    result, events = events_of(engine, graph)
    assert result.outputs["out"] == {"value": [105]}
    executing = {d["node"]: d["display_node"] for t, d in events if t == "executing" and d["node"]}
    assert executing["e.x"] == "e"
    graph["e"]["inputs"]["source"] = "nowhere"
    with pytest.raises(ExecutionError) as info:
        engine.run(graph)
    assert info.value.payload["node_id"] == "e" and "nowhere" in info.value.payload["exception_message"]


def test_hidden_inputs(engine):
    graph = {"7": n("Hiddens", value=1)}
    result = engine.run(graph, extra_data={"extra_pnginfo": {"workflow": {"nodes": []}}})
    assert result.outputs["7"] == {"classes": ["Hiddens"], "png": [{"workflow": {"nodes": []}}], "id": ["7"],
                                   "dyn": ["Hiddens"]}


def test_fingerprint_and_not_idempotent(engine):
    graph = {"s": n("Stamp", mode="same"), "out": n("Show", value=["s", 0])}
    engine.run(graph)
    assert engine.run(graph).executed == []
    Stamp.token += 1
    assert sorted(engine.run(graph).executed) == ["out", "s"]
    for mode in ("nan", "raise"):
        graph["s"]["inputs"]["mode"] = mode
        engine.run(graph)
        assert sorted(engine.run(graph).executed) == ["out", "s"]
    # ComfyUI's NOT_IDEMPOTENT: an identical resubmission is served from cache (only NaN re-runs)...
    dice = {"d": n("Dice", sides=6), "a": n("Add", a=["d", 0], b=1), "out": n("Show", value=["a", 0])}
    engine.run(dice)
    assert engine.run(dice).executed == []
    # ...but two identical not-idempotent nodes are never merged: each runs, under its own key.
    twins = {**dice, "d2": n("Dice", sides=6), "a2": n("Add", a=["d2", 0], b=1), "out2": n("Show", value=["a2", 0])}
    assert sorted(engine.run(twins).executed) == ["a2", "d2", "out2"]


def test_list_items_expand_and_block_one_by_one(engine):
    graph = {"s": n("Spread", count=4), "d": n("Double", value=["s", 0]), "o": n("Show", value=["d", 0]),
             "e": n("EvenOnly", value=["s", 0]), "a": n("Add", a=["e", 0], b=100), "o2": n("Show", value=["a", 0])}
    result = engine.run(graph)
    assert result.outputs["o"] == {"value": [2, 4, 6, 8]}
    assert {"d.0.x", "d.3.x"} <= set(result.executed)
    assert result.outputs["o2"] == {"value": [102, 104]}  # the odd items were blocked, not errors
    assert result.errors == []


def test_volatile_expansion_reruns_downstream(engine):
    graph = {"r": n("Roll", sides=6), "a": n("Add", a=["r", 0], b=1), "out": n("Show", value=["a", 0])}
    first = engine.run(graph).outputs["out"]["value"][0]
    again = engine.run(graph)
    assert sorted(again.executed) == ["a", "out", "r", "r.d"]
    assert again.outputs["out"] == {"value": [first + 1]}  # Stamp counted one more run


def test_failing_node_keeps_what_was_done(engine):
    graph = {"1": n("Const", value=3), "2": n("Add", a=["1", 0], b=1), "f": n("Fail", value=["2", 0], fail=True),
             "out": n("Show", value=["f", 0])}
    events = []
    with pytest.raises(ExecutionError) as info:
        engine.run(graph, on_event=lambda t, d: events.append((t, d)), prompt_id="bad")
    payload = info.value.payload
    assert payload["node_id"] == "f" and payload["node_type"] == "Fail" and payload["prompt_id"] == "bad"
    assert payload["exception_type"] == "RuntimeError" and payload["exception_message"] == "failing on 4"
    assert isinstance(payload["traceback"], list) and any("failing on" in line for line in payload["traceback"])
    assert payload["current_inputs"] == {"value": [4], "fail": [True]}
    assert set(payload["executed"]) == {"1", "2"}
    assert [t for t, _ in events][-2:] == ["execution_error", "executing"]
    assert ("execution_error", payload) in events
    graph["f"]["inputs"]["fail"] = False
    result = engine.run(graph)
    assert sorted(result.executed) == ["f", "out"] and result.outputs["out"] == {"value": [4]}


def test_error_summarises_tensor_inputs(engine):
    torch = pytest.importorskip("torch")

    class TensorFail(Node):
        """Fails on a tensor."""

        inputs = [Input("x", "IMAGE")]
        outputs = [Out("IMAGE")]

        def run(self, x):
            raise ValueError("no")

    class MakeImage(Node):
        """A black image."""

        inputs = [Int("size", 4)]
        outputs = [Out("IMAGE")]

        def run(self, size):
            return torch.zeros(1, size, size, 3)

    engine.registry.register(TensorFail)
    engine.registry.register(MakeImage)
    graph = {"m": n("MakeImage", size=4), "t": n("TensorFail", x=["m", 0]), "o": n("Show", value=["t", 0])}
    with pytest.raises(ExecutionError) as info:
        engine.run(graph)
    assert info.value.payload["current_inputs"] == {"x": ["Tensor(shape=[1, 4, 4, 3], dtype=float32)"]}


def test_invalid_workflows(engine):
    with pytest.raises(WorkflowError) as info:
        engine.run({"1": n("Nope")})
    assert info.value.error["type"] == "missing_node_type"
    with pytest.raises(WorkflowError) as info:
        engine.run({"1": n("Show", value=["9", 0])})
    assert info.value.error["type"] == "prompt_outputs_failed_validation"
    assert "1" in info.value.node_errors
    with pytest.raises(WorkflowError) as info:
        engine.run("{not json")
    assert info.value.error["type"] == "invalid_prompt"
    # One valid output runs; the invalid one is reported.
    graph = {"1": n("Const", value=1), "ok": n("Show", value=["1", 0]), "bad": n("Show", value=["404", 0])}
    result = engine.run(graph)
    assert result.outputs == {"ok": {"value": [1]}}
    assert "bad" in result.node_errors
    assert engine.validate(graph).outputs == ["ok"]


def test_progress_preview_and_context(engine):
    Steps.seen.clear()
    graph = {"1": n("Const", value=1), "s": n("Steps", value=["1", 0], steps=3), "o": n("Show", value=["s", 0])}
    result, events = events_of(engine, graph, prompt_id="pp")
    progress = [d for t, d in events if t == "progress"]
    assert progress == [{"value": i, "max": 3, "prompt_id": "pp", "node": "s"} for i in (1, 2, 3)]
    assert [d for t, d in events if t == "preview"] == [{"image": "img", "prompt_id": "pp", "node": "s"}]
    assert Steps.seen[0][:2] == ("s", "pp")
    assert Steps.seen[0][2]["cache"] == "default"


def test_interrupt_from_another_thread(engine):
    graph = {"1": n("Const", value=1), "s": n("Steps", value=["1", 0], steps=200, delay_ms=10),
             "o": n("Show", value=["s", 0])}
    events, outcome = [], {}

    def worker():
        try:
            engine.run(graph, on_event=lambda t, d: events.append((t, d)))
        except Interrupted as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=worker)
    thread.start()
    deadline = time.time() + 10
    while not any(t == "progress" for t, _ in events) and time.time() < deadline:
        time.sleep(0.01)
    engine.interrupt()
    thread.join(10)
    assert isinstance(outcome.get("error"), Interrupted)
    interrupted = [d for t, d in events if t == "execution_interrupted"]
    assert interrupted and interrupted[0]["node_id"] == "s" and interrupted[0]["node_type"] == "Steps"
    assert interrupted[0]["executed"] == ["1"]
    # The engine stays usable and what was done stays cached.
    graph["s"]["inputs"]["steps"] = 1
    result = engine.run(graph)
    assert sorted(result.executed) == ["o", "s"]


def test_interrupt_while_async_nodes_wait(engine):
    graph = {"1": n("Const", value=1), "a": n("Sleep", value=["1", 0], ms=5000), "o": n("Show", value=["a", 0])}
    timer = threading.Timer(0.2, engine.interrupt)
    timer.start()
    start = time.perf_counter()
    with pytest.raises(Interrupted):
        engine.run(graph)
    assert time.perf_counter() - start < 2


def test_free_calls_hooks_and_drops_cache(engine):
    called = []
    engine.add_free_hook(lambda: called.append(True))
    graph = chain(3)
    engine.run(graph)
    assert len(engine.cache) > 0
    engine.free()
    assert called == [True] and len(engine.cache) == 0
    assert len(engine.run(graph).executed) == 4


def test_plugins_dir_and_workflow_file(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "twice.py").write_text(
        "from genloom.engine.node import Node, Int, Out, NodeOutput\n"
        "class Twice(Node):\n"
        "    '''Doubles.'''\n"
        "    output_node = True\n"
        "    inputs = [Int('value', 1)]\n"
        "    outputs = [Out('INT')]\n"
        "    def run(self, value):\n"
        "        return NodeOutput(value * 2, ui={'value': [value * 2]})\n"
        "NODES = [Twice]\n")
    engine = Engine(plugins_dir=plugins, load_builtins=False)
    path = tmp_path / "wf.json"
    path.write_text('{"1": {"class_type": "Twice", "inputs": {"value": 21}}}')
    assert engine.run(path).outputs == {"1": {"value": [42]}}


def test_runs_from_two_threads_are_serialised(engine):
    results, inside, overlap = [], [], []

    def on_event(event, data):
        if event == "execution_start":
            if inside:
                overlap.append(True)
            inside.append(True)
        elif event == "executing" and data["node"] is None:
            inside.pop()

    def worker(value):
        graph = {"1": n("Const", value=value), "s": n("Steps", value=["1", 0], steps=5, delay_ms=20),
                 "o": n("Show", value=["s", 0])}
        results.append(engine.run(graph, on_event=on_event).outputs["o"]["value"])

    threads = [threading.Thread(target=worker, args=(v,)) for v in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(results) == [[1], [2]] and not overlap
