"""LoRA files in kohya and diffusers/peft naming, applied without ever changing the shared base model."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

from genloom.nodes.conditioning import CLIPTextEncode  # noqa: E402
from genloom.nodes.loaders import CheckpointLoaderSimple, LoraLoader, LoraLoaderModelOnly  # noqa: E402

RANK = 2


def _pair(gen, out_features, in_shape):
    down = torch.randn((RANK,) + tuple(in_shape), generator=gen) * 0.5
    up = torch.randn((out_features, RANK) + (1,) * (len(in_shape) - 1), generator=gen) * 0.5
    return up, down


def _write_sd1_lora(folder, unet, text):
    """kohya names (diffusers-style and LDM-style, linear and 3x3 conv) plus peft names, with alphas."""
    gen = torch.Generator().manual_seed(1)
    tensors, expected = {}, {"unet": {}, "text": {}}
    layers = [
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", "unet",
         "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 1.0),
        ("lora_unet_input_blocks_1_0_in_layers_2", "unet", "down_blocks.0.resnets.0.conv1", 4.0),
        ("lora_unet_output_blocks_3_1_proj_in", "unet", "up_blocks.1.attentions.0.proj_in", None),
        ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", "text", "encoder.layers.0.self_attn.q_proj", 1.0),
    ]
    modules = {"unet": dict(unet.named_modules()), "text": dict(text.named_modules())}
    for name, target, path, alpha in layers:
        weight = modules[target][path].weight
        up, down = _pair(gen, weight.shape[0], weight.shape[1:])
        tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"] = down, up
        scale = 1.0
        if alpha is not None:
            tensors[f"{name}.alpha"] = torch.tensor(alpha)
            scale = alpha / RANK
        expected[target][path + ".weight"] = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape) * scale
    for prefix, target, path in (("unet.", "unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"),
                                 ("text_encoder.text_model.", "text", "encoder.layers.1.mlp.fc1")):
        weight = modules[target][path].weight
        up, down = _pair(gen, weight.shape[0], weight.shape[1:])
        tensors[f"{prefix}{path}.lora_A.weight"], tensors[f"{prefix}{path}.lora_B.weight"] = down, up
        expected[target][path + ".weight"] = up @ down
    save_file(tensors, str(folder / "style.safetensors"))
    return expected


def _forward(model, latents, cond):
    with torch.no_grad(), model.use("cpu") as unet:
        return unet(latents, torch.tensor([500]), encoder_hidden_states=cond).sample


def test_lora_with_and_without_in_any_order(tmp_folders):
    model, clip, _ = CheckpointLoaderSimple().run("tiny-sd1.safetensors")
    loras = tmp_folders.folders.models_dirs[0] / "loras"
    expected = _write_sd1_lora(loras, model.unet, clip.text_encoders[0])
    base_state = {k: v.clone() for k, v in model.unet.state_dict().items()}
    base_text = {k: v.clone() for k, v in clip.text_encoders[0].state_dict().items()}

    lora_model, lora_clip = LoraLoader().run(model, clip, "style.safetensors", 0.8, 1.5)
    assert lora_model.unet is model.unet and lora_clip.text_encoders[0] is clip.text_encoders[0]

    # References built independently: merged copies of the base modules.
    import copy

    merged_unet = copy.deepcopy(model.unet)
    with torch.no_grad():
        for name, delta in expected["unet"].items():
            merged_unet.get_parameter(name).add_(0.8 * delta)
    merged_text = copy.deepcopy(clip.text_encoders[0])
    with torch.no_grad():
        for name, delta in expected["text"].items():
            merged_text.get_parameter(name).add_(1.5 * delta)

    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=gen)
    cond = torch.randn(1, 77, 32, generator=gen)
    with torch.no_grad():
        want_lora = merged_unet(latents, torch.tensor([500]), encoder_hidden_states=cond).sample
    results = [(_forward(m, latents, cond), m is lora_model) for m in (lora_model, model, lora_model, model)]
    base_out = results[1][0]
    assert not torch.allclose(base_out, want_lora, atol=1e-4)
    for out, with_lora in results:
        assert torch.allclose(out, want_lora if with_lora else base_out, atol=1e-5)

    texts = [CLIPTextEncode().run("a red cat", c)[0][0][0] for c in (lora_clip, clip, lora_clip)]
    with torch.no_grad():
        ids = torch.tensor([clip.tokenizers[0]("a red cat", padding="max_length", max_length=77).input_ids])
        want_text = merged_text(ids)[0]
    assert torch.allclose(texts[0], want_text, atol=1e-5) and torch.equal(texts[0], texts[2])
    assert not torch.allclose(texts[1], want_text, atol=1e-4)

    for k, v in model.unet.state_dict().items():
        assert torch.equal(v, base_state[k]), k
    for k, v in clip.text_encoders[0].state_dict().items():
        assert torch.equal(v, base_text[k]), k

    only = LoraLoaderModelOnly().run(model, "style.safetensors", 0.8)[0]
    assert torch.allclose(_forward(only, latents, cond), want_lora, atol=1e-5)
    assert LoraLoader().run(model, clip, "style.safetensors", 0.0, 0.0) == (model, clip)


def test_weights_restored_even_when_the_step_fails(tmp_folders):
    model, clip, _ = CheckpointLoaderSimple().run("tiny-sd1.safetensors")
    loras = tmp_folders.folders.models_dirs[0] / "loras"
    _write_sd1_lora(loras, model.unet, clip.text_encoders[0])
    lora_model = LoraLoaderModelOnly().run(model, "style.safetensors", 1.0)[0]
    q = model.unet.get_parameter("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight")
    base_q, base_ptr = q.data.clone(), q.data_ptr()
    with pytest.raises(RuntimeError, match="boom"):
        with lora_model.use("cpu"):
            assert not torch.equal(q.data, base_q)
            raise RuntimeError("boom")
    assert q.data_ptr() == base_ptr and torch.equal(q.data, base_q)  # the very same storage is back


def test_sdxl_kohya_lora_with_ldm_names_reaches_both_text_encoders(tmp_folders):
    model, clip, _ = CheckpointLoaderSimple().run("tiny-sdxl.safetensors")
    gen = torch.Generator().manual_seed(2)
    unet_w = model.unet.get_parameter("down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k.weight")
    te2_w = clip.text_encoders[1].get_parameter("text_model.encoder.layers.0.self_attn.q_proj.weight")
    tensors = {}
    for name, weight in (("lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k", unet_w),
                         ("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", te2_w)):
        up, down = _pair(gen, weight.shape[0], weight.shape[1:])
        tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"] = down, up
    save_file(tensors, str(tmp_folders.folders.models_dirs[0] / "loras" / "xl.safetensors"))
    lora_model, lora_clip = LoraLoader().run(model, clip, "xl.safetensors", 1.0, 1.0)
    with lora_model.use("cpu") as unet:
        patched = unet.get_parameter("down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k.weight").data
    up, down = tensors["lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k.lora_up.weight"], \
        tensors["lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k.lora_down.weight"]
    assert torch.allclose(patched, unet_w.data + up @ down, atol=1e-6)
    base = CLIPTextEncode().run("a red cat", clip)[0][0]
    changed = CLIPTextEncode().run("a red cat", lora_clip)[0][0]
    assert torch.equal(base[0][:, :, :32], changed[0][:, :, :32])  # CLIP-L untouched
    assert not torch.allclose(base[0][:, :, 32:], changed[0][:, :, 32:])
    assert not torch.allclose(base[1]["pooled_output"], changed[1]["pooled_output"])


def test_lora_for_another_model_is_a_clear_error(tmp_folders):
    model, clip, _ = CheckpointLoaderSimple().run("tiny-sd1.safetensors")
    loras = tmp_folders.folders.models_dirs[0] / "loras"
    save_file({"lora_unet_nowhere.lora_down.weight": torch.ones(2, 4),
               "lora_unet_nowhere.lora_up.weight": torch.ones(4, 2)}, str(loras / "other.safetensors"))
    with pytest.raises(ValueError, match="LoraLoader: input 'lora_name': other changes no layer"):
        LoraLoader().run(model, clip, "other.safetensors", 1.0, 1.0)
    save_file({"something": torch.ones(2)}, str(loras / "empty.safetensors"))
    with pytest.raises(ValueError, match="holds no LoRA weights"):
        LoraLoaderModelOnly().run(model, "empty.safetensors", 1.0)
    schema = LoraLoader.schema().by_name["strength_model"]
    assert (schema.default, schema.min, schema.max, schema.step) == (1.0, -100.0, 100.0, 0.01)


CAPTURE = '''
SEEN = {}
class Capture:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "key": ("STRING", {"default": ""})}}
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    def run(self, images, key):
        SEEN[key] = images.clone()
        return {"ui": {"key": [key]}}
NODE_CLASS_MAPPINGS = {"Capture": Capture}
'''


def test_one_workflow_samples_with_and_without_lora_in_either_order(tmp_folders, tiny_models, tmp_path):
    """Through the engine and the sampler: the cached base model serves both branches correctly."""
    import sys

    import genloom

    loras = tmp_folders.folders.models_dirs[0] / "loras"
    model, clip, _ = CheckpointLoaderSimple().run("tiny-sd1.safetensors")
    _write_sd1_lora(loras, model.unet, clip.text_encoders[0])
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "d1_capture.py").write_text(CAPTURE)
    engine = genloom.Engine(device="cpu", models_dirs=[loras.parent, tiny_models], plugins_dir=plugins)
    if engine.registry.get("KSampler") is None or engine.registry.get("VAEDecode") is None:
        pytest.skip("sampling nodes not available")

    def workflow(order):
        wf = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
              "lora": {"class_type": "LoraLoader", "inputs": {"model": ["ckpt", 0], "clip": ["ckpt", 1],
                       "lora_name": "style.safetensors", "strength_model": 1.0, "strength_clip": 1.0}},
              "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
              "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 16, "height": 16, "batch_size": 1}}}
        for i, branch in enumerate(order):
            wf[f"pos{i}"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red cat", "clip": [branch, 1]}}
            wf[f"s{i}"] = {"class_type": "KSampler", "inputs": {
                "model": [branch, 0], "seed": 3, "steps": 3, "cfg": 3.0, "sampler_name": "euler",
                "scheduler": "normal", "positive": [f"pos{i}", 0], "negative": ["neg", 0],
                "latent_image": ["latent", 0], "denoise": 1.0}}
            wf[f"d{i}"] = {"class_type": "VAEDecode", "inputs": {"samples": [f"s{i}", 0], "vae": ["ckpt", 2]}}
            wf[f"c{i}"] = {"class_type": "Capture", "inputs": {"images": [f"d{i}", 0], "key": f"{order}{i}"}}
        return wf

    engine.run(workflow(("lora", "ckpt")))
    engine.free()
    engine.run(workflow(("ckpt", "lora")))
    seen = next(m for n, m in sys.modules.items() if n.endswith("d1_capture")).SEEN
    with_lora, without = seen["('lora', 'ckpt')0"], seen["('lora', 'ckpt')1"]
    assert torch.equal(with_lora, seen["('ckpt', 'lora')1"]) and torch.equal(without, seen["('ckpt', 'lora')0"])
    assert (with_lora - without).abs().max() > 1e-3


def test_matches_are_counted_without_deltas_and_deltas_are_computed_once(tmp_folders):
    """Loading a LoRA computes no delta; the first use computes each target's once, later uses and
    reloads of the unchanged file reuse them, and the weights are the very numbers of base + delta."""
    from genloom.diffusion.models.owner import model_owner

    model, clip, _ = CheckpointLoaderSimple().run("tiny-sd1.safetensors")
    loras = tmp_folders.folders.models_dirs[0] / "loras"
    expected = _write_sd1_lora(loras, model.unet, clip.text_encoders[0])
    deltas = model_owner().lora_deltas
    lora_model, lora_clip = LoraLoader().run(model, clip, "style.safetensors", 0.8, 1.5)
    lora = lora_model.patches[0][0]
    assert deltas.computed == 0  # matching came from names and shapes
    assert lora.matched("unet", model.unet) == len(expected["unet"])
    assert lora.matched("text_encoder", clip.text_encoders[0]) == len(expected["text"])
    assert deltas.computed == 0

    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    base = model.unet.get_parameter(name).data.clone()
    seen = []
    for _ in range(2):
        with lora_model.use("cpu") as unet:
            seen.append(unet.get_parameter(name).data.clone())
    assert deltas.computed == 1 and torch.equal(seen[0], seen[1])
    assert torch.equal(seen[0], (base.float() + 0.8 * lora.deltas("unet", model.unet)[name]).to(base.dtype))
    texts = [CLIPTextEncode().run("a red cat", lora_clip)[0][0][0] for _ in range(2)]
    assert deltas.computed == 2 and torch.equal(texts[0], texts[1])

    again = LoraLoaderModelOnly().run(model, "style.safetensors", 0.8)[0]  # a fresh parse, same file
    with again.use("cpu") as unet:
        assert torch.equal(unet.get_parameter(name).data, seen[0])
    assert deltas.computed == 2
    with LoraLoaderModelOnly().run(model, "style.safetensors", 0.5)[0].use("cpu"):
        pass
    assert deltas.computed == 3  # another strength is another delta
    assert deltas.nbytes > 0
    model_owner().free()
    assert deltas.nbytes == 0 and len(deltas) == 0


def test_lora_deltas_stay_within_their_budget(tmp_folders):
    from genloom.diffusion.models.owner import model_owner

    model, clip, _ = CheckpointLoaderSimple().run("tiny-sd1.safetensors")
    _write_sd1_lora(tmp_folders.folders.models_dirs[0] / "loras", model.unet, clip.text_encoders[0])
    tmp_folders.options = {"lora_cache": "1k"}  # smaller than the UNet's deltas: none is kept
    lora_model = LoraLoaderModelOnly().run(model, "style.safetensors", 1.0)[0]
    deltas = model_owner().lora_deltas
    for _ in range(2):
        with lora_model.use("cpu"):
            pass
    assert deltas.computed == 2 and deltas.nbytes == 0
