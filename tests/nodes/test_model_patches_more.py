"""UNet block patches, PatchModelAddDownscale, HyperTile, SelfAttentionGuidance and
PerturbedAttentionGuidance: checked against hooks written here on the unpatched diffusers UNet,
genloom's LDM key map, attention and blur arithmetic written out here, and diffusers' SAG pieces
(its attention-probability store processor and Gaussian blur). The PAG pipeline equality is in
tests/test_pag_sag_equality.py."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _load():
    from genloom.nodes.loaders import CheckpointLoaderSimple

    model, clip, _vae = CheckpointLoaderSimple().run("tiny-sd1.safetensors")
    return model, clip


def _sample(model, clip, steps=3, cfg=4.0, size=64):
    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.ksampler import KSampler
    from genloom.nodes.latent import EmptyLatentImage

    (pos,) = CLIPTextEncode().run("a red cat", clip)
    (neg,) = CLIPTextEncode().run("a blue dog", clip)
    latent = EmptyLatentImage().run(size, size, 1)[0]
    return KSampler().run(model, 7, steps, cfg, "euler", "normal", pos, neg, latent, 1.0)[0]["samples"]


# ---- block patches on the UNet ----------------------------------------------------------------

def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 32, generator=g)


def _call(unet, options=None):
    from genloom.diffusion.models.attention import call_options
    from genloom.diffusion.models.block_patches import block_patched

    x, emb = _inputs()
    to = {**((options or {}).get("transformer_options") or {}), "sigmas": torch.tensor([3.0, 3.0])}
    with torch.no_grad(), block_patched(unet, options or {}), call_options(to):
        return unet(x, torch.tensor([500.0, 500.0]), encoder_hidden_states=emb).sample


def _hooked(unet, module, pre=None, post=None):
    """The unpatched UNet's output with a test hook on `module`."""
    handle = module.register_forward_pre_hook(pre, with_kwargs=True) if pre else \
        module.register_forward_hook(post)
    try:
        return _call(unet)
    finally:
        handle.remove()


def _patches(name, fn):
    return {"transformer_options": {"patches": {name: [fn]}}}


def _scale_output(c):
    def post(_m, _args, out):
        return (out[0] * c, *out[1:]) if isinstance(out, tuple) else out * c
    return post


def _scale_input(c, channels=None):
    """Scales the module's first input (or, with `channels`, the part after them: the skip)."""
    def pre(_m, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        x = x * c if channels is None else torch.cat([x[:, :channels], x[:, channels:] * c], dim=1)
        return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})
    return pre


@pytest.fixture
def unet(tmp_folders):
    return _load()[0].unet


def test_input_block_patch_equals_scaling_that_block_output(unet):
    """tiny SD1 (2 layers, levels 32/64): input 0 conv_in, 1-2 down 0's transformers, 3 its
    downsampler, 4-5 down 1's resnets."""
    d0, d1 = unet.down_blocks
    for k, module in [(0, unet.conv_in), (2, d0.attentions[1]), (3, d0.downsamplers[0]), (5, d1.resnets[1])]:
        def fn(h, to, k=k):
            return h * 1.5 if to["block"] == ("input", k) else h
        ours = _call(unet, _patches("input_block_patch", fn))
        torch.testing.assert_close(ours, _hooked(unet, module, post=_scale_output(1.5)), rtol=0, atol=0)
        assert (ours - _call(unet)).abs().max() > 1e-4


def test_after_skip_patch_scales_what_goes_on_not_the_skip(unet):
    d0, d1 = unet.down_blocks
    for k, consumer in [(0, d0), (1, d0.resnets[1]), (3, d1), (5, unet.mid_block)]:
        def fn(h, to, k=k):
            return h * 0.5 if to["block"] == ("input", k) else h
        ours = _call(unet, _patches("input_block_patch_after_skip", fn))
        torch.testing.assert_close(ours, _hooked(unet, consumer, pre=_scale_input(0.5)), rtol=0, atol=0)


def test_output_block_patch_sees_h_and_the_skip(unet):
    """Output 0-2: up block 0's resnets (h from the mid block, then from resnets 0, 1); 3-5: up
    block 1's (h from up block 0's upsampler, then from its transformers 0, 1 of 32 channels)."""
    u0, u1 = unet.up_blocks
    cases = [(0, u0, _scale_input(2.0), None), (2, u0.resnets[1], None, _scale_output(2.0)),
             (3, u1, _scale_input(2.0), None)]
    for j, module, pre, post in cases:
        def fn(h, hsp, to, j=j):
            return (h * 2.0, hsp) if to["block"] == ("output", j) else (h, hsp)
        ours = _call(unet, _patches("output_block_patch", fn))
        torch.testing.assert_close(ours, _hooked(unet, module, pre=pre, post=post), rtol=0, atol=0)

    def skip_fn(h, hsp, to):
        return (h, hsp * 0.25) if to["block"] == ("output", 4) else (h, hsp)
    ours = _call(unet, _patches("output_block_patch", skip_fn))
    torch.testing.assert_close(ours, _hooked(unet, u1.resnets[1], pre=_scale_input(0.25, channels=32)),
                               rtol=0, atol=0)


def test_block_numbers_seen_and_hooks_removed(unet):
    seen = []
    options = {"transformer_options": {"patches": {
        "input_block_patch": [lambda h, to: seen.append(to["block"]) or h],
        "output_block_patch": [lambda h, hsp, to: seen.append(to["block"]) or (h, hsp)]}}}
    plain = _call(unet)
    _call(unet, options)
    assert seen == [("input", i) for i in range(6)] + [("output", j) for j in range(6)]
    torch.testing.assert_close(_call(unet), plain, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["tiny-sd1", "tiny-sdxl"])
def test_block_numbers_follow_the_ldm_key_layout(tmp_folders, kind):
    """Every place's module holds the weights the LDM checkpoint keeps under input_blocks.k /
    output_blocks.j (genloom's key map, which reads and writes real checkpoints)."""
    from genloom.diffusion.models import keymaps
    from genloom.diffusion.models.block_patches import input_places, output_places
    from genloom.nodes.loaders import CheckpointLoaderSimple

    unet = CheckpointLoaderSimple().run(f"{kind}.safetensors")[0].unet
    table = keymaps.unet_map(dict(unet.config))
    names = {id(m): n for n, m in unet.named_modules()}

    def ldm(module):
        param = next(n for n, _p in module.named_parameters())
        return keymaps._translate(f"{names[id(module)]}.{param}", table)

    places = input_places(unet)
    assert [k for k, _p, _c in places] == list(range(len(places)))
    for k, producer, _consumer in places:
        assert ldm(producer).startswith(f"input_blocks.{k}."), (k, names[id(producer)])
    for block, indices in output_places(unet):
        for j, resnet in zip(indices, block.resnets):
            assert ldm(resnet).startswith(f"output_blocks.{j}.0."), (j, names[id(resnet)])


# ---- PatchModelAddDownscale -------------------------------------------------------------------

def _shapes_into(module, seen):
    return module.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))


def test_deep_shrink(tmp_folders):
    from genloom.nodes.model_patches import PatchModelAddDownscale

    model, clip = _load()
    base = _sample(model, clip)
    node = PatchModelAddDownscale()
    (same,) = node.run(model, 3, 1.0, 0.0, 0.35, True, "bicubic", "bicubic")
    assert torch.equal(_sample(same, clip), base)

    seen: list = []
    handle = _shapes_into(model.unet.down_blocks[1].resnets[0], seen)  # what follows input block 3
    try:
        (shrunk,) = node.run(model, 3, 2.0, 0.0, 0.35, True, "bicubic", "bicubic")
        out = _sample(shrunk, clip)
        window = list(seen)
        seen.clear()
        (late,) = node.run(model, 3, 2.0, 0.36, 0.4, True, "bicubic", "bicubic")  # no step in there
        outside = _sample(late, clip)
        outside_shapes = list(seen)
        seen.clear()
        (before,) = node.run(model, 3, 2.0, 0.0, 0.35, False, "bilinear", "nearest-exact")
        before_skip = _sample(before, clip)
    finally:
        handle.remove()
    # 8x8 latent: input block 3 (the first downsampler) gives 4x4, halved to 2x2 in the window:
    # the steps' sigmas are 14.6, 1.62, 0.029; percent_to_sigma(0.35) = 2.74 lets the first one
    # in; percent_to_sigma(0.36) = 2.6 and (0.4) = 2.28 let none in
    assert window[0] == (2, 2) and (4, 4) in window and set(window) == {(2, 2), (4, 4)}
    assert (out - base).abs().max() > 1e-3 and out.shape == base.shape
    assert set(outside_shapes) == {(4, 4)} and torch.equal(outside, base)
    assert (before_skip - base).abs().max() > 1e-3
    assert seen[0] == (2, 2)
    assert model.model_options == {}


# ---- HyperTile --------------------------------------------------------------------------------

def _attention(q, k, v, heads):
    b, t, c = q.shape
    d = c // heads
    split = lambda x: x.reshape(b, -1, heads, d).transpose(1, 2)  # noqa: E731
    w = (split(q) @ split(k).transpose(-1, -2) / d ** 0.5).softmax(-1)
    return (w @ split(v)).transpose(1, 2).reshape(b, t, c)


def test_hypertile_attention_per_tile(unet):
    """8x8 latent, tile_size 32 -> 4-cell tiles: 2 x 2 tiles of 16 queries each. As ComfyUI, the
    keys and values are not tiled: tile (r, c) attends to the (2r + c)-th run of 16 tokens."""
    from genloom.diffusion.model_patches import hypertile
    from genloom.diffusion.models.attention import attention_patched, call_options

    tile_in, tile_out = hypertile(32, 2, 0, False)
    options = {"transformer_options": {"patches": {"attn1_patch": [tile_in], "attn1_output_patch": [tile_out]}}}
    attn = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    x = torch.randn(1, 64, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        with attention_patched(unet, options), call_options({**options["transformer_options"],
                                                             "original_shape": [1, 4, 8, 8]}):
            ours = attn(x)
        q, k, v = attn.to_q(x)[0], attn.to_k(x)[0], attn.to_v(x)[0]
        grid = torch.zeros(8, 8, 32)
        for r in range(2):
            for c in range(2):
                rows, cols = slice(4 * r, 4 * r + 4), slice(4 * c, 4 * c + 4)
                tile_q = q.reshape(8, 8, 32)[rows, cols].reshape(1, 16, 32)
                run = slice(16 * (2 * r + c), 16 * (2 * r + c + 1))
                grid[rows, cols] = _attention(tile_q, k[None, run], v[None, run], attn.heads).reshape(4, 4, 32)
        want = attn.to_out[1](attn.to_out[0](grid.reshape(1, 64, 32)))
        whole = attn(x)
    torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-6)
    assert (ours - whole).abs().max() > 1e-4


def test_hypertile_node_whole_latent_tiles_are_the_identity(tmp_folders):
    from genloom.nodes.model_patches import HyperTile

    model, clip = _load()
    base = _sample(model, clip)
    (whole,) = HyperTile().run(model, 64, 2, 1, False)  # 8-cell tiles on an 8x8 latent: one tile
    assert torch.equal(_sample(whole, clip), base)
    (tiled,) = HyperTile().run(model, 32, 2, 0, False)
    out = _sample(tiled, clip)
    assert (out - base).abs().max() > 1e-4 and model.model_options == {}


def test_hypertile_draws_like_comfyui_and_restarts_every_run():
    """ComfyUI's pick: torch.randint(0, n - 1) among n > 1 candidates (the last never taken)."""
    from genloom.diffusion.model_patches import hypertile, random_divisor
    from genloom.engine import context

    g = torch.Generator().manual_seed(5)
    ref = torch.Generator().manual_seed(5)
    for _ in range(6):  # 16 with tiles of >= 4 cells: 4, 2 or 1 tiles; 3 candidates -> index 0 or 1
        assert random_divisor(16, 4, 3, g) == [4, 2, 1][int(torch.randint(0, 2, (1,), generator=ref))]
    assert random_divisor(16, 4, 1, g) == 4 and random_divisor(8, 16, 3, g) == 1

    def tiles_of_a_run():
        tile_in, tile_out = hypertile(32, 3, 0, False)
        n = torch.zeros(1, 256, 8)
        counts = []
        for _ in range(8):
            counts.append(tile_in(n, n, n, {"original_shape": [1, 4, 16, 16]})[0].shape[0])
            tile_out(torch.zeros(counts[-1], 256 // counts[-1], 8), {})
        return counts

    runs = []
    for _ in range(2):
        token = context.use(context.RunContext(device_choice="cpu"))
        try:
            runs.append(tiles_of_a_run())
        finally:
            context.reset(token)
    assert runs[0] == runs[1] and len(set(runs[0])) > 1


# ---- SelfAttentionGuidance --------------------------------------------------------------------

def test_sag_blur_and_mask_arithmetic():
    from diffusers.pipelines.deprecated.stable_diffusion_sag.pipeline_stable_diffusion_sag import (
        gaussian_blur_2d as diffusers_blur,
    )

    from genloom.diffusion.model_patches import gaussian_blur_2d, sag_blur_map

    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(2, 4, 8, 12, generator=g)
    torch.testing.assert_close(gaussian_blur_2d(x0, 9, 2.0), diffusers_blur(x0, 9, 2.0))
    # a 2 x 3 attention map (6 tokens) of 2 heads over an 8 x 12 latent
    scores = (torch.randn(2 * 2, 6, 6, generator=g) * 3).softmax(-1)
    got = sag_blur_map(x0, scores, 2.0)
    per_key = scores.reshape(2, 2, 6, 6).mean(1).sum(1)  # [b, keys]
    mask = (per_key > 1.0).float().reshape(2, 1, 2, 3)
    mask = mask.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)  # nearest 2x3 -> 8x12
    want = diffusers_blur(x0, 9, 2.0) * mask + x0 * (1 - mask)
    torch.testing.assert_close(got, want)
    assert 0 < mask.mean() < 1


def test_sag_one_step_against_the_reference_computation(tmp_folders):
    """One denoiser call with SAG equals, computed here with the unpatched model: CFG, plus
    scale * (degraded - D_negative(degraded + x - uncond)), where degraded is the unconditional x0
    blurred (diffusers' blur) where the middle block's self-attention of the negative (recorded by
    diffusers' CrossAttnStoreProcessor) sums above 1 per key."""
    from diffusers.pipelines.deprecated.stable_diffusion_sag.pipeline_stable_diffusion_sag import (
        CrossAttnStoreProcessor,
        gaussian_blur_2d,
    )

    from genloom.diffusion.sampling.denoiser import Denoiser, Guider
    from genloom.diffusion.sampling.model_sampling import of_model
    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.model_patches import SelfAttentionGuidance

    model, clip = _load()
    (pos,) = CLIPTextEncode().run("a red cat", clip)
    (neg,) = CLIPTextEncode().run("a blue dog", clip)
    ms, sigma, cfg, scale = of_model(model), 3.0, 4.0, 0.8
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * sigma

    def denoise(m, positive, negative, guidance, at):
        with torch.no_grad(), m.use("cpu") as unet:
            return Denoiser(Guider(m, positive, negative, guidance), unet, ms, (1, 4, 8, 8), "cpu")(at, sigma)

    (sag,) = SelfAttentionGuidance().run(model, scale, 2.0)
    (none,) = SelfAttentionGuidance().run(model, 0.0, 2.0)
    ours, at_zero = denoise(sag, pos, neg, cfg, x), denoise(none, pos, neg, cfg, x)

    attn1 = model.unet.mid_block.attentions[0].transformer_blocks[0].attn1
    original, store = attn1.processor, CrossAttnStoreProcessor()
    attn1.processor = store
    try:
        with torch.no_grad(), model.use("cpu") as unet:
            den = Denoiser(Guider(model, pos, neg, cfg), unet, ms, (1, 4, 8, 8), "cpu")
            cfg_result = den(x, sigma)
            uncond = den.uncond_denoised
            probs = store.attention_probs  # [positive, negative] x 4 heads, 16 x 16 tokens
    finally:
        attn1.processor = original
    mask = (probs[4:].mean(0).sum(0) > 1.0).float().reshape(1, 1, 4, 4)
    mask = mask.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    degraded = gaussian_blur_2d(uncond, 9, 2.0) * mask + uncond * (1 - mask)
    again = denoise(model, neg, None, 1.0, degraded + x - uncond)
    want = cfg_result + scale * (degraded - again)
    torch.testing.assert_close(at_zero, denoise(model, pos, neg, cfg, x), rtol=0, atol=0)
    torch.testing.assert_close(ours, want, rtol=1e-4, atol=1e-5)
    assert 0 < mask.mean() < 1 and (ours - cfg_result).abs().max() > 1e-4


def test_sag_and_pag_nodes_at_scale_zero_equal_the_model(tmp_folders):
    from genloom.nodes.model_patches import PerturbedAttentionGuidance, SelfAttentionGuidance

    model, clip = _load()
    base = _sample(model, clip)
    assert torch.equal(_sample(SelfAttentionGuidance().run(model, 0.0, 2.0)[0], clip), base)
    assert torch.equal(_sample(PerturbedAttentionGuidance().run(model, 0.0)[0], clip), base)
    (sag,) = SelfAttentionGuidance().run(model, 0.5, 2.0)
    (pag,) = PerturbedAttentionGuidance().run(model, 3.0)
    assert (_sample(sag, clip) - base).abs().max() > 1e-4
    assert (_sample(pag, clip) - base).abs().max() > 1e-4
    assert torch.equal(_sample(model, clip), base)  # processors and hooks put back; input unpatched
    assert model.model_options == {}


def test_patches_refuse_models_without_a_unet(tmp_folders):
    from types import SimpleNamespace

    from genloom.engine.errors import NodeInputError
    from genloom.nodes.model_patches import HyperTile, SelfAttentionGuidance

    with pytest.raises(NodeInputError, match="UNet models"):
        HyperTile().run(SimpleNamespace(unet=None), 256, 2, 0, False)
    model, _clip = _load()
    with pytest.raises(NodeInputError, match="blur_sigma"):
        SelfAttentionGuidance().run(model, 0.5, 0.0)


def test_the_four_patches_chain_on_sdxl(tmp_folders):
    """All four on one SDXL model (pooled output and time ids, two transformers in the middle
    block): the run differs from the plain model's and the loaded model stays unpatched."""
    from genloom.nodes.loaders import CheckpointLoaderSimple
    from genloom.nodes.model_patches import (
        HyperTile,
        PatchModelAddDownscale,
        PerturbedAttentionGuidance,
        SelfAttentionGuidance,
    )

    model, clip, _vae = CheckpointLoaderSimple().run("tiny-sdxl.safetensors")
    base = _sample(model, clip, steps=2)
    (m,) = HyperTile().run(model, 32, 2, 0, False)
    (m,) = PatchModelAddDownscale().run(m, 2, 2.0, 0.0, 0.35, True, "bicubic", "bislerp")
    (m,) = SelfAttentionGuidance().run(m, 0.5, 2.0)
    (m,) = PerturbedAttentionGuidance().run(m, 3.0)
    out = _sample(m, clip, steps=2)
    assert out.shape == base.shape and torch.isfinite(out).all() and (out - base).abs().max() > 1e-3
    assert model.model_options == {} and torch.equal(_sample(model, clip, steps=2), base)
