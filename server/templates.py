"""Workflow templates for the editor's template browser, and genloom's first screen.

genloom's templates are the example workflows in `workflows/` that have a thumbnail in
`workflows/thumbnails/` (tools/make_thumbnails.py makes one for each example that runs on the shipped
models). The editor reads them as its core templates: `/templates/index.json` (one category, with
titles and descriptions from each workflow's metadata), `/templates/{name}.json` (the editor-format
workflow: the envelope's layout, else `engine.ui_export`) and `/templates/{name}-1.webp`.
`/workflow_templates` lists them again as the "genloom" pack, next to the `*example*`/`*workflow*`
folders of loaded node packs, as ComfyUI lists custom nodes' example workflows; their files are at
`/api/workflow_templates/{pack}/{file}`. Opening a template that reads an example picture
(`workflows/input/`) copies it into the input folder when no file of that name is there.

The built-in web extension `web/first_screen.js` makes genloom's txt2img the editor's default graph.
"""

from __future__ import annotations

import json
import mimetypes
import shutil
from pathlib import Path

from aiohttp import web

from ..engine.errors import RequestError
from ..engine.folders import UnsafePath, safe_join
from ..engine.ui_export import ui_export
from .endpoints import Endpoint
from .errors import json_response

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
WEB_DIR = Path(__file__).resolve().parent / "web"
PACK = "genloom"
DEFAULT = "txt2img"  # the editor's default graph (web/first_screen.js asks for it by this name)
THUMBNAIL = "webp"


def web_extension() -> dict:
    """genloom's own web extension, served at /extensions/genloom/ like a pack's WEB_DIRECTORY."""
    return {PACK: {"web_dir": str(WEB_DIR)}}


def example_dirs(pack_dir: Path) -> list[Path]:
    """A pack's folders of example workflows, as ComfyUI finds them: names with 'example' or 'workflow'."""
    if not pack_dir.is_dir():
        return []
    return sorted(d for d in pack_dir.iterdir()
                  if d.is_dir() and not d.is_symlink() and ("example" in d.name or "workflow" in d.name))


class Templates:
    def __init__(self, registry, input_dir: Path, workflows_dir: Path = WORKFLOWS):
        self.registry, self.input_dir, self.workflows = registry, Path(input_dir), Path(workflows_dir)
        self.thumbnails = self.workflows / "thumbnails"
        self.pack_dirs = {name: example_dirs(Path(p["path"])) for name, p in registry.packs.items()
                          if not p.get("error") and p.get("path")}
        self.pack_dirs = {name: dirs for name, dirs in self.pack_dirs.items() if dirs}

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("GET", "/templates/{file}", self.core_file,
                         summary="genloom's templates as the editor's core templates: index.json, "
                                 "{name}.json, {name}-1.webp"),
                Endpoint("GET", "/workflow_templates", self.packs,
                         summary="example workflows by pack: genloom's and node packs' example folders"),
                Endpoint("GET", "/workflow_templates/{pack}/{path:.+}", self.pack_file,
                         summary="a file of a pack's example workflows")]

    def names(self) -> list[str]:
        """The templates: workflows with a thumbnail, the default first."""
        if not self.thumbnails.is_dir():
            return []
        found = sorted(p.stem for p in self.thumbnails.glob(f"*.{THUMBNAIL}")
                       if (self.workflows / f"{p.stem}.json").is_file())
        return sorted(found, key=lambda n: n != DEFAULT)

    def envelope(self, name: str) -> dict:
        if name not in self.names():
            raise RequestError(404, f"no template {name!r}")
        return json.loads((self.workflows / f"{name}.json").read_text(encoding="utf-8"))

    def index(self) -> list[dict]:
        entries = []
        for name in self.names():
            meta = self.envelope(name).get("metadata") or {}
            entries.append({"name": name, "title": meta.get("title") or name.replace("_", " ").capitalize(),
                            "description": meta.get("description", ""), "mediaType": "image",
                            "mediaSubtype": THUMBNAIL, "tags": ["genloom"]})
        return [{"moduleName": "default", "title": "genloom", "type": "image", "isEssential": True,
                 "templates": entries}] if entries else []

    def editor_workflow(self, name: str) -> dict:
        """The editor-format workflow of a template; the example pictures it reads are put in place."""
        envelope = self.envelope(name)
        graph = envelope["graph"]
        self._provide_inputs(graph)
        return envelope.get("layout") or ui_export(graph, self.registry)

    def _provide_inputs(self, graph: dict) -> None:
        examples = self.workflows / "input"
        for node in graph.values():
            for value in node.get("inputs", {}).values():
                if not isinstance(value, str) or not value or "/" in value or value.startswith("."):
                    continue
                source = examples / value
                if source.is_file() and not (self.input_dir / value).exists():
                    self.input_dir.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source, self.input_dir / value)

    async def core_file(self, request):
        """index.json, a template's workflow, or its thumbnail."""
        file = request.match_info["file"]
        if file == "index.json":
            return json_response(self.index())
        if file.endswith(".json"):
            return json_response(self.editor_workflow(file[:-len(".json")]))
        name, sep, rest = file.rpartition("-")
        if sep and rest == f"1.{THUMBNAIL}" and name in self.names():
            return self._thumbnail(name)
        raise RequestError(404, "no such template file")

    def _thumbnail(self, name: str):
        return web.FileResponse(self.thumbnails / f"{name}.{THUMBNAIL}",
                                headers={"Content-Type": f"image/{THUMBNAIL}", "Cache-Control": "no-cache"})

    async def packs(self, request):
        """{pack: [workflow names]}: each loaded pack's example workflows. genloom's own examples are the
        core templates (/templates/index.json); listed here too, the editor would show each twice."""
        listed = {}
        for pack, dirs in sorted(self.pack_dirs.items()):
            names = sorted({p.stem for d in dirs for p in d.glob("*.json") if p.is_file() and not p.is_symlink()})
            if names:
                listed[pack] = names
        return json_response(listed)

    async def pack_file(self, request):
        """A file of a pack's example folders (genloom's: a template's workflow or thumbnail)."""
        pack, path = request.match_info["pack"], request.match_info["path"]
        if pack == PACK and pack not in self.pack_dirs:
            stem, _, ext = path.rpartition(".")
            if ext == "json":
                return json_response(self.editor_workflow(stem))
            if stem in self.names():  # the editor asks for {name}.jpg; the picture says what it is
                return self._thumbnail(stem)
            raise RequestError(404, "no such template file")
        for folder in self.pack_dirs.get(pack, ()):
            try:
                found = safe_join(folder, path)
            except UnsafePath:
                raise RequestError(403, "path not allowed") from None
            if found.is_file():
                kind = mimetypes.guess_type(found.name)[0] or "application/octet-stream"
                return web.FileResponse(found, headers={"Content-Type": kind})
        raise RequestError(404, "no such file")
