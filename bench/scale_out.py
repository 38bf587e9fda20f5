"""Scale-out on Ray: throughput of 32 tiny-model prompts through `genloom serve --ray local` on 1 and
2 workers (prompts/s and the speed-up), the per-prompt overhead Ray adds over the single-process
server (round trip of a trivial prompt, ms), and the wall time of a 64-run seed sweep
(`genloom run --ray local --workers 2 --sweep`) next to the same sweep in one process.

    python bench/scale_out.py [--prompts 32] [--round-trips 30] [--sweep 64] [--workers 2]

The tiny model is workflows/txt2img.json on the shipped checkpoint; each prompt has its own seed, so
every prompt samples and decodes while the model stays loaded in each worker. Workers each get an
equal share of the machine's cores; on a machine with fewer cores than workers the speed-up is
bounded by the cores, not by genloom.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "server"))

from server_support import InProcessServer, prompt, write_plugins  # noqa: E402

TXT2IMG = ROOT / "workflows" / "txt2img.json"


def _graph(seed: int) -> dict:
    graph = copy.deepcopy(json.loads(TXT2IMG.read_text())["graph"])
    for node in graph.values():
        node.pop("_meta", None)
    graph["3"]["inputs"]["seed"] = seed
    return graph


def _server(base: Path, name: str, **config) -> InProcessServer:
    srv = InProcessServer(base / name / "data", write_plugins(base / name / "plugins"), **config)
    if config.get("ray"):
        end = time.monotonic() + 300
        while srv.server.worker.slots and not all(s.healthy for s in srv.server.worker.slots):
            if time.monotonic() > end:
                raise SystemExit("workers did not start")
            time.sleep(0.2)
    return srv


def _wait_all(srv, ids, timeout=1800) -> None:
    for pid in ids:
        history = srv.http.wait_history(pid, timeout)
        if history["status"]["status_str"] != "success":
            raise SystemExit(f"prompt {pid} failed: {history['status']['messages'][-1]}")


def throughput(base: Path, workers: int, prompts: int) -> float:
    srv = _server(base, f"tp{workers}", ray="local", workers=workers, cpus_per_worker=os.cpu_count() / workers)
    try:
        _wait_all(srv, [srv.http.submit(_graph(10_000 + i)) for i in range(workers * 2)])  # load the model
        start = time.perf_counter()
        _wait_all(srv, [srv.http.submit(_graph(i)) for i in range(prompts)])
        return prompts / (time.perf_counter() - start)
    finally:
        srv.stop()


def round_trip_ms(srv, n: int) -> float:
    times = []
    for i in range(n):
        start = time.perf_counter()
        srv.http.wait_history(srv.http.submit(prompt(value=i % 200, steps=1, delay=0.0)), 60)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[2:] if n > 4 else times)


def sweep_seconds(base: Path, runs: int, workers: int | None) -> float:
    from genloom.cluster import sweep
    from genloom.cluster.workers import ClusterConfig
    from genloom.runtime import Engine, set_threads

    out = base / f"sweep{workers or 0}"
    todo = [(f"seed={s}", _graph(s)) for s in range(runs)]
    start = time.perf_counter()
    if workers:
        cluster = ClusterConfig(workers=workers, cpus_per_worker=os.cpu_count() / workers, device="cpu")
        sweep.run_ray(cluster, todo, {k: out / k for k in ("input", "output", "temp")})
    else:
        set_threads()  # as `genloom run` does
        sweep.run_local(Engine(device="cpu", output_dir=out / "output"), todo)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--round-trips", type=int, default=30)
    p.add_argument("--sweep", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()

    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    base = Path(tempfile.mkdtemp(prefix="genloom-scale-"))
    print(f"machine: {os.cpu_count()} CPU cores; tiny model {TXT2IMG.name}")
    try:
        one = throughput(base, 1, args.prompts)
        many = throughput(base, args.workers, args.prompts)
        print(f"{args.prompts} prompts, 1 worker:  {one:.2f} prompts/s")
        print(f"{args.prompts} prompts, {args.workers} workers: {many:.2f} prompts/s  (speed-up {many / one:.2f}x)")

        plain = _server(base, "plain")
        try:
            single = round_trip_ms(plain, args.round_trips)
        finally:
            plain.stop()
        clustered = _server(base, "rt", ray="local", workers=1, cpus_per_worker=1)
        try:
            on_ray = round_trip_ms(clustered, args.round_trips)
        finally:
            clustered.stop()
        print(f"trivial prompt round trip: {single:.1f} ms single-process, {on_ray:.1f} ms on Ray "
              f"(overhead {on_ray - single:.1f} ms per prompt)")

        wall = sweep_seconds(base, args.sweep, args.workers)
        print(f"{args.sweep}-run seed sweep, {args.workers} Ray workers: {wall:.1f} s wall "
              "(workers' start-up and model load included)")
        local = sweep_seconds(base, args.sweep, None)
        print(f"{args.sweep}-run seed sweep, one process:   {local:.1f} s wall")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
