"""The server's cost is linear in what it is sent: a long chain's events do not grow with the chain,
and a long dependency cycle is refused with a small 400."""

from __future__ import annotations

import json
import time
import uuid

from server_support import module_server

srv = module_server("hardening_scale")


def chain(n: int, prefix: str) -> dict:
    graph = {"0": {"class_type": "TestSleep", "inputs": {"value": 3, "steps": 1, "delay": 0, "preview": 0}}}
    for i in range(1, n - 1):
        graph[str(i)] = {"class_type": "TestSleep", "inputs": {"value": [str(i - 1), 0], "steps": 1, "delay": 0,
                                                               "preview": 0}}
    graph[str(n - 1)] = {"class_type": "TestSaveColor", "inputs": {"value": [str(n - 2), 0], "prefix": prefix}}
    return graph


def test_a_long_chain_sends_events_of_constant_size(srv):
    n = 1500
    cid = uuid.uuid4().hex
    ws = srv.ws(cid)
    try:
        prompt_id = srv.http.submit(chain(n, "chain"), client_id=cid)
        messages = ws.until_done(prompt_id, timeout=120)
    finally:
        ws.close()
    states = [m["data"]["nodes"] for m in messages if isinstance(m, dict) and m["type"] == "progress_state"]
    assert len(states) >= n
    assert max(len(nodes) for nodes in states) <= 2  # the running node and the one that just finished
    finished = [k for nodes in states for k, v in nodes.items() if v["state"] == "finished"]
    assert sorted(set(finished), key=int) == [str(i) for i in range(n)]  # every node reported finished
    size = sum(len(json.dumps(m)) for m in messages if isinstance(m, dict))
    assert size < 1500 * n  # was ~n * n * 250 bytes before progress_state was bounded
    assert srv.http.wait_history(prompt_id)["status"]["completed"]


def test_a_cycle_of_5000_nodes_is_a_small_400(srv):
    n = 5000
    graph = {str(i): {"class_type": "TestSleep", "inputs": {"value": [str((i + 1) % n), 0], "steps": 1,
                                                            "delay": 0, "preview": 0}} for i in range(n)}
    graph["out"] = {"class_type": "TestSaveColor", "inputs": {"value": ["0", 0], "prefix": "cycle"}}
    status, body = srv.http.post("/prompt", {"prompt": graph}, raw=True)
    assert status == 400
    assert len(body) < 8000  # was 1.1 GB
    answer = json.loads(body)
    (record,) = answer["node_errors"].values()
    assert record["errors"][0]["type"] == "dependency_cycle" and record["dependent_outputs"] == ["out"]


def test_thousands_of_failing_nodes_under_one_output_answer_quickly(srv):
    n = 5000
    graph = {str(i): {"class_type": "TestSleep", "inputs": {"value": [str(i - 1), 0] if i else 1}} for i in range(n)}
    graph["out"] = {"class_type": "TestSaveColor", "inputs": {"value": [str(n - 1), 0], "prefix": "missing"}}
    start = time.perf_counter()
    status, body = srv.http.post("/prompt", {"prompt": graph})
    assert status == 400 and len(body["node_errors"]) == n  # every node misses its steps, delay, preview
    assert all(r["dependent_outputs"] == ["out"] for r in body["node_errors"].values())
    assert time.perf_counter() - start < 6  # 8 s when each failing node walked the graph on its own
