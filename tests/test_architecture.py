"""The layers hold, checked over the source (lazy imports inside functions included): what each layer
may import, no import cycle anywhere, no module past the size a reader can hold. See
docs/architecture.md for the rules."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ["engine", "diffusion", "nodes", "compat", "server", "cluster", "runtime.py", "cli.py", "__init__.py"]
MAX_LINES = 600

# layer -> the genloom layers it may import (itself included)
ALLOWED = {
    "engine": {"engine"},
    "diffusion": {"engine", "diffusion"},
    "nodes": {"engine", "diffusion", "nodes"},
    "compat": {"engine", "diffusion", "nodes", "compat"},  # ComfyUI's module names for plugin packs
    "runtime": {"engine", "nodes", "compat", "runtime"},
    "server": {"engine", "runtime", "compat", "server", "genloom"},  # genloom: the version string
    "cluster": {"engine", "runtime", "server", "cluster", "genloom"},  # above the server: a Runner for it
    "cli": {"engine", "runtime", "compat", "server", "cluster", "cli", "genloom"},
    "genloom": {"engine", "runtime", "genloom"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for entry in SOURCE:
        path = ROOT / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.is_file() else []
        for file in files:
            parts = list(file.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(["genloom", *parts])] = file
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py" or name == "genloom"


def _imports(name: str, file: Path) -> set[str]:
    """genloom modules `name` imports anywhere in its body (functions too), resolved to module names."""
    tree = ast.parse(file.read_text(), str(file))
    package = name if _is_package(name) else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = []
            for alias in node.names:
                sub = f"{prefix}.{alias.name}"
                targets.append(sub if sub in MODULES else prefix)
        else:
            continue
        for target in targets:
            while target and target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in MODULES and target != name:
                out.add(target)
    return out


def _layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "genloom"


GRAPH = nx.DiGraph()
for _name, _file in MODULES.items():
    GRAPH.add_node(_name)
    for _target in _imports(_name, _file):
        GRAPH.add_edge(_name, _target)


def test_the_layers_exist():
    for layer in ("engine", "diffusion", "nodes", "server"):
        assert any(_layer(m) == layer for m in MODULES), f"no {layer}/ layer"


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_what_it_may(layer):
    wrong = sorted(f"{a} -> {b}" for a, b in GRAPH.edges
                   if _layer(a) == layer and _layer(b) not in ALLOWED[layer])
    assert wrong == [], f"{layer} imports layers it must not: {wrong}"


def test_no_import_cycles_lazy_imports_included():
    # A package's __init__ re-exporting its own submodules is no cycle a reader trips over; any
    # other strongly connected set of modules is.
    graph = GRAPH.copy()
    graph.remove_edges_from([(a, b) for a, b in GRAPH.edges if b.startswith(a + ".") and _is_package(a)])
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert cycles == [], f"import cycles: {cycles}"


def test_no_module_is_too_long_to_read():
    long = {name: n for name, file in MODULES.items() if (n := len(file.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"


def test_the_checker_sees_lazy_imports(tmp_path):
    """The walk must find imports inside functions, or the tests above could never fail."""
    file = tmp_path / "fake.py"
    file.write_text("def f():\n    from .context import current\n    import genloom.engine.keys\n"
                    "    from ..nodes import PACKS\n")
    assert _imports("genloom.engine.fake", file) == {"genloom.engine.context", "genloom.engine.keys",
                                                     "genloom.nodes"}


IMPORT_NAMES = {"pillow": "PIL"}


def test_every_declared_dependency_is_imported_or_marked_indirect():
    """A dependency nobody imports is dead weight, unless it is an indirect run-time need of another
    package, which its line in pyproject.toml must say."""
    import re

    tomllib = pytest.importorskip("tomllib")

    text = (ROOT / "pyproject.toml").read_text()
    declared = tomllib.loads(text)["project"]["dependencies"]
    source = "\n".join(file.read_text() for file in MODULES.values())
    for spec in declared:
        name = re.match(r"[A-Za-z0-9_.-]+", spec).group(0)
        module = IMPORT_NAMES.get(name.lower(), name.replace("-", "_"))
        if re.search(rf"^\s*(import|from) {re.escape(module)}\b", source, re.M):
            continue
        line = next(line for line in text.splitlines() if line.strip().startswith(f'"{spec}"'))
        assert "# indirect:" in line, f"{name} is declared but never imported, and not marked indirect"


def test_every_package_is_in_the_distribution():
    """A non-editable install ships only the packages pyproject lists: each folder with an __init__.py
    must be one of them (a missing one installs and then fails to import)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(("genloom",) + p.parent.relative_to(ROOT).parts) for p in ROOT.rglob("__init__.py")
             if not {"tests", "build", ".venv", "node_modules"} & set(p.relative_to(ROOT).parts)}
    assert found - listed == set(), f"packages pyproject.toml does not list: {sorted(found - listed)}"
