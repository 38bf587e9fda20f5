"""ComfyUI's module surface for community node packs: `folder_paths`, `comfy.*`, `server`, `nodes`,
`comfy_api.latest`, ... backed by genloom's own services.

The modules live here as `genloom.compat.<ComfyUI name>`. `install()` puts an import hook at the
front of `sys.meta_path` that answers the ComfyUI names (`import comfy.utils`) with those modules, so a
pack and genloom see one module object. The runtime installs it only when it loads plugin folders;
nothing is importable under a ComfyUI name otherwise. The hook never shadows a module the user has: a
name already in `sys.modules` (imported before genloom loaded packs) or found on `sys.path` outside
genloom is left alone and listed by `shadowed()`.

Layer: compat sits between nodes/ and runtime.py; it may import engine/, diffusion/ and nodes/.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_GENLOOM_ROOT = _HERE.parent

# ComfyUI module name -> the genloom module that serves it. Every submodule of a top-level name
# listed here (`comfy.anything`) maps to `genloom.compat.comfy.anything` when that file exists;
# entries are needed for the top-level names and for any module stored under another name.
MODULES: dict[str, str] = {
    "folder_paths": "genloom.compat.folder_paths",
    "comfy": "genloom.compat.comfy",
    "comfy.utils": "genloom.compat.comfy.utils",
    "comfy.model_management": "genloom.compat.comfy.model_management",
    "comfy.cli_args": "genloom.compat.comfy.cli_args",
    "comfy.comfy_types": "genloom.compat.comfy.comfy_types",
    "comfy.comfy_types.node_typing": "genloom.compat.comfy.comfy_types.node_typing",
    "server": "genloom.compat.server",
    "execution": "genloom.compat.execution",
    "comfy_execution": "genloom.compat.comfy_execution",
    "comfy_execution.graph": "genloom.compat.comfy_execution.graph",
    "comfy_execution.graph_utils": "genloom.compat.comfy_execution.graph_utils",
    "comfy_api": "genloom.compat.comfy_api",
    "comfy_api.latest": "genloom.compat.comfy_api.latest",
    "comfy_api.latest.io": "genloom.compat.comfy_api.latest.io",
    "comfy_api.latest.ui": "genloom.compat.comfy_api.latest.ui",
    "comfy_api.latest._io": "genloom.compat.comfy_api.latest.io",
    "comfy_api.latest._ui": "genloom.compat.comfy_api.latest.ui",
    "comfy_api.v0_0_2": "genloom.compat.comfy_api.latest",
    # engineer F: the core nodes and the model objects' modules
    "nodes": "genloom.compat.nodes",
    "node_helpers": "genloom.compat.node_helpers",
    "latent_preview": "genloom.compat.latent_preview",
    "comfy.samplers": "genloom.compat.comfy.samplers",
    "comfy.sample": "genloom.compat.comfy.sample",
    "comfy.sampler_helpers": "genloom.compat.comfy.sampler_helpers",
    "comfy.sd": "genloom.compat.comfy.sd",
    "comfy.model_patcher": "genloom.compat.comfy.model_patcher",
    # engineer X: wrappers and callbacks
    "comfy.patcher_extension": "genloom.compat.comfy.patcher_extension",
}


def target_of(name: str) -> str | None:
    """The genloom module that serves ComfyUI module `name`, or None when compat has none."""
    if name in MODULES:
        return MODULES[name]
    top = name.partition(".")[0]
    if top not in MODULES:
        return None
    candidate = "genloom.compat." + name
    try:
        found = importlib.util.find_spec(candidate)  # imports the parent packages
    except ImportError:
        return None
    return candidate if found is not None else None


def _ours(module) -> bool:
    return getattr(module, "__name__", "").startswith("genloom.compat.")


def _foreign(top: str) -> bool:
    """Whether the user has their own module `top`: imported already, or on sys.path outside genloom
    (a plain folder without __init__.py, e.g. a test directory, does not count)."""
    module = sys.modules.get(top)
    if module is not None:
        return not _ours(module)
    try:
        spec = importlib.machinery.PathFinder.find_spec(top)
    except (ImportError, ValueError):
        return False
    if spec is None or spec.origin in (None, "namespace"):
        return False
    origin = Path(spec.origin).resolve()
    return _GENLOOM_ROOT not in origin.parents


class _AliasLoader(importlib.abc.Loader):
    """Makes `import <ComfyUI name>` return the genloom module itself (one object, one state)."""

    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return None  # a placeholder; exec_module swaps the real module in

    def exec_module(self, module):
        real = importlib.import_module(self.target)
        # The import system hands back whatever sys.modules holds under the name after exec_module.
        sys.modules[module.__name__] = real


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self):
        self.shadowed: dict[str, str] = {}  # top-level name -> where the user's module lives

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top not in MODULES or top in self.shadowed:
            return None
        if name == top and _foreign(top):
            module = sys.modules.get(top)
            spec = getattr(module, "__spec__", None) or importlib.machinery.PathFinder.find_spec(top)
            self.shadowed[top] = str(getattr(spec, "origin", None) or top)
            return None
        if name != top and not _ours(sys.modules.get(top)):
            return None  # the parent is the user's own package
        real = target_of(name)
        found = importlib.util.find_spec(real) if real is not None else None
        if found is None:
            return None
        return importlib.util.spec_from_loader(name, _AliasLoader(real),
                                               is_package=found.submodule_search_locations is not None)


_finder: _Finder | None = None


def install() -> None:
    """Make the ComfyUI names importable (idempotent). Called by the runtime when it loads plugins."""
    global _finder
    if _finder is None:
        _finder = _Finder()
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
    for top in {n.partition(".")[0] for n in MODULES}:
        if top in sys.modules and _foreign(top):
            _finder.shadowed.setdefault(top, str(getattr(sys.modules[top], "__file__", top)))


def prepare_load(plugin_folders=()) -> None:
    """Before a registry loads plugin folders: the names installed, `folder_paths`'s "custom_nodes"
    kind pointed at the folders, and what packs registered with the PromptServer on an earlier load
    forgotten (they register again as they import)."""
    install()
    global _plugin_folders
    _plugin_folders = [str(p) for p in plugin_folders]
    server = sys.modules.get("genloom.compat.server")
    if server is not None:
        server.PromptServer.instance.fresh()


def installed() -> bool:
    return _finder is not None and _finder in sys.meta_path


def uninstall() -> None:
    """Remove the hook and the ComfyUI names it made (tests; a process that is done with plugins)."""
    if _finder is not None and _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
    for name in list(sys.modules):
        if name.partition(".")[0] in MODULES and _ours(sys.modules[name]):
            del sys.modules[name]


def shadowed() -> dict[str, str]:
    """ComfyUI names compat leaves to the user's own modules: {name: where that module lives}."""
    return dict(_finder.shadowed) if _finder is not None else {}


# ---- the engine compat answers for outside a run ---------------------------------------------------

_plugin_folders: list[str] = []  # the plugins folders loaded last (folder_paths "custom_nodes")
_bound = None  # the engine built last with plugins (its folders serve INPUT_TYPES and /object_info)


def bind(engine) -> None:
    global _bound
    _bound = engine


def bound_engine():
    return _bound


def plugin_folders() -> list[str]:
    return list(_plugin_folders)
