"""The editor's templates over HTTP: genloom's example workflows as core templates (index, editor
workflow, thumbnail), /workflow_templates with genloom's and a node pack's example folder, the built-in
first-screen extension, and the path safety of the pack files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from server_support import InProcessServer, write_plugins

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
THUMBNAILS = sorted(p.stem for p in (WORKFLOWS / "thumbnails").glob("*.webp"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("templates")
    plugins = write_plugins(tmp / "plugins")
    pack = plugins / "pack_with_examples"
    (pack / "example_workflows").mkdir(parents=True)
    (pack / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\n")
    (pack / "example_workflows" / "demo.json").write_text('{"nodes": [], "links": []}')
    (pack / "example_workflows" / "demo.jpg").write_bytes(b"\xff\xd8\xff jpeg bytes")
    (tmp / "secret.json").write_text('{"secret": 1}')
    os.symlink(tmp / "secret.json", pack / "example_workflows" / "linked.json")
    (pack / "docs").mkdir()
    (pack / "docs" / "other.json").write_text("{}")  # not an example folder: neither listed nor served
    srv = InProcessServer(tmp / "data", plugins)
    yield srv
    srv.stop()


def _graph(name):
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def test_the_templates_are_the_examples_with_thumbnails(server):
    assert {"txt2img", "img2img", "hires_fix", "upscale", "batch"} <= set(THUMBNAILS)
    status, index = server.http.get("/templates/index.json")
    assert status == 200
    assert len(index) == 1 and index[0]["moduleName"] == "default"
    entries = index[0]["templates"]
    assert [e["name"] for e in entries][0] == "txt2img"
    assert sorted(e["name"] for e in entries) == THUMBNAILS
    for entry in entries:
        meta = _graph(entry["name"])["metadata"]
        assert entry["title"] == meta["title"] and entry["description"] == meta["description"]
        assert (entry["mediaType"], entry["mediaSubtype"]) == ("image", "webp")


def test_a_template_is_the_editor_form_of_its_workflow(server):
    from genloom.engine.ui_import import ui_to_api

    status, workflow = server.http.get("/templates/txt2img.json")
    assert status == 200 and workflow["version"] == 0.4
    graph = ui_to_api(workflow, server.server.engine.registry)
    assert graph == _graph("txt2img")["graph"]
    assert server.http.get("/api/templates/txt2img.json")[1] == workflow
    assert server.http.get("/api/workflow_templates/genloom/txt2img.json")[1] == workflow


def test_a_template_brings_its_example_picture(server):
    target = server.config.data_dir / "input" / "example.png"
    assert not target.exists()
    assert server.http.get("/templates/img2img.json")[0] == 200
    assert target.read_bytes() == (WORKFLOWS / "input" / "example.png").read_bytes()
    target.write_bytes(b"the user's own file")
    assert server.http.get("/templates/img2img.json")[0] == 200
    assert target.read_bytes() == b"the user's own file", "a user's file of that name is kept"


def test_thumbnails(server):
    want = (WORKFLOWS / "thumbnails" / "txt2img.webp").read_bytes()
    assert want[:4] == b"RIFF" and want[8:12] == b"WEBP"
    assert server.http.get("/templates/txt2img-1.webp") == (200, want)
    # the editor asks a pack for {name}.jpg
    assert server.http.get("/api/workflow_templates/genloom/txt2img.jpg") == (200, want)
    for missing in ("/templates/nothing-1.webp", "/templates/nothing.json", "/templates/index.fr.json",
                    "/templates/txt2img-2.webp", "/templates/controlnet_canny.json",
                    "/api/workflow_templates/genloom/nothing.jpg"):
        assert server.http.get(missing)[0] == 404, missing


def test_packs_example_workflows(server):
    status, listed = server.http.get("/api/workflow_templates")
    assert status == 200
    # genloom's own examples are the core templates: listed here as well, the browser shows them twice
    assert listed == {"pack_with_examples": ["demo"]}
    assert server.http.get("/api/workflow_templates/pack_with_examples/demo.json") == (200, {"nodes": [], "links": []})
    assert server.http.get("/api/workflow_templates/pack_with_examples/demo.jpg") == (200, b"\xff\xd8\xff jpeg bytes")
    for refused in ("/api/workflow_templates/pack_with_examples/linked.json",  # a link out of the folder
                    "/api/workflow_templates/pack_with_examples/%2e%2e%2f%2e%2e%2fsecret.json",
                    "/api/workflow_templates/pack_with_examples/%2e%2e/docs/other.json",
                    "/api/workflow_templates/no_such_pack/demo.json"):
        status, body = server.http.get(refused)
        assert status in (403, 404), refused
        assert b"secret" not in json.dumps(body).encode() if isinstance(body, dict) else b"secret" not in body


def test_the_first_screen_extension_is_served(server):
    status, scripts = server.http.get("/extensions")
    assert "/extensions/genloom/first_screen.js" in scripts
    status, body = server.http.get("/extensions/genloom/first_screen.js")
    assert status == 200 and b"registerExtension" in body
