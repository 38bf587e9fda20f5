"""The model packs of tests/plugins_fixtures/model_packs on the shipped genloom-tiny checkpoint:
core nodes subclassed and called from `nodes`, MODEL patches (cfg function, attention, unet
wrapper), a pack's own sampler (KSAMPLER) and guider (CFGGuider subclass) — run through the engine,
the CLI and the server, each result checked against genloom's own nodes or diffusers."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

torch = pytest.importorskip("torch")

from conftest import FIXTURES  # noqa: E402
from genloom.engine.plugins import module_name_of  # noqa: E402
from genloom.runtime import Engine  # noqa: E402
from references import ZeroQuery, close  # noqa: E402

CKPT = "genloom-tiny.safetensors"


@pytest.fixture(scope="module")
def packs(tmp_path_factory):
    torch.set_num_threads(1)  # tiny tensors: more threads only contend on a busy machine
    folder = tmp_path_factory.mktemp("model_packs") / "custom_nodes"
    shutil.copytree(FIXTURES / "model_packs", folder, ignore=shutil.ignore_patterns("__pycache__", "*.md"))
    return folder


@pytest.fixture(scope="module")
def engine(packs, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return Engine(plugins_dir=packs, device="cpu", output_dir=out, temp_dir=out / "temp",
                  input_dir=out / "in")


def pack_state(packs):
    return sys.modules[module_name_of(packs / "model_patch_pack")].CALLS


def base_graph(model_ref=("1", 0), cfg=4.0, seed=7, sampler="KSampler") -> dict:
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a blue square", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
        "5": {"class_type": sampler, "inputs": {"model": list(model_ref), "seed": seed, "steps": 3, "cfg": cfg,
                                                "sampler_name": "euler", "scheduler": "normal",
                                                "positive": ["2", 0], "negative": ["3", 0],
                                                "latent_image": ["4", 0], "denoise": 1.0}},
    }
    return graph


def kept(engine, packs, graph, name="out", source=("5", 0)):
    graph = dict(graph)
    graph["99"] = {"class_type": "Keep", "inputs": {"samples": list(source), "name": name}}
    result = engine.run(graph)
    assert not result.errors, result.errors
    return pack_state(packs)["kept"][name]


def test_core_nodes_called_and_subclassed_from_nodes(engine, packs):
    plain = kept(engine, packs, base_graph(seed=7), "plain")
    sub = base_graph(seed=5, sampler="OffsetSeedKSampler")
    sub["5"]["inputs"]["seed_offset"] = 2
    assert torch.equal(kept(engine, packs, sub, "offset"), plain)  # seed 5 + 2 is KSampler's seed 7

    info = engine.registry.object_info()["OffsetSeedKSampler"]
    assert list(info["input"]["required"])[-1] == "seed_offset"
    assert info["input"]["required"]["sampler_name"][0][0] == "euler"

    quick = {"1": {"class_type": "QuickImage",
                   "inputs": {"ckpt_name": CKPT, "text": "a red circle", "seed": 3, "steps": 3, "size": 32,
                              "sampler_name": "euler", "scheduler": "normal"}}}
    via_pack = kept(engine, packs, quick, "quick", ("1", 1))
    native = base_graph(cfg=3.0, seed=3)
    native["3"]["inputs"]["text"] = ""
    assert torch.equal(via_pack, kept(engine, packs, native, "native"))


def test_cfg_function_patch_equals_cfg_1(engine, packs):
    graph = base_graph(model_ref=("10", 0), cfg=4.0)
    graph["10"] = {"class_type": "CondOnlyCFG", "inputs": {"model": ["1", 0]}}
    got = kept(engine, packs, graph, "cfgfn")
    want = kept(engine, packs, base_graph(cfg=1.0), "cfg1")
    assert close(got, want)
    assert not close(kept(engine, packs, base_graph(cfg=4.0), "cfg4"), want, 1e-3)


def test_attention_patch_matches_diffusers(engine, packs):
    """ScaleQueryAttn2 at 0 against the checkpoint sampled by the library with diffusers' own
    processor fed a zero query source on every cross-attention."""
    from genloom.diffusion.models.single_file import load_single_file
    from genloom.diffusion.sampling import loop
    from genloom.engine import context

    graph = base_graph(model_ref=("10", 0))
    graph["10"] = {"class_type": "ScaleQueryAttn2", "inputs": {"model": ["1", 0], "scale": 0.0}}
    got = kept(engine, packs, graph, "attn2")
    assert ("input", 1) in pack_state(packs)["attn2"] and ("middle", 0) in pack_state(packs)["attn2"]

    ckpt = engine.folders.model_path("checkpoints", CKPT)
    token = context.use(context.RunContext(device_choice="cpu", folders=engine.folders))
    try:
        bundle = load_single_file(ckpt)
        unet = bundle.model.unet
        saved = {}
        for path, module in unet.named_modules():
            if path.endswith(".attn2"):
                saved[path] = module.processor
                module.processor = ZeroQuery()

        def encode(text):
            cond, pooled = bundle.clip.encode(text)
            return [[cond, {"pooled_output": pooled}]]

        latent = {"samples": torch.zeros(got.shape)}
        want = loop.sample(bundle.model, encode("a red circle"), encode("a blue square"), latent, seed=7,
                           steps=3, cfg=4.0, sampler_name="euler", scheduler="normal")["samples"]
    finally:
        context.reset(token)
    assert close(got, want)
    assert not close(got, kept(engine, packs, base_graph(), "plain_attn"), 1e-3)


def test_unet_wrapper_pack_sampler_and_guider(engine, packs):
    plain = kept(engine, packs, base_graph(), "plain_w")
    graph = base_graph(model_ref=("10", 0))
    graph["10"] = {"class_type": "CountingWrapper", "inputs": {"model": ["1", 0]}}
    state = pack_state(packs)
    state["wrapper"].clear()
    assert close(kept(engine, packs, graph, "wrapped"), plain)
    assert state["wrapper"] == [[0, 1]] * 3

    def custom(sampler_node: dict, guider_node: dict | None = None) -> dict:
        g = base_graph()
        del g["5"]
        g["20"] = sampler_node
        g["21"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 7}}
        g["22"] = guider_node or {"class_type": "CFGGuider", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "cfg": 4.0}}
        g["23"] = {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal",
                                                              "steps": 3, "denoise": 1.0}}
        g["5"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["21", 0], "guider": ["22", 0], "sampler": ["20", 0], "sigmas": ["23", 0],
            "latent_image": ["4", 0]}}
        return g

    genloom_euler = kept(engine, packs, custom({"class_type": "KSamplerSelect",
                                                "inputs": {"sampler_name": "euler"}}), "euler")
    pack_euler = kept(engine, packs, custom({"class_type": "PackEulerSampler", "inputs": {"scale": 1.0}}),
                      "pack_euler")
    assert close(pack_euler, genloom_euler)
    assert close(genloom_euler, plain)  # KSampler is SamplerCustomAdvanced with these parts

    cond_only = kept(engine, packs, custom(
        {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        {"class_type": "CondOnlyGuider", "inputs": {"model": ["1", 0], "positive": ["2", 0],
                                                   "negative": ["3", 0]}}), "cond_only")
    assert close(cond_only, kept(engine, packs, base_graph(cfg=1.0), "cfg1_g"))


def test_model_packs_through_the_cli(packs, tmp_path, capsys):
    from genloom.cli import main

    graph = base_graph(model_ref=("10", 0))
    graph["10"] = {"class_type": "ScaleQueryAttn2", "inputs": {"model": ["1", 0], "scale": 0.0}}
    graph["6"] = {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}}
    graph["7"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "patched"}}
    graph["8"] = {"class_type": "QuickImage", "inputs": {"ckpt_name": CKPT, "text": "a red circle", "seed": 3,
                                                         "steps": 2, "size": 32, "sampler_name": "euler",
                                                         "scheduler": "normal"}}
    graph["9"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "quick"}}
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(graph))
    code = main(["run", str(wf), "--plugins-dir", str(packs), "--output-dir", str(tmp_path / "o"),
                 "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    from PIL import Image

    for prefix in ("patched", "quick"):
        image = Image.open(tmp_path / "o" / f"{prefix}_00001_.png")
        assert image.size == (16, 16)  # EmptyLatentImage: 32 / 8 latent cells, 4 pixels each


def test_model_packs_through_the_server(packs, tmp_path):
    sys.path.insert(0, str(FIXTURES.parent / "server"))
    from server_support import InProcessServer

    srv = InProcessServer(tmp_path / "data", packs)
    try:
        status, info = srv.http.get("/object_info/ScaleQueryAttn2")
        assert status == 200 and info["ScaleQueryAttn2"]["input"]["required"]["scale"][0] == "FLOAT"
        graph = base_graph(model_ref=("10", 0), cfg=4.0)
        graph["10"] = {"class_type": "CondOnlyCFG", "inputs": {"model": ["1", 0]}}
        graph["99"] = {"class_type": "Keep", "inputs": {"samples": ["5", 0], "name": "server_cfgfn"}}
        plain = base_graph(cfg=1.0)
        plain["99"] = {"class_type": "Keep", "inputs": {"samples": ["5", 0], "name": "server_cfg1"}}
        plain["8"] = {"class_type": "QuickImage", "inputs": {
            "ckpt_name": CKPT, "text": "a red circle", "seed": 3, "steps": 2, "size": 32,
            "sampler_name": "euler", "scheduler": "normal"}}
        plain["98"] = {"class_type": "Keep", "inputs": {"samples": ["8", 1], "name": "server_quick"}}
        for g in (graph, plain):
            prompt_id = srv.http.submit(g)
            entry = srv.http.wait_history(prompt_id, timeout=60)
            assert entry["status"]["status_str"] == "success", entry["status"]
        state = pack_state(packs)["kept"]
        assert close(state["server_cfgfn"], state["server_cfg1"])
        assert state["server_quick"].shape == (1, 4, 4, 4)  # the core-nodes pack ran on the server too
    finally:
        srv.stop()
