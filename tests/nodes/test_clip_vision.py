"""CLIPVisionLoader + CLIPVisionEncode give transformers' CLIPVisionModelWithProjection outputs on a
tiny model saved in transformers' layout and in open-clip's; the preprocessing is ComfyUI's."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _tiny():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=2,
                              image_size=16, patch_size=4, projection_dim=24, hidden_act="gelu", layer_norm_eps=1e-5)
    return CLIPVisionModelWithProjection(config).eval()


def _to_open_clip(state: dict) -> dict:
    """transformers keys -> open-clip's visual tower, written out here."""
    out = {"visual.conv1.weight": state["vision_model.embeddings.patch_embedding.weight"],
           "visual.class_embedding": state["vision_model.embeddings.class_embedding"],
           "visual.positional_embedding": state["vision_model.embeddings.position_embedding.weight"],
           "visual.proj": state["visual_projection.weight"].t().contiguous()}
    for ours, theirs in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for p in ("weight", "bias"):
            out[f"visual.{theirs}.{p}"] = state[f"vision_model.{ours}.{p}"]
    for i in range(3):
        src, dst = f"vision_model.encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for p in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{p}"] = torch.cat([state[f"{src}self_attn.{x}_proj.{p}"] for x in "qkv"])
            for a, b in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[f"{dst}{a}.{p}"] = state[f"{src}{b}.{p}"]
    return out


@pytest.fixture
def vision_files(tmp_folders, tmp_path):
    from safetensors.torch import save_file

    model = _tiny()
    folder = tmp_path / "models" / "clip_vision"
    folder.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    save_file(state, str(folder / "tiny-hf.safetensors"))
    save_file({"embedder.model." + k: v for k, v in _to_open_clip(state).items()},
              str(folder / "tiny-openclip.safetensors"))
    return model


def _reference_pixels(image, size, crop):
    """ComfyUI's clip_preprocess, step by step."""
    import torch.nn.functional as F

    x = image.movedim(-1, 1)
    if crop:
        s = size / min(x.shape[2], x.shape[3])
        x = F.interpolate(x, size=(round(s * x.shape[2]), round(s * x.shape[3])), mode="bicubic", antialias=True)
        h, w = (x.shape[2] - size) // 2, (x.shape[3] - size) // 2
        x = x[:, :, h:h + size, w:w + size]
    else:
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True)
    x = torch.clip(255.0 * x, 0, 255).round() / 255.0
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize("name", ["tiny-hf.safetensors", "tiny-openclip.safetensors"])
@pytest.mark.parametrize("crop", ["center", "none"])
def test_encode_equals_transformers(vision_files, name, crop):
    from genloom.nodes.clip_vision import CLIPVisionEncode, CLIPVisionLoader

    (vision,) = CLIPVisionLoader().run(name)
    image = torch.rand(2, 20, 28, 3, generator=torch.Generator().manual_seed(1))
    (out,) = CLIPVisionEncode().run(vision, image, crop)
    with torch.no_grad():
        ref = vision_files(pixel_values=_reference_pixels(image, 16, crop == "center"), output_hidden_states=True)
    torch.testing.assert_close(out.image_embeds, ref.image_embeds, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["penultimate_hidden_states"], ref.hidden_states[-2], rtol=1e-4, atol=1e-5)
    assert out.image_embeds.shape == (2, 24) and out.penultimate_hidden_states.shape == (2, 17, 128)
