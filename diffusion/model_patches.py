"""Model patches of ComfyUI's core that change how the UNet or guidance computes (FreeU, FreeU_V2,
RescaleCFG, DifferentialDiffusion, PerturbedAttentionGuidance, SelfAttentionGuidance, HyperTile,
PatchModelAddDownscale). Nodes put them into a patched copy's model_options; nothing here touches a
loaded module's weights.

Block patches (transformer_options["patches"]["input_block_patch" | "input_block_patch_after_skip" |
"output_block_patch"]) run at ComfyUI's LDM block places of a diffusers UNet (models/block_patches.py);
attention patches and replacements in the attention processors (models/attention.py); post-CFG
functions in the denoiser, which lets them call the network again (sampling/denoiser.py
`calc_cond_batch`, ComfyUI's comfy.samplers.calc_cond_batch).
"""

from __future__ import annotations

import math

OUTPUT_BLOCK_PATCH = "output_block_patch"


def output_block_patched(unet, model_options: dict):
    """Every block patch of `model_options` (input, after-skip and output ones, not only output
    ones) installed on `unet` while inside; ModelHandle.use() enters it."""
    from .models.block_patches import block_patched

    return block_patched(unet, model_options)


# ---- FreeU ------------------------------------------------------------------------------------

def fourier_filter(x, threshold: int, scale: float):
    """Scale the lowest spatial frequencies (a 2*threshold square around DC) of x by `scale`."""
    import torch

    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    h, w = freq.shape[-2:]
    gain = torch.ones(freq.shape[-2:], device=x.device)
    gain[h // 2 - threshold:h // 2 + threshold, w // 2 - threshold:w // 2 + threshold] = scale
    freq = torch.fft.ifftshift(freq * gain, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(x.dtype)


def freeu_patch(model_channels: int, b1: float, b2: float, s1: float, s2: float, v2: bool = False):
    """ComfyUI's FreeU (v2: backbone gain modulated by the normalised channel mean): at hidden
    states of 4x the model's base channels, (b1, s1); at 2x, (b2, s2); elsewhere unchanged."""
    import torch

    table = {model_channels * 4: (b1, s1), model_channels * 2: (b2, s2)}

    def patch(h, hsp, _options):
        found = table.get(int(h.shape[1]))
        if found is None:
            return h, hsp
        b, s = found
        half = h.shape[1] // 2
        gain = b
        if v2:
            mean = h.mean(1, keepdim=True)
            flat = mean.reshape(mean.shape[0], -1)
            lo = flat.min(-1).values.reshape(-1, 1, 1, 1)
            hi = flat.max(-1).values.reshape(-1, 1, 1, 1)
            gain = (b - 1.0) * (mean - lo) / (hi - lo) + 1.0
        h = torch.cat([h[:, :half] * gain, h[:, half:]], dim=1)
        try:
            hsp = fourier_filter(hsp, 1, s)
        except (RuntimeError, TypeError):  # a device without torch.fft: on the CPU
            hsp = fourier_filter(hsp.cpu(), 1, s).to(hsp.device)
        return h, hsp

    return patch


def with_output_block_patch(model, patch):
    """A copy of MODEL with `patch` appended to its output-block patches."""
    m = model.clone()
    m.set_model_patch(patch, OUTPUT_BLOCK_PATCH)
    return m.handle


# ---- RescaleCFG -------------------------------------------------------------------------------

def rescale_cfg(multiplier: float):
    """ComfyUI's RescaleCFG as a sampler_cfg_function: CFG done on the v-prediction the EPS-style
    outputs imply, its per-sample std brought back toward the conditional one by `multiplier`."""
    import torch

    def cfg_function(args):
        cond, uncond, scale = args["cond"], args["uncond"], args["cond_scale"]
        x_orig = args["input"]
        sigma = args["sigma"].reshape(-1, *([1] * (cond.ndim - 1)))
        root = (sigma ** 2 + 1.0) ** 0.5
        x = x_orig / (sigma ** 2 + 1.0)
        v_cond = (x - (x_orig - cond)) * root / sigma
        v_uncond = (x - (x_orig - uncond)) * root / sigma
        v_cfg = v_uncond + scale * (v_cond - v_uncond)
        dims = tuple(range(1, cond.ndim))
        rescaled = v_cfg * (torch.std(v_cond, dim=dims, keepdim=True) / torch.std(v_cfg, dim=dims, keepdim=True))
        v_final = multiplier * rescaled + (1.0 - multiplier) * v_cfg
        return x_orig - (x - v_final * sigma / root)

    return cfg_function


# ---- DifferentialDiffusion --------------------------------------------------------------------

def differential_mask(strength: float = 1.0):
    """ComfyUI's DifferentialDiffusion denoise_mask_function: at each step, the part of a soft
    noise mask at or above how far sampling still has to go (in timesteps, from the run's first
    sigma down to its last, or the model's smallest sigma when the last is below it) is
    regenerated; strength < 1 blends the step's mask with the soft one."""
    def fn(sigma, denoise_mask, extra_options):
        import torch

        ms = extra_options["model_sampling"]
        sigmas = extra_options["sigmas"]
        sigma_to = max(float(ms.sigma_min), float(sigmas[-1]))
        now = float(torch.as_tensor(sigma).reshape(-1)[0])
        ts = [float(ms.timestep(torch.as_tensor(float(s)))) for s in (sigmas[0], sigma_to, now)]
        threshold = (ts[2] - ts[1]) / (ts[0] - ts[1])
        binary = (denoise_mask >= threshold).to(denoise_mask.dtype)
        if strength and strength < 1:
            return strength * binary + (1 - strength) * denoise_mask
        return binary

    return fn


# ---- PerturbedAttentionGuidance ---------------------------------------------------------------

def options_with_replace(model_options: dict, fn, which: str, block_name: str, number: int) -> dict:
    """A copy of model_options with `fn` replacing the `which` attention ("attn1"|"attn2") of the
    block (block_name, number); the input dict is left as it was."""
    from .models.patcher import copy_options

    out = copy_options(model_options)
    out["transformer_options"].setdefault("patches_replace", {}).setdefault(which, {})[
        (block_name, number)] = fn
    return out


def identity_attention(q, k, v, extra_options, mask=None):
    """Self-attention replaced by its values: every token attends only to itself."""
    return v


def perturbed_attention_guidance(scale: float):
    """ComfyUI's PerturbedAttentionGuidance as a post-CFG function: the positive prediction again
    with the middle block's self-attention made the identity, pushed away from by `scale`, in
    denoised space: denoised + scale * (cond_denoised - perturbed)."""
    def post_cfg(args):
        from .sampling.denoiser import calc_cond_batch

        if scale == 0:
            return args["denoised"]
        options = options_with_replace(args["model_options"], identity_attention, "attn1", "middle", 0)
        (perturbed,) = calc_cond_batch(args["model"], [args["cond"]], args["input"], args["sigma"], options)
        return args["denoised"] + (args["cond_denoised"] - perturbed) * scale

    return post_cfg


# ---- SelfAttentionGuidance --------------------------------------------------------------------

def gaussian_blur_2d(img, kernel_size: int, sigma: float):
    """A separable Gaussian (the normalised 1-D kernel's outer product), reflect-padded, per channel."""
    import torch
    import torch.nn.functional as F

    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel_size)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    k1 = (pdf / pdf.sum()).to(device=img.device, dtype=img.dtype)
    kernel = torch.outer(k1, k1).expand(img.shape[-3], 1, kernel_size, kernel_size)
    pad = kernel_size // 2
    return F.conv2d(F.pad(img, [pad] * 4, mode="reflect"), kernel, groups=img.shape[-3])


def _mask_rows(total: int, lh: int, lw: int) -> int:
    """The row count of the attention map of `total` tokens for a lh x lw latent: the divisor of
    total nearest to sqrt(total * lh / lw), searched outward as ComfyUI does (then any divisor)."""
    guess = round(math.sqrt(lh / lw * total))
    for i in range(math.floor(math.sqrt(total) / 2)):
        for j in (guess + i, max(1, guess - i)):
            if total % j == 0:
                return j
    return min((d for d in range(1, total + 1) if total % d == 0), key=lambda d: abs(d - guess))


def sag_blur_map(x0, scores, sigma: float, threshold: float = 1.0):
    """x0 blurred where the self-attention is high: per key position, the scores averaged over the
    heads and summed over the queries; above `threshold` the (9-tap, `sigma`) blurred x0, else x0.
    `scores`: [B * heads, T, T] softmaxed attention of the unconditional pass."""
    import torch.nn.functional as F

    _, hw1, hw2 = scores.shape
    b, _, lh, lw = x0.shape
    mask = scores.reshape(b, -1, hw1, hw2).mean(1).sum(1) > threshold
    rows = _mask_rows(mask.shape[-1], lh, lw)
    mask = mask.reshape(b, rows, mask.shape[-1] // rows).unsqueeze(1).to(x0.dtype)
    mask = F.interpolate(mask, (lh, lw))
    return gaussian_blur_2d(x0, 9, sigma) * mask + x0 * (1 - mask)


def _attention_scores(q, k, heads: int):
    """softmax(q k^T / sqrt(d)) per head: [B * heads, T, S], float32."""
    b, t, inner = q.shape
    d = inner // heads
    qh = q.float().reshape(b, t, heads, d).permute(0, 2, 1, 3).reshape(b * heads, t, d)
    kh = k.float().reshape(b, -1, heads, d).permute(0, 2, 1, 3).reshape(b * heads, -1, d)
    return (qh @ kh.transpose(1, 2) * d ** -0.5).softmax(-1)


def self_attention_guidance(scale: float, blur_sigma: float):
    """ComfyUI's SelfAttentionGuidance: (the middle block's attn1 replacement that records the
    unconditional pass's attention scores, the post-CFG function). The post-CFG function blurs the
    unconditional x0 where that attention is high, noises it back with the unconditional noise
    (degraded + x - uncond_denoised), runs the negative conditioning on it and adds
    scale * (degraded - that prediction)."""
    import torch.nn.functional as F

    recorded: dict = {}

    def attend_and_record(q, k, v, extra):
        heads = extra["n_heads"]
        groups = list(extra.get("cond_or_uncond") or [])
        b, d = q.shape[0], q.shape[-1] // heads

        def split(t):
            return t.reshape(b, -1, heads, d).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        if 1 in groups:  # the negative's slice: its scores for the blur map
            per = b // len(groups)
            at = groups.index(1) * per
            recorded["scores"] = _attention_scores(q[at:at + per], k[at:at + per], heads)
        return out.transpose(1, 2).reshape(b, -1, heads * d).to(q.dtype)

    def post_cfg(args):
        from .sampling.denoiser import calc_cond_batch

        result, scores, uncond = args["denoised"], recorded.get("scores"), args["uncond"]
        if scale == 0 or scores is None or not uncond or min(result.shape[2:]) <= 4:
            return result  # nothing to add (ComfyUI: too small to pad for the blur)
        uncond_pred, x = args["uncond_denoised"], args["input"]
        if scores.shape[0] % uncond_pred.shape[0]:
            return result
        degraded = sag_blur_map(uncond_pred, scores.to(uncond_pred.device), blur_sigma)
        (sag,) = calc_cond_batch(args["model"], [uncond], degraded + x - uncond_pred, args["sigma"],
                                 args["model_options"])
        return result + (degraded - sag) * scale

    return attend_and_record, post_cfg


# ---- HyperTile --------------------------------------------------------------------------------

def random_divisor(value: int, min_value: int, max_options: int, generator) -> int:
    """value // d for one of the `max_options` smallest divisors d >= min_value of value. The pick
    is ComfyUI's: randint(0, n - 1) with an exclusive upper end, so the last of n > 1 candidates is
    never taken (with the default swap_size 2 always the first), one draw whenever n > 1."""
    import torch

    min_value = min(min_value, value)
    options = [value // d for d in range(min_value, value + 1) if value % d == 0][:max_options]
    if len(options) == 1:
        return options[0]
    return options[int(torch.randint(0, len(options) - 1, (1,), generator=generator))]


def hypertile(tile_size: int, swap_size: int, max_depth: int, scale_depth: bool):
    """ComfyUI's HyperTile: (attn1 patch, attn1 output patch). At self-attentions over the latent at
    depth i <= max_depth (H / 2^i x W / 2^i tokens), the queries are cut into nh x nw tiles of
    about tile_size / 8 latent cells (x 2^i with scale_depth), each tile a batch item, and the output
    is put back in place. As in ComfyUI only the queries are tiled: the keys and values stay whole and
    the attention splits them, batch item by batch item, into nh * nw runs of consecutive tokens (so
    the tile in row r, column c attends to the (r * nw + c)-th band of rows). ComfyUI takes h, w as
    round(sqrt(hw * W / H)), round(sqrt(hw * H / W)), which swaps them for non-square latents; so
    does this.

    The tile counts are drawn from a generator seeded with 0 at the start of every sampling node's
    run (a new run context), so a run gives the same tiles whatever ran before. ComfyUI draws them
    from torch's global generator, which its KSampler seeds with the noise seed: there the tiles
    follow the seed (only where a choice exists: swap_size > 2)."""
    import torch

    from genloom.engine import context

    latent_tile = max(32, tile_size) // 8
    state: dict = {"tiles": None, "run": None, "generator": None}

    def generator():
        run = context.current()
        if state["run"] is not run:
            state["run"], state["generator"] = run, torch.Generator().manual_seed(0)
        return state["generator"]

    def tile_in(n, context_, value, extra):
        shape = extra["original_shape"]
        depths = [(shape[-2] / 2 ** i) * (shape[-1] / 2 ** i) for i in range(max_depth + 1)]
        tokens = n.shape[-2]
        if tokens not in depths:
            return n, context_, value
        aspect = shape[-1] / shape[-2]
        h, w = round(math.sqrt(tokens * aspect)), round(math.sqrt(tokens / aspect))
        factor = 2 ** depths.index(tokens) if scale_depth else 1
        nh = random_divisor(h, latent_tile * factor, swap_size, generator())
        nw = random_divisor(w, latent_tile * factor, swap_size, generator())
        if nh * nw > 1:
            b, c = n.shape[0], n.shape[-1]
            n = n.reshape(b, nh, h // nh, nw, w // nw, c).permute(0, 1, 3, 2, 4, 5)
            n = n.reshape(b * nh * nw, (h // nh) * (w // nw), c)
            state["tiles"] = (nh, nw, h, w)
        return n, context_, value

    def tile_out(out, extra):
        if state["tiles"] is None:
            return out
        nh, nw, h, w = state["tiles"]
        state["tiles"] = None
        c = out.shape[-1]
        out = out.reshape(-1, nh, nw, h // nh, w // nw, c).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(-1, h * w, c)

    return tile_in, tile_out


# ---- PatchModelAddDownscale (Kohya deep shrink) ----------------------------------------------

def deep_shrink(ms, block_number: int, factor: float, start_percent: float, end_percent: float,
                down_method: str, up_method: str):
    """ComfyUI's PatchModelAddDownscale: (input-block patch, output-block patch). While the sigma is
    in [percent_to_sigma(end), percent_to_sigma(start)], the hidden state after input block
    `block_number` is resized by 1 / factor; an output block whose hidden state does not match its
    skip's size resizes it to the skip's."""
    from .resample import resize

    sigma_start, sigma_end = ms.percent_to_sigma(start_percent), ms.percent_to_sigma(end_percent)

    def input_patch(h, options):
        if options["block"][1] == block_number:
            sigma = float(options["sigmas"][0])
            if sigma_end <= sigma <= sigma_start:
                h = resize(h, round(h.shape[-1] * (1.0 / factor)), round(h.shape[-2] * (1.0 / factor)),
                           down_method)
        return h

    def output_patch(h, hsp, options):
        if h.shape[2] != hsp.shape[2]:
            h = resize(h, hsp.shape[-1], hsp.shape[-2], up_method)
        return h, hsp

    return input_patch, output_patch
