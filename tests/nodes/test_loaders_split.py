"""The split-file loaders: ComfyUI's signatures and folders, what each `type` takes, the 16-channel VAE,
and errors that name what a file is."""

import json
from pathlib import Path

import pytest

from comfy_facts import check_entry

torch = pytest.importorskip("torch")

import tiny_split  # noqa: E402
from tiny_split import sd3_models  # noqa: E402,F401 - the session fixture

from genloom.engine.errors import ModelLoadError  # noqa: E402
from genloom.nodes import loaders_split  # noqa: E402

REPO = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def ctx(sd3_models, tmp_path):
    from genloom.engine import context
    from genloom.engine.folders import Folders

    own = tmp_path / "models"
    ctx = context.RunContext(device_choice="cpu", folders=Folders(
        models_dirs=[own, sd3_models[0]], input_dir=tmp_path / "in", output_dir=tmp_path / "out",
        temp_dir=tmp_path / "temp"))
    token = context.use(ctx)
    try:
        yield ctx, own
    finally:
        context.reset(token)


def _info(cls):
    return cls.schema().object_info()


# ComfyUI's `type` options (nodes.py), in its order; genloom offers those it can load.
COMFY_CLIP_TYPES = ["stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart",
                    "cosmos", "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image",
                    "hunyuan_image", "flux2", "ovis"]
COMFY_DUAL_TYPES = ["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image"]


def test_signatures_are_comfyuis(ctx):
    files = ctx[0].folders.list_models("text_encoders")
    unets = ctx[0].folders.list_models("diffusion_models")
    single = _info(loaders_split.CLIPLoader)["input"]["required"]["type"][0]
    dual = _info(loaders_split.DualCLIPLoader)["input"]["required"]["type"][0]
    assert {"stable_diffusion", "sd3"} <= set(single) <= set(COMFY_CLIP_TYPES)
    assert {"sdxl", "sd3", "flux"} <= set(dual) <= set(COMFY_DUAL_TYPES)
    check_entry(_info(loaders_split.UNETLoader), {
        "category": "advanced/loaders", "display": "Load Diffusion Model", "output": ["MODEL"],
        "required": [("unet_name", unets), ("weight_dtype", ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"])]})
    check_entry(_info(loaders_split.CLIPLoader), {
        "category": "advanced/loaders", "display": "Load CLIP", "output": ["CLIP"],
        "required": [("clip_name", files), ("type", single)],
        "optional": [("device", ["default", "cpu"])]})
    check_entry(_info(loaders_split.DualCLIPLoader), {
        "category": "advanced/loaders", "display": "DualCLIPLoader", "output": ["CLIP"],
        "required": [("clip_name1", files), ("clip_name2", files), ("type", dual)],
        "optional": [("device", ["default", "cpu"])]})
    check_entry(_info(loaders_split.TripleCLIPLoader), {
        "category": "advanced/loaders", "display": "TripleCLIPLoader", "output": ["CLIP"],
        "required": [("clip_name1", files), ("clip_name2", files), ("clip_name3", files)]})


def test_both_folders_of_each_kind_are_searched(ctx, sd3_models):
    """diffusion_models/ and unet/, text_encoders/ and clip/ (ComfyUI's legacy names) list together."""
    folders, own = ctx[0].folders, ctx[1]
    (own / "unet").mkdir(parents=True)
    (own / "clip").mkdir(parents=True)
    (own / "unet" / "legacy.safetensors").write_bytes(sd3_models[2]["unet"].read_bytes())
    (own / "clip" / "old-clip_l.safetensors").write_bytes(sd3_models[2]["clip_l"].read_bytes())
    assert "legacy.safetensors" in folders.list_models("diffusion_models")
    assert "tiny-sd3.safetensors" in folders.list_models("diffusion_models")
    assert {"old-clip_l.safetensors", "tiny-sd3-clip_g.safetensors"} <= set(folders.list_models("text_encoders"))
    assert folders.list_models("clip") == folders.list_models("text_encoders")
    (model,) = loaders_split.UNETLoader().run("legacy.safetensors")
    assert model.kind == "sd3"
    (clip,) = loaders_split.CLIPLoader().run("old-clip_l.safetensors", "stable_diffusion")
    assert clip.kind == "sd1" and len(clip.text_encoders) == 1


def test_types_take_the_encoders_they_name(ctx):
    (sdxl,) = loaders_split.DualCLIPLoader().run("tiny-sd3-clip_g.safetensors", "tiny-sd3-clip_l.safetensors", "sdxl")
    assert sdxl.kind == "sdxl" and sdxl.roles == ()
    enc_l, enc_g = sdxl.text_encoders  # CLIP-L first, whatever the order of the inputs
    assert enc_l.config.hidden_size == tiny_split.CLIP_L and enc_g.config.hidden_size == tiny_split.CLIP_G
    cond, pooled = sdxl.encode("a cat")
    assert cond.shape == (1, 77, 64 + 128) and pooled.shape == (1, 128)
    with pytest.raises(ModelLoadError, match=r"sdxl takes clip_l \+ clip_g text encoders, not tiny-sd3-t5xxl"):
        loaders_split.DualCLIPLoader().run("tiny-sd3-clip_l.safetensors", "tiny-sd3-t5xxl.safetensors", "sdxl")
    with pytest.raises(ModelLoadError, match="stable_diffusion takes clip_l"):
        loaders_split.CLIPLoader().run("tiny-sd3-t5xxl.safetensors", "stable_diffusion")
    (on_cpu,) = loaders_split.CLIPLoader().run("tiny-sd3-t5xxl.safetensors", "sd3", "cpu")
    (default,) = loaders_split.CLIPLoader().run("tiny-sd3-t5xxl.safetensors", "sd3")
    assert on_cpu.device == "cpu" and default.device is None  # None: the run's device
    with pytest.raises(ModelLoadError, match="text encoders of one size"):
        loaders_split.DualCLIPLoader().run("tiny-sd3-clip_l.safetensors", "tiny-sd3-clip_l.safetensors", "sd3")


def test_unknown_files_say_what_they_are(ctx, tmp_path):
    from safetensors.torch import save_file

    te = ctx[1] / "text_encoders"
    te.mkdir(parents=True)
    umt5 = {f"encoder.block.{i}.layer.0.SelfAttention.{n}.weight": torch.zeros(4, 4)
            for i in range(2) for n in ("q", "relative_attention_bias")}
    save_file(umt5, str(te / "umt5.safetensors"))
    with pytest.raises(ModelLoadError, match="UMT5"):
        loaders_split.CLIPLoader().run("umt5.safetensors", "sd3")
    dm = ctx[1] / "diffusion_models"
    dm.mkdir(parents=True)
    save_file({"input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, str(dm / "unet.safetensors"))
    with pytest.raises(ModelLoadError, match="SD1/SD2/SDXL UNet"):
        loaders_split.UNETLoader().run("unet.safetensors")


def test_the_16_channel_vae_decodes_as_diffusers(ctx, sd3_models, tmp_path):
    """The LDM-layout file (and the same VAE diffusers-keyed) decode as the diffusers module does."""
    from safetensors.torch import save_file

    from genloom.nodes.loaders import VAELoader

    parts = sd3_models[1]
    vae_dir = ctx[1] / "vae"
    vae_dir.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in parts["vae"].state_dict().items()}, str(vae_dir / "diffusers-vae.safetensors"))
    latents = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = ((parts["vae"].decode(latents).sample + 1) / 2).clamp(0, 1).movedim(1, -1)
    for name in ("tiny-sd3-vae.safetensors", "diffusers-vae.safetensors"):
        (vae,) = VAELoader().run(name)
        assert vae.latent_channels == 16 and vae.scale_factor == 8
        assert torch.allclose(vae.decode(latents), ref, atol=1e-6), name
    bad = {**tiny_split.vae_ldm_state(parts["vae"]), "decoder.mystery.weight": torch.zeros(1)}
    save_file({k: v.contiguous() for k, v in bad.items()}, str(vae_dir / "bad.safetensors"))
    with pytest.raises(ModelLoadError, match="unexpected: decoder.mystery.weight"):
        VAELoader().run("bad.safetensors")


def test_sd35_workflow_validates_and_runs_on_tiny_files(ctx, sd3_models, tmp_path):
    """workflows/sd35_txt2img.json names the files users download; here tiny ones carry those names."""
    import shutil

    import genloom

    files = sd3_models[2]
    own = tmp_path / "wf_models"
    for sub, name, src in (("diffusion_models", "sd3.5_medium.safetensors", files["unet"]),
                           ("text_encoders", "clip_l.safetensors", files["clip_l"]),
                           ("text_encoders", "clip_g.safetensors", files["clip_g"]),
                           ("text_encoders", "t5xxl_fp16.safetensors", files["t5xxl"]),
                           ("vae", "sd3.5_vae.safetensors", files["vae"])):
        (own / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, own / sub / name)
    engine = genloom.Engine(models_dirs=[own], input_dir=tmp_path / "in", output_dir=tmp_path / "out",
                            temp_dir=tmp_path / "temp", device="cpu")
    path = REPO / "workflows" / "sd35_txt2img.json"
    doc = json.loads(path.read_text())
    assert engine.validate(path).node_errors == {}  # the names resolve and every header is loadable
    graph = doc["graph"]
    latent = next(n for n in graph.values() if n["class_type"] == "EmptySD3LatentImage")
    latent["inputs"].update(width=64, height=64)
    sampler = next(n for n in graph.values() if n["class_type"] == "KSampler")
    sampler["inputs"]["steps"] = 2
    result = engine.run(doc)
    images = [e for ui in result.outputs.values() for e in ui.get("images", [])]
    assert len(images) == 1


def test_validation_names_files_the_loaders_cannot_use(sd3_models, tmp_path):
    """Judged from the safetensors headers, before anything runs (and without importing torch)."""
    import subprocess
    import sys
    import textwrap

    from safetensors.torch import save_file

    models = tmp_path / "models"
    for sub in ("diffusion_models", "text_encoders"):
        (models / sub).mkdir(parents=True)
    save_file({"img_in.weight": torch.zeros(2, 2), "txt_norm.weight": torch.zeros(2)},
              str(models / "diffusion_models" / "qwen.safetensors"))
    save_file({"spiece_model": torch.zeros(4, dtype=torch.uint8)}, str(models / "text_encoders" / "umt5.safetensors"))
    graph = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "qwen.safetensors", "weight_dtype": "default"}},
             "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "umt5.safetensors", "type": "sd3"}},
             "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a", "clip": ["2", 0]}},
             "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
             "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 1, "steps": 1, "cfg": 1.0,
                                                        "sampler_name": "euler", "scheduler": "normal",
                                                        "positive": ["3", 0], "negative": ["3", 0],
                                                        "latent_image": ["4", 0], "denoise": 1.0}},
             "6": {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}}}
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(graph))
    code = textwrap.dedent(f"""
        import json, sys
        from genloom import Engine
        v = Engine(models_dirs=[{str(models)!r}]).validate(json.load(open({str(wf)!r})))
        assert "torch" not in sys.modules, "validation imported torch"
        print(json.dumps({{k: [(e["type"], e["extra_info"].get("input_name"), e["details"]) for e in n["errors"]]
                          for k, n in v.node_errors.items()}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    (kind, name, details), = errors["1"]
    assert (kind, name) == ("custom_validation_failed", "unet_name") and "Qwen-Image" in details
    (kind, name, details), = errors["2"]
    assert (kind, name) == ("custom_validation_failed", "clip_name") and "UMT5" in details


def test_quadruple_clip_loader_says_hidream_is_not_loadable(tmp_path):
    """ComfyUI's HiDream loader is declared as ComfyUI declares it, and refused by name at validation."""
    import genloom

    assert [i.name for i in loaders_split.QuadrupleCLIPLoader.inputs] == [f"clip_name{i}" for i in range(1, 5)]
    engine = genloom.Engine(models_dirs=[tmp_path], output_dir=tmp_path / "out", device="cpu")
    graph = {"1": {"class_type": "QuadrupleCLIPLoader",
                   "inputs": {f"clip_name{i}": f"enc{i}.safetensors" for i in range(1, 5)}},
             "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a", "clip": ["1", 0]}},
             "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}}
    (error,) = engine.validate(graph).node_errors["1"]["errors"]
    assert error["type"] == "custom_validation_failed" and "HiDream" in error["details"]
