"""Flux.2 reference images (VAEEncode -> ReferenceLatent, ComfyUI's edit and multi-reference workflows) and
Flux.2 LoRAs (LoraLoaderModelOnly) on the tiny parts of flux2_tiny.py, against diffusers.

References: genloom's nodes against Flux2Pipeline(image=[two pictures]) / Flux2KleinPipeline(image=picture) on
the same weights, within 1e-4 on the sampled latent and on the decoded image. Both sides get the same latents: the reference pictures are PIL
images whose sizes are multiples of 16 and at least 64 (the pipeline's preprocessing then neither resizes
nor crops them, it only maps [0, 255] to [-1, 1]), and genloom reads the same pixels as a LoadImage tensor
(/ 255) into VAEEncode (equal to the pipeline's _encode_vae_image, test_flux2.py). The prompt embeddings are
random tensors given to both (prompt_embeds), as text encoding is test_flux2.py's subject.

LoRAs: diffusers' Flux2 LoRA converter (Flux2Pipeline.lora_state_dict, what load_lora_weights feeds peft)
reads the same file, and its lora_B @ lora_A is fused into a copy of the transformer by hand (peft's fuse:
W + scale * B @ A, scale 1 without alphas; the kohya converter bakes alpha / rank into the factors). peft is
not installed here, so its own fuse step is this one line of arithmetic. The final modulation is checked
against arithmetic only: diffusers' LoRA converter leaves its (shift, scale) halves unswapped, where the
model's converter (and so the weight ComfyUI patches) swaps them.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flux2_tiny  # noqa: E402
import tiny  # noqa: E402

from genloom.diffusion.models.families import flux2  # noqa: E402

NAMES = {"dev": "flux2_dev_fp8mixed.safetensors", "klein": "flux-2-klein-4b.safetensors",
         "vae": "flux2-vae.safetensors", "mistral": "mistral_3_small_flux2_bf16.safetensors",
         "qwen3": "qwen_3_4b.safetensors"}
SEED, SIZE, STEPS = 5, 64, 2
REFS = ((64, 64), (96, 64))  # (width, height) of the reference pictures
TEXT = 3 * flux2_tiny.TEXT_WIDTH


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux2_edit_models")
    # weights of std 0.15: at 0.05 the tiny transformer hardly attends, and reference tokens would move
    # the latents by 1e-4 only
    return {**flux2_tiny.build(root, NAMES, scale=0.15), "root": root}


@pytest.fixture
def ctx(parts, tmp_path):
    with tiny.cpu_context([parts["root"]], tmp_path):
        yield parts


def _pictures(count: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in REFS[:count]]


def _as_image(picture):
    import numpy as np

    return torch.from_numpy(np.asarray(picture).astype(np.float32) / 255.0)[None]


def _embeds(seed: int):
    return torch.randn((1, 512, TEXT), generator=torch.Generator().manual_seed(seed))


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, time_shift_type="exponential")


def _genloom_image(model_name, pictures, positive, negative=None, cfg=1.0, model=None):
    """ComfyUI's Flux.2 edit workflow: each picture VAEEncode'd into ReferenceLatent on every conditioning.
    Returns the sampled latent and the decoded picture."""
    from genloom.nodes.custom_sampling import (BasicGuider, CFGGuider, KSamplerSelect, RandomNoise,
                                               SamplerCustomAdvanced)
    from genloom.nodes.flux import EmptyFlux2LatentImage, Flux2Scheduler, ReferenceLatent
    from genloom.nodes.latent import VAEDecode, VAEEncode
    from genloom.nodes.loaders import VAELoader
    from genloom.nodes.loaders_split import UNETLoader

    model = model or UNETLoader().run(model_name, "default")[0]
    (vae,) = VAELoader().run(NAMES["vae"])
    for picture in pictures:
        (latent,) = VAEEncode().run(_as_image(picture), vae)
        (positive,) = ReferenceLatent().run(positive, latent)
        negative = None if negative is None else ReferenceLatent().run(negative, latent)[0]
    (guider,) = BasicGuider().run(model, positive) if negative is None else \
        CFGGuider().run(model, positive, negative, cfg)
    (empty,) = EmptyFlux2LatentImage().run(SIZE, SIZE, 1)
    (sigmas,) = Flux2Scheduler().run(STEPS, SIZE, SIZE)
    out, _denoised = SamplerCustomAdvanced().run(RandomNoise().run(SEED)[0], guider,
                                                 KSamplerSelect().run("euler")[0], sigmas, empty)
    return out["samples"], VAEDecode().run(out, vae)[0]


def _noise():
    return torch.randn((1, 128, SIZE // 16, SIZE // 16), generator=torch.Generator("cpu").manual_seed(SEED))


def _run(pipe, **kwargs):
    """The pipeline's final latent (its packed tokens, as [1, 128, h, w]) and decoded picture [1, H, W, 3]."""
    seen = {}

    def keep(_pipe, _i, _t, tensors):
        seen["latents"] = tensors["latents"]
        return tensors

    image = pipe(height=SIZE, width=SIZE, num_inference_steps=STEPS, latents=_noise(), output_type="pt",
                 callback_on_step_end=keep, **kwargs).images
    cells = SIZE // 16
    return seen["latents"].permute(0, 2, 1).reshape(1, 128, cells, cells), image.permute(0, 2, 3, 1)


def _assert_equal(ours, theirs):
    assert ours[0].shape == theirs[0].shape and (ours[0] - theirs[0]).abs().max() < 1e-4
    assert ours[1].shape == (1, SIZE, SIZE, 3) and (ours[1] - theirs[1]).abs().max() < 1e-4


def test_dev_multi_reference_equals_flux2_pipeline(ctx):
    """Two reference pictures of different sizes (Flux2Pipeline's image=[...])."""
    from diffusers.pipelines.flux2.pipeline_flux2 import Flux2Pipeline

    pictures, emb = _pictures(2), _embeds(1)
    ours = _genloom_image(NAMES["dev"], pictures, [[emb, {"guidance": 4.0}]])
    pipe = Flux2Pipeline(scheduler=_scheduler(), vae=ctx["vae"], text_encoder=None, tokenizer=None,
                         transformer=ctx["dev"])
    theirs = _run(pipe, image=pictures, prompt_embeds=emb, guidance_scale=4.0)
    _assert_equal(ours, theirs)
    plain = _genloom_image(NAMES["dev"], [], [[emb, {"guidance": 4.0}]])
    assert (ours[0] - plain[0]).abs().max() > 0.05  # the references change the result


def test_klein_edit_equals_klein_pipeline_with_cfg(ctx):
    """One picture to edit (Flux2KleinPipeline's image=...), on the positive and the negative conditioning as
    ComfyUI's Klein edit workflow wires it; CFG 3 against the negative, as the pipeline does."""
    from diffusers import Flux2KleinPipeline

    pictures, pos, neg = _pictures(1), _embeds(2), _embeds(3)
    ours = _genloom_image(NAMES["klein"], pictures, [[pos, {}]], [[neg, {}]], cfg=3.0)
    pipe = Flux2KleinPipeline(scheduler=_scheduler(), vae=ctx["vae"], text_encoder=None, tokenizer=None,
                              transformer=ctx["klein"])
    _assert_equal(ours, _run(pipe, image=pictures[0], prompt_embeds=pos, negative_prompt_embeds=neg,
                             guidance_scale=3.0))


def test_reference_placements_and_refusals(ctx):
    """ids by hand: "index" steps the time axis by 10; "offset" tiles the references at index 1, the next one
    below the ones before unless it is taller than wide enough to go right (h + rows > w + cols); "uxo"
    starts past the image's grid, diagonally. A Flux.1 latent and an unknown method are refused."""
    from genloom.diffusion.errors import SamplingError
    from genloom.nodes.loaders_split import UNETLoader

    assert flux2.reference_positions([(4, 4), (4, 6)], (4, 4), "index") == [(10, 0, 0), (20, 0, 0)]
    # offset: the second 4 x 6 goes below the first (4 + 4 > 6 + 4 is false), a 6 x 2 one right of it
    assert flux2.reference_positions([(4, 4), (4, 6)], (4, 4), "offset") == [(1, 0, 0), (1, 4, 0)]
    assert flux2.reference_positions([(4, 4), (6, 2)], (4, 4), "offset") == [(1, 0, 0), (1, 0, 4)]
    assert flux2.reference_positions([(4, 4), (2, 2)], (3, 5), "uxo") == [(0, 3, 5), (0, 7, 9)]
    (model,) = UNETLoader().run(NAMES["klein"], "default")
    with pytest.raises(SamplingError, match="shape .1, 16, 8, 8.*128"):
        model.cond_extras({"reference_latents": [torch.zeros(1, 16, 8, 8)]}, SIZE, SIZE)
    with pytest.raises(SamplingError, match="'index_timestep_zero' is not one Flux.2 takes"):
        model.cond_extras({"reference_latents": [torch.zeros(1, 128, 4, 4)],
                           "reference_latents_method": "index_timestep_zero"}, SIZE, SIZE)


# ---- LoRA ------------------------------------------------------------------------------------

# BFL module names a Flux.2 LoRA trains (ai-toolkit's set and more): fused qkv, SwiGLU MLPs, a single block's
# fused linear1 and its linear2, the shared modulation, the embedders and the output layer
LAYERS = ("double_blocks.0.img_attn.qkv", "double_blocks.0.txt_attn.qkv", "double_blocks.0.img_attn.proj",
          "double_blocks.0.txt_attn.proj", "double_blocks.0.img_mlp.0", "double_blocks.0.img_mlp.2",
          "double_blocks.0.txt_mlp.0", "double_blocks.0.txt_mlp.2", "single_blocks.0.linear1",
          "single_blocks.0.linear2", "img_in", "txt_in", "time_in.in_layer", "final_layer.linear")
DIFFUSERS_ONLY_BFL = ("double_stream_modulation_img.lin", "single_stream_modulation.lin")


def _lora_file(path, model, layout: str, layers, rank: int = 2, alpha: float | None = None, seed: int = 0):
    """A LoRA on `layers` (BFL names) in `layout` ("bfl": ai-toolkit's diffusion_model.* lora_A/lora_B,
    "kohya": lora_unet_* lora_down/lora_up with alpha). Returns {BFL name: (up, down)}."""
    from safetensors.torch import save_file

    shapes = {k[: -len(".weight")]: v.shape for k, v in flux2.to_original(model.state_dict()).items()}
    g = torch.Generator().manual_seed(seed)
    tensors, factors = {}, {}
    for name in layers:
        rows, cols = shapes[name]
        up, down = torch.randn(rows, rank, generator=g) * 0.3, torch.randn(rank, cols, generator=g) * 0.3
        factors[name] = (up, down)
        if layout == "kohya":
            key = "lora_unet_" + name.replace(".", "_")
            tensors[key + ".lora_up.weight"], tensors[key + ".lora_down.weight"] = up, down
            tensors[key + ".alpha"] = torch.tensor(float(alpha if alpha is not None else rank))
        else:
            key = "diffusion_model." + name
            tensors[key + ".lora_B.weight"], tensors[key + ".lora_A.weight"] = up, down
            if alpha is not None:
                tensors[key + ".alpha"] = torch.tensor(float(alpha))
    save_file(tensors, str(path))
    return factors


def _diffusers_fused(model, path, strength: float):
    """diffusers' reading of the file, fused by hand: W + strength * lora_B @ lora_A per converted layer."""
    from diffusers.pipelines.flux2.pipeline_flux2 import Flux2Pipeline

    converted = Flux2Pipeline.lora_state_dict(str(path))
    ref = copy.deepcopy(model)
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for key, a in converted.items():
            if key.endswith(".lora_A.weight"):
                name = key[len("transformer."): -len(".lora_A.weight")]
                b = converted[key.replace("lora_A", "lora_B")]
                params[name + ".weight"] += strength * (b.float() @ a.float())
    return ref, converted


def _outputs(handle, modules, extras_seed: int = 0):
    g = torch.Generator().manual_seed(extras_seed)
    x, emb = torch.randn(1, 128, 3, 4, generator=g), torch.randn(1, 20, TEXT, generator=g)
    extras = handle.cond_extras({"guidance": 3.0}, 48, 64)
    with torch.no_grad():
        return [handle.predict(m, x, torch.tensor(0.6), emb, extras) for m in modules]


def _patched(ctx, name: str, file: str, strength: float):
    from genloom.nodes.loaders import LoraLoaderModelOnly
    from genloom.nodes.loaders_split import UNETLoader

    (model,) = UNETLoader().run(NAMES[name], "default")
    (patched,) = LoraLoaderModelOnly().run(model, file, strength)
    return model, patched


@pytest.mark.parametrize("layout", ["bfl", "kohya", "diffusers"])
def test_lora_layouts_equal_diffusers_lora_fused(ctx, layout):
    """Every layout users have, through LoraLoaderModelOnly on the dev transformer, equals diffusers' own
    conversion of the file fused into the weights (1e-5 on the network's output)."""
    from safetensors.torch import save_file

    root = ctx["root"] / "loras"
    layers = LAYERS + (DIFFUSERS_ONLY_BFL if layout != "kohya" else ())  # diffusers' kohya reader drops these
    _lora_file(root / f"bfl_{layout}.safetensors", ctx["dev"], "kohya" if layout == "kohya" else "bfl", layers,
               alpha=1.0 if layout == "kohya" else None)
    ref, converted = _diffusers_fused(ctx["dev"], root / f"bfl_{layout}.safetensors", 0.8)
    file = f"bfl_{layout}.safetensors"
    if layout == "diffusers":  # what diffusers' save_lora_weights writes: transformer.* module names
        file = "flux2_lora_diffusers.safetensors"
        save_file({k: v.contiguous() for k, v in converted.items()}, str(root / file))
    model, patched = _patched(ctx, "dev", file, 0.8)
    assert patched.patches[0][0].unused == []
    with patched.use("cpu") as unet:
        ours, theirs, plain = _outputs(model, [unet, ref, ctx["dev"]])
    assert (ours - theirs).abs().max() < 1e-5
    assert (ours - plain).abs().max() > 1e-3
    with model.use("cpu") as unet:  # the loaded base model is left as it was
        assert torch.equal(_outputs(model, [unet])[0], plain)


def test_lora_strength_and_alpha_follow_the_arithmetic_in_bfl_layout(ctx):
    """At strength 0.5 with alpha 1 (rank 2) each BFL weight moves by 0.5 * 1/2 * up @ down, read back in
    BFL's layout (the fused qkv and linear1 whole, the final (shift, scale) modulation as BFL stores it)."""
    layers = ("double_blocks.0.img_attn.qkv", "single_blocks.0.linear1", "final_layer.adaLN_modulation.1",
              "single_stream_modulation.lin", "double_blocks.0.txt_mlp.0")
    factors = _lora_file(ctx["root"] / "loras" / "alpha.safetensors", ctx["klein"], "bfl", layers, alpha=1.0)
    model, patched = _patched(ctx, "klein", "alpha.safetensors", 0.5)
    base = flux2.to_original(model.unet.state_dict())
    with patched.use("cpu") as unet:
        moved = flux2.to_original(unet.state_dict())
    for name, weight in base.items():
        key = name[: -len(".weight")]
        want = weight + 0.5 * 0.5 * (factors[key][0] @ factors[key][1]) if key in factors else weight
        assert torch.allclose(moved[name], want, atol=1e-6), name


def test_flux1_and_flux2_loras_are_told_apart_by_their_shapes():
    """The same BFL names, read as Flux.1 (7-width linear1, 4x MLP) or Flux.2 (9-width linear1, SwiGLU)."""
    from genloom.diffusion.models import lora_flux2
    from genloom.diffusion.models.lora import lora_from_state

    w, r = 8, 2

    def state(linear1, mlp_in, mlp_hidden):
        return {f"diffusion_model.{k}.lora_{p}.weight": torch.zeros(*s) for k, (rows, cols) in {
            "single_blocks.0.linear1": (linear1, w), "single_blocks.0.linear2": (w, w + mlp_hidden),
            "double_blocks.0.img_mlp.0": (mlp_in, w), "double_blocks.0.img_mlp.2": (w, mlp_hidden)}.items()
            for p, s in (("B", (rows, r)), ("A", (r, cols)))}

    flux1 = lora_from_state(state(7 * w, 4 * w, 4 * w), "flux1.safetensors")
    new = lora_from_state(state(9 * w, 6 * w, 3 * w), "flux2.safetensors")
    assert ("unet", "single_transformer_blocks.0.proj_mlp") in flux1.groups
    assert ("unet", "transformer_blocks.0.ff.net.0.proj") in flux1.groups
    assert set(new.groups) == {("unet", "single_transformer_blocks.0.attn.to_qkv_mlp_proj"),
                               ("unet", "single_transformer_blocks.0.attn.to_out"),
                               ("unet", "transformer_blocks.0.ff.linear_in"),
                               ("unet", "transformer_blocks.0.ff.linear_out")}
    assert lora_flux2.is_flux2({"double_stream_modulation_txt.lin": {}})


def test_example_edit_workflow_validates_and_runs(ctx, tmp_path):
    """workflows/flux2_edit.json as shipped validates against the tiny files saved under the names users
    download; at 0.01 megapixels and 2 steps it runs, the result as large as the scaled reference."""
    import json

    import numpy as np
    from PIL import Image

    import genloom

    inputs = tmp_path / "pictures"
    inputs.mkdir()
    _pictures(2)[1].save(inputs / "flux2_reference.png")  # 96 x 64
    envelope = json.loads((Path(__file__).resolve().parents[2] / "workflows" / "flux2_edit.json").read_text())
    engine = genloom.Engine(models_dirs=[ctx["root"]], input_dir=inputs, output_dir=tmp_path / "out",
                            temp_dir=tmp_path / "temp", device="cpu")
    engine.validate(envelope)
    for node in envelope["graph"].values():
        node["inputs"].update({k: v for k, v in (("megapixels", 0.01), ("steps", 2)) if k in node["inputs"]})
    result = engine.run(envelope)
    pictures = [Image.open(tmp_path / "out" / e["subfolder"] / e["filename"])
                for ui in result.outputs.values() for e in ui.get("images", [])]
    # 0.01 MP at 3:2, sides rounded to 16: 128 x 80
    assert [p.size for p in pictures] == [(128, 80)] and np.asarray(pictures[0]).std() > 0
