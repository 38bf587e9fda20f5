"""The `genloom` command line: run, validate, nodes, serve forwarding; cheap commands never import torch."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from genloom.cli import UsageError, _apply_overrides, _parse_value, format_errors, main
from genloom.runtime import build_registry
from genloom.engine.workflow import Workflow

PACK = '''
import json
from pathlib import Path

from genloom.engine import context
from genloom.engine.node import Combo, Int, Node, Out, String, Input


class CliColor(Node):
    """A solid colour, as numbers (no torch needed)."""
    inputs = [Int("red", 0, min=0, max=255), Int("steps", 3, min=1, max=50)]
    outputs = [Out("COLOR")]

    def run(self, red, steps):
        ctx = context.current()
        for i in range(steps):
            ctx.progress(i + 1, steps)
        return ((red, 10, 20),)


class CliSavePng(Node):
    """Writes a 4x4 PNG of the colour into the output folder."""
    output_node = True
    inputs = [Input("color", "COLOR"), String("filename_prefix", "cli")]
    outputs = []

    def run(self, color, filename_prefix):
        out = Path(context.current().folders.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        from PIL import Image
        name = f"{filename_prefix}_{len(list(out.glob(filename_prefix + '_*')))+1:05}_.png"
        Image.new("RGB", (4, 4), tuple(color)).save(out / name)
        from genloom.engine.node import NodeOutput
        return NodeOutput(ui={"images": [{"filename": name, "subfolder": "", "type": "output"}]})


class CliFail(Node):
    inputs = [Input("color", "COLOR")]
    outputs = [Out("COLOR")]

    def run(self, color):
        raise ValueError("the colour is unacceptable")


class CliPick(Node):
    """A colour chosen by the length of a model file's name: COMBO options come from the model folders."""
    inputs = [Combo("ckpt_name", lambda: context.current().folders.list_models("checkpoints"))]
    outputs = [Out("COLOR")]

    def run(self, ckpt_name):
        return ((len(ckpt_name), 0, 0),)


NODES = [CliColor, CliSavePng, CliFail, CliPick]
'''


def workflow(red=200):
    return {"1": {"class_type": "CliColor", "inputs": {"red": red, "steps": 3}},
            "2": {"class_type": "CliSavePng", "inputs": {"color": ["1", 0], "filename_prefix": "cli"},
                  "_meta": {"title": "Save colour"}}}


@pytest.fixture
def env(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "cli_pack.py").write_text(textwrap.dedent(PACK))
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(workflow()))
    return {"plugins": plugins, "wf": wf, "tmp": tmp_path}


def run_isolated(argv, cwd):
    """Run `genloom.cli.main(argv)` in a fresh interpreter; report its exit status and whether torch loaded."""
    code = textwrap.dedent(f"""
        import json, sys
        from genloom.cli import main
        try:
            rc = main({argv!r})
        except SystemExit as exc:
            rc = exc.code
        print("\\n@@" + json.dumps({{"rc": rc, "torch": "torch" in sys.modules}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120)
    out, _, tail = proc.stdout.rpartition("\n@@")
    return json.loads(tail), out, proc.stderr


def test_help_and_validate_and_nodes_never_import_torch(env):
    status, out, _ = run_isolated(["--help"], env["tmp"])
    assert status == {"rc": 0, "torch": False} and "validate" in out and "serve" in out
    status, out, err = run_isolated(["validate", str(env["wf"]), "--plugins-dir", str(env["plugins"])], env["tmp"])
    assert status == {"rc": 0, "torch": False}, err
    assert "valid: 2 nodes" in out and "2 (CliSavePng)" in out
    status, out, err = run_isolated(["nodes", "--json", "--plugins-dir", str(env["plugins"])], env["tmp"])
    assert status == {"rc": 0, "torch": False}, err
    info = json.loads(out)
    assert info["CliColor"]["input"]["required"]["red"][0] == "INT"
    assert info["CliSavePng"]["python_module"] == "custom_nodes.cli_pack"
    assert "PrimitiveInt" in info  # built-ins too


def test_console_script_help():
    script = Path(sys.executable).with_name("genloom")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "usage: genloom" in proc.stdout


def test_validate_reports_structured_errors(env, capsys):
    bad = workflow(red=999)
    bad["2"]["inputs"]["color"] = ["7", 0]
    path = env["tmp"] / "bad.json"
    path.write_text(json.dumps(bad))
    assert main(["validate", str(path), "--plugins-dir", str(env["plugins"])]) == 1
    err = capsys.readouterr().err
    assert "error: Prompt outputs failed validation" in err
    assert "node 2 'Save colour' (CliSavePng) input 'color': Bad linked input" in err
    assert "[bad_linked_input]" in err
    bad["2"]["inputs"]["color"] = ["1", 0]
    path.write_text(json.dumps(bad))
    assert main(["validate", str(path), "--plugins-dir", str(env["plugins"])]) == 1
    err = capsys.readouterr().err
    assert "node 1 (CliColor) input 'red': Value 999 bigger than max of 255" in err


def test_validate_format_and_missing_node_errors(env, capsys):
    path = env["tmp"] / "odd.json"
    path.write_text(json.dumps({"hello": "world"}))
    assert main(["validate", str(path)]) == 2
    assert "unrecognised workflow format" in capsys.readouterr().err
    assert main(["validate", str(env["tmp"] / "missing.json")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["validate", str(env["wf"])]) == 1  # without the plugins folder: unknown node types
    assert "Node 'CliColor' not found" in capsys.readouterr().err


def test_models_dir_feeds_combo_options(env, capsys):
    models = env["tmp"] / "my-models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "mine.safetensors").write_bytes(b"")
    wf = {"1": {"class_type": "CliPick", "inputs": {"ckpt_name": "mine.safetensors"}},
          "2": {"class_type": "CliSavePng", "inputs": {"color": ["1", 0], "filename_prefix": "pick"}}}
    path = env["tmp"] / "pick.json"
    path.write_text(json.dumps(wf))
    plugins = ["--plugins-dir", str(env["plugins"])]
    assert main(["validate", str(path), *plugins]) == 1
    assert "'mine.safetensors' not in" in capsys.readouterr().err
    assert main(["validate", str(path), *plugins, "--models-dir", str(models)]) == 0
    out_dir = env["tmp"] / "picked"
    assert main(["run", str(path), *plugins, "--models-dir", str(models), "--output-dir", str(out_dir),
                 "--device", "cpu"]) == 0
    assert Image.open(out_dir / "pick_00001_.png").getpixel((0, 0)) == (16, 0, 0)


def test_nodes_listing_text(env, capsys):
    assert main(["nodes", "--plugins-dir", str(env["plugins"])]) == 0
    out = capsys.readouterr().out
    assert "CliColor [Cli Color]: red, steps -> COLOR" in out
    assert "CliSavePng [Cli Save Png]: color, filename_prefix -> (output node)" in out


def test_set_values_are_json_or_text(env):
    registry = build_registry(env["plugins"], entry_points_too=False)
    assert _parse_value("12", "INT") == 12 and _parse_value("1.5", "FLOAT") == 1.5
    assert _parse_value("true", "STRING") == "true" and _parse_value('"quoted"', "STRING") == "quoted"
    assert _parse_value("a cat", "STRING") == "a cat" and _parse_value("[1, 2, 3]", None) == {"__value__": [1, 2, 3]}
    assert _parse_value('["4", 0]', "COLOR") == ["4", 0]  # a link
    wf = Workflow(workflow(), {"nodes": [], "links": []})
    _apply_overrides(wf, ["1.red=7", "2.filename_prefix=123"], registry)
    assert wf.graph["1"]["inputs"]["red"] == 7 and wf.graph["2"]["inputs"]["filename_prefix"] == "123"
    assert wf.layout is None  # the layout no longer matches the graph
    for bad, message in [("1red=3", "NODE_ID.INPUT=VALUE"), ("9.red=3", "not in the workflow"),
                         ("1.green=3", "has no input 'green'; its inputs are: red, steps")]:
        with pytest.raises(UsageError, match=message):
            _apply_overrides(Workflow(workflow()), [bad], registry)


def test_format_errors_lines():
    lines = format_errors({"type": "missing_node_type", "message": "Node 'X' not found.", "details": "Node ID '#3'",
                           "extra_info": {}}, {})
    assert lines == ["error: Node 'X' not found. (Node ID '#3')"]


def test_serve_forwards_its_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--help"])
    assert exc.value.code == 0
    assert "genloom serve" in capsys.readouterr().out


# --- running workflows (needs genloom.Engine) -----------------------------------------------------

def test_run_writes_outputs_and_applies_overrides(env, capsys):
    out_dir = env["tmp"] / "out"
    rc = main(["run", str(env["wf"]), "--plugins-dir", str(env["plugins"]), "--output-dir", str(out_dir),
               "--device", "cpu", "--set", "1.red=42"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    written = out_dir / "cli_00001_.png"
    assert f"wrote {written}  (node 2)" in captured.out
    assert Image.open(written).getpixel((0, 0)) == (42, 10, 20)
    assert "nodes" in captured.err and "done: 2 nodes executed" in captured.err
    rc = main(["run", str(env["wf"]), "--plugins-dir", str(env["plugins"]), "--output-dir", str(out_dir),
               "--device", "cpu", "--output", "1"])  # partial execution: the save node does not run
    captured = capsys.readouterr()
    assert rc == 0 and "done: 1 nodes executed" in captured.err and captured.out == ""
    assert sorted(p.name for p in out_dir.iterdir()) == ["cli_00001_.png"]


def test_run_failures_exit_non_zero(env, capsys):
    bad = workflow()
    bad["3"] = {"class_type": "CliFail", "inputs": {"color": ["1", 0]}}
    bad["2"]["inputs"]["color"] = ["3", 0]
    path = env["tmp"] / "fail.json"
    path.write_text(json.dumps(bad))
    args = ["--plugins-dir", str(env["plugins"]), "--output-dir", str(env["tmp"] / "o"), "--device", "cpu"]
    assert main(["run", str(path), *args]) == 1
    err = capsys.readouterr().err
    assert "error: node 3 (CliFail) failed: ValueError: the colour is unacceptable" in err
    assert main(["run", str(path), *args, "--set", "1.red=-5"]) == 1
    err = capsys.readouterr().err
    assert "node 1 (CliColor) input 'red': Value -5 smaller than min of 0" in err


def test_run_a_saved_video_runs_its_workflow_again(tmp_path, capsys):
    """SaveVideo tags the MP4 with its prompt: `genloom run clip.mp4` runs that graph once more."""
    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 2,
                                                          "color": 0}},
             "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 4.0}},
             "3": {"class_type": "SaveVideo", "inputs": {"video": ["2", 0], "filename_prefix": "loop",
                                                         "format": "auto", "codec": "auto"}}}
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(graph))
    out_dir = tmp_path / "out"
    assert main(["run", str(path), "--output-dir", str(out_dir), "--device", "cpu"]) == 0
    first = out_dir / "loop_00001_.mp4"
    assert first.is_file()
    capsys.readouterr()
    assert main(["run", str(first), "--output-dir", str(out_dir), "--device", "cpu"]) == 0
    assert (out_dir / "loop_00002_.mp4").is_file()
