"""Server overhead: round-trip time of a one-node prompt (POST /prompt until `executing` null arrives
on the websocket), throughput of 1,000 small prompts, and the per-node cost of one long chain of
trivial nodes (1k, 10k and 20k nodes), through a real server on loopback.

    python bench/server.py [--prompts 1000] [--round-trips 50] [--chains 1000,10000,20000]

The nodes do almost nothing, so the figures are the server's own cost: HTTP, validation, SQLite
bookkeeping, the worker hop, the events of every node and websocket delivery. A per-node cost that
grows with the chain's length means something on the server path is quadratic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import aiohttp

PLUGIN = '''
from genloom.engine.node import Node, Int, NodeOutput, Out


class BenchEcho(Node):
    """Shows the number it is given: one output node, no work."""
    output_node = True
    inputs = [Int("value", 0, min=0, max=10**9)]
    outputs = []

    def run(self, value):
        return NodeOutput(ui={"text": [str(value)]})


class BenchPass(Node):
    """Passes its number on: a link in a chain, no work."""
    inputs = [Int("value", 0, min=0, max=10**9)]
    outputs = [Out("INT")]

    def run(self, value):
        return (value,)


NODES = [BenchEcho, BenchPass]
'''


def start_server(base: Path):
    from genloom.server.app import Config, Server, serve

    plugins = base / "plugins"
    plugins.mkdir()
    (plugins / "bench_nodes.py").write_text(PLUGIN)
    server = Server(Config(port=0, data_dir=base / "data", plugins_dirs=[plugins], device="cpu",
                           cache="none", editor=False))
    ready, box = threading.Event(), {}

    def run():
        loop = asyncio.new_event_loop()
        box["loop"], box["stop"] = loop, asyncio.Event()
        loop.run_until_complete(serve(server, ready=lambda port: (box.update(port=port), ready.set()),
                                      stop=box["stop"]))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(60)
    return box, thread


def one_node(value: int) -> dict:
    return {"1": {"class_type": "BenchEcho", "inputs": {"value": value}}}


def chain(n: int) -> dict:
    """n - 1 BenchPass nodes in a line, then the BenchEcho output."""
    graph = {"0": {"class_type": "BenchPass", "inputs": {"value": 7}}}
    for i in range(1, n - 1):
        graph[str(i)] = {"class_type": "BenchPass", "inputs": {"value": [str(i - 1), 0]}}
    graph[str(n - 1)] = {"class_type": "BenchEcho", "inputs": {"value": [str(n - 2), 0]}}
    return graph


async def measure(port: int, round_trips: int, prompts: int, chains: list[int], timeout: float) -> dict:
    base, cid = f"http://127.0.0.1:{port}", uuid.uuid4().hex
    done: dict[str, asyncio.Future] = {}
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{base}/ws?clientId={cid}") as ws:
        async def listen():
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                if data["type"] == "executing" and data["data"]["node"] is None:
                    fut = done.get(data["data"]["prompt_id"])
                    if fut is not None and not fut.done():
                        fut.set_result(time.perf_counter())

        listener = asyncio.create_task(listen())

        async def submit(value: int, graph: dict | None = None) -> asyncio.Future:
            prompt_id = uuid.uuid4().hex
            done[prompt_id] = asyncio.get_running_loop().create_future()
            async with http.post(f"{base}/prompt", json={"prompt": graph or one_node(value), "client_id": cid,
                                                         "prompt_id": prompt_id}) as resp:
                assert resp.status == 200, await resp.text()
            return done[prompt_id]

        per_node = {}
        for n in chains:
            start = time.perf_counter()
            try:
                finished = await asyncio.wait_for(await submit(0, chain(n)), timeout)
                per_node[n] = (finished - start) / n
            except asyncio.TimeoutError:
                per_node[n] = None
                break  # the server is still busy with it

        await (await submit(0))  # warm-up
        rtts = []
        for i in range(round_trips):
            start = time.perf_counter()
            rtts.append(await (await submit(i + 1)) - start)

        start = time.perf_counter()
        futures = [await submit(10_000 + i) for i in range(prompts)]
        submitted = time.perf_counter() - start
        await asyncio.gather(*futures)
        total = time.perf_counter() - start
        listener.cancel()
    return {"chains": per_node, "rtt_median_ms": statistics.median(rtts) * 1000, "rtt_p90_ms": sorted(rtts)[int(0.9 * len(rtts))] * 1000,
            "submit_s": submitted, "total_s": total, "prompts_per_s": prompts / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--round-trips", type=int, default=50)
    parser.add_argument("--chains", default="1000,10000,20000", help="chain lengths, comma-separated")
    parser.add_argument("--chain-timeout", type=float, default=180.0, help="seconds to wait for one chain")
    args = parser.parse_args()
    chains = [int(n) for n in args.chains.split(",") if n]
    with tempfile.TemporaryDirectory() as tmp:
        box, thread = start_server(Path(tmp))
        try:
            result = asyncio.run(measure(box["port"], args.round_trips, args.prompts, chains, args.chain_timeout))
        finally:
            box["loop"].call_soon_threadsafe(box["stop"].set)
            thread.join(30)
    for n, cost in result["chains"].items():
        shown = f"{cost * 1e6:.0f} us/node ({cost * n:.2f} s)" if cost is not None else \
            f"did not finish in {args.chain_timeout:.0f} s"
        print(f"chain of {n} trivial nodes: {shown}")
    print(f"one-node prompt round trip: median {result['rtt_median_ms']:.1f} ms, "
          f"p90 {result['rtt_p90_ms']:.1f} ms ({args.round_trips} prompts, POST /prompt -> executing null)")
    print(f"{args.prompts} small prompts: {result['total_s']:.2f} s, {result['prompts_per_s']:.0f} prompts/s "
          f"(submitting took {result['submit_s']:.2f} s)")


if __name__ == "__main__":
    main()
