"""FreeU, FreeU_V2, RescaleCFG and DifferentialDiffusion: patched copies (the input MODEL keeps
computing as before), checked against diffusers' FreeU and against the arithmetic written out here."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")


def _unet3():
    """Three levels (32, 64, 128): the deepest up block's hidden states have 4x the base channels,
    where ComfyUI's FreeU (by channels) and diffusers' (by up-block index 0) act alike."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64, 128), layers_per_block=1,
        norm_num_groups=8, cross_attention_dim=16, attention_head_dim=4,
        down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3).eval()


def _block_inputs():
    g = torch.Generator().manual_seed(3)
    h = torch.randn(2, 128, 4, 4, generator=g)
    skips = tuple(torch.randn(2, c, 4, 4, generator=g) for c in (64, 128))  # popped from the end
    temb = torch.randn(2, 128, generator=g)
    return h, skips, temb


def _options(patch):
    return {"transformer_options": {"patches": {"output_block_patch": [patch]}}}


def test_freeu_matches_diffusers_enable_freeu_on_the_deepest_up_block():
    from genloom.diffusion.model_patches import freeu_patch, output_block_patched

    unet = _unet3()
    h, skips, temb = _block_inputs()
    b1, b2, s1, s2 = 1.3, 1.1, 0.7, 0.4
    with torch.no_grad():
        plain = unet.up_blocks[0](h.clone(), skips, temb)
        with output_block_patched(unet, _options(freeu_patch(32, b1, b2, s1, s2))):
            ours = unet.up_blocks[0](h.clone(), skips, temb)
        after = unet.up_blocks[0](h.clone(), skips, temb)
        unet.enable_freeu(s1=s1, s2=s2, b1=b1, b2=b2)
        reference = unet.up_blocks[0](h.clone(), skips, temb)
        unet.disable_freeu()
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    assert (ours - plain).abs().max() > 1e-3
    torch.testing.assert_close(after, plain)  # hooks gone on exit


def test_freeu_v2_arithmetic():
    from diffusers.utils.torch_utils import fourier_filter

    from genloom.diffusion.model_patches import freeu_patch

    g = torch.Generator().manual_seed(1)
    h, hsp = torch.randn(2, 64, 6, 6, generator=g), torch.randn(2, 64, 6, 6, generator=g)
    b1, b2, s1, s2 = 1.3, 1.4, 0.9, 0.2
    out_h, out_s = freeu_patch(16, b1, b2, s1, s2, v2=True)(h.clone(), hsp.clone(), {})
    mean = h.mean(1, keepdim=True)  # [2,1,6,6]
    lo = mean.amin(dim=(2, 3), keepdim=True)
    hi = mean.amax(dim=(2, 3), keepdim=True)
    gain = (b1 - 1) * (mean - lo) / (hi - lo) + 1  # 64 = 4 * 16 channels: (b1, s1)
    want = h.clone()
    want[:, :32] *= gain
    torch.testing.assert_close(out_h, want)
    torch.testing.assert_close(out_s, fourier_filter(hsp, threshold=1, scale=s1))
    same_h, same_s = freeu_patch(16, b1, b2, s1, s2, v2=True)(h[:, :48], hsp[:, :48], {})  # 48: no scale
    assert same_h.equal(h[:, :48]) and same_s.equal(hsp[:, :48])


def _sample(model, clip, seed=5, steps=3, cfg=4.0, latent=None):
    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.ksampler import KSampler
    from genloom.nodes.latent import EmptyLatentImage

    (pos,) = CLIPTextEncode().run("a red cat", clip)
    (neg,) = CLIPTextEncode().run("", clip)
    latent = latent or EmptyLatentImage().run(32, 32, 1)[0]
    return KSampler().run(model, seed, steps, cfg, "euler", "normal", pos, neg, latent, 1.0)[0]["samples"]


def test_freeu_nodes_return_patched_copies(tmp_folders):
    from genloom.nodes.loaders import CheckpointLoaderSimple
    from genloom.nodes.model_patches import FreeU, FreeU_V2

    model, clip, _vae = CheckpointLoaderSimple().run("tiny-sd1.safetensors")
    base = _sample(model, clip)
    (patched,) = FreeU().run(model, 1.5, 1.6, 0.5, 0.3)
    (patched2,) = FreeU_V2().run(model, 1.5, 1.6, 0.5, 0.3)
    assert patched.unet is model.unet and model.model_options == {}
    one, two = _sample(patched, clip), _sample(patched2, clip)
    assert (one - base).abs().max() > 1e-4 and (two - base).abs().max() > 1e-4
    torch.testing.assert_close(_sample(model, clip), base)  # the input model is unchanged


def _reference_rescale(x, d_cond, d_uncond, sigma, scale, mult):
    """RescaleCFG written on denoised estimates: v = (x/(s^2+1) - d) * sqrt(s^2+1) / s."""
    root = math.sqrt(sigma ** 2 + 1)
    xs = x / (sigma ** 2 + 1)
    v_c, v_u = (xs - d_cond) * root / sigma, (xs - d_uncond) * root / sigma
    v = v_u + scale * (v_c - v_u)
    std = lambda t: t.flatten(1).std(1).reshape(-1, 1, 1, 1)  # noqa: E731
    v = mult * v * std(v_c) / std(v) + (1 - mult) * v
    return xs - v * sigma / root  # the denoised estimate


def test_rescale_cfg_arithmetic_and_identity_at_zero(tmp_folders):
    from genloom.diffusion.model_patches import rescale_cfg
    from genloom.nodes.loaders import CheckpointLoaderSimple
    from genloom.nodes.model_patches import RescaleCFG

    g = torch.Generator().manual_seed(2)
    x, dc, du = (torch.randn(2, 4, 5, 5, generator=g) for _ in range(3))
    sigma = 3.0
    args = {"cond": x - dc, "uncond": x - du, "cond_scale": 6.0, "input": x,
            "sigma": torch.full((2,), sigma)}
    denoised = x - rescale_cfg(0.7)(args)
    torch.testing.assert_close(denoised, _reference_rescale(x, dc, du, sigma, 6.0, 0.7), rtol=1e-4, atol=1e-5)

    model, clip, _vae = CheckpointLoaderSimple().run("tiny-sd1.safetensors")
    base = _sample(model, clip)
    (zero,) = RescaleCFG().run(model, 0.0)
    torch.testing.assert_close(_sample(zero, clip), base, rtol=1e-4, atol=1e-4)
    (full,) = RescaleCFG().run(model, 1.0)
    assert (_sample(full, clip) - base).abs().max() > 1e-3 and model.model_options == {}


def test_differential_diffusion_threshold(tmp_folders):
    from genloom.diffusion.sampling.model_sampling import of_model
    from genloom.nodes.inpaint import DifferentialDiffusion
    from genloom.nodes.latent import SetLatentNoiseMask
    from genloom.nodes.loaders import CheckpointLoaderSimple

    model, clip, _vae = CheckpointLoaderSimple().run("tiny-sd1.safetensors")
    (dd,) = DifferentialDiffusion().run(model)
    fn = dd.model_options["denoise_mask_function"]
    ms = of_model(model)
    sigmas = torch.tensor([10.0, 5.0, 1.0, 0.0])
    soft = torch.linspace(0, 1, 16).reshape(1, 1, 4, 4)
    ts = lambda s: float(ms.timestep(torch.tensor(s)))  # noqa: E731
    low = float(ms.sigma_min)  # the last sigma (0) is below the model's smallest: that one
    for sigma in (10.0, 5.0, 1.0):
        threshold = (ts(sigma) - ts(low)) / (ts(10.0) - ts(low))
        got = fn(torch.tensor([sigma]), soft, {"model_sampling": ms, "sigmas": sigmas})
        assert got.equal((soft >= threshold).float())
    (half,) = DifferentialDiffusion().run(model, 0.5)
    got = half.model_options["denoise_mask_function"](torch.tensor([5.0]), soft,
                                                         {"model_sampling": ms, "sigmas": sigmas})
    threshold = (ts(5.0) - ts(low)) / (ts(10.0) - ts(low))
    torch.testing.assert_close(got, 0.5 * (soft >= threshold).float() + 0.5 * soft)
    # in a run: where the mask is 1 every step regenerates (as without the patch); where it is 0
    # the input is kept until the last step, whose sigma is the model's smallest: threshold 0, so
    # ComfyUI's rule lets that step touch everything
    latent = {"samples": torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))}
    mask = torch.zeros(1, 32, 32)
    mask[:, :, 16:] = 1.0
    (masked,) = SetLatentNoiseMask().run(latent, mask)
    seen = []

    def spy(sigma, m, extra):
        seen.append(fn(sigma, m, extra)[0, 0, 0].tolist())
        return fn(sigma, m, extra)
    plain = _sample(model, clip, latent=masked)
    out = _sample(dd.with_options(denoise_mask_function=spy), clip, latent=masked)
    assert seen[0] == [0.0, 0.0, 1.0, 1.0] and seen[-1] == [1.0, 1.0, 1.0, 1.0]
    torch.testing.assert_close(out[..., 2:], plain[..., 2:])
    torch.testing.assert_close(plain[..., :2], latent["samples"][..., :2])
