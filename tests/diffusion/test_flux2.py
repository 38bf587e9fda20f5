"""Flux.2 (dev and Klein) through genloom's nodes, from tiny random parts saved as users have them
(flux2_tiny.py: BFL-layout transformers with ComfyUI's prefix, BFL's VAE with its batch-norm statistics,
Mistral 3 with the tekken tokenizer inside its file, Qwen3 with Qwen's tokenizer folder), equals diffusers'
Flux2Pipeline / Flux2KleinPipeline on the same weights within 1e-4 on the decoded image.

Settings where the two agree: ComfyUI's workflow (Flux2Scheduler sigmas, euler, RandomNoise's CPU noise in
the latent's [1, 128, H/16, W/16] shape, which is the pipeline's unpacked latent layout too). Dev: ComfyUI
encodes the Mistral prompt without padding and the model left-pads the conditioning with zeros to 512
tokens, where the pipeline pads the tokens (with <pad> hidden states); so the pipeline's own encoding is
taken at the prompt's exact length (no padding: equal to genloom's, checked) and zero-padded here before
sampling. Klein: both pad the Qwen3 tokens to 512 and read layers 9/18/27; CFG 4 against the empty prompt
is the base pipeline's guidance.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flux2_tiny  # noqa: E402

from genloom.diffusion.models.families import flux2  # noqa: E402

NAMES = {"dev": "flux2_dev_fp8mixed.safetensors", "klein": "flux-2-klein-base-4b.safetensors",
         "vae": "flux2-vae.safetensors", "mistral": "mistral_3_small_flux2_bf16.safetensors",
         "qwen3": "qwen_3_4b.safetensors"}
PROMPT, SEED, SIZE, STEPS = "a red circle on the mat", 7, 64, 3


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux2_models")
    return {**flux2_tiny.build(root, NAMES), "root": root}


@pytest.fixture
def ctx(parts, tmp_path):
    from genloom.engine import context
    from genloom.engine.folders import Folders

    folders = Folders(models_dirs=[parts["root"]], input_dir=tmp_path / "input", output_dir=tmp_path / "output",
                      temp_dir=tmp_path / "temp")
    token = context.use(context.RunContext(device_choice="cpu", folders=folders))
    try:
        yield parts
    finally:
        context.reset(token)


def _noise():
    return torch.randn((1, 128, SIZE // 16, SIZE // 16), generator=torch.Generator("cpu").manual_seed(SEED))


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, time_shift_type="exponential")


def _genloom_image(model_name, clip, positive, negative=None, cfg=1.0):
    from genloom.nodes.custom_sampling import (BasicGuider, CFGGuider, KSamplerSelect, RandomNoise,
                                               SamplerCustomAdvanced)
    from genloom.nodes.flux import EmptyFlux2LatentImage, Flux2Scheduler
    from genloom.nodes.latent import VAEDecode
    from genloom.nodes.loaders import VAELoader
    from genloom.nodes.loaders_split import UNETLoader

    (model,) = UNETLoader().run(model_name, "default")
    (vae,) = VAELoader().run(NAMES["vae"])
    (guider,) = BasicGuider().run(model, positive) if negative is None else \
        CFGGuider().run(model, positive, negative, cfg)
    (latent,) = EmptyFlux2LatentImage().run(SIZE, SIZE, 1)
    (sigmas,) = Flux2Scheduler().run(STEPS, SIZE, SIZE)
    (sampler,) = KSamplerSelect().run("euler")
    (noise,) = RandomNoise().run(SEED)
    out, _denoised = SamplerCustomAdvanced().run(noise, guider, sampler, sigmas, latent)
    return model, VAEDecode().run(out, vae)[0]


def test_writer_round_trips_through_diffusers_converter(parts):
    for which in ("dev", "klein"):
        state = parts[which].state_dict()
        original = flux2.to_original(state)
        assert "double_blocks.0.img_attn.qkv.weight" in original and "single_blocks.0.linear1.weight" in original
        assert ("guidance_in.in_layer.weight" in original) == (which == "dev")
        back = flux2.to_diffusers(original)
        assert set(back) == set(state) and all(torch.equal(back[k], v) for k, v in state.items())


def test_full_size_configs_are_read_from_the_shapes():
    """Flux.2 dev (diffusers' defaults) and Klein 4B (5 + 20 blocks, 24 heads, Qwen3-4B's 3 x 2560 text width,
    no guidance embedder), built on the meta device."""
    from diffusers import Flux2Transformer2DModel

    klein = dict(num_layers=5, num_single_layers=20, num_attention_heads=24, joint_attention_dim=7680,
                 guidance_embeds=False)
    for kwargs in ({}, klein):
        with torch.device("meta"):
            full = Flux2Transformer2DModel(**kwargs)
        shapes = {k: tuple(v.shape) for k, v in flux2.to_original(full.state_dict()).items()}
        assert flux2.detect(shapes)
        config = flux2.config_from_shapes(shapes)
        for key, value in config.items():
            want = full.config[key] if full.config[key] is not None else full.config["in_channels"]
            assert (list(value) if isinstance(value, (list, tuple)) else value) == \
                (list(want) if isinstance(want, (list, tuple)) else want), key


def test_full_size_vae_and_mistral_configs_are_read_from_the_shapes():
    """BFL's VAE (diffusers' AutoencoderKLFlux2 defaults) and Mistral Small 3.1's language model."""
    from diffusers import AutoencoderKLFlux2
    from transformers import MistralConfig, MistralForCausalLM

    from genloom.diffusion.models import flux2_text, flux2_vae

    with torch.device("meta"):
        full = AutoencoderKLFlux2()
    shapes = {k: torch.empty(v.shape, device="meta") for k, v in flux2_vae.to_original(full).items()}
    assert "encoder.quant_conv.weight" in shapes and "decoder.post_quant_conv.weight" in shapes
    config, converted = flux2_vae.to_diffusers(shapes)
    assert set(converted) == set(full.state_dict())
    assert all(list(full.config[k]) == list(v) if isinstance(v, (list, tuple)) else full.config[k] == v
               for k, v in config.items()), config
    small = dict(vocab_size=131072, hidden_size=5120, intermediate_size=32768, num_hidden_layers=40,
                 num_attention_heads=32, num_key_value_heads=8, head_dim=128)
    with torch.device("meta"):
        mistral = MistralForCausalLM(MistralConfig(**small))
    read = flux2_text.mistral_config({k: tuple(v.shape) for k, v in mistral.state_dict().items()})
    assert {k: read[k] for k in small} == small


def test_scheduler_and_empty_latent_are_comfyuis():
    """Flux2Scheduler equals the pipeline's sigmas (its scheduler with BFL's empirical mu); the empty latent
    is [B, 128, H/16, W/16] zeros."""
    from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

    from genloom.nodes.flux import EmptyFlux2LatentImage, Flux2Scheduler

    for steps, w, h in ((4, 64, 64), (20, 1024, 1024), (28, 1344, 768)):
        (sigmas,) = Flux2Scheduler().run(steps, w, h)
        sched = _scheduler()
        sched.set_timesteps(sigmas=[1.0 - i / steps for i in range(steps)],
                            mu=compute_empirical_mu((w // 16) * (h // 16), steps))
        assert torch.allclose(sigmas, sched.sigmas, atol=1e-6), (steps, w, h)
    (latent,) = EmptyFlux2LatentImage().run(96, 64, 2)
    assert latent["samples"].shape == (2, 128, 4, 6) and not latent["samples"].any()


def test_vae_normalises_patchified_latents_as_the_pipeline(ctx):
    from diffusers.pipelines.flux2.pipeline_flux2 import Flux2Pipeline

    from genloom.nodes.latent import VAEEncode
    from genloom.nodes.loaders import VAELoader

    (vae,) = VAELoader().run(NAMES["vae"])
    assert vae.latent_channels == 128 and vae.scale_factor == 16
    image = torch.rand((1, SIZE, SIZE, 3), generator=torch.Generator().manual_seed(1))
    (latent,) = VAEEncode().run(image, vae)
    pipe = Flux2Pipeline(scheduler=_scheduler(), vae=ctx["vae"], text_encoder=None, tokenizer=None,
                         transformer=ctx["dev"])
    with torch.no_grad():
        ref = pipe._encode_vae_image(image.permute(0, 3, 1, 2) * 2 - 1, None)
    assert latent["samples"].shape == (1, 128, 4, 4) and (latent["samples"] - ref).abs().max() < 1e-5


def _mistral_reference(ctx, tmp_path):
    """diffusers' Mistral encoding at the prompt's exact length, with transformers' reading of the same
    tekken data and Mistral Small 3.1's chat template."""
    from diffusers.pipelines.flux2.pipeline_flux2 import Flux2Pipeline, format_input
    from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

    (tmp_path / "tekken.json").write_bytes(flux2_tiny.tekken_bytes())
    tokenizer = convert_tekken_tokenizer(str(tmp_path / "tekken.json"), chat_template=flux2_tiny.MISTRAL_CHAT)
    length = len(tokenizer.apply_chat_template(format_input([PROMPT]), tokenize=True, return_dict=True)["input_ids"][0])
    pipe = Flux2Pipeline(scheduler=_scheduler(), vae=ctx["vae"], text_encoder=ctx["mistral"], tokenizer=tokenizer,
                         transformer=ctx["dev"])
    with torch.no_grad():
        embeds, _ids = pipe.encode_prompt(PROMPT, device="cpu", max_sequence_length=length)
    return pipe, embeds


def test_dev_equals_flux2_pipeline(ctx, tmp_path):
    import torch.nn.functional as F

    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.flux import FluxGuidance
    from genloom.nodes.loaders_split import CLIPLoader

    (clip,) = CLIPLoader().run(NAMES["mistral"], "flux2")
    cond, pooled = clip.encode(PROMPT)
    pipe, embeds = _mistral_reference(ctx, tmp_path)
    assert pooled is None and cond.shape == embeds.shape and (cond - embeds).abs().max() < 1e-5
    (positive,) = FluxGuidance().run(CLIPTextEncode().run(PROMPT, clip)[0], 4.0)
    model, image = _genloom_image(NAMES["dev"], clip, positive)
    assert model.kind == "flux2" and model.is_dev
    padded = F.pad(embeds, (0, 0, 512 - embeds.shape[1], 0))  # ComfyUI's Flux2: zeros before the text
    ref = pipe(prompt_embeds=padded, guidance_scale=4.0, height=SIZE, width=SIZE, num_inference_steps=STEPS,
               latents=_noise(), output_type="pt").images
    assert image.shape == (1, SIZE, SIZE, 3) and (image - ref.permute(0, 2, 3, 1)).abs().max() < 1e-4


def test_klein_equals_klein_pipeline_with_cfg(ctx):
    from diffusers import Flux2KleinPipeline
    from transformers import Qwen2Tokenizer

    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.loaders_split import CLIPLoader

    (clip,) = CLIPLoader().run(NAMES["qwen3"], "flux2")
    (positive,) = CLIPTextEncode().run(PROMPT, clip)
    (negative,) = CLIPTextEncode().run("", clip)
    assert positive[0][0].shape == (1, 512, 3 * flux2_tiny.TEXT_WIDTH)
    model, image = _genloom_image(NAMES["klein"], clip, positive, negative, cfg=4.0)
    assert not model.is_dev
    tokenizer = Qwen2Tokenizer.from_pretrained(str(ctx["root"] / "text_encoders" / "qwen25_tokenizer"))
    tokenizer.chat_template = flux2_tiny.QWEN3_CHAT
    assert tokenizer.padding_side == "right"
    pipe = Flux2KleinPipeline(scheduler=_scheduler(), vae=ctx["vae"], text_encoder=ctx["qwen3"], tokenizer=tokenizer,
                              transformer=ctx["klein"])
    ref = pipe(prompt=PROMPT, guidance_scale=4.0, height=SIZE, width=SIZE, num_inference_steps=STEPS,
               latents=_noise(), output_type="pt").images
    assert (image - ref.permute(0, 2, 3, 1)).abs().max() < 1e-4


def test_files_are_told_apart_with_clear_errors(ctx, tmp_path):
    from safetensors.torch import save_file

    from genloom.diffusion.errors import CheckpointError
    from genloom.diffusion.models import flux2_text, text_encoders

    with pytest.raises(CheckpointError, match="type flux2"):
        text_encoders.load_clip_files([ctx["root"] / "text_encoders" / NAMES["mistral"]], "lumina2")
    bare = tmp_path / "mistral_no_tokenizer.safetensors"
    save_file({k: v.contiguous() for k, v in ctx["mistral"].state_dict().items()}, str(bare))
    with pytest.raises(CheckpointError, match="no Mistral tokenizer"):
        flux2_text.tekken_tokenizer(bare, {})
    assert text_encoders.file_problem(ctx["root"] / "text_encoders" / NAMES["mistral"]) is None


def test_example_workflow_validates_and_runs(ctx, tmp_path):
    """workflows/flux2_txt2img.json as shipped validates against the tiny files saved under the names users
    download; at 32 x 32 pixels and 2 steps it runs."""
    import json

    import numpy as np
    from PIL import Image

    import genloom

    envelope = json.loads((Path(__file__).resolve().parents[2] / "workflows" / "flux2_txt2img.json").read_text())
    engine = genloom.Engine(models_dirs=[ctx["root"]], input_dir=tmp_path / "in", output_dir=tmp_path / "out",
                            temp_dir=tmp_path / "temp", device="cpu")
    engine.validate(envelope)
    for node in envelope["graph"].values():
        for key, value in (("width", 32), ("height", 32), ("steps", 2)):
            if key in node["inputs"]:
                node["inputs"][key] = value
    result = engine.run(envelope)
    pictures = [Image.open(tmp_path / "out" / e["subfolder"] / e["filename"])
                for ui in result.outputs.values() for e in ui.get("images", [])]
    assert [p.size for p in pictures] == [(32, 32)] and np.asarray(pictures[0]).std() > 0
