"""Numbered upgrades of the genloom workflow envelope, applied one version at a time.

`MIGRATIONS[n]` turns a version-n envelope into a version n+1 one. To change the format: bump
`CURRENT_VERSION`, add the step for the previous version, never edit an old step.
"""

from __future__ import annotations

from typing import Callable

from .errors import GenloomError

CURRENT_VERSION = 1


class MigrationError(GenloomError, ValueError):
    """An envelope that cannot be brought to the current version."""


def _v0_to_v1(envelope: dict) -> dict:
    """Version 0 used ComfyUI's PNG-chunk names: "prompt" (API graph) and "workflow" (UI layout)."""
    out = {k: v for k, v in envelope.items() if k not in ("prompt", "workflow")}
    out["graph"] = envelope.get("prompt") or {}
    out["layout"] = envelope.get("workflow")
    out.setdefault("metadata", {})
    return out


MIGRATIONS: dict[int, Callable[[dict], dict]] = {0: _v0_to_v1}


def migrate(envelope: dict, migrations: dict[int, Callable[[dict], dict]] | None = None,
            current: int = CURRENT_VERSION) -> dict:
    """Upgrade `envelope` step by step to `current`; refuses versions from the future."""
    steps = MIGRATIONS if migrations is None else migrations
    version = envelope.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise MigrationError(f"schema_version must be a non-negative integer, got {version!r}")
    if version > current:
        raise MigrationError(f"workflow schema_version {version} is newer than this genloom "
                             f"understands ({current}); upgrade genloom")
    while version < current:
        step = steps.get(version)
        if step is None:
            raise MigrationError(f"no migration from schema_version {version} to {version + 1}")
        envelope = step(dict(envelope))
        version += 1
        envelope["schema_version"] = version
    return envelope
