"""The composition root: genloom's engine wired to genloom's own node packs.

The engine layer knows no pack; this module names the built-in ones, and the CLI, the server and
`genloom.Engine` build their registries and engines here. Importing it imports no torch: packs keep
their heavy imports inside the functions that need them.
"""

from __future__ import annotations

import os
import sys

from . import compat
from .engine import api, plugins
from .engine.registry import Registry
from .nodes import PACKS

__all__ = ["Engine", "build_registry", "PACKS", "default_threads", "set_threads"]

# Environment variables the CPU math libraries read when torch loads.
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def build_registry(plugins_dirs=(), entry_points_too: bool = True, builtins: bool = True) -> Registry:
    """Built-in packs, installed entry points, then each plugins folder. Loading plugin folders
    installs ComfyUI's module names (genloom.compat) first: the packs import them."""
    return plugins.build_registry(PACKS if builtins else (), plugins_dirs, entry_points_too,
                                  prepare=compat.prepare_load)


class Engine(api.Engine):
    """`genloom.Engine`: the engine with genloom's built-in node packs."""

    builtin_packs = tuple(PACKS)

    def __init__(self, plugins_dir=None, *args, registry: Registry | None = None,
                 load_builtins: bool = True, **kwargs):
        if registry is None and plugins_dir is not None:
            registry = build_registry([plugins_dir], entry_points_too=load_builtins, builtins=load_builtins)
        super().__init__(None, *args, registry=registry, load_builtins=load_builtins, **kwargs)
        if compat.installed():
            compat.bind(self)  # folder_paths & co. outside a run answer for this engine


def default_threads(cpus: int | None = None) -> int:
    """genloom's CPU thread default: half the cores (about the physical ones), at most 8, at least 1.
    Torch's own default (every core) oversubscribes a machine that does anything else: on a busy
    2-core box a tiny 20-step prompt took 9.5-22 s with it and 0.45 s with one thread."""
    cpus = cpus or os.cpu_count() or 1
    return max(1, min(8, cpus // 2))


def thread_count(text: str) -> int:
    """A --threads value (argparse `type`): a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"expected a whole number of at least 1, not {text!r}")
    return int(text)


def set_threads(threads: int | None = None) -> int:
    """Choose the CPU threads torch computes with, before it loads if it has not yet (the CLI and the
    server call this at start). `threads` wins; without it GENLOOM_THREADS, then an OMP_NUM_THREADS
    the user set, then `default_threads()`. Returns the count chosen."""
    if threads is None:
        given = os.environ.get("GENLOOM_THREADS") or os.environ.get("OMP_NUM_THREADS")
        threads = int(given) if given and given.strip().isdigit() and int(given) > 0 else default_threads()
    if threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    for name in _THREAD_VARS:
        os.environ[name] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    return threads
