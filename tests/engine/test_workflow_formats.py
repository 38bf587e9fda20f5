"""Reading workflows in every supported format, the envelope and its migrations."""

import json

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from genloom.engine import migrations
from genloom.engine.migrations import MigrationError, migrate
from genloom.engine.node import Input, Int, Node, Out, String
from genloom.engine.registry import Registry
from genloom.engine.workflow import Workflow, WorkflowFormatError, detect_format, load_workflow, save_workflow


class Number(Node):
    inputs = [Int("value", 0, min=0, max=100)]
    outputs = [Out("INT")]


class Show(Node):
    output_node = True
    inputs = [Input("value", "INT"), String("label", "")]
    outputs = []


@pytest.fixture(scope="module")
def registry():
    reg = Registry()
    reg.register(Number)
    reg.register(Show)
    return reg


API = {"1": {"class_type": "Number", "inputs": {"value": 7}, "_meta": {"title": "Seven"}},
       "2": {"class_type": "Show", "inputs": {"value": ["1", 0], "label": "n"}}}

UI = {"last_node_id": 2, "last_link_id": 1, "version": 0.4, "groups": [], "config": {}, "extra": {},
      "nodes": [
          {"id": 1, "type": "Number", "pos": [0, 0], "size": [200, 60], "flags": {}, "order": 0, "mode": 0,
           "inputs": [], "outputs": [{"name": "INT", "type": "INT", "links": [1], "slot_index": 0}],
           "properties": {}, "widgets_values": [9]},
          {"id": 2, "type": "Show", "pos": [300, 0], "size": [200, 60], "flags": {}, "order": 1, "mode": 0,
           "inputs": [{"name": "value", "type": "INT", "link": 1}], "outputs": [], "properties": {},
           "widgets_values": ["from ui"]}],
      "links": [[1, 1, 0, 2, 0, "INT"]]}


def png(path, **chunks):
    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, json.dumps(value))
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    return path


def test_api_from_dict_string_and_file(registry, tmp_path):
    for source in (API, json.dumps(API)):
        wf = load_workflow(source, registry)
        assert wf.format == "api" and wf.graph == API and wf.layout is None
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(API))
    assert load_workflow(path, registry).graph == API
    assert load_workflow(str(path), registry).graph == API


def test_ui_format_converted(registry, tmp_path):
    wf = load_workflow(UI, registry)
    assert wf.format == "ui" and wf.layout == UI
    assert wf.graph == {"1": {"class_type": "Number", "inputs": {"value": 9}, "_meta": {"title": "Number"}},
                        "2": {"class_type": "Show", "inputs": {"label": "from ui", "value": ["1", 0]},
                              "_meta": {"title": "Show"}}}
    with pytest.raises(WorkflowFormatError, match="registry"):
        load_workflow(UI, None)


def test_png_prefers_workflow_chunk(registry, tmp_path):
    both = png(tmp_path / "both.png", prompt=API, workflow=UI)
    wf = load_workflow(both, registry)
    assert wf.format == "png" and wf.layout == UI and wf.graph["1"]["inputs"]["value"] == 9
    only_prompt = png(tmp_path / "prompt.png", prompt=API)
    wf = load_workflow(only_prompt, registry)
    assert wf.graph == API and wf.layout is None
    assert load_workflow(only_prompt.read_bytes(), registry).graph == API
    with pytest.raises(WorkflowFormatError, match="no 'workflow' or 'prompt'"):
        load_workflow(png(tmp_path / "plain.png"), registry)


def test_wrappers(registry):
    body = {"prompt": API, "client_id": "abc", "extra_data": {"extra_pnginfo": {"workflow": UI}}}
    wf = load_workflow(body, registry)
    assert wf.graph == API and wf.layout == UI
    assert load_workflow({"prompt": json.dumps(API)}, registry).graph == API
    wf = load_workflow({"workflow": UI}, registry)
    assert wf.format == "ui" and wf.graph["2"]["inputs"]["label"] == "from ui"


def test_envelope_round_trip(registry, tmp_path):
    wf = Workflow(API, UI, {"name": "demo", "author": "me"})
    envelope = save_workflow(wf)
    assert envelope == {"schema_version": 1, "graph": API, "layout": UI,
                        "metadata": {"name": "demo", "author": "me"}}
    envelope["graph"]["1"]["inputs"]["value"] = 8  # a copy: the workflow is untouched
    assert API["1"]["inputs"]["value"] == 7
    path = tmp_path / "saved.json"
    path.write_text(json.dumps(save_workflow(wf)))
    back = load_workflow(path, registry)
    assert (back.graph, back.layout, back.metadata, back.format) == (API, UI, wf.metadata, "envelope")


def test_version_0_envelope_migrates(registry):
    old = {"schema_version": 0, "prompt": API, "workflow": UI, "metadata": {"name": "old"}}
    wf = load_workflow(old, registry)
    assert wf.graph == API and wf.layout == UI and wf.metadata == {"name": "old"}


def test_migration_steps_run_in_order():
    calls = []

    def one_to_two(env):
        calls.append(env["schema_version"])
        env["graph"] = {k: dict(v, class_type=v["class_type"].upper()) for k, v in env["graph"].items()}
        return env

    def two_to_three(env):
        calls.append(env["schema_version"])
        env["metadata"] = dict(env.get("metadata") or {}, tags=["migrated"])
        return env

    steps = {**migrations.MIGRATIONS, 1: one_to_two, 2: two_to_three}
    out = migrate({"schema_version": 0, "prompt": API}, steps, current=3)
    assert calls == [1, 2] and out["schema_version"] == 3
    assert out["graph"]["1"]["class_type"] == "NUMBER" and out["metadata"] == {"tags": ["migrated"]}
    with pytest.raises(MigrationError, match="no migration from schema_version 1"):
        migrate({"schema_version": 1, "graph": {}}, {}, current=2)


def test_bad_versions_and_formats(registry, tmp_path):
    with pytest.raises(WorkflowFormatError, match="newer than this genloom"):
        load_workflow({"schema_version": 99, "graph": {}}, registry)
    with pytest.raises(WorkflowFormatError, match="non-negative integer"):
        load_workflow({"schema_version": "one", "graph": {}}, registry)
    with pytest.raises(WorkflowFormatError, match="unrecognised workflow format.*found keys: foo"):
        load_workflow({"foo": 1}, registry)
    with pytest.raises(WorkflowFormatError, match="no class_type"):
        load_workflow({"1": {"class_type": "Number", "inputs": {}}, "2": {"inputs": {}}}, registry)
    with pytest.raises(WorkflowFormatError, match="not valid JSON"):
        load_workflow("{nope", registry)
    with pytest.raises(WorkflowFormatError, match="not found"):
        load_workflow(tmp_path / "missing.json", registry)
    with pytest.raises(WorkflowFormatError, match="JSON object"):
        load_workflow("[1, 2]", registry)
    with pytest.raises(WorkflowFormatError, match="'graph' is not an API-format graph"):
        load_workflow({"schema_version": 1, "graph": {"nodes": [], "links": []}}, registry)
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(WorkflowFormatError):
        load_workflow(binary, registry)
    assert detect_format(API) == "api" and detect_format(UI) == "ui"


def test_envelope_fields_are_checked_by_the_declared_model(registry):
    from genloom.engine.envelope import Envelope

    with pytest.raises(WorkflowFormatError, match=r"genloom envelope: 'layout': .*dictionary"):
        load_workflow({"schema_version": 1, "graph": {}, "layout": [1]}, registry)
    with pytest.raises(WorkflowFormatError, match=r"'graph': .*dictionary"):
        load_workflow({"schema_version": 1, "graph": [1]}, registry)
    with pytest.raises(WorkflowFormatError, match=r"'metadata': .*dictionary"):
        load_workflow({"schema_version": 1, "graph": {}, "metadata": "x"}, registry)
    schema = Envelope.model_json_schema()
    assert set(schema["properties"]) == {"schema_version", "graph", "layout", "metadata"}
    assert schema["required"] == ["graph"]
