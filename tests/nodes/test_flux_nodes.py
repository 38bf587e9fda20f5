"""The Flux nodes: ComfyUI's signatures (comfy_extras/nodes_flux.py, nodes_edit_model.py), what they
write into CONDITIONING, CLIPTextEncodeFlux's numbers against diffusers' FluxPipeline.encode_prompt,
LoraLoaderModelOnly on a Flux model, and the example workflows (workflows/flux_*.json) validated and
run on tiny stand-ins saved under the file names users download."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from genloom.runtime import build_registry

torch = pytest.importorskip("torch")

import tiny_flux  # noqa: E402
from comfy_facts import check_entry  # noqa: E402

REGISTRY = build_registry(entry_points_too=False)
REPO = Path(__file__).resolve().parents[2]
_G = ("guidance", "FLOAT", 3.5, 0.0, 100.0, 0.1)
_COND = ("conditioning", "CONDITIONING")
CAT = "advanced/conditioning/flux"
FACTS = {  # read from ComfyUI's comfy_extras/nodes_flux.py and nodes_edit_model.py
    "CLIPTextEncodeFlux": {"category": CAT, "output": ["CONDITIONING"],
                           "required": [("clip", "CLIP"), ("clip_l", "STRING"), ("t5xxl", "STRING"), _G]},
    "FluxGuidance": {"category": CAT, "output": ["CONDITIONING"], "required": [_COND, _G]},
    "FluxDisableGuidance": {"category": CAT, "output": ["CONDITIONING"], "required": [_COND]},
    "FluxKontextImageScale": {"category": CAT, "output": ["IMAGE"], "required": [("image", "IMAGE")]},
    "FluxKontextMultiReferenceLatentMethod": {
        "category": CAT, "output": ["CONDITIONING"],
        "required": [_COND, ("reference_latents_method", ["offset", "index", "uxo/uno", "index_timestep_zero"])]},
    "ReferenceLatent": {"category": "advanced/conditioning/edit_models", "output": ["CONDITIONING"],
                        "required": [_COND], "optional": [("latent", "LATENT")]},
}


@pytest.mark.parametrize("name", sorted(FACTS))
def test_object_info_matches_comfyui(name):
    info = REGISTRY[name].object_info()
    check_entry(info, {**FACTS[name], "display": name})
    if name == "CLIPTextEncodeFlux":
        assert all(info["input"]["required"][t][1].get("multiline") and
                   info["input"]["required"][t][1].get("dynamicPrompts") for t in ("clip_l", "t5xxl"))


def _cond():
    return [[torch.zeros(1, 3, 4), {"pooled_output": torch.ones(1, 2)}],
            [torch.ones(1, 3, 4), {"pooled_output": torch.zeros(1, 2), "guidance": 1.0}]]


def test_guidance_nodes_set_the_value_on_every_entry_and_copy():
    from genloom.nodes.flux import FluxDisableGuidance, FluxGuidance

    cond = _cond()
    (out,) = FluxGuidance().run(cond, 2.5)
    assert [e[1]["guidance"] for e in out] == [2.5, 2.5]
    assert "guidance" not in cond[0][1] and cond[1][1]["guidance"] == 1.0  # input unchanged
    (off,) = FluxDisableGuidance().run(out)
    assert [e[1]["guidance"] for e in off] == [None, None]


def test_reference_latents_append_in_order_and_the_method_is_named():
    from genloom.nodes.flux import FluxKontextMultiReferenceLatentMethod, ReferenceLatent

    a, b = torch.zeros(1, 16, 2, 2), torch.ones(1, 16, 4, 2)
    (one,) = ReferenceLatent().run(_cond(), {"samples": a})
    (two,) = ReferenceLatent().run(one, {"samples": b})
    assert all(len(e[1]["reference_latents"]) == 2 and e[1]["reference_latents"][1] is b for e in two)
    assert len(one[0][1]["reference_latents"]) == 1
    assert ReferenceLatent().run(one)[0] is one  # no latent: unchanged
    methods = [FluxKontextMultiReferenceLatentMethod().run(two, m)[0][0][1]["reference_latents_method"]
               for m in ("offset", "index", "uxo/uno")]
    assert methods == ["offset", "index", "uxo"]


def test_kontext_image_scale_picks_the_nearest_trained_aspect():
    from PIL import Image

    from genloom.nodes.flux import FluxKontextImageScale

    image = torch.rand(1, 50, 100, 3)  # aspect 2.0: nearest is 1456 x 720 (2.02)
    (out,) = FluxKontextImageScale().run(image)
    assert out.shape == (1, 720, 1456, 3)
    # ComfyUI's centre crop to 1456 / 720 cuts round((50 - 50 * 2.0 / 2.0222) / 2) = 0 rows: none
    crop = image[0]
    ref = np.stack([np.asarray(Image.fromarray(crop[..., c].numpy(), mode="F").resize((1456, 720), Image.LANCZOS))
                    for c in range(3)], axis=-1)
    assert np.abs(out[0].numpy() - np.clip(ref, 0, 1)).max() < 1e-5


# ---- on tiny models --------------------------------------------------------------------------

DOWNLOADED = {"dev": "flux1-dev.safetensors", "schnell": "flux1-schnell.safetensors",
              "clip_l": "clip_l.safetensors", "t5xxl": "t5xxl_fp16.safetensors", "vae": "ae.safetensors"}


@pytest.fixture(scope="module")
def flux_models(tmp_path_factory):
    """Tiny Flux files in ComfyUI's folders under the names the example workflows use."""
    return tiny_flux.build_models(tmp_path_factory.mktemp("flux_nodes"), DOWNLOADED)


@pytest.fixture
def engine(flux_models, tmp_path):
    import genloom

    return genloom.Engine(models_dirs=[flux_models["root"]], input_dir=tmp_path / "in", output_dir=tmp_path / "out",
                          temp_dir=tmp_path / "temp", device="cpu")


def _small(name: str, steps: int) -> dict:
    """The example at 64 x 64 pixels and `steps` steps (the tiny model's scale)."""
    envelope = json.loads((REPO / "workflows" / f"{name}.json").read_text())
    for node in envelope["graph"].values():
        inputs = node["inputs"]
        for key in ("width", "height"):
            if isinstance(inputs.get(key), int):
                inputs[key] = 64
        if "steps" in inputs:
            inputs["steps"] = steps
    return envelope


@pytest.mark.parametrize("name", ["flux_dev_txt2img", "flux_schnell_txt2img"])
def test_example_workflows_validate_and_run(engine, name):
    from PIL import Image

    envelope = json.loads((REPO / "workflows" / f"{name}.json").read_text())
    engine.validate(envelope)  # as shipped: the downloaded file names resolve in their folders
    result = engine.run(_small(name, 2))
    pictures = [Image.open(Path(engine.folders.output_dir) / e["subfolder"] / e["filename"])
                for ui in result.outputs.values() for e in ui.get("images", [])]
    assert [p.size for p in pictures] == [(64, 64)]
    assert np.asarray(pictures[0]).std() > 1


def test_clip_text_encode_flux_feeds_clip_l_and_t5_separately(flux_models, engine):
    from genloom.engine import context
    from genloom.nodes.flux import CLIPTextEncodeFlux
    from genloom.nodes.loaders_split import DualCLIPLoader

    pipe = tiny_flux.pipeline(flux_models["dev"], flux_models["parts"], flux_models["vae"])
    token = context.use(context.RunContext(device_choice="cpu", folders=engine.folders))
    try:
        (clip,) = DualCLIPLoader().run(DOWNLOADED["t5xxl"], DOWNLOADED["clip_l"], "flux")
        (cond,) = CLIPTextEncodeFlux().run(clip, "a small dog", "a green square on the big background", 4.0)
    finally:
        context.reset(token)
    emb, pooled, _ids = pipe.encode_prompt("a small dog", "a green square on the big background",
                                           max_sequence_length=256)
    assert cond[0][1]["guidance"] == 4.0
    assert cond[0][0].shape == (1, 256, tiny_flux.TEXT_DIM)
    assert torch.allclose(cond[0][0], emb, atol=1e-5)
    assert torch.allclose(cond[0][1]["pooled_output"], pooled, atol=1e-5)


def test_lora_loader_model_only_on_flux(flux_models, engine):
    from safetensors.torch import save_file

    from genloom.engine import context
    from genloom.nodes.loaders import LoraLoaderModelOnly
    from genloom.nodes.loaders_split import UNETLoader

    W = tiny_flux.WIDTH
    up, down = torch.randn(3 * W, 2), torch.randn(2, W)
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": up,
               "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": down},
              str(flux_models["root"] / "loras" / "flux_qkv.safetensors"))
    save_file({"lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": torch.zeros(4, 1),
               "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": torch.zeros(1, 4)},
              str(flux_models["root"] / "loras" / "sd_only.safetensors"))
    token = context.use(context.RunContext(device_choice="cpu", folders=engine.folders))
    try:
        (model,) = UNETLoader().run(DOWNLOADED["dev"], "default")
        (patched,) = LoraLoaderModelOnly().run(model, "flux_qkv.safetensors", 0.5)
        ref = copy.deepcopy(model.unet)
        with torch.no_grad():
            for i, name in enumerate(("to_q", "to_k", "to_v")):
                getattr(ref.transformer_blocks[0].attn, name).weight += 0.5 * (up @ down)[i * W:(i + 1) * W]
        x, emb, t = torch.randn(1, 16, 4, 4), torch.randn(1, 5, tiny_flux.TEXT_DIM), torch.tensor(0.3)
        extras = {"pooled": torch.randn(1, tiny_flux.POOLED_DIM), "guidance": torch.tensor([3.5])}
        with torch.no_grad(), patched.use("cpu") as unet:
            ours = patched.predict(unet, x, t, emb, extras)
        theirs = model.predict(ref, x, t, emb, extras)
        assert torch.allclose(ours, theirs, atol=1e-4)
        from genloom.engine.errors import NodeInputError

        with pytest.raises(NodeInputError, match="changes no layer"):
            LoraLoaderModelOnly().run(model, "sd_only.safetensors", 1.0)
    finally:
        context.reset(token)


def test_clip_text_encode_flux_refuses_another_kind_of_clip():
    from types import SimpleNamespace

    from genloom.engine.errors import NodeInputError
    from genloom.nodes.flux import CLIPTextEncodeFlux

    with pytest.raises(NodeInputError, match="flux"):
        CLIPTextEncodeFlux().run(SimpleNamespace(kind="sd1"), "a", "b", 3.5)
