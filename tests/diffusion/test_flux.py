"""The Flux.1 family: BFL key layout <-> diffusers (checked against diffusers' own converter),
configuration from shapes, strict keys, detection, the handle's token packing, Kontext reference
placement, FluxDisableGuidance, and LoRA files in the kohya, BFL/ai-toolkit and diffusers layouts."""

import copy

import pytest

torch = pytest.importorskip("torch")

import tiny_flux  # noqa: E402
from genloom.diffusion.errors import CheckpointError  # noqa: E402
from genloom.diffusion.models.families import flux as F  # noqa: E402


@pytest.fixture
def ctx(tmp_path):
    from genloom.engine import context
    from genloom.engine.folders import Folders

    folders = Folders(models_dirs=[tmp_path / "models"], input_dir=tmp_path / "i", output_dir=tmp_path / "o",
                      temp_dir=tmp_path / "t")
    token = context.use(context.RunContext(device_choice="cpu", folders=folders))
    yield tmp_path
    context.reset(token)


def _patterned(shapes: dict) -> dict:
    """Distinct uint8 rows for every tensor without allocating half a billion numbers: each tensor
    is a strided view of one random buffer, one value per row (its first axis), at its own offset.
    The layouts only ever move whole tensors and cut or join them along rows, so that is all a
    misplaced piece needs to show."""
    buf = torch.randint(0, 256, (65521 + 32768,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return {key: torch.as_strided(buf, tuple(shape), (1,) + (0,) * (len(shape) - 1), (i * 7919) % 65521)
            for i, (key, shape) in enumerate(shapes.items())}


def test_the_original_layout_round_trips_through_diffusers_own_converter():
    # diffusers' converter hard-codes Flux's 3072 width, so this one is full width (1 + 1 blocks,
    # uint8 rows: only where each tensor and row lands matters here).
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    with torch.device("meta"):
        meta = FluxTransformer2DModel(num_layers=1, num_single_layers=1, joint_attention_dim=16,
                                      pooled_projection_dim=16, guidance_embeds=True)
    ours = _patterned({k: v.shape for k, v in meta.state_dict().items()})
    original = F.to_original(ours)
    assert "double_blocks.0.img_attn.qkv.weight" in original and "single_blocks.0.linear1.bias" in original
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(original))
    assert set(theirs) == set(ours)
    assert all(torch.equal(theirs[k], ours[k]) for k in ours)
    assert F.to_diffusers(original).keys() == ours.keys()
    cfg = F.config_from_shapes({k: v.shape for k, v in original.items()})
    assert (cfg["num_attention_heads"], cfg["attention_head_dim"], cfg["axes_dims_rope"]) == (24, 128, [16, 56, 56])


@pytest.mark.parametrize("guidance", [True, False])
def test_a_tiny_bfl_file_builds_the_same_transformer(guidance):
    model = tiny_flux.transformer(guidance, depth=2, single=3)
    original = F.to_original(model.state_dict())
    assert F.layout(original) == "bfl"
    assert ("guidance_in.in_layer.weight" in original) == guidance
    cfg = F.config_from_shapes({k: v.shape for k, v in original.items()})
    assert (cfg["num_layers"], cfg["num_single_layers"], cfg["num_attention_heads"], cfg["attention_head_dim"],
            cfg["joint_attention_dim"], cfg["pooled_projection_dim"], cfg["guidance_embeds"]) == \
        (2, 3, tiny_flux.HEADS, tiny_flux.WIDTH // tiny_flux.HEADS, tiny_flux.TEXT_DIM, tiny_flux.POOLED_DIM, guidance)
    handle = F.build(original, name="tiny")
    assert handle.kind == "flux" and handle.latent_channels == 16 and handle.is_dev == guidance
    rebuilt = handle.unet.state_dict()
    assert all(torch.equal(rebuilt[k], v) for k, v in model.state_dict().items())
    # diffusers-keyed files load too
    assert F.layout(model.state_dict()) == "diffusers"
    again = F.build(model.state_dict()).unet.state_dict()
    assert all(torch.equal(again[k], v) for k, v in model.state_dict().items())


def test_default_model_sampling_is_comfyuis():
    dev = F.build(F.to_original(tiny_flux.transformer(True).state_dict()))
    schnell = F.build(F.to_original(tiny_flux.transformer(False).state_dict()))
    assert dev.sampling.table == "flux" and dev.sampling.shift == pytest.approx(1.15)
    assert float(dev.sampling.timestep(torch.tensor(0.5))) == pytest.approx(0.5)
    assert schnell.sampling.table == "flow" and schnell.sampling.shift == 1.0
    assert float(schnell.sampling.timestep(torch.tensor(0.25))) == pytest.approx(0.25)  # multiplier 1


def test_missing_and_unexpected_keys_are_named():
    original = F.to_original(tiny_flux.transformer(True).state_dict())
    short = dict(original)
    del short["single_blocks.1.linear2.weight"]
    with pytest.raises(CheckpointError, match="proj_out.weight"):
        F.build(short)
    extra = {**original, "double_blocks.0.img_attn.extra.weight": torch.zeros(2)}
    with pytest.raises(CheckpointError, match="img_attn.extra.weight"):
        F.build(extra)
    ratio = {**original, "double_blocks.0.img_mlp.0.weight": torch.zeros(3 * tiny_flux.WIDTH, tiny_flux.WIDTH)}
    with pytest.raises(CheckpointError, match="MLP"):
        F.config_from_shapes({k: v.shape for k, v in ratio.items()})
    fill = {**original, "img_in.weight": torch.zeros(tiny_flux.WIDTH, 384)}  # Flux Fill: 384 in, 64 out
    with pytest.raises(CheckpointError, match="Fill"):
        F.build(fill)


def test_the_family_registry_finds_flux_and_strips_comfyuis_prefix():
    from genloom.diffusion.models import families

    original = F.to_original(tiny_flux.transformer(True).state_dict())
    prefixed = {"model.diffusion_model." + k: v for k, v in original.items()}
    stripped = families.strip_prefix(prefixed)
    assert families.detect({k: tuple(v.shape) for k, v in stripped.items()}) is F
    chroma = {**{k: (1,) for k in original}, "distilled_guidance_layer.in_proj.weight": (1,)}
    assert not F.detect(chroma)
    flux2 = {**{k: (1,) for k in original}, "double_stream_modulation_img.lin.weight": (1,)}
    assert not F.detect(flux2)


def test_token_packing_is_the_pipelines():
    from diffusers import FluxPipeline

    from genloom.diffusion.models.flux_model import pack, position_ids, unpack

    x = torch.randn(2, 16, 6, 10)
    packed = pack(x)
    assert torch.equal(packed, FluxPipeline._pack_latents(x, 2, 16, 6, 10))
    assert torch.equal(unpack(packed, 3, 5), x)
    ids = position_ids(3, 5, 0, 0, 0, "cpu")
    assert torch.equal(ids, FluxPipeline._prepare_latent_image_ids(1, 3, 5, "cpu", torch.float32))


def test_reference_latents_are_placed_as_comfyui_places_them():
    from genloom.diffusion.models.flux_model import ref_positions

    sizes = [(8, 6), (4, 10), (6, 6)]  # latent cells (h, w); the image grid is 5 x 4 tokens
    # offset: the first at (0, 0), the canvas 8 x 6 cells; the second (4 + 8 <= 10 + 6) goes below it
    # (row 8 cells = 4 tokens), the canvas 12 x 10; the third (6 + 12 > 6 + 10) to its right
    # (column 10 cells = 5 tokens).
    assert ref_positions(sizes, (5, 4), "offset") == [(1, 0, 0), (1, 4, 0), (1, 0, 5)]
    assert ref_positions(sizes, (5, 4), "index") == [(1, 0, 0), (2, 0, 0), (3, 0, 0)]
    # uxo: diagonally past the image (10 x 8 cells), each past the ones before
    assert ref_positions(sizes, (5, 4), "uxo") == [(0, 5, 4), (0, 9, 7), (0, 11, 12)]


def test_two_reference_latents_are_tokens_after_the_image_and_dropped_from_the_output(ctx):
    from diffusers import FluxPipeline as P

    model = tiny_flux.transformer(True)
    handle = F.build(F.to_original(model.state_dict()))
    x, refs = torch.randn(1, 16, 4, 6), [torch.randn(1, 16, 4, 4), torch.randn(1, 16, 2, 4)]
    pooled, emb, t = torch.randn(1, tiny_flux.POOLED_DIM), torch.randn(1, 7, tiny_flux.TEXT_DIM), torch.tensor(0.6)
    extras = handle.cond_extras({"pooled_output": pooled, "guidance": 3.0, "reference_latents": refs}, 32, 48)
    # by hand: references in the FLUX latent format, packed after the image; "offset" puts the first
    # at index 1, (0, 0), and the second (2 + 4 <= 4 + 4) below it, 4 cells = 2 tokens down
    inside = [(r - 0.1159) * 0.3611 for r in refs]
    tokens = torch.cat([P._pack_latents(x, 1, 16, 4, 6), P._pack_latents(inside[0], 1, 16, 4, 4),
                        P._pack_latents(inside[1], 1, 16, 2, 4)], dim=1)
    grids = [P._prepare_latent_image_ids(1, h, w, "cpu", torch.float32) for h, w in ((2, 3), (2, 2), (1, 2))]
    grids[1][:, 0] = 1
    grids[2][:, 0] = 1
    grids[2][:, 1] += 2
    with torch.no_grad():
        ours = handle.predict(handle.unet, x, t, emb, extras)
        out = model(hidden_states=tokens, encoder_hidden_states=emb, pooled_projections=pooled,
                    timestep=t.reshape(1), img_ids=torch.cat(grids), txt_ids=torch.zeros(7, 3),
                    guidance=torch.tensor([3.0]), return_dict=False)[0]
        plain = handle.predict(handle.unet, x, t, emb, {"pooled": pooled, "guidance": torch.tensor([3.0])})
    assert torch.allclose(ours, P._unpack_latents(out[:, :6], 32, 48, 8), atol=1e-5)
    assert float((ours - plain).abs().max()) > 1e-3


def test_disabled_guidance_leaves_the_guidance_embedding_out(ctx):
    model = tiny_flux.transformer(True)
    handle = F.build(model.state_dict())
    x, emb, t = torch.randn(1, 16, 4, 4), torch.randn(1, 5, tiny_flux.TEXT_DIM), torch.tensor(0.4)
    pooled = torch.randn(1, tiny_flux.POOLED_DIM)
    off = handle.cond_extras({"pooled_output": pooled, "guidance": None}, 32, 32)
    assert "guidance" not in off
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p in reference.time_text_embed.guidance_embedder.linear_2.parameters():
            p.zero_()  # its output is then exactly zero
        ours = handle.predict(handle.unet, x, t, emb, off)
        theirs = handle.predict(reference, x, t, emb, {"pooled": pooled, "guidance": torch.tensor([7.0])})
        default = handle.predict(handle.unet, x, t, emb, handle.cond_extras({"pooled_output": pooled}, 32, 32))
        at_35 = handle.predict(handle.unet, x, t, emb, {"pooled": pooled, "guidance": torch.tensor([3.5])})
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert torch.equal(default, at_35)  # no guidance given: ComfyUI's 3.5


# ---- LoRA ------------------------------------------------------------------------------------

def _lora_file(path, layout: str, rank: int = 2, alpha: float = 1.0, seed: int = 0):
    """A LoRA on a fused qkv, a single block's linear1, the final modulation and a plain layer, in
    one of three key layouts. Returns {BFL module: (up, down)} for the reference arithmetic."""
    from safetensors.torch import save_file

    W = tiny_flux.WIDTH
    g = torch.Generator().manual_seed(seed)
    layers = {"double_blocks.0.img_attn.qkv": (3 * W, W), "single_blocks.1.linear1": (7 * W, W),
              "final_layer.adaLN_modulation.1": (2 * W, W), "double_blocks.0.txt_mlp.2": (W, 4 * W)}
    diffusers_names = {"double_blocks.0.txt_mlp.2": "transformer_blocks.0.ff_context.net.2"}
    tensors, parts = {}, {}
    for name, (rows, cols) in layers.items():
        up, down = torch.randn(rows, rank, generator=g), torch.randn(rank, cols, generator=g)
        parts[name] = (up, down)
        if layout == "kohya":
            key, a, b = "lora_unet_" + name.replace(".", "_"), ".lora_up.weight", ".lora_down.weight"
        elif layout == "bfl":
            key, a, b = "diffusion_model." + name, ".lora_B.weight", ".lora_A.weight"
        else:
            if name not in diffusers_names:
                continue
            key, a, b = "transformer." + diffusers_names[name], ".lora_B.weight", ".lora_A.weight"
        tensors[key + a], tensors[key + b] = up, down
        if layout == "kohya":
            tensors[key + ".alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path))
    return parts


def _merged(model, parts, strength: float, scale: float):
    """The reference: each BFL layer's delta up @ down, cut into the diffusers weights by hand."""
    W = tiny_flux.WIDTH
    ref = copy.deepcopy(model)
    sd = ref.state_dict()
    with torch.no_grad():
        for name, (up, down) in parts.items():
            delta = strength * scale * (up @ down)
            if name.endswith("qkv"):
                for i, n in enumerate(("to_q", "to_k", "to_v")):
                    sd[f"transformer_blocks.0.attn.{n}.weight"] += delta[i * W:(i + 1) * W]
            elif name.endswith("linear1"):
                for i, n in enumerate(("attn.to_q", "attn.to_k", "attn.to_v")):
                    sd[f"single_transformer_blocks.1.{n}.weight"] += delta[i * W:(i + 1) * W]
                sd["single_transformer_blocks.1.proj_mlp.weight"] += delta[3 * W:]
            elif name.startswith("final_layer"):
                sd["norm_out.linear.weight"] += torch.cat([delta[W:], delta[:W]])  # (scale, shift)
            else:
                sd["transformer_blocks.0.ff_context.net.2.weight"] += delta
    return ref


@pytest.mark.parametrize("layout", ["kohya", "bfl", "diffusers"])
def test_flux_lora_layouts_change_the_right_rows(ctx, layout):
    from genloom.diffusion.models.lora import load_lora

    model = tiny_flux.transformer(True)
    handle = F.build(F.to_original(model.state_dict()))
    path = ctx / f"lora_{layout}.safetensors"
    parts = _lora_file(path, layout, alpha=1.0)
    if layout == "diffusers":
        parts = {k: v for k, v in parts.items() if k.endswith("txt_mlp.2")}
    lora = load_lora(path)
    assert lora.unused == []
    scale = 1.0 / 2 if layout == "kohya" else 1.0  # alpha / rank
    patched = handle.with_lora(lora, 0.75)
    ref = _merged(model, parts, 0.75, scale)
    x, emb, t = torch.randn(1, 16, 4, 4), torch.randn(1, 5, tiny_flux.TEXT_DIM), torch.tensor(0.5)
    extras = {"pooled": torch.randn(1, tiny_flux.POOLED_DIM), "guidance": torch.tensor([3.5])}
    with torch.no_grad():
        with patched.use("cpu") as unet:
            ours = patched.predict(unet, x, t, emb, extras)
        theirs = handle.predict(ref, x, t, emb, extras)
        plain = handle.predict(model, x, t, emb, extras)
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4)
    assert float((ours - plain).abs().max()) > 1e-3
    assert torch.equal(handle.unet.state_dict()["norm_out.linear.weight"],
                       model.state_dict()["norm_out.linear.weight"])  # the base weights untouched
