"""genloom on a Ray cluster: one server (HTTP, websocket, queue, history, editor) in front of many
workers, each a Ray actor owning its own Engine. A layer above the runtime and the server's service
interfaces; the server reaches it only by name (`make_runner`) when `genloom serve --ray` is given,
and nothing here imports Ray until a cluster is asked for. See docs/scale-out.md.

- `workers.py`: connecting to Ray, starting the worker actors.
- `actor.py`: a worker: its Engine, its folders, the ordered buffer of what a prompt produced.
- `dispatch.py`: the server's Runner: queue order, cache affinity, streaming back, faults.
- `landing.py`: files coming back as bytes, renamed when two workers chose the same name.
- `sweep.py`: `genloom run --sweep/--inputs`, in one process or across workers.
"""

from __future__ import annotations

from dataclasses import replace

from .dispatch import Dispatcher
from .workers import ClusterConfig, connect, start_workers, stop_workers

__all__ = ["make_runner", "ClusterConfig", "Dispatcher"]


def make_runner(config, engine, store, hub, dirs):
    """The Runner `genloom serve --ray` uses (the server's `Config` gives the cluster's shape)."""
    cluster = ClusterConfig(address=config.ray, workers=config.workers, gpus_per_worker=config.gpus_per_worker,
                            cpus_per_worker=config.cpus_per_worker, plugins_dirs=list(config.plugins_dirs or ()),
                            models_dirs=config.models_dirs, cache=config.cache, device=config.device,
                            ship_code=config.ship_code, options=dict(engine.options))
    owned = connect(cluster)
    actors = start_workers(cluster)
    runner = Dispatcher(engine, store, hub, dirs, actors, on_stop=lambda: stop_workers(actors, owned))
    engine.add_free_hook(runner.free_all)  # POST /free reaches every worker
    return runner


class RunsWhere:
    """The queue service with each running prompt's worker in its extra_data (`genloom_worker`)."""

    def __init__(self, queue, runner: Dispatcher):
        self._queue, self._runner = queue, runner

    def __getattr__(self, name):
        return getattr(self._queue, name)

    async def queue(self):
        running, pending = await self._queue.queue()
        where = self._runner.running_on()
        running = [replace(r, extra_data={**r.extra_data, "genloom_worker": where[r.id]}) if r.id in where else r
                   for r in running]
        return running, pending


class ClusterEngine:
    """The engine service with the workers' devices (GET /system_stats lists every worker)."""

    def __init__(self, service, runner: Dispatcher):
        self._service, self._runner = service, runner

    def __getattr__(self, name):
        return getattr(self._service, name)

    def devices(self) -> list[dict]:
        return self._runner.devices()


def adapt(runner: Dispatcher, engine_service, queue_service):
    """What the server's routes see of a cluster: the workers' devices, where each prompt runs."""
    return ClusterEngine(engine_service, runner), RunsWhere(queue_service, runner)
