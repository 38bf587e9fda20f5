"""The compatibility modules against independent references: folder_paths over real folders,
comfy.utils against torch/arithmetic, comfy.model_management over the run context, the import hook's
never-shadow rule, GraphBuilder expansions run by the engine."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pytest

from genloom.engine import context
from genloom.engine.folders import Folders


@pytest.fixture
def folders(tmp_path):
    models = tmp_path / "models"
    (models / "checkpoints" / "sub").mkdir(parents=True)
    (models / "checkpoints" / "a.safetensors").write_bytes(b"x")
    (models / "checkpoints" / "sub" / "b.ckpt").write_bytes(b"x")
    (models / "checkpoints" / "notes.txt").write_text("not a model")
    f = Folders(models_dirs=[models], input_dir=tmp_path / "in", output_dir=tmp_path / "out",
                temp_dir=tmp_path / "tmp")
    for d in (f.input_dir, f.output_dir, f.temp_dir):
        d.mkdir()
    token = context.use(context.RunContext(device_choice="cpu", folders=f))
    yield f
    context.reset(token)


def test_one_module_object_under_both_names():
    import comfy.utils
    import folder_paths

    assert comfy.utils is sys.modules["genloom.compat.comfy.utils"]
    assert folder_paths is importlib.import_module("genloom.compat.folder_paths")
    import comfy

    assert comfy.cli_args.args.preview_size == 512  # a submodule reached as an attribute loads on use


def test_folder_paths_over_the_run_folders(folders, tmp_path):
    import folder_paths as fp

    assert fp.get_filename_list("checkpoints") == ["a.safetensors", "sub/b.ckpt"]
    assert fp.get_full_path("checkpoints", "sub/b.ckpt") == str(tmp_path / "models/checkpoints/sub/b.ckpt")
    assert fp.get_full_path("checkpoints", "missing.safetensors") is None
    assert fp.get_full_path("checkpoints", "../../etc/passwd") is None
    with pytest.raises(FileNotFoundError, match="Model in folder 'checkpoints' with filename 'x' not found"):
        fp.get_full_path_or_raise("checkpoints", "x")
    assert fp.get_folder_paths("checkpoints") == [str(tmp_path / "models/checkpoints")]
    assert fp.folder_names_and_paths["checkpoints"][0] == [str(tmp_path / "models/checkpoints")]
    assert ".safetensors" in fp.folder_names_and_paths["checkpoints"][1]
    assert "loras" in fp.folder_names_and_paths and "nonsense" not in fp.folder_names_and_paths
    assert fp.models_dir == str(tmp_path / "models")
    assert (fp.get_input_directory(), fp.get_output_directory(), fp.get_temp_directory()) == (
        str(tmp_path / "in"), str(tmp_path / "out"), str(tmp_path / "tmp"))
    assert fp.output_directory == str(tmp_path / "out")
    assert fp.get_directory_by_type("temp") == str(tmp_path / "tmp") and fp.get_directory_by_type("x") is None
    (tmp_path / "out" / "pic.png").write_bytes(b"x")
    assert fp.get_annotated_filepath("pic.png [output]") == str(tmp_path / "out" / "pic.png")
    assert fp.get_annotated_filepath("pic.png") == str(tmp_path / "in" / "pic.png")
    assert fp.exists_annotated_filepath("pic.png [output]") and not fp.exists_annotated_filepath("pic.png")
    assert fp.filter_files_content_types(["a.png", "b.txt", "c.mp4", "d.wav"], ["image", "video"]) == ["a.png", "c.mp4"]


def test_add_model_folder_path_and_a_packs_own_kind(folders, tmp_path):
    import folder_paths as fp

    own = tmp_path / "own_kind"
    own.mkdir()
    (own / "w.pth").write_bytes(b"x")
    fp.add_model_folder_path("genloom_test_kind", str(own))
    try:
        assert "genloom_test_kind" in fp.folder_names_and_paths
        assert fp.get_filename_list("genloom_test_kind") == ["w.pth"]
        extra = tmp_path / "extra_ckpts"
        extra.mkdir()
        (extra / "first.safetensors").write_bytes(b"x")
        fp.add_model_folder_path("checkpoints", str(extra), is_default=True)
        assert fp.get_folder_paths("checkpoints")[0] == str(extra)
        assert fp.get_filename_list("checkpoints") == ["a.safetensors", "first.safetensors", "sub/b.ckpt"]
    finally:
        del fp.folder_names_and_paths["genloom_test_kind"]
        del fp.folder_names_and_paths["checkpoints"]
    assert fp.get_folder_paths("checkpoints") == [str(tmp_path / "models/checkpoints")]


def test_get_save_image_path_counts_past_existing_files(folders, tmp_path):
    import folder_paths as fp

    out = tmp_path / "out"
    (out / "run").mkdir()
    for n in (1, 4):
        (out / "run" / f"pic_{n:05}_.png").write_bytes(b"x")
    full, name, counter, subfolder, prefix = fp.get_save_image_path("run/pic", str(out), 64, 32)
    assert (full, name, counter, subfolder, prefix) == (str(out / "run"), "pic", 5, "run", "run/pic")
    assert fp.get_save_image_path("size_%width%x%height%", str(out), 64, 32)[1] == "size_64x32"
    with pytest.raises(ValueError):
        fp.get_save_image_path("../escape", str(out))


def test_progress_bar_sends_the_nodes_progress_and_stops_on_interrupt(folders):
    import comfy.utils

    events = []
    ctx = context.RunContext(device_choice="cpu", folders=folders, emit=lambda e, d: events.append((e, d)),
                             node_id="7", prompt_id="p")
    token = context.use(ctx)
    try:
        bar = comfy.utils.ProgressBar(4)
        bar.update(1)
        bar.update_absolute(3)
        bar.update(5)  # past the end: clamped to the total, as ComfyUI clamps
        assert [(d["value"], d["max"], d["node"]) for _, d in events] == [(1, 4, "7"), (3, 4, "7"), (4, 4, "7")]
        ctx.interrupt_flag.set()
        with pytest.raises(context.Interrupted):
            bar.update(1)
        import comfy.model_management as mm

        assert mm.processing_interrupted()
        with pytest.raises(mm.InterruptProcessingException):
            mm.throw_exception_if_processing_interrupted()
        mm.interrupt_current_processing(False)
        assert not mm.processing_interrupted()
    finally:
        context.reset(token)


def test_common_upscale_and_tiled_scale_against_torch():
    import torch
    import torch.nn.functional as F

    import comfy.utils

    x = torch.rand(2, 3, 8, 12)
    assert torch.equal(comfy.utils.common_upscale(x, 24, 16, "nearest-exact", "disabled"),
                       F.interpolate(x, size=(16, 24), mode="nearest-exact"))
    cropped = comfy.utils.common_upscale(x, 8, 8, "bilinear", "center")
    assert torch.allclose(cropped, F.interpolate(x[..., 2:10], size=(8, 8), mode="bilinear"))

    def double(t):
        return F.interpolate(t, scale_factor=2, mode="nearest") * 0.5

    img = torch.rand(1, 3, 20, 28)
    tiled = comfy.utils.tiled_scale(img, double, tile_x=8, tile_y=8, overlap=2, upscale_amount=2, out_channels=3)
    assert torch.allclose(tiled, double(img), atol=1e-6)  # blending identical overlaps changes nothing
    # rows and columns of tiles: ceil((20-2)/(8-2)) = 3, ceil((28-2)/6) = 5
    assert comfy.utils.get_tiled_scale_steps(28, 20, 8, 8, 2) == 15


def test_torch_files_round_trip_weights_only(tmp_path):
    import torch

    import comfy.utils

    sd = {"a.weight": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}
    comfy.utils.save_torch_file(sd, tmp_path / "w.safetensors", metadata={"k": "v"})
    back, meta = comfy.utils.load_torch_file(str(tmp_path / "w.safetensors"), return_metadata=True)
    assert meta == {"k": "v"} and all(torch.equal(back[k], sd[k]) for k in sd)

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"t": torch.ones(1), "obj": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="refuses"):
        comfy.utils.load_torch_file(str(tmp_path / "evil.pt"))


def test_attr_paths():
    import types

    import comfy.utils

    obj = types.SimpleNamespace(inner=types.SimpleNamespace(value=1))
    assert comfy.utils.set_attr(obj, "inner.value", 5) == 1
    assert comfy.utils.get_attr(obj, "inner.value") == 5


def test_model_management_answers_for_the_run(folders):
    import torch

    import comfy.model_management as mm

    assert mm.get_torch_device() == torch.device("cpu")
    assert mm.intermediate_device() == torch.device("cpu") and mm.unet_offload_device() == torch.device("cpu")
    assert mm.cpu_state == mm.CPUState.CPU and mm.vram_state == mm.VRAMState.DISABLED
    assert issubclass(mm.OOM_EXCEPTION, BaseException)
    assert not mm.should_use_fp16() and not mm.should_use_bf16()
    assert mm.unet_dtype() == torch.float32 and mm.vae_dtype() == torch.float32
    free = mm.get_free_memory()
    with open("/proc/meminfo") as fh:
        total = int(next(line for line in fh if line.startswith("MemTotal")).split()[1]) * 1024
    assert 0 < free <= total == mm.get_total_memory()
    mm.soft_empty_cache()
    mm.unload_all_models()
    mm.load_models_gpu([object()])


def test_types_and_any_matching():
    from comfy.comfy_types import IO

    assert IO.ANY == "IMAGE" and IO.IMAGE == "IMAGE" and IO.IMAGE != "MASK" and IO.NUMBER == "INT"


@pytest.mark.parametrize("name, imported_first", [("server", True), ("latent_preview", False)])
def test_the_hook_never_shadows_a_module_the_user_has(tmp_path, name, imported_first):
    """A module of the user's - imported before genloom loaded packs, or only on sys.path - stays
    theirs; the names it does not cover still come from genloom. A fresh interpreter keeps this
    process's modules untouched."""
    (tmp_path / f"{name}.py").write_text("WHO = 'the user'\n")
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        if {imported_first}:
            import {name}
        from genloom import compat
        compat.install()
        import {name} as again, folder_paths
        assert again.WHO == 'the user', again
        assert folder_paths.__name__ == 'genloom.compat.folder_paths'
        assert {name!r} in compat.shadowed(), compat.shadowed()
        print('ok')
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


def test_nothing_is_importable_by_comfyui_names_without_plugins():
    code = ("import sys, genloom.runtime as r; r.build_registry(); import importlib.util as u; "
            "print(u.find_spec('folder_paths') is None, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["True", "False"], done.stderr


def test_graph_builder_expansion_runs_in_the_engine(tmp_path):
    from comfy_execution.graph_utils import GraphBuilder, is_link

    from genloom.runtime import Engine

    pack = tmp_path / "plugins" / "expand_pack.py"
    pack.parent.mkdir()
    pack.write_text(textwrap.dedent('''
        from comfy_execution.graph_utils import GraphBuilder
        from comfy_execution.graph import ExecutionBlocker

        class AddTwice:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"value": ("INT", {"default": 1})}}
            RETURN_TYPES = ("INT",)
            FUNCTION = "go"
            def go(self, value):
                g = GraphBuilder()
                a = g.node("PlusOne", value=value)
                b = g.node("PlusOne", value=a.out(0))
                return {"result": (b.out(0),), "expand": g.finalize()}

        class PlusOne:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"value": ("INT", {"default": 1})}}
            RETURN_TYPES = ("INT",)
            FUNCTION = "go"
            def go(self, value):
                return (value + 1,)

        class Gate:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"value": ("INT", {"default": 1}), "open": ("BOOLEAN", {"default": True})}}
            RETURN_TYPES = ("INT",)
            FUNCTION = "go"
            def go(self, value, open):
                return (value if open else ExecutionBlocker(None),)

        NODE_CLASS_MAPPINGS = {"AddTwice": AddTwice, "PlusOne": PlusOne, "Gate": Gate}
    '''))
    engine = Engine(plugins_dir=tmp_path / "plugins", device="cpu", output_dir=tmp_path / "o")
    graph = {"1": {"class_type": "AddTwice", "inputs": {"value": 40}},
             "2": {"class_type": "Gate", "inputs": {"value": ["1", 0], "open": True}},
             "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}}
    assert engine.run(graph).outputs["3"] == {"text": ["42"]}
    graph["2"]["inputs"]["open"] = False
    result = engine.run(graph)
    assert "3" not in result.outputs and result.errors == []  # blocked silently, as ComfyUI's blocker
    g = GraphBuilder(prefix="p.")
    node = g.node("PlusOne", value=1)
    assert is_link(node.out(0)) and g.finalize() == {"p.1": {"class_type": "PlusOne", "inputs": {"value": 1}}}


def test_loading_the_test_packs_imports_no_torch():
    """Packs that import folder_paths, comfy.utils, comfy.model_management, server and the V3 API
    load without torch: `genloom plugins check`, `validate` and `nodes` stay fast."""
    from conftest import FIXTURES

    code = ("import sys; from genloom.runtime import build_registry; "
            f"r = build_registry([{str(FIXTURES)!r}], entry_points_too=False); "
            "print(len(r.nodes) > 0, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["True", "False"], done.stderr
