"""The Qwen-Image, Z-Image Turbo and prompt-expansion example workflows on tiny stand-ins saved under the
file names users download, and TextGenerate on the language-model text encoders CLIPLoader loads
(Qwen3 with its output head tied to the embeddings, Qwen2.5-VL with its own): greedy text equal to
transformers' `generate` on the same weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import qwen_tiny  # noqa: E402
import tiny_split  # noqa: E402

from genloom.diffusion.models import wan_vae  # noqa: E402
from genloom.diffusion.models.families import qwen_image, z_image  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = ["qwen_image_txt2img", "z_image_turbo_txt2img", "z_image_prompt_expansion"]


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory):
    from diffusers import AutoencoderKLQwenImage

    root = tmp_path_factory.mktemp("llm_models")
    for sub in ("diffusion_models", "text_encoders", "vae"):
        (root / sub).mkdir()
    z_image.save_original(qwen_tiny.z_image_transformer(1), root / "diffusion_models" / "z_image_turbo_bf16.safetensors",
                          "model.diffusion_model.")
    qwen_image.save_original(qwen_tiny.qwen_image_transformer(2),
                             root / "diffusion_models" / "qwen_image_fp8_e4m3fn.safetensors", "model.diffusion_model.")
    qwen3, qwen25 = qwen_tiny.tiny_qwen3(3), qwen_tiny.tiny_qwen25_vl(4)
    qwen_tiny.save_llm(qwen3, root / "text_encoders" / "qwen_3_4b.safetensors", lm_head=False)
    qwen_tiny.save_llm(qwen25, root / "text_encoders" / "qwen_2.5_vl_7b_fp8_scaled.safetensors")
    qwen_tiny.write_tokenizer(root / "text_encoders" / "qwen25_tokenizer")
    tiny_split.save_vae(tiny_split.vae16(seed=5, shift=0.1159, scale=0.3611), root / "vae" / "ae.safetensors")
    torch.manual_seed(6)
    wan_vae.save_original(AutoencoderKLQwenImage(base_dim=16, z_dim=16).eval(), root / "vae" / "qwen_image_vae.safetensors")
    return {"root": root, "qwen3": qwen3, "qwen25": qwen25}


@pytest.fixture
def engine(downloaded, tmp_path):
    import genloom

    return genloom.Engine(models_dirs=[downloaded["root"]], input_dir=tmp_path / "in", output_dir=tmp_path / "out",
                          temp_dir=tmp_path / "temp", device="cpu")


def _small(envelope: dict) -> dict:
    """The example at 32 x 32 pixels, 2 steps and 6 written tokens (the tiny models' scale)."""
    for node in envelope["graph"].values():
        inputs = node["inputs"]
        for key, value in (("width", 32), ("height", 32), ("steps", 2), ("max_length", 6)):
            if isinstance(inputs.get(key), int):
                inputs[key] = value
    return envelope


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_workflows_validate_and_run(engine, name):
    from PIL import Image

    envelope = json.loads((REPO / "workflows" / f"{name}.json").read_text())
    engine.validate(envelope)  # as shipped: the downloaded file names resolve in their folders
    result = engine.run(_small(envelope))
    pictures = [Image.open(Path(engine.folders.output_dir) / e["subfolder"] / e["filename"])
                for ui in result.outputs.values() for e in ui.get("images", [])]
    assert [p.size for p in pictures] == [(32, 32)]
    assert np.asarray(pictures[0]).std() > 0


@pytest.mark.parametrize("file, clip_type, key", [("qwen_3_4b.safetensors", "lumina2", "qwen3"),
                                                  ("qwen_2.5_vl_7b_fp8_scaled.safetensors", "qwen_image", "qwen25")])
def test_text_generate_on_loaded_encoders_equals_generate(downloaded, tmp_folders, file, clip_type, key):
    from transformers import Qwen2Tokenizer

    from genloom.nodes.loaders_split import CLIPLoader
    from genloom.nodes.text_generation import TextGenerate

    tmp_folders.folders.models_dirs.insert(0, downloaded["root"])
    (clip,) = CLIPLoader().run(file, clip_type)
    (text,) = TextGenerate().run(clip, "a red circle", 8, "off")
    tok = Qwen2Tokenizer.from_pretrained(str(downloaded["root"] / "text_encoders" / "qwen25_tokenizer"))
    ids = tok("<|im_start|>user\na red circle<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False,
              return_tensors="pt").input_ids
    model = downloaded[key]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                             eos_token_id=[tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")],
                             pad_token_id=tok.pad_token_id)
    assert text == tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    if key == "qwen3":  # no lm_head in the file: the output head is the token embeddings
        head = clip.text_encoders[0].get_output_embeddings().weight
        assert torch.equal(head, clip.text_encoders[0].get_input_embeddings().weight)


def test_scaled_fp8_encoder_file_is_dequantised(downloaded, tmp_path):
    """ComfyUI's `*_fp8_scaled` layout: float8 Linear weights, a `scale_weight` each, the marker."""
    from safetensors.torch import load_file, save_file

    from genloom.diffusion.models import llm_encoders

    state = load_file(str(downloaded["root"] / "text_encoders" / "qwen_3_4b.safetensors"))
    key = "model.layers.0.self_attn.q_proj.weight"
    scale = state[key].abs().max() / 448.0
    state[key] = (state[key] / scale).to(torch.float8_e4m3fn)
    state["model.layers.0.self_attn.q_proj.scale_weight"] = scale.reshape(1)
    state["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    path = tmp_path / "qwen_3_4b_fp8_scaled.safetensors"
    meta = {"genloom.config": json.dumps(downloaded["qwen3"].config.to_dict())}
    save_file(state, str(path), metadata=meta)
    family, module = llm_encoders.build(load_file(str(path)), path.stem, json.loads(meta["genloom.config"]))
    assert family == "qwen3"
    expected = state[key].float() * scale
    assert torch.allclose(module.model.layers[0].self_attn.q_proj.weight.float(), expected)
