"""Loads node packs from entry points (group `genloom.nodes`) and from plugins folders.

Folder packs load the way ComfyUI loads custom nodes: each entry of the folder in name order, a
sub-folder with `__init__.py` as a real package (registered in `sys.modules` under its path, with its
folder as the package's search location, so every relative-import form works) and a `*.py` file as a
module; `.disabled` entries, `__pycache__` and hidden entries are skipped. A pack exports
NODE_CLASS_MAPPINGS (+ NODE_DISPLAY_NAME_MAPPINGS, WEB_DIRECTORY), genloom's NODES, or a V3
`comfy_entrypoint()` returning an extension whose `get_node_list()` lists the classes.

A pack that fails to import is reported with its error and, for a missing module, the requirement of
the pack that provides it (requirements.txt or pyproject dependencies); the others still load.
Nothing is ever pip-installed: a pack's requirements are its user's business.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import traceback
from importlib.metadata import entry_points
from pathlib import Path

from .coroutines import run_sync
from .registry import Registry
from .requirements import requirement_for

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


def pack_entries(folder: Path) -> list[tuple[str, Path, Path]]:
    """(pack name, pack path, file to import) for each pack in `folder`, in name order."""
    found = []
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        name = path.name
        if name.startswith(".") or name == "__pycache__" or name.endswith(".disabled"):
            continue
        if path.is_dir():
            init = path / "__init__.py"
            if init.is_file():
                found.append((name, path, init))
        elif path.suffix == ".py":
            found.append((path.stem, path, path))
    return found


def module_name_of(path: Path) -> str:
    """The sys.modules name a pack is imported under, as ComfyUI names it: a package by its folder's
    path (dots written `_x_`), a single file by its path without `.py`."""
    return str(path).replace(".", "_x_") if path.is_dir() else str(path.with_suffix(""))


def import_pack(path: Path, init: Path):
    """Import one pack as ComfyUI does; the module, or raises what the pack raised."""
    name = module_name_of(path)
    is_pkg = path.is_dir()
    spec = importlib.util.spec_from_file_location(
        name, init, submodule_search_locations=[str(path)] if is_pkg else None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_folder(registry: Registry, folder: str | Path) -> list[str]:
    """Import every pack in `folder`; returns the names of those that loaded."""
    folder = Path(folder).resolve()
    loaded = []
    if not folder.is_dir():
        registry.problems.append({"source": str(folder), "message": "plugins folder does not exist"})
        return loaded
    for pack, path, init in pack_entries(folder):
        record = {"name": pack, "path": str(path), "nodes": 0, "web_dir": None, "error": None}
        registry.packs.setdefault(pack, record)
        try:
            module = import_pack(path, init)
            if getattr(module, "NODE_CLASS_MAPPINGS", None) is None and hasattr(module, "comfy_entrypoint"):
                record["nodes"] = _register_extension(registry, module, pack)
            else:
                record["nodes"] = registry.register_module(module, source=pack)
                _mark_module(module, pack)
        except BaseException as exc:  # noqa: BLE001 - SystemExit from a broken pack included
            problem = {"source": pack, "message": _describe(exc)}
            problem.update(requirement_for(exc, path))
            record["error"] = problem
            registry.problems.append(problem)
            continue
        web = getattr(module, "WEB_DIRECTORY", None)
        if web is not None:
            web_dir = (path if path.is_dir() else path.parent) / str(web)
            if web_dir.is_dir():
                record["web_dir"] = str(web_dir.resolve())
        loaded.append(pack)
    return loaded


def _mark_module(module, pack: str) -> None:
    """ComfyUI sets RELATIVE_PYTHON_MODULE on each class of a pack's NODE_CLASS_MAPPINGS."""
    for cls in (getattr(module, "NODE_CLASS_MAPPINGS", None) or {}).values():
        try:
            cls.RELATIVE_PYTHON_MODULE = f"custom_nodes.{pack}"
        except (AttributeError, TypeError):
            pass


def _register_extension(registry: Registry, module, pack: str) -> int:
    """A V3 pack: `comfy_entrypoint()` (sync or async) -> extension; `get_node_list()` -> classes,
    each named by its schema's node_id."""
    extension = _await(module.comfy_entrypoint())
    classes = _await(extension.get_node_list())
    count = 0
    for cls in classes:
        cls.RELATIVE_PYTHON_MODULE = f"custom_nodes.{pack}"
        schema = cls.GET_SCHEMA()
        count += registry._try(lambda: registry.register(
            cls, name=schema.node_id, display_name=schema.display_name, source=pack), pack, schema.node_id)
    return count


def _await(value):
    """The value, or what the awaitable returns (also when called inside a running event loop)."""
    return run_sync(_wrap(value), "genloom-pack-entrypoint") if inspect.isawaitable(value) else value


async def _wrap(awaitable):
    return await awaitable


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}\n" + "".join(traceback.format_exception(exc)[-3:])


def build_registry(packs=(), plugins_dirs=(), entry_points_too: bool = True, prepare=None) -> Registry:
    """The one way a registry is made: `packs` (modules or module names, registered as built-in),
    then installed entry points, then each plugins folder (none overrides a built-in).
    `prepare(folders)` runs once before the first plugins folder loads (the runtime installs
    ComfyUI's module names)."""
    registry = Registry()
    for pack in packs:
        module = importlib.import_module(pack) if isinstance(pack, str) else pack
        registry.register_module(module, source="builtin")
    if entry_points_too:
        load_entry_points(registry)
    if isinstance(plugins_dirs, (str, Path)):
        plugins_dirs = [plugins_dirs]
    plugins_dirs = list(plugins_dirs or ())
    if plugins_dirs and prepare is not None:
        prepare([Path(folder).resolve() for folder in plugins_dirs])
    for folder in plugins_dirs:
        load_folder(registry, folder)
    return registry
