"""`genloom run --sweep/--inputs`: many runs of one workflow, in this process or across Ray workers,
with one progress bar; every output lands in the local output folder.

The runs are given as ready API graphs (the CLI applies each combination's overrides). On Ray each
worker takes one run at a time, so its cache keeps what the runs share (the model stays loaded, a
seed sweep re-runs only the sampler and what follows); the input files a run names travel as bytes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Outcome:
    label: str
    outputs: dict
    error: dict | None


def combinations(axes: list[tuple[str, list[str]]]) -> list[list[str]]:
    """The cartesian product of (NODE.INPUT, values) axes as lists of NODE.INPUT=VALUE overrides."""
    if not axes:
        return [[]]
    targets = [t for t, _ in axes]
    return [[f"{t}={v}" for t, v in zip(targets, combo)] for combo in itertools.product(*(v for _, v in axes))]


def parse_sweep(spec: str) -> tuple[str, list[str]]:
    """NODE.INPUT=v1,v2,... -> (NODE.INPUT, [v1, v2, ...])."""
    target, eq, values = spec.partition("=")
    if not eq or "." not in target or not values:
        raise ValueError(f"--sweep expects NODE.INPUT=v1,v2,..., got {spec!r}")
    return target, values.split(",")


def folder_files(folder: Path) -> list[str]:
    """The files of an --inputs folder (names relative to it), in name order."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and not p.name.startswith("."))


def run_local(engine, runs: list[tuple[str, dict]], extra_data=None, progress=None) -> list[Outcome]:
    """One engine, one run after another (what a user tries before going to a cluster)."""
    from .actor import run_errors

    out = []
    for label, graph in runs:
        with run_errors() as outcome:
            result = engine.run(graph, extra_data=extra_data)
            outcome.update(outputs=result.outputs, error=result.errors[0] if result.errors else None)
        out.append(Outcome(label, outcome["outputs"], outcome["error"]))
        if progress is not None:
            progress.update(1)
    return out


def run_ray(cluster, runs: list[tuple[str, dict]], dirs: dict[str, Path], extra_data=None,
            progress=None) -> list[Outcome]:
    """Across `cluster.workers` Ray actors (`cluster` a workers.ClusterConfig); files written by the
    workers land under dirs["output"] / dirs["temp"], renamed when two workers chose one name."""
    import ray

    from .dispatch import inputs_named
    from .landing import Landing
    from .workers import connect, start_workers, stop_workers

    owned = connect(cluster)
    actors = start_workers(cluster, prefix="genloom-run")
    landing = Landing({k: dirs[k] for k in ("output", "temp")})
    sent = {name: set() for name, _ in actors}
    todo = list(enumerate(runs))[::-1]
    results: dict[int, Outcome] = {}
    busy: dict = {}  # object ref -> (run index, worker name)

    def submit(name, actor):
        index, (label, graph) = todo.pop()
        files = inputs_named(dirs["input"], graph, sent[name])
        busy[actor.run_headless.remote(graph, extra_data, files)] = (index, name, actor)

    try:
        for name, actor in actors:
            if todo:
                submit(name, actor)
        while busy:
            ready, _ = ray.wait(list(busy), num_returns=1)
            index, name, actor = busy.pop(ready[0])
            try:
                got = ray.get(ready[0])
            except ray.exceptions.RayActorError as exc:
                got = {"files": [], "outputs": {}, "error": {"exception_message": f"worker {name} was lost: {exc}"}}
            landing.forget(name)  # the worker's folders are emptied before each run
            for kind, rel, data in got["files"]:
                landing.land(name, kind, rel, data)
            results[index] = Outcome(runs[index][0], landing.patch(name, got["outputs"]), got["error"])
            if progress is not None:
                progress.update(1)
            if todo:
                submit(name, actor)
    finally:
        stop_workers(actors, owned)
    return [results[i] for i in range(len(runs))]
