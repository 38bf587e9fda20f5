"""What the compatibility modules read from genloom: the run context during a run, else the engine
the runtime bound (compat.bind) - so `folder_paths` in INPUT_TYPES answers for the server's folders."""

from __future__ import annotations

from genloom.engine import context
from genloom.engine.folders import Folders

from . import bound_engine

_fallback_folders = Folders()


def in_run() -> bool:
    return context._current.get() is not None


def folders() -> Folders:
    if in_run():
        return context.current().folders
    engine = bound_engine()
    return engine.folders if engine is not None else _fallback_folders


def run_context():
    """The running node's context (a quiet default outside runs)."""
    return context.current()
