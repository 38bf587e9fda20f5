"""Loads node packs from entry points (group `genloom.nodes`) and from a plugins folder.

A pack that fails to import is reported with its error and the others still load. Nothing is ever
pip-installed: a pack's requirements are its user's business.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from importlib.metadata import entry_points
from pathlib import Path

from .registry import Registry

ENTRY_POINT_GROUP = "genloom.nodes"


def load_entry_points(registry: Registry) -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        source = f"entry point {ep.name}"
        try:
            obj = ep.load()
            if isinstance(obj, type(sys)):
                registry.register_module(obj, source=source)
            elif callable(obj) and not isinstance(obj, type):
                registry.register_module(_as_module(ep.name, obj()), source=source)
            else:
                registry.register(obj, source=source)
        except Exception as exc:  # noqa: BLE001
            registry.problems.append({"source": source, "message": _describe(exc)})


def _as_module(name, exported):
    """An entry point may be a function returning a NODE_CLASS_MAPPINGS dict or a list of Nodes."""
    module = type(sys)(name)
    if isinstance(exported, dict):
        module.NODE_CLASS_MAPPINGS = exported
    else:
        module.NODES = list(exported)
    return module


def load_folder(registry: Registry, folder: str | Path) -> list[str]:
    """Import every pack in `folder`: each `*.py` file and each sub-folder with an `__init__.py`."""
    folder = Path(folder)
    loaded = []
    if not folder.is_dir():
        registry.problems.append({"source": str(folder), "message": "plugins folder does not exist"})
        return loaded
    for path in sorted(folder.iterdir()):
        if path.name.startswith((".", "_")):
            continue
        if path.is_dir():
            init = path / "__init__.py"
            if not init.is_file():
                continue
            target, is_pkg = init, True
        elif path.suffix == ".py":
            target, is_pkg = path, False
        else:
            continue
        pack = path.stem if not is_pkg else path.name
        module_name = f"genloom_plugins.{pack}"
        try:
            spec = importlib.util.spec_from_file_location(
                module_name, target, submodule_search_locations=[str(path)] if is_pkg else None)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        except BaseException as exc:  # noqa: BLE001 - SystemExit from a broken pack included
            sys.modules.pop(module_name, None)
            registry.problems.append({"source": pack, "message": _describe(exc)})
            continue
        registry.register_module(module, source=pack)
        loaded.append(pack)
    return loaded


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}\n" + "".join(traceback.format_exception(exc)[-3:])


def build_registry(packs=(), plugins_dirs=(), entry_points_too: bool = True) -> Registry:
    """The one way a registry is made: `packs` (modules or module names, registered as built-in),
    then installed entry points, then each plugins folder (none overrides a built-in)."""
    registry = Registry()
    for pack in packs:
        module = importlib.import_module(pack) if isinstance(pack, str) else pack
        registry.register_module(module, source="builtin")
    if entry_points_too:
        load_entry_points(registry)
    if isinstance(plugins_dirs, (str, Path)):
        plugins_dirs = [plugins_dirs]
    for folder in plugins_dirs or ():
        load_folder(registry, folder)
    return registry
