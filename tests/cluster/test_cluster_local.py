"""The cluster layer's parts that need no Ray: Ray stays unimported without --ray, sweeps and folder
runs in one process, node keys without a run, and files landing under free names."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from server_support import prompt, write_plugins  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _workflow(tmp_path, graph) -> Path:
    import json

    path = tmp_path / "wf.json"
    path.write_text(json.dumps(graph))
    return path


def test_nothing_of_ray_is_imported_without_ray(tmp_path):
    plugins = write_plugins(tmp_path / "plugins")
    wf = _workflow(tmp_path, prompt(value=3, steps=1))
    script = textwrap.dedent(f"""
        import sys
        from genloom import cli
        from genloom.server.app import Config, Server
        try:
            cli.main(["serve", "--help"])
        except SystemExit:
            pass
        assert cli.main(["run", {str(wf)!r}, "--plugins-dir", {str(plugins)!r}, "--output-dir",
                         {str(tmp_path / "out")!r}]) == 0
        assert cli.main(["run", {str(wf)!r}, "--plugins-dir", {str(plugins)!r}, "--output-dir",
                         {str(tmp_path / "out")!r}, "--sweep", "1.value=1,2"]) == 0
        Server(Config(data_dir={str(tmp_path / "data")!r}, plugins_dirs=[{str(plugins)!r}], device="cpu")).close()
        loaded = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
        assert not loaded, loaded
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr


def test_sweep_runs_the_cartesian_product_in_one_process(tmp_path, capsys):
    from genloom import cli

    plugins = write_plugins(tmp_path / "plugins")
    out = tmp_path / "out"
    wf = _workflow(tmp_path, prompt(value=3, steps=1, prefix="sw"))
    rc = cli.main(["run", str(wf), "--plugins-dir", str(plugins), "--output-dir", str(out),
                   "--sweep", "1.value=10,20", "--sweep", "1.steps=1,2"])
    assert rc == 0
    printed = capsys.readouterr().out
    labels = [line for line in printed.splitlines() if line.startswith("[")]
    assert labels == ["[1.value=10 1.steps=1]", "[1.value=10 1.steps=2]", "[1.value=20 1.steps=1]",
                      "[1.value=20 1.steps=2]"]
    colours = sorted(Image.open(p).getpixel((0, 0))[0] for p in out.glob("sw_*.png"))
    assert colours == [10, 10, 20, 20]


def test_inputs_folder_runs_once_per_file(tmp_path, capsys):
    from genloom import cli

    folder = tmp_path / "pictures"
    folder.mkdir()
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (8, 8), colour).save(folder / f"p{i}.png")
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "p0.png"}},
             "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "copy"}}}
    out = tmp_path / "out"
    rc = cli.main(["run", str(_workflow(tmp_path, graph)), "--output-dir", str(out), "--inputs", str(folder),
                   "--bind", "1.image"])
    assert rc == 0
    written = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
    assert [Image.open(p).convert("RGB").getpixel((3, 3)) for p in written] == [(255, 0, 0), (0, 255, 0),
                                                                              (0, 0, 255)]


def test_plan_keys_are_the_keys_a_run_caches(tmp_path):
    from genloom.runtime import Engine, build_registry

    engine = Engine(registry=build_registry([write_plugins(tmp_path / "plugins")]), device="cpu",
                    output_dir=tmp_path / "out", cache="lru:50")
    graph = prompt(value=5, steps=1)
    keys = engine.plan_keys(graph)
    assert set(keys) == {"1", "2"} and engine.cache_keys() == set()  # nothing ran
    engine.run(graph)
    assert set(keys.values()) == engine.cache_keys()
    changed = engine.plan_keys(prompt(value=5, steps=1, prefix="other"))
    assert changed["1"] == keys["1"] and changed["2"] != keys["2"]  # only the changed node and below
    upstream = engine.plan_keys(prompt(value=6, steps=1))
    assert upstream["1"] != keys["1"] and upstream["2"] != keys["2"]


def test_files_from_two_workers_land_under_free_names(tmp_path):
    from genloom.cluster.landing import Landing

    landing = Landing({"output": tmp_path / "out", "temp": tmp_path / "temp"})
    assert landing.land("a", "output", "img_00001_.png", b"A") == "img_00001_.png"
    assert landing.land("b", "output", "img_00001_.png", b"B") == "img_00002_.png"
    assert landing.land("b", "output", "sub/x.png", b"X") == "sub/x.png"
    assert landing.land("a", "output", "sub/x.png", b"Y") == "sub/x_1.png"
    assert (tmp_path / "out" / "img_00001_.png").read_bytes() == b"A"
    assert (tmp_path / "out" / "img_00002_.png").read_bytes() == b"B"
    ui = {"images": [{"filename": "img_00001_.png", "subfolder": "", "type": "output"},
                     {"filename": "x.png", "subfolder": "sub", "type": "output"}]}
    assert landing.patch("b", ui)["images"][0]["filename"] == "img_00002_.png"
    assert landing.patch("a", ui) == {"images": [ui["images"][0],
                                                 {"filename": "x_1.png", "subfolder": "sub", "type": "output"}]}
    try:
        landing.land("a", "output", "../escape.png", b"!")
    except ValueError as exc:
        assert "outside" in str(exc)
    else:
        raise AssertionError("a path outside the folder was written")
