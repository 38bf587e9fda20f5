"""The composition root: genloom's engine wired to genloom's own node packs.

The engine layer knows no pack; this module names the built-in ones, and the CLI, the server and
`genloom.Engine` build their registries and engines here. Importing it imports no torch: packs keep
their heavy imports inside the functions that need them.
"""

from __future__ import annotations

from .engine import api, plugins
from .engine.registry import Registry
from .nodes import PACKS

__all__ = ["Engine", "build_registry", "PACKS"]


def build_registry(plugins_dirs=(), entry_points_too: bool = True, builtins: bool = True) -> Registry:
    """Built-in packs, installed entry points, then each plugins folder."""
    return plugins.build_registry(PACKS if builtins else (), plugins_dirs, entry_points_too)


class Engine(api.Engine):
    """`genloom.Engine`: the engine with genloom's built-in node packs."""

    builtin_packs = tuple(PACKS)
