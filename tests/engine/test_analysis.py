"""`genloom graph`: a workflow's structure, critical path, parallel levels and DOT, computed with networkx
and checked against graphs whose answers are worked out by hand here."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from genloom.engine.analysis import structure, to_dot, workflow_digraph

REPO = Path(__file__).resolve().parents[2]


def n(class_type, **inputs):
    return {"class_type": class_type, "inputs": inputs}


# a -> b -> d -> e ; a -> c -> d ; f alone (a second, independent part)
DIAMOND = {"a": n("Load"), "b": n("Enc", x=["a", 0]), "c": n("Enc", x=["a", 1]),
           "d": n("Mix", p=["b", 0], q=["c", 0], r=["b", 0]), "e": n("Save", v=["d", 0]), "f": n("Note", text="hi")}


def test_structure_of_a_diamond_with_an_island():
    info = structure(workflow_digraph(DIAMOND))
    assert (info.nodes, info.links, info.components) == (6, 6, 2)
    assert info.sources == ["a", "f"] and info.sinks == ["e", "f"]
    assert len(info.critical_path) == 4 and info.critical_path[0] == "a" and info.critical_path[-2:] == ["d", "e"]
    assert info.levels == [["a", "f"], ["b", "c"], ["d"], ["e"]] and info.width == 2
    assert info.cycle is None


def test_a_cycle_is_reported_not_planned():
    graph = {"x": n("A", i=["y", 0]), "y": n("B", i=["x", 0]), "z": n("C", i=["x", 0])}
    info = structure(workflow_digraph(graph))
    assert sorted(info.cycle) == ["x", "y"] and info.critical_path == [] and info.levels == []


def test_dot_has_one_box_per_node_and_one_arrow_per_link_source():
    text = to_dot(workflow_digraph(DIAMOND), "diamond")
    assert text.startswith('digraph "diamond" {') and text.rstrip().endswith("}")
    assert text.count("[label=") == 6 + 5  # 6 nodes, 5 distinct source->target pairs
    assert '"b" -> "d" [label="p<-0, r<-0"];' in text
    assert '"a" [label="a: Load"];' in text


def test_graph_command_prints_the_summary_without_torch(tmp_path):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(DIAMOND))
    code = textwrap.dedent(f"""
        import sys
        from genloom.cli import main
        rc = main(["graph", {str(wf)!r}, "--json"])
        assert "torch" not in sys.modules, "genloom graph imported torch"
        sys.exit(rc)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["depth"] == 4 and info["width"] == 2 and info["components"] == 2
    proc = subprocess.run([sys.executable, "-m", "genloom.cli", "graph", str(REPO / "workflows" / "hires_fix.json")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "critical path (7 nodes): 4 (CheckpointLoaderSimple) -> " in proc.stdout
    assert "9 (SaveImage)" in proc.stdout
