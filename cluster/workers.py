"""Connecting to Ray and starting the worker actors (the only module that names Ray's API for that).

`local` starts a private Ray instance on this machine; any other address joins an existing cluster.
A Ray instance that is already initialised in this process (a test's, a notebook's) is used as is
and left running at the end. For a cluster at an address, genloom's own code travels to the workers
through Ray's runtime environment (`py_modules`), so its nodes need no genloom installed.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .actor import EngineWorker

# Environment variables workers inherit from the server (on remote machines too).
ENV_PREFIXES = ("GENLOOM_", "HF_", "TRANSFORMERS_", "DIFFUSERS_", "TORCH_", "OMP_", "MKL_")
MAX_RESTARTS = 3  # Ray restarts a worker whose process died this many times
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
DATA_DIRS = ("models",)  # package data beside the subpackages that workers read (the shipped models)


@dataclass
class ClusterConfig:
    address: str = "local"
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    plugins_dirs: list = field(default_factory=list)
    models_dirs: list | None = None
    cache: str = "default"
    device: str = "auto"
    ship_code: str = "auto"
    options: dict = field(default_factory=dict)  # engine options for every worker (the size limits)

    def ships_code(self) -> bool:
        return self.ship_code == "always" or (self.ship_code == "auto" and self.address != "local")


def connect(config: ClusterConfig) -> bool:
    """Make sure Ray is initialised; returns True when this call started it (and should shut it down).
    It ships genloom's code when `config.ships_code()`; a Ray this process already
    initialised keeps the runtime environment it was given."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("--ray needs Ray: pip install 'genloom[ray]'") from None

    if ray.is_initialized():
        return False
    # Ray uploads a local folder only for the whole job, so the code ships here
    ship = {"py_modules": [str(staged_package())]} if config.ships_code() else None
    if config.address == "local":
        ray.init(num_cpus=max(1, int(round(config.workers * config.cpus_per_worker))) + 1,
                 num_gpus=int(round(config.workers * config.gpus_per_worker)) or None,
                 include_dashboard=False, log_to_driver=False, runtime_env=ship)
    else:
        ray.init(address=config.address, log_to_driver=False, runtime_env=ship)
    return True


def pack_folder(folder: Path) -> dict[str, bytes]:
    """A plugins folder as {relative path: bytes}, caches left out."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc")}


@functools.cache
def staged_package() -> Path:
    """A copy of genloom's own package in a temporary folder named `genloom` (Ray's `py_modules` ships
    a folder under its own name; an editable install's folder has another one): the top-level modules,
    every subpackage with its data (diffusion/configs among them) and the shipped models; no tests,
    tools or caches. Made once per process, removed when the process ends."""
    folder = tempfile.mkdtemp(prefix="genloom-ship-")
    atexit.register(shutil.rmtree, folder, True)
    target = Path(folder) / "genloom"
    target.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for entry in sorted(PACKAGE_ROOT.iterdir()):
        if entry.is_file() and entry.suffix == ".py":
            shutil.copy2(entry, target / entry.name)
        elif entry.is_dir() and ((entry / "__init__.py").is_file() or entry.name in DATA_DIRS):
            shutil.copytree(entry, target / entry.name, ignore=skip)
    return target


def worker_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}


def start_workers(config: ClusterConfig, prefix: str = "genloom-worker") -> list[tuple[str, object]]:
    """Start `config.workers` actors; returns (name, actor handle) pairs (they may still be starting)."""
    import ray

    device = "cuda" if config.gpus_per_worker else config.device
    remote = ray.remote(num_cpus=config.cpus_per_worker, num_gpus=config.gpus_per_worker or 0,
                        max_restarts=MAX_RESTARTS, max_task_retries=0, max_concurrency=4)(EngineWorker)
    plugins = {i: pack_folder(d) for i, d in enumerate(config.plugins_dirs or ())}
    env = worker_env()
    models = [str(d) for d in config.models_dirs] if config.models_dirs else None
    out = []
    for i in range(config.workers):
        name = f"{prefix}-{i}"
        out.append((name, remote.remote(name, plugins, models, config.cache, device, env, dict(config.options))))
    return out


def stop_workers(actors: list, owned: bool) -> None:
    import ray

    for _, actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
    if owned:
        ray.shutdown()
